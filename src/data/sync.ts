import type Database from "better-sqlite3";
import { type SQL, and, eq, sql } from "drizzle-orm";
import { LOG_TABLE, quoteIdent } from "../changes/sql.js";
import { SyncError } from "../errors.js";
import { ModelStream } from "../streams/model-stream.js";
import { type AnyModelStreamClass, isModelStreamClass } from "../streams/registry.js";
import { withStreamDb } from "../streams/runtime.js";
import type { Stream } from "../streams/stream.js";
import { dataFields, projectRow } from "./fields.js";

/** What a stream class's `sync` returns: rows read through turbocast's db (they carry `.stream`). */
export type SyncRows = readonly object[];

/** The set of a stream at a version of the change log. */
export interface SyncedSet {
  /** The rows as data events carry them (`static fields` of each row's class). */
  rows: Record<string, unknown>[];
  /**
   * The change log's version the rows were read at: every change at or below
   * it is in them, and every change not in them is above it (it comes after
   * them as an event). On PostgreSQL, changes above it may be in the rows too
   * (see postgresSyncSource).
   */
  version: number;
}

/**
 * What a sync source read: `value`, what the stream class's `sync` returned,
 * and the change log's version it stands at — every change at or below
 * `version` is in it, and every change not in it is above `version` (so it
 * comes as an event after the sync). `exact`: no change above `version` is
 * in it either, so the version alone names the set (an ETag).
 */
export interface SourceRead {
  value: unknown;
  version: number;
  exact: boolean;
}

/** Where a sync reads: the capture adapter's dialect. */
export interface SyncSource {
  /**
   * Calls `read` (the stream class's `sync`) so that it reads at one version
   * of the change log; null when writes kept landing while an async `read`
   * ran (SQLite).
   */
  read(read: () => unknown): Promise<SourceRead | null>;
}

/** How often an async `sync` is read again on SQLite when a write lands while it runs. */
const ASYNC_ATTEMPTS = 3;

/**
 * SQLite: the log's newest seq and a synchronous `sync` in one deferred read
 * transaction on the app's connection — consistent whatever other processes
 * write meanwhile (seqs are taken in commit order: one writer at a time). An
 * async `sync` cannot hold that transaction: it is read between two readings
 * of the seq, again (up to 3 times) when a write landed in between.
 */
export function sqliteSyncSource(client: Database.Database): SyncSource {
  // prepared at the first read: the change log is created after createTurbo builds this
  let maxSeq: Database.Statement | null = null;
  const version = (): number => {
    maxSeq ??= client.prepare(`SELECT coalesce(max(seq), 0) FROM ${quoteIdent(LOG_TABLE)}`).pluck();
    return Number(maxSeq.get());
  };
  const inReadTransaction = <T>(fn: () => T): T => {
    // inside the app's own transaction already (a sync called from a hook): its snapshot is ours
    if (client.inTransaction) return fn();
    client.exec("BEGIN");
    try {
      return fn();
    } finally {
      if (client.inTransaction) client.exec("COMMIT");
    }
  };
  return {
    async read(read) {
      for (let attempt = 0; attempt < ASYNC_ATTEMPTS; attempt++) {
        const at = inReadTransaction(() => ({ version: version(), value: read() }));
        if (!isPromise(at.value)) return { ...at, exact: true };
        const value = await at.value;
        if (version() === at.version) return { value, version: at.version, exact: true };
      }
      return null;
    },
  };
}

/** What the PostgreSQL sync source needs of the app's Drizzle node-postgres database. */
export interface PgSyncDatabase {
  transaction<T>(
    fn: (tx: { execute(query: SQL): Promise<{ rows: Array<Record<string, unknown>> }> }) => Promise<T>,
    config: { isolationLevel: "repeatable read"; accessMode: "read only" },
  ): Promise<T>;
  $client: { query(text: string, values: unknown[]): Promise<{ rows: Array<Record<string, unknown>> }> };
}

export interface PgSyncInit {
  db: PgSyncDatabase;
  /** The change log's qualified name (known once capture is installed). */
  changesTable: () => string;
  /** How long a sync waits for the write transactions in flight at its snapshot to end. */
  waitMs: number;
}

/**
 * PostgreSQL: the `sync` reads in one REPEATABLE READ, read-only
 * transaction (`this.db` is that transaction while it runs), whose first
 * statement takes its snapshot and the newest seq visible in it. That seq is
 * not yet the version: seqs are taken when a row is written, not at commit,
 * so a transaction in flight at the snapshot may hold a lower seq than a
 * visible one and commit later — in neither the rows nor above that seq. So
 * the sync waits (up to `waitMs`) for the snapshot's in-flight transactions
 * that wrote to the change log (they hold its lock until they end) and
 * takes the version just below their first seq. One still in flight after
 * `waitMs` makes the version 0: every change is then sent again after the
 * sync, which is safe, only redundant, for a subscriber applying events in
 * order. Changes above the version that the snapshot did see are sent after
 * the sync too (each row's changes in order, so the row ends as it is).
 */
