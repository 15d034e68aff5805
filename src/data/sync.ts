import type Database from "better-sqlite3";
import { and, eq } from "drizzle-orm";
import { LOG_TABLE, quoteIdent } from "../changes/sql.js";
import { SyncError } from "../errors.js";
import { ModelStream } from "../streams/model-stream.js";
import { type AnyModelStreamClass, isModelStreamClass } from "../streams/registry.js";
import type { Stream } from "../streams/stream.js";
import { dataFields, projectRow } from "./fields.js";

/** What a stream class's `sync` returns: rows read through turbocast's db (they carry `.stream`). */
export type SyncRows = readonly object[];

/** The set of a stream at a version of the change log. */
export interface SyncedSet {
  /** The rows as data events carry them (`static fields` of each row's class). */
  rows: Record<string, unknown>[];
  /** The change log's position the rows were read at: every change above it comes after them. */
  version: number;
}

/** Where a sync reads the change log's position: the capture adapter's dialect. */
export interface SyncSource {
  /** The newest seq of the change log. */
  version(): number | Promise<number>;
  /**
   * Runs `fn` in one read transaction (SQLite: the app's own connection, so
   * a synchronous `sync` reads in it); absent where no such transaction can
   * hold an async query (PostgreSQL's pool): an async read between two
   * readings of the version.
   */
  inReadTransaction?<T>(fn: () => T): T;
}

/** SQLite: the position and a synchronous `sync` in one deferred read transaction on the app's connection. */
export function sqliteSyncSource(client: Database.Database): SyncSource {
  // prepared at the first read: the change log is created after createTurbo builds this
  let maxSeq: Database.Statement | null = null;
  return {
    version() {
      maxSeq ??= client.prepare(`SELECT coalesce(max(seq), 0) FROM ${quoteIdent(LOG_TABLE)}`).pluck();
      return Number(maxSeq.get());
    },
    inReadTransaction(fn) {
      // inside the app's own transaction already (a sync called from a hook): its snapshot is ours
      if (client.inTransaction) return fn();
      client.exec("BEGIN");
      try {
        return fn();
      } finally {
        if (client.inTransaction) client.exec("COMMIT");
      }
    },
  };
}

/**
 * PostgreSQL: the position read through the app's pool before and after the
 * rows. A transaction that took its seq before the first reading but commits
 * after the second is not seen by either (seqs are taken at insert, not at
 * commit): its event, below the sync's version, would be dropped. Rare
 * (a write transaction open across the whole sync), and not yet closed.
 */
export function postgresSyncSource(
  client: { query(sql: string): Promise<{ rows: Array<Record<string, unknown>> }> },
  changesTable: () => string,
): SyncSource {
  return {
    async version() {
      const result = await client.query(`SELECT coalesce(max(seq), 0) AS v FROM ${changesTable()}`);
      return Number(result.rows[0]?.v ?? 0);
    },
  };
}

export interface SyncReaderInit {
  source: SyncSource;
  /** Most rows one sync may return. */
  maxRows: number;
}

/** How often an async `sync` is read again when a write lands while it runs. */
const ASYNC_ATTEMPTS = 3;

/**
 * Reads a stream's set and the change log position it was read at, so a
 * subscriber can apply every later change exactly once. On SQLite a
 * synchronous `sync` (Drizzle's `.all()`) runs inside one read transaction
 * with the position: consistent whatever other processes write meanwhile.
 * An async one is read between two readings of the position and read again
 * (up to 3 times) when they differ — a write landed while it ran.
 */
export class SyncReader {
  readonly #source: SyncSource;
  readonly #maxRows: number;

  constructor(init: SyncReaderInit) {
    this.#source = init.source;
    this.#maxRows = init.maxRows;
  }

  /** Whether the stream can be synced (its class defines `sync`, or it is one row's stream). */
  static canSync(stream: Stream): boolean {
    return syncOf(stream) !== null;
  }

