import { sql } from "drizzle-orm";
import type { PgTable } from "drizzle-orm/pg-core";
import type pg from "pg";
import { quoteLiteral } from "../changes/sql.js";
import { ConfigError } from "../errors.js";
import { type AnyModelStreamClass, attachStream } from "../streams/registry.js";
import {
  type Instrumentation,
  type RelationalSelectionItem,
  type SelectedField,
  attachRelational,
  relationalPrototypeOf,
  wholeRowTable,
} from "./instrument.js";

/**
 * createTurbo's instrumentation of a Drizzle node-postgres database: rows of
 * bound tables read or returned through it carry `.stream`, and the change
 * feed hears of the app's own writes the moment they commit — its pool's
 * `query()` (every statement Drizzle runs outside a transaction, and the
 * app's raw ones) and `db.transaction()`. The pool's connections are made
 * quiet (`-c turbocast.quiet=on` among the startup options of the connections it opens from then on): their
 * writes send no NOTIFY, which would serialize their commits (see
 * changes/postgres/triggers.ts). Writes on a client the app checks out of
 * the pool itself are found by the safety poll. It relies on two Drizzle
 * internals, pinned by test/postgres-app/instrument.test.ts:
 *
 * - `session.prepareQuery(query, fields, name, arrayMode, customResultMapper)`
 *   on the session's prototype returns a prepared query whose
 *   `execute()` resolves to the mapped rows; `fields` is `{ path, field }[]`
 *   for builder selects and `.returning()`. A transaction runs on a new
 *   session over a pooled client that shares the database's `dialect`, so
 *   the hook sits on the prototype and finds its database by dialect.
 * - `PgRelationalQuery.prototype._prepare()` builds `db.query.*` queries and
 *   passes `customResultMapper` to prepareQuery.
 */
export interface PgInstrumentOptions {
  /** Which class, if any, is bound to a table. */
  classFor(table: PgTable): AnyModelStreamClass | undefined;
  /** Called after a statement that may have written committed (or a transaction ended). */
  onWrite(): void;
  /**
   * The X-Turbo-Request-Id of the code running now, if any: a write made
   * inside a request records it in its changes (`turbocast.request_id`), so
   * the hooks run inside that request's id, as on SQLite.
   */
  requestId?: () => string | undefined;
}

/** The startup option that makes a connection quiet. */
export const QUIET_OPTION = "-c turbocast.quiet=on";

/** Statements that write rows (the ones whose changes a request id is recorded with). */
const WRITES_ROWS = /^\s*(?:insert|update|delete|merge|with)\b/i;

/** Statements that read only (or only end a transaction that did not commit): no drain after them. */
const NOT_A_WRITE = /^\s*(?:select|show|set|reset|begin|start|savepoint|release|rollback|listen|unlisten|explain)\b/i;

interface QueryableLike {
  query: (...args: unknown[]) => unknown;
}

interface PreparedLike {
  execute: (...args: unknown[]) => Promise<unknown>;
}

interface SessionLike {
  dialect: object;
  prepareQuery: (...args: unknown[]) => PreparedLike;
}

/** Dialects of instrumented databases -> their options. */
const instrumented = new WeakMap<object, PgInstrumentOptions>();
const hookedSessions = new WeakSet<object>();
const hookedRelational = new WeakSet<object>();

/** Whether `db` is a Drizzle node-postgres database (its client a pg Pool or Client). */
export function isNodePgDatabase(db: unknown): boolean {
  const session = (db as { session?: { constructor?: { name?: string } } } | null)?.session;
  const client = (db as { $client?: { query?: unknown; connect?: unknown } } | null)?.$client;
  return (
    typeof session === "object" &&
    session !== null &&
    /NodePgSession/.test(session.constructor?.name ?? "") &&
    typeof client?.query === "function"
  );
}

