import type { TableInfo } from "../streams/table.js";
import type { RowDecoder } from "./decode.js";

/**
 * The seam between the change feed and a database dialect. The feed
 * (feed.ts: scheduling, claims and leases, pruning) and the hook dispatch
 * (dispatch.ts) are the same for every database; what differs — the
 * triggers, the change log's reads and writes, the claim, and how a
 * captured row is encoded — sits behind a CaptureAdapter, one per dialect
 * (SqliteCapture in sqlite-capture.ts).
 *
 * The database's methods may answer at once (better-sqlite3 is synchronous,
 * and a microtask per poll or claim would cost the SQLite hot path) or with a
 * promise (PostgreSQL, PgCapture in postgres/capture.ts): the feed awaits
 * only what is a promise.
 */
export interface CaptureAdapter {
  /**
   * Whether the app's connection is inside a transaction it holds open: the
   * feed's own writes would share its fate, and what it reads is not
   * committed, so the feed waits (SQLite: one connection shared with the app).
   */
  readonly busy: boolean;
  /**
   * Makes the database capture every change of `tables` (and no other
   * table), in one transaction, creating the change log if needed. At start
   * (the first call) the database is made to match this app; later calls
   * (after a schema change) rewrite only what this app's own view changed.
   * Throws CaptureInstallError with nothing changed.
   */
  sync(tables: readonly TableInfo[]): MaybePromise<CaptureSync>;
  /**
   * Prepares the log's statements (and request notes); call once after the
   * first sync. A dialect that hears of commits by itself (PostgreSQL's
   * NOTIFY) calls `wake` for each, and when it may have missed some.
   */
  open(wake: () => void): MaybePromise<void>;
  /** Releases what open() (and sync) set up; the triggers stay. Safe to call twice, and without open(). */
  close(): MaybePromise<void>;
  /** One cheap read: is there work this feed could claim, how far did dispatch get, did the schema change? */
  poll(owner: string, now: number): MaybePromise<CapturePoll>;
  /**
   * In one write transaction: marks this feed's changes up to `doneUpTo`
   * done (0: none), then takes the cursor for the next `limit` changes, in
   * log order. No changes when there are none or another live feed holds
   * the cursor (one whose lease ran out, or whose process is gone, is taken
   * over).
   */
  claim(owner: string, doneUpTo: number, now: number, leaseMs: number, limit: number): MaybePromise<Claim>;
  /** Marks this feed's changes up to `upTo` done and gives the cursor back; false when the cursor is no longer this feed's. */
  complete(owner: string, upTo: number): MaybePromise<boolean>;
  /** Extends this feed's hold on the cursor to `until` (ms since epoch). */
  renew(owner: string, until: number): MaybePromise<void>;
  /** Deletes dispatched changes beyond what `retain` keeps; returns how many. */
  prune(now: number, retain: { count: number; ageMs: number }): MaybePromise<number>;
  /** The request ids of changes in [first, last] this process wrote inside a request, by seq (null: none). */
  requestIds(first: number, last: number): Map<number, string> | null;
  /** Forgets request notes up to `doneSeq` (another feed dispatched those changes). */
  forgetRequests(doneSeq: number): void;
  /** How this dialect's captured row (ChangeRecord.row) becomes the entity `db.select()` would return. */
  decoderFor(info: TableInfo): RowDecoder;
}

/** A value now (a synchronous database) or later (an asynchronous one). */
export type MaybePromise<T> = T | Promise<T>;

/** Whether a MaybePromise is a promise (to be awaited). */
export function isPromise<T>(value: MaybePromise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown } | null)?.then === "function";
}

export type ChangeOp = "insert" | "update" | "delete";

/** One captured change, as claimed from the log. */
export interface ChangeRecord {
  /** Its position in the log: monotonic per database, the same in every process. */
  seq: number;
  /** The table's SQL name. */
  table: string;
  op: ChangeOp;
  /** The row's columns as the adapter encoded them (a JSON object; the old row for a delete). */
  row: string;
  /** For an update, the row before it, encoded like `row` (decoded with the same decoder); null otherwise. */
  previous: string | null;
}

/** A claim this feed took over from another: whose, why, and from which seq its changes are dispatched again. */
export interface TakeOver {
  from: string;
  /** "expired": its lease ran out; "gone": it ran on this host and its process no longer exists. */
  why: "expired" | "gone";
  /** done_seq when taken: changes after it that the other feed had dispatched are dispatched again. */
  after: number;
}

export interface CapturePoll {
  /** Whether this feed could claim something now. */
  claimable: boolean;
  /** How far dispatch got, by any feed. */
  doneSeq: number;
  /** The schema changed since the last successful sync (a migration): sync again. */
  schemaChanged: boolean;
}

export interface Claim {
  /** The claimed changes, in log order (empty: nothing to do, or another live feed holds the cursor). */
  changes: ChangeRecord[];
  /** done_seq after marking this feed's changes done. */
  doneSeq: number;
  /** The changes up to `doneUpTo` were not this feed's any more: another feed took them over (lease ran out). */
  lostClaim: boolean;
  /** Set when this claim took the cursor over from another feed. */
  tookOver: TakeOver | null;
  /** As in CapturePoll, read inside the claim. */
  schemaChanged: boolean;
}

/** What a sync did, for the feed to log. */
export interface CaptureSync {
  /** Triggers created or recreated. */
  created: string[];
  /** Triggers dropped: stale ones, and those of tables no longer bound. */
  dropped: string[];
  /** Bound tables that do not exist (yet): captured once a migration creates them. */
  missingTables: string[];
  /** Columns the Drizzle table declares but the database table lacks (their values decode as undefined). */
  missingColumns: Array<{ table: string; columns: string[] }>;
  /** Tables whose capture is in place. */
  captured: string[];
}
