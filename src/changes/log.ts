import type Database from "better-sqlite3";
import type { ChangeOp, ChangeRecord, TakeOver } from "./capture.js";
import { ownerMayBeAlive } from "./owner.js";
import { CURSOR_TABLE, LOG_TABLE, quoteIdent } from "./sql.js";

/**
 * The change log and its cursor.
 *
 * `_turbocast_changes` is append-only: the triggers add one row per changed
 * row of a bound table, in the writer's own transaction, and nothing but
 * pruning ever touches it again (no per-row claim flags, no index to keep up:
 * the writer's hot path is one append to the end of a rowid b-tree).
 *
 *   seq       INTEGER PRIMARY KEY   commit order (SQLite has one writer at a time)
 *   tbl, op   the table's SQL name; 'insert' | 'update' | 'delete'
 *   row_json  JSON object, column name -> value (the NEW row; the OLD row for a delete)
 *   prev_json the OLD row of an update, in the same form (NULL for inserts and deletes,
 *             and for updates logged before the column existed)
 *   at        unixepoch() when it was written (for pruning by age)
 *
 * `_turbocast_cursor` is one row saying how far dispatch got, and who is
 * dispatching the next range:
 *
 *   done_seq     every change up to it was dispatched
 *   owner        the feed dispatching (done_seq, claimed_seq], or NULL
 *   lease_until  ms since epoch; past it, the owner is presumed dead and any
 *                feed takes the range over from done_seq — at once when the
 *                owner ran on this host and its process is gone (owner.ts)
 *
 * A claim is one IMMEDIATE transaction that moves the cursor, so two feeds
 * can never hold the same change; and because one feed holds the cursor at
 * a time, changes are dispatched in seq order across processes, not only
 * within one. `seq` is never reused — the newest row is never pruned, so the
 * next rowid stays above `done_seq`.
 *
 * A feed that holds the cursor with most of its lease left, and dispatched
 * all it claimed, claims what follows with a read alone (see Hold): no other
 * feed can take the cursor before the lease runs out, and what it dispatched
 * is marked done by the next claim that writes, at most MARK_DONE_MS later.
 * So `done_seq` lags by up to MARK_DONE_MS of dispatched changes: a feed
 * that takes the cursor over (a crash, or a stall longer than the lease)
 * dispatches those again, and a stalled feed learns it lost the cursor
 * only at its next claim that writes.
 */
export const MARK_DONE_MS = 10;
export const LOG_DDL = [
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(LOG_TABLE)} (
  seq INTEGER PRIMARY KEY,
  tbl TEXT NOT NULL,
  op TEXT NOT NULL,
  row_json TEXT NOT NULL,
  at INTEGER NOT NULL,
  prev_json TEXT
)`,
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(CURSOR_TABLE)} (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  done_seq INTEGER NOT NULL,
  owner TEXT,
  claimed_seq INTEGER,
  lease_until INTEGER
)`,
  `INSERT OR IGNORE INTO ${quoteIdent(CURSOR_TABLE)} (id, done_seq) VALUES (1, 0)`,
];

/** Adds prev_json to a change log created before updates logged their old row (inside the sync's transaction). */
export function upgradeLog(client: Database.Database): void {
  const has = client.prepare(`SELECT 1 FROM pragma_table_info(?) WHERE name = 'prev_json'`).pluck().get(LOG_TABLE);
  if (has === undefined) client.exec(`ALTER TABLE ${T} ADD COLUMN prev_json TEXT`);
}

export interface PollResult {
  /** `PRAGMA schema_version`: changes when any connection alters the schema (a migration). */
  schemaVersion: number;
  /** Whether this feed could claim something now. */
  claimable: boolean;
}

/**
 * The cursor as this feed last wrote it, while it holds it. A claim that
 * writes — BEGIN IMMEDIATE, two cursor updates, COMMIT and its WAL frame —
 * costs several microseconds a change under a stream of writes (a claim
 * every couple of milliseconds, each statement run with caches cold from the
 * app's work); a read of the next changes, a fraction of that. A crash then
 * dispatches again the changes of up to MARK_DONE_MS rather than one batch.
 */
interface Hold {
  owner: string;
  /** The last seq claimed. */
  claimedSeq: number;
  /** The lease as written (or renewed). */
  leaseUntil: number;
  /** When a claim last wrote the cursor. */
  writtenAt: number;
  /** Dispatched, not marked done yet (0: none): the next write marks it. */
  unmarked: number;
}

interface CursorRow {
  doneSeq: number;
  owner: string | null;
  leaseUntil: number | null;
}

const T = quoteIdent(LOG_TABLE);
const C = quoteIdent(CURSOR_TABLE);