export function instrumentPgDatabase(db: unknown, options: PgInstrumentOptions): Instrumentation {
  const session = (db as { session?: SessionLike }).session;
  if (!session || typeof session.prepareQuery !== "function" || typeof session.dialect !== "object") {
    throw new ConfigError("db must be a Drizzle node-postgres database (drizzle(pool))");
  }
  if (instrumented.has(session.dialect)) {
    throw new ConfigError("this Drizzle database is already used by a running turbocast instance; close() it first");
  }
  const proto = Object.getPrototypeOf(session) as SessionLike;
  if (!Object.hasOwn(proto, "prepareQuery")) {
    throw new ConfigError(
      "this drizzle-orm version's node-postgres session has no prepareQuery; turbocast needs to be updated for it",
    );
  }
  installSessionHook(proto);
  const relational = relationalPrototypeOf(db);
  if (relational) installRelationalHook(relational);
  instrumented.set(session.dialect, options);
  const unhookClient = hookClient((db as { $client?: QueryableLike }).$client, options);
  const ownTransaction = Object.hasOwn(session, "transaction");
  const transaction = (session as unknown as { transaction: (...args: unknown[]) => Promise<unknown> }).transaction;
  (session as unknown as { transaction: (...args: unknown[]) => Promise<unknown> }).transaction = function (
    this: unknown,
    ...args: unknown[]
  ) {
    // a read-only transaction (a sync's) writes no change to note, nor any the feed should look for
    if ((args[1] as { accessMode?: unknown } | undefined)?.accessMode === "read only") {
      return transaction.apply(this, args);
    }
    const requestId = options.requestId?.();
    if (requestId !== undefined && typeof args[0] === "function") {
      const body = args[0] as (tx: { execute(query: unknown): Promise<unknown> }) => Promise<unknown>;
      // transaction-local: the capture triggers copy it into every change this transaction writes
      args[0] = async (tx: { execute(query: unknown): Promise<unknown> }) => {
        await tx.execute(sql`SELECT pg_catalog.set_config('turbocast.request_id', ${requestId}, true)`);
        return body(tx);
      };
    }
    // committed or rolled back: either way the feed may look (a rollback leaves nothing to find)
    return transaction.apply(this, args).finally(() => options.onWrite());
  };
  let restored = false;
  return {
    restore() {
      if (restored) return;
      restored = true;
      instrumented.delete(session.dialect);
      unhookClient();
      if (ownTransaction) (session as unknown as { transaction: unknown }).transaction = transaction;
      else delete (session as unknown as { transaction?: unknown }).transaction;
    },
  };
}

/** The SQL text of a `query()` call's first argument (a string or a query config). */
function queryText(first: unknown): string {
  if (typeof first === "string") return first;
  return typeof (first as { text?: unknown } | null)?.text === "string" ? (first as { text: string }).text : "";
}

/**
 * Runs one statement of the pool in a transaction that first sets
 * `turbocast.request_id` (one round trip more, each way: BEGIN with the
 * setting, COMMIT), so the changes it writes carry the request's id.
 */
async function queryInRequest(pool: pg.Pool, requestId: string, args: unknown[]): Promise<unknown> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query(`BEGIN; SELECT pg_catalog.set_config('turbocast.request_id', ${quoteLiteral(requestId)}, true)`);
    const result = await (client.query as (...a: unknown[]) => Promise<unknown>)(...args);
    await client.query("COMMIT");
    return result;
  } catch (error) {
    await client.query("ROLLBACK").catch((rollback: Error) => {
      broken = rollback;
    });
    throw error;
  } finally {
    // a connection whose ROLLBACK failed is not given back to the pool
    client.release(broken);
  }
}

/** Whether a node-postgres client is a Pool (pg-pool), whose options make each new connection. */
function isPool(client: QueryableLike): boolean {
  return (
    typeof (client as { connect?: unknown }).connect === "function" &&
    "totalCount" in client &&
    typeof (client as { options?: unknown }).options === "object"
  );
}

/**
 * Wraps the pool's (or client's) `query()` so that a statement that may
 * have written calls onWrite once it completed, and makes new pool
 * connections quiet. Returns the undo.
 */
