import { randomBytes } from "node:crypto";
import pg from "pg";
import { DatabaseUnreachableError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import type { TableInfo } from "../../streams/table.js";
import type { CaptureAdapter, CapturePoll, CaptureSync, Claim } from "../capture.js";
import { type PgColumnType, type PgRowDecoder, type DecodableColumn, pgRowDecoder } from "./decode.js";
import { PgChangeListener } from "./listener.js";
import { LOG_CONNECTION_OPTIONS, PgChangeLog } from "./log.js";
import { type PgCaptureTable, channelFor, relationNames, syncPgTriggers } from "./triggers.js";

export interface PgCaptureInit {
  /** The app's node-postgres Pool or Client (`db.$client`): the feed opens connections of its own with the same settings. */
  client: unknown;
  logger: Logger;
  /** Schema of the change log and its functions. Default: the connection's current_schema() (the first schema of its search_path). */
  schema?: string;
}

/** Connections the feed keeps: one for claims and the log's other writes, one spare for a renewal or prune meanwhile. */
const POOL_SIZE = 2;
/** Unless the app's pool sets its own. */
const CONNECT_TIMEOUT_MS = 10_000;
const QUERY_TIMEOUT_MS = 60_000;

/**
 * Change capture on PostgreSQL: plpgsql triggers (triggers.ts) append to the
 * change log, claimed by snapshot windows under a row lock (log.ts); a
 * LISTEN connection (listener.ts) wakes the feed at every commit that wrote
 * changes, from any process on any machine. The schema "version" is a
 * signature of the bound tables' columns and triggers, read with each poll
 * and claim. Request ids travel in the log rows (the writer's
 * `turbocast.request_id` setting), so there are no notes to keep.
 *
 * The feed's connections are its own (a small pool with the app pool's
 * settings: server, user, search_path), so claims never wait for, or
 * starve, the app's pool.
 */
export class PgCapture implements CaptureAdapter {
  readonly busy = false;
  readonly #config: pg.PoolConfig;
  readonly #logger: Logger;
  readonly #target: string;
  #pool: pg.Pool | null = null;
  #logSchema: string | undefined;
  #log: PgChangeLog | null = null;
  #listener: PgChangeListener | null = null;
  #relations: string[] = [];
  /** The signature after the last successful sync: a different one means a migration ran. */
  #signature: string | null = null;
  #synced = false;
  /** Column types per table name; the inner maps are updated in place, so decoders made earlier see new columns. */
  readonly #types = new Map<string, Map<string, PgColumnType>>();
  #requestIds: Map<number, string> | null = null;
  /** Marks the scope tokens this instance writes into the log: tokens are process-local, so only its own mean anything here. */
  readonly #tokenPrefix = `${randomBytes(6).toString("base64url")}:`;

  constructor(init: PgCaptureInit) {
    this.#config = connectionConfig(init.client);
    this.#logger = init.logger;
    this.#target = describe(this.#config);
    this.#logSchema = init.schema;
  }

  /** The schema of the change log (known after the first sync). */
  get logSchema(): string | undefined {
    return this.#logSchema;
  }

  #pooled(): pg.Pool {
    if (!this.#pool) {
      this.#pool = new pg.Pool({
        // a cut link must fail a claim, not hang the feed: it retries on the next wake or poll
        connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
        query_timeout: QUERY_TIMEOUT_MS,
        ...this.#config,
        options: `${this.#config.options ?? ""} ${LOG_CONNECTION_OPTIONS}`.trim(),
        max: POOL_SIZE,
        idleTimeoutMillis: 30_000,
        keepAlive: true,
      });
      // an idle connection that dies (a restart, pg_terminate_backend) is dropped by the pool; unheard, it would crash the process
      this.#pool.on("error", () => {});
    }
    return this.#pool;
  }

  async sync(tables: readonly TableInfo[]): Promise<CaptureSync> {
    const pool = this.#pooled();
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (error) {
      throw this.#synced ? error : new DatabaseUnreachableError(this.#target, error);
    }
    try {
      const wanted = tables.map(pgCaptureTable);
      const result = await syncPgTriggers(client, wanted, {
        logSchema: this.#logSchema,
        dropUnbound: !this.#synced,
      });
      this.#logSchema = result.logSchema;
      this.#relations = relationNames(wanted);
      this.#signature = result.signature;
      this.#synced = true;
      for (const [table, types] of result.types) {
        let known = this.#types.get(table);
        if (!known) this.#types.set(table, (known = new Map()));
        known.clear();
        for (const [column, type] of types) known.set(column, type);
      }
      return result;
    } finally {
      client.release();
    }
  }

  /** Opens the log and the LISTEN connection; `wake` is called at every commit that wrote changes, and when LISTEN reconnects. */
  async open(wake: () => void): Promise<void> {
    const pool = this.#pooled();
    this.#log ??= new PgChangeLog(pool, this.#logSchema!);
    if (this.#listener) return;
    const listener = new PgChangeListener({
      config: this.#config,
      channel: channelFor(this.#logSchema!),
      onWake: wake,
      logger: this.#logger,
    });
    try {
      await listener.start();
    } catch (error) {
      throw new DatabaseUnreachableError(this.#target, error);
    }
    this.#listener = listener;
  }

  /** Closes the LISTEN connection and the feed's pool; the triggers stay. Safe to call twice. */
  async close(): Promise<void> {
    const listener = this.#listener;
    const pool = this.#pool;
    this.#listener = null;
    this.#pool = null;
    this.#log = null;
    await listener?.close();
    await pool?.end().catch(() => {});
  }

  async poll(owner: string, now: number): Promise<CapturePoll> {
    const poll = await this.#log!.poll(owner, now, this.#relations);
    return { claimable: poll.claimable, doneSeq: poll.doneSeq, schemaChanged: poll.signature !== this.#signature };
  }

  async claim(owner: string, doneUpTo: number, now: number, leaseMs: number, limit: number): Promise<Claim> {
    const log = this.#log!;
    const changes = await log.completeAndClaim(owner, doneUpTo, now, leaseMs, limit, this.#relations);
    let ids: Map<number, string> | null = null;
    const prefix = this.#tokenPrefix;
    for (const change of changes) {
      // another process's scope (or another writer's setting) is nothing this process can run a hook in
      if (change.requestId?.startsWith(prefix))
        (ids ??= new Map()).set(change.seq, change.requestId.slice(prefix.length));
    }
    this.#requestIds = ids;
    return {
      changes,
      doneSeq: log.doneSeq,
      lostClaim: log.lostClaim,
      tookOver: log.tookOver,
      schemaChanged: log.signature !== this.#signature,
    };
  }

  complete(owner: string, upTo: number): Promise<boolean> {
    return this.#log!.complete(owner, upTo);
  }

  renew(owner: string, until: number): Promise<void> {
    return this.#log!.renew(owner, until);
  }

  prune(_now: number, retain: { count: number; ageMs: number }): Promise<number> {
    return this.#log!.prune(retain);
  }

  /**
   * What this instance's writes record as `turbocast.request_id` for the
   * scope token `token` (a request, or suppressingBroadcasts — see
   * RequestNotes): the token, marked as this instance's.
   */
  noteFor(token: string): string {
    return this.#tokenPrefix + token;
  }

  /** The scope tokens this instance's writes recorded in the last claimed batch (`turbocast.request_id`), by seq. */
  requestIds(first: number, last: number): Map<number, string> | null {
    const ids = this.#requestIds;
    if (!ids) return null;
    const inRange = [...ids].filter(([seq]) => seq >= first && seq <= last);
    return inRange.length > 0 ? new Map(inRange) : null;
  }

  /** Nothing to forget: request ids live in the log rows. */
  forgetRequests(_doneSeq: number): void {}

  decoderFor(info: TableInfo): PgRowDecoder {
    let types = this.#types.get(info.name);
    if (!types) this.#types.set(info.name, (types = new Map()));
    return pgRowDecoder(info.columns as unknown as Record<string, DecodableColumn>, types);
  }
}

function pgCaptureTable(info: TableInfo): PgCaptureTable {
  return {
    name: info.name,
    ...(info.schema === undefined ? {} : { schema: info.schema }),
    keys: info.keys.map((k) => k.column.name),
    columns: Object.values(info.columns).map((c) => c.name),
  };
}

/** The app client's connection settings, for connections of the feed's own. */
function connectionConfig(client: unknown): pg.PoolConfig {
  const pool = client as { options?: pg.PoolConfig } | null;
  if (client instanceof pg.Pool || (pool?.options && typeof (client as pg.Pool).connect === "function")) {
    const { max: _max, ...options } = pool!.options!;
    return { ...options, application_name: options.application_name ?? "turbocast" };
  }
  const params = (client as { connectionParameters?: Record<string, unknown> } | null)?.connectionParameters;
  if (params) {
    return {
      user: params.user as string,
      database: params.database as string,
      host: params.host as string,
      port: params.port as number,
      password: (client as { password?: string }).password,
      ssl: params.ssl as pg.PoolConfig["ssl"],
      options: params.options as string | undefined,
      application_name: "turbocast",
    };
  }
  return {};
}

/** `host:port/database`, for messages (never the password). */
function describe(config: pg.PoolConfig): string {
  const params = new pg.Client(config) as unknown as { host: string; port: number; database: string };
  return `${params.host}:${params.port}/${params.database}`;
}