/** Prepared statements over the change log of one connection. Create it once the tables exist. */
export class ChangeLog {
  readonly #poll: Database.Statement;
  readonly #cursor: Database.Statement;
  readonly #advance: Database.Statement;
  readonly #schema: Database.Statement;
  readonly #client: Database.Database;
  /** The claim's read of the next changes, by batch size (see #pending). */
  readonly #pendingBy = new Map<number, Database.Statement>();
  readonly #take: Database.Statement;
  readonly #let: Database.Statement;
  readonly #renew: Database.Statement;
  readonly #prune: Database.Statement;
  #schemaVersion = -1;
  #lostClaim = false;
  #tookOver: TakeOver | null = null;
  #doneSeq = -1;
  #hold: Hold | null = null;
  readonly #mayBeAlive: (owner: string) => boolean;
  readonly #claim: Database.Transaction<
    (owner: string, doneUpTo: number, now: number, leaseMs: number, limit: number) => ChangeRecord[]
  >;

  constructor(client: Database.Database, options: { mayBeAlive?: (owner: string) => boolean } = {}) {
    this.#client = client;
    this.#mayBeAlive = options.mayBeAlive ?? ownerMayBeAlive;
    this.#poll = client.prepare(
      `SELECT (SELECT schema_version FROM pragma_schema_version) AS schemaVersion,
        coalesce((SELECT max(seq) FROM ${T}), 0) AS maxSeq, done_seq AS doneSeq, owner, lease_until AS leaseUntil
       FROM ${C} WHERE id = 1`,
    );
    this.#cursor = client.prepare(
      `SELECT done_seq AS doneSeq, owner, lease_until AS leaseUntil FROM ${C} WHERE id = 1`,
    );
    // marks this feed's changes done (if the cursor is still its own) and reads the cursor, in one statement
    this.#advance = client.prepare(
      `UPDATE ${C} SET done_seq = CASE WHEN owner = :owner THEN max(done_seq, :upTo) ELSE done_seq END WHERE id = 1
       RETURNING done_seq AS doneSeq, owner, lease_until AS leaseUntil`,
    );
    // the pragma statement, not the pragma_schema_version table: a third of the cost
    this.#schema = client.prepare("PRAGMA schema_version").pluck();
    this.#take = client.prepare(
      `UPDATE ${C} SET owner = :owner, claimed_seq = :upTo, lease_until = :until WHERE id = 1`,
    );
    this.#let = client.prepare(
      `UPDATE ${C} SET done_seq = max(done_seq, :upTo), owner = NULL, claimed_seq = NULL, lease_until = NULL WHERE id = 1 AND owner = :owner`,
    );
    this.#renew = client.prepare(`UPDATE ${C} SET lease_until = :until WHERE id = 1 AND owner = :owner`);
    this.#prune = client.prepare(
      `DELETE FROM ${T}
       WHERE seq <= (SELECT done_seq FROM ${C} WHERE id = 1)
         AND seq < (SELECT max(seq) FROM ${T})
         AND (seq <= (SELECT max(seq) FROM ${T}) - :count OR at <= :cutoff)`,
    );
    this.#claim = client.transaction(
      (owner: string, doneUpTo: number, now: number, leaseMs: number, limit: number): ChangeRecord[] => {
        // A claim's statements each cost several microseconds when the app's writes in between left the
        // caches cold: this marking done and reading the cursor is one, the schema version a cheap one.
        const cursor = (doneUpTo > 0 ? this.#advance.get({ owner, upTo: doneUpTo }) : this.#cursor.get()) as CursorRow;
        // the changes up to doneUpTo were marked done only if the cursor was still this feed's
        this.#lostClaim = doneUpTo > 0 && cursor.owner !== owner;
        this.#schemaVersion = this.#schema.get() as number;
        this.#doneSeq = cursor.doneSeq;
        this.#tookOver = null;
        const held = this.#heldBy(cursor, owner, now);
        if (held === "live") return [];
        // ours, free, or left by a feed whose lease ran out: its range is dispatched again from done_seq
        const batch = this.#read(cursor.doneSeq, limit);
        if (batch.length === 0) {
          if (cursor.owner !== null) this.#let.run({ owner: cursor.owner, upTo: 0 });
          return [];
        }
        this.#take.run({ owner, upTo: batch[batch.length - 1]!.seq, until: now + leaseMs });
        if (held !== "free") this.#tookOver = { from: cursor.owner!, why: held, after: cursor.doneSeq };
        return batch;
      },
    );
  }

  /**
   * The read of the next `limit` changes. The limit is written into the SQL,
   * not bound: with the SQLite better-sqlite3 ships, a bound LIMIT costs
   * every run some microseconds more (the statement is planned for the value
   * bound, again at each run) — as much as the rest of a small batch's read.
   * The feed claims with one batch size, so this is one statement.
   * Rows come as arrays: better-sqlite3 builds an object per row property by
   * property, at about twice the cost.
   */
  #pending(limit: number): Database.Statement {
    let statement = this.#pendingBy.get(limit);
    if (statement === undefined) {
      if (!Number.isSafeInteger(limit) || limit < 1)
        throw new RangeError(`claim limit must be a positive integer, got ${limit}`);
      statement = this.#client
        .prepare(`SELECT seq, tbl, op, row_json, prev_json FROM ${T} WHERE seq > :after ORDER BY seq LIMIT ${limit}`)
        .raw(true);
      this.#pendingBy.set(limit, statement);
    }
    return statement;
  }

  #read(after: number, limit: number): ChangeRecord[] {
    const rows = this.#pending(limit).all({ after }) as Array<[number, string, ChangeOp, string, string | null]>;
    return rows.map(([seq, table, op, row, previous]): ChangeRecord => ({ seq, table, op, row, previous }));
  }

  /** `PRAGMA schema_version` as the last poll or claim read it (-1: neither ran yet). */
  get schemaVersion(): number {
    return this.#schemaVersion;
  }

  /**
   * Whether the last `completeAndClaim` could not mark this feed's changes
   * done because the cursor was no longer this feed's (its lease ran out
   * and another feed took the range over).
   */
  get lostClaim(): boolean {
    return this.#lostClaim;
  }

  /** `done_seq` as the last claim read it, after marking this feed's changes done (-1: no claim yet). */
  get doneSeq(): number {
    return this.#doneSeq;
  }

  /**
   * Set by the last `completeAndClaim` that took the cursor over from
   * another feed (its lease had run out, or its process is gone), else null.
   */
  get tookOver(): TakeOver | null {
    return this.#tookOver;
  }

  /** One cheap read: is there work for this feed, and did the schema change? */
  poll(owner: string, now: number): PollResult & { doneSeq: number; maxSeq: number } {
    const row = this.#poll.get() as CursorRow & { schemaVersion: number; maxSeq: number };
    this.#schemaVersion = row.schemaVersion;
    const free = row.maxSeq > row.doneSeq && this.#heldBy(row, owner, now) !== "live";
    return { schemaVersion: row.schemaVersion, claimable: free, doneSeq: row.doneSeq, maxSeq: row.maxSeq };
  }

  /** Whether another live feed holds the cursor; else why this one may take it. */
  #heldBy(cursor: CursorRow, owner: string, now: number): "free" | "live" | "expired" | "gone" {
    if (cursor.owner === null || cursor.owner === owner) return "free";
    if ((cursor.leaseUntil ?? 0) <= now) return "expired";
    return this.#mayBeAlive(cursor.owner) ? "live" : "gone";
  }

  /**
   * In one IMMEDIATE write transaction (the write lock is taken up front, so
   * the claim never fails on a stale read snapshot): marks this feed's
   * changes up to `doneUpTo` done (0: none), then takes the cursor for the
   * next `limit` changes and returns them in seq order. Empty when there is
   * nothing to dispatch or another live feed holds the cursor.
   *
   * When this feed holds the cursor, dispatched every change it claimed
   * (`doneUpTo`), has more than half its lease left and wrote the cursor
   * less than MARK_DONE_MS ago, the next changes are read without a write
   * (see Hold); `doneUpTo` is marked done by the next claim that writes, or
   * by `complete`. `doneSeq` then stays as the last write read it.
   */
  completeAndClaim(owner: string, doneUpTo: number, now: number, leaseMs: number, limit: number): ChangeRecord[] {
    const hold = this.#hold?.owner === owner ? this.#hold : null;
    if (
      hold !== null &&
      doneUpTo === hold.claimedSeq &&
      now >= hold.writtenAt &&
      now - hold.writtenAt < MARK_DONE_MS &&
      hold.leaseUntil - now > leaseMs / 2
    ) {
      this.#schemaVersion = this.#schema.get() as number;
      const batch = this.#read(hold.claimedSeq, limit);
      if (batch.length > 0) {
        hold.unmarked = doneUpTo;
        hold.claimedSeq = batch[batch.length - 1]!.seq;
        this.#lostClaim = false;
        this.#tookOver = null;
        return batch;
      }
      // nothing more: the write below marks everything done and gives the cursor back
    }
    const batch = this.#claim.immediate(owner, Math.max(doneUpTo, hold?.unmarked ?? 0), now, leaseMs, limit);
    this.#hold =
      batch.length === 0
        ? null
        : { owner, claimedSeq: batch[batch.length - 1]!.seq, leaseUntil: now + leaseMs, writtenAt: now, unmarked: 0 };
    return batch;
  }

  /**
   * Marks this feed's changes up to `upTo` done and gives the cursor back, so
   * any feed may dispatch what follows at once. False when the cursor is no
   * longer this feed's (its lease ran out and another feed took it over).
   */
  complete(owner: string, upTo: number): boolean {
    const unmarked = this.#hold?.owner === owner ? this.#hold.unmarked : 0;
    const completed = this.#let.run({ owner, upTo: Math.max(upTo, unmarked) }).changes === 1;
    this.#hold = null;
    return completed;
  }

  /** Extends this feed's hold on the cursor: it is alive and still dispatching. */
  renew(owner: string, until: number): void {
    const renewed = this.#renew.run({ owner, until }).changes === 1;
    const hold = this.#hold;
    if (hold?.owner !== owner) return;
    // lost: the next claim writes, and finds out
    if (renewed) hold.leaseUntil = until;
    else this.#hold = null;
  }

  /**
   * Deletes dispatched changes that are older than `ageMs` or not among the
   * newest `count`; pending changes and the newest row always stay.
   */
  prune(now: number, retain: { count: number; ageMs: number }): number {
    return this.#prune.run({ count: retain.count, cutoff: Math.floor((now - retain.ageMs) / 1000) }).changes;
  }
}