function hookClient(client: QueryableLike | undefined, options: PgInstrumentOptions): () => void {
  if (!client || typeof client.query !== "function") return () => {};
  const { onWrite } = options;
  const ownQuery = Object.hasOwn(client, "query");
  const query = client.query;
  const pooled = isPool(client);
  client.query = function (this: unknown, ...args: unknown[]): unknown {
    // a pool's write inside a request: in a transaction of its own that records the request's id
    const requestId =
      pooled && typeof args[args.length - 1] !== "function" && WRITES_ROWS.test(queryText(args[0]))
        ? options.requestId?.()
        : undefined;
    const result =
      requestId === undefined ? query.apply(this, args) : queryInRequest(client as unknown as pg.Pool, requestId, args);
    if (typeof (result as Promise<unknown> | undefined)?.then === "function" && !NOT_A_WRITE.test(queryText(args[0]))) {
      (result as Promise<unknown>).then(onWrite, onWrite);
    }
    return result;
  };
  // A pool's new connections start quiet (a startup option: no query of ours on the app's
  // connections). One it opened before keeps notifying until the pool replaces it — correct,
  // only slower; a lone Client commits one transaction at a time anyway.
  const pool = pooled ? (client as unknown as { options: { options?: string } }).options : undefined;
  const startup = pool?.options;
  if (pool) pool.options = `${startup ?? ""} ${QUIET_OPTION}`.trim();
  return () => {
    if (ownQuery) client.query = query;
    else delete (client as Partial<QueryableLike>).query;
    if (pool) pool.options = startup;
  };
}

function installSessionHook(proto: SessionLike): void {
  if (hookedSessions.has(proto)) return;
  hookedSessions.add(proto);
  const prepareQuery = proto.prepareQuery;
  proto.prepareQuery = function (this: SessionLike, ...args: unknown[]): PreparedLike {
    const prepared = prepareQuery.apply(this, args);
    const options = instrumented.get(this.dialect);
    const table = options ? (wholeRowTable(args[1] as SelectedField[] | undefined) as PgTable | undefined) : undefined;
    const cls = table ? options!.classFor(table) : undefined;
    if (!cls) return prepared;
    const execute = prepared.execute;
    prepared.execute = async function (this: PreparedLike, ...rest: unknown[]) {
      const rows = await execute.apply(this, rest);
      if (Array.isArray(rows)) for (const row of rows) if (row && typeof row === "object") attachStream(row, cls);
      return rows;
    };
    return prepared;
  };
}

interface RelationalQueryLike {
  dialect: object;
  session: { prepareQuery: (...args: unknown[]) => PreparedLike };
  table: PgTable;
  fullSchema: Record<string, unknown>;
  _toSQL?: () => { query: unknown };
}

/**
 * Wraps `_prepare` of relational queries so the rows their result mapper
 * builds (and the related rows nested in them) get `.stream`: the session's
 * prepareQuery is called with a mapper that attaches after mapping.
 */
function installRelationalHook(target: object): void {
  if (hookedRelational.has(target)) return;
  const proto = target as { _prepare?: (this: RelationalQueryLike, name?: string) => PreparedLike };
  const original = proto._prepare;
  if (typeof original !== "function") {
    throw new ConfigError(
      "this drizzle-orm version has no PgRelationalQuery._prepare; turbocast needs to be updated for it",
    );
  }
  hookedRelational.add(target);
  proto._prepare = function (this: RelationalQueryLike, name?: string): PreparedLike {
    const options = instrumented.get(this.dialect);
    if (!options) return original.call(this, name);
    const rootTable = this.table;
    const fullSchema = this.fullSchema;
    const selection = (this._toSQL?.().query as { selection?: RelationalSelectionItem[] } | undefined)?.selection ?? [];
    const session = this.session;
    // the query's own _prepare calls session.prepareQuery(query, fields, name, arrayMode, mapper): wrap the mapper
    const view = Object.create(this, {
      session: {
        value: Object.create(session, {
          prepareQuery: {
            value: (...args: unknown[]) => {
              const mapper = args[4] as ((rows: unknown[], map?: unknown) => unknown) | undefined;
              if (mapper) {
                args[4] = (rows: unknown[], map?: unknown) => {
                  const result = mapper(rows, map);
                  attachRelational(result, rootTable, selection, fullSchema, options.classFor);
                  return result;
                };
              }
              return session.prepareQuery(...args);
            },
          },
        }),
      },
    }) as RelationalQueryLike;
    return original.call(view, name);
  };
}