  /** The set of `stream` and its version; throws SyncError (with the HTTP status to answer). */
  async read(stream: Stream): Promise<SyncedSet> {
    const sync = syncOf(stream);
    if (sync === null) {
      throw new SyncError(
        stream.name,
        404,
        `${stream.constructor.name} defines no static sync(stream): nothing to sync (a row's own stream syncs its row)`,
      );
    }
    const source = this.#source;
    for (let attempt = 0; attempt < ASYNC_ATTEMPTS; attempt++) {
      let version: number;
      let result: unknown;
      if (source.inReadTransaction) {
        ({ version, result } = source.inReadTransaction(() => ({
          version: source.version() as number,
          result: call(stream, sync),
        })));
        if (!isPromise(result)) return this.#project(stream, result, version);
      } else {
        version = await source.version();
        result = call(stream, sync);
      }
      const rows = await Promise.resolve(result).catch((error: unknown) => {
        throw new SyncError(stream.name, 500, "its sync() rejected", { cause: error });
      });
      if ((await source.version()) === version) return this.#project(stream, rows, version);
    }
    throw new SyncError(
      stream.name,
      503,
      `writes landed while its async sync() ran, ${ASYNC_ATTEMPTS} times; on SQLite, return the rows synchronously (Drizzle's .all()) to read them in one transaction`,
    );
  }

  #project(stream: Stream, rows: unknown, version: number): SyncedSet {
    if (!Array.isArray(rows)) {
      throw new SyncError(stream.name, 500, `its sync() returned ${typeof rows}, not an array of rows`);
    }
    if (rows.length > this.#maxRows) {
      throw new SyncError(
        stream.name,
        413,
        `its sync() returned ${rows.length} rows; at most ${this.#maxRows} (maxSyncRows) are sent in one sync`,
      );
    }
    return { rows: rows.map((row) => projectSynced(stream, row)), version };
  }
}

type SyncFunction = (stream: Stream) => unknown;

function syncOf(stream: Stream): SyncFunction | null {
  const cls = stream.constructor as { sync?: unknown };
  if (typeof cls.sync === "function") return cls.sync as SyncFunction;
  if (stream instanceof ModelStream && !stream.isAll) return rowSync;
  return null;
}

/** A row's own stream: the row, read in the sync's transaction. */
function rowSync(stream: Stream): unknown {
  const model = stream as ModelStream;
  const cls = model.constructor as AnyModelStreamClass;
  const info = cls.tableInfo();
  const db = model.db as unknown as {
    select(): { from(t: unknown): { where(w: unknown): { all?: () => unknown[] } } };
  };
  const key = info.keys.length === 1 ? { [info.keys[0]!.key]: model.pk } : (model.pk as Record<string, unknown>);
  const query = db
    .select()
    .from(info.table)
    .where(and(...info.keys.map((k) => eq(k.column, key[k.key]))));
  // SQLite reads synchronously (inside the sync's transaction); PostgreSQL's query is a promise
  return typeof query.all === "function" ? query.all() : query;
}

function call(stream: Stream, sync: SyncFunction): unknown {
  try {
    return sync.call(stream.constructor, stream);
  } catch (error) {
    throw new SyncError(stream.name, 500, "its sync() threw", { cause: error });
  }
}

function isPromise(value: unknown): value is Promise<unknown> {
  return typeof (value as PromiseLike<unknown> | null)?.then === "function";
}

/** A synced row through its own class's `static fields`: a row that does not say its class is refused (it could leak any column). */
function projectSynced(stream: Stream, row: unknown): Record<string, unknown> {
  const rowStream = (row as { stream?: unknown } | null)?.stream;
  const cls = rowStream instanceof ModelStream ? rowStream.constructor : undefined;
  if (!isModelStreamClass(cls)) {
    throw new SyncError(
      stream.name,
      500,
      "its sync() returned a row that was not read through turbocast's db from a bound table (select whole rows: db.select().from(table)), so its fields are unknown",
    );
  }
  return projectRow(dataFields(cls), row as Record<string, unknown>);
}