export function postgresSyncSource(init: PgSyncInit): SyncSource {
  const { db, waitMs } = init;
  return {
    async read(read) {
      let snapshot = "";
      let newest = 0;
      const value = await db.transaction(
        async (tx) => {
          const { rows } = await tx.execute(
            sql.raw(
              `SELECT pg_current_snapshot()::text AS snapshot, coalesce(max(seq), 0)::text AS newest FROM ${init.changesTable()}`,
            ),
          );
          snapshot = String(rows[0]!.snapshot);
          newest = Number(rows[0]!.newest);
          return await withStreamDb(db, tx, read);
        },
        { isolationLevel: "repeatable read", accessMode: "read only" },
      );
      return { value, ...(await settledVersion(db.$client, init.changesTable(), snapshot, newest, waitMs)) };
    },
  };
}

/**
 * The version of a read at `snapshot` (text form `xmin:xmax:xip,…`) whose
 * newest visible seq is `newest`: `newest` when no transaction in flight at
 * the snapshot wrote a change at or below it, else just below the first
 * such change (waiting for them to end, when it is known).
 */
async function settledVersion(
  client: PgSyncDatabase["$client"],
  changes: string,
  snapshot: string,
  newest: number,
  waitMs: number,
): Promise<{ version: number; exact: boolean }> {
  const inFlight = snapshot.split(":")[2] ?? "";
  if (inFlight === "") return { version: newest, exact: true };
  const xids = `{${inFlight}}`;
  const deadline = performance.now() + waitMs;
  for (let pause = 1; ; pause = Math.min(pause * 2, 50)) {
    const { rows } = await client.query(WRITING, [changes, xids]);
    if (Number(rows[0]!.writing) === 0) break;
    if (performance.now() >= deadline) return { version: 0, exact: false };
    await new Promise((resolve) => setTimeout(resolve, pause));
  }
  // a statement after the one that saw their locks gone: their commits are visible to it
  const { rows } = await client.query(
    `SELECT min(seq)::text AS first FROM ${changes} WHERE xid = ANY ($1::xid8[]) AND seq <= $2`,
    [xids, newest],
  );
  const first = rows[0]!.first;
  return first === null || first === undefined
    ? { version: newest, exact: true }
    : { version: Number(first) - 1, exact: false };
}

/**
 * How many of the transactions `$2` (xid8[]) are still in flight having
 * written to the change log `$1`: a writer holds ROW EXCLUSIVE on it from
 * before it takes its first seq until it ends (and its own xid's lock as
 * long), so one that is not in this count has either ended or takes its
 * seqs from now on — above every seq a snapshot taken before saw.
 */
const WRITING = `
  SELECT count(*)::int AS writing
  FROM pg_catalog.pg_locks r
  JOIN pg_catalog.pg_locks t ON t.virtualtransaction = r.virtualtransaction
  WHERE r.locktype = 'relation' AND r.relation = $1::regclass AND r.mode = 'RowExclusiveLock'
    AND r.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
    AND t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock' AND t.granted
    AND t.transactionid = ANY ($2::xid8[]::xid[])`;

export interface SyncReaderInit {
  source: SyncSource;
  /** Most rows one sync may return. */
  maxRows: number;
}

/** A set as the reader read it: `exact` (see SourceRead) says whether its version names it. */
export interface ReadSet extends SyncedSet {
  exact: boolean;
}

/**
 * Reads a stream's set and the change log version it was read at (see the
 * dialect's sync source), so a subscriber can apply every later change.
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
  async read(stream: Stream): Promise<ReadSet> {
    const sync = syncOf(stream);
    if (sync === null) {
      throw new SyncError(
        stream.name,
        404,
        `${stream.constructor.name} defines no static sync(stream): nothing to sync (a row's own stream syncs its row)`,
      );
    }
    let read: SourceRead | null;
    try {
      read = await this.#source.read(() => call(stream, sync));
    } catch (error) {
      if (error instanceof SyncError) throw error;
      throw new SyncError(stream.name, 503, "reading its set failed", { cause: error });
    }
    if (read === null) {
      throw new SyncError(
        stream.name,
        503,
        `writes landed while its async sync() ran, ${ASYNC_ATTEMPTS} times; on SQLite, return the rows synchronously (Drizzle's .all()) to read them in one transaction`,
      );
    }
    return { ...this.#project(stream, read.value, read.version), exact: read.exact };
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
  let result: unknown;
  try {
    result = sync.call(stream.constructor, stream);
  } catch (error) {
    throw new SyncError(stream.name, 500, "its sync() threw", { cause: error });
  }
  if (!isPromise(result)) return result;
  return Promise.resolve(result).catch((error: unknown) => {
    throw new SyncError(stream.name, 500, "its sync() rejected", { cause: error });
  });
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
