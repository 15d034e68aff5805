import type Database from "better-sqlite3";
import { LOG_TABLE, quoteIdent } from "./sql.js";

/**
 * The change log, `_turbocast_changes`: the triggers append one row per
 * changed row of a bound table, in the writer's own transaction; the change
 * feed claims, dispatches and completes them.
 *
 *   seq         INTEGER PRIMARY KEY   commit order (SQLite has one writer at a time)
 *   tbl, op     the table's SQL name; 'insert' | 'update' | 'delete'
 *   pk          JSON array of the primary-key values (the Drizzle key's order)
 *   row_json    JSON object, column name -> value (NEW row; OLD row for a delete)
 *   claimed_by  feed that is dispatching it (NULL: nobody yet)
 *   claimed_at  ms since epoch; a claim older than the lease belongs to a dead feed
 *   done_at     ms since epoch when it was dispatched (NULL: pending)
 *
 * Pending rows are found through a partial index that holds only them, so the
 * poll and the claim stay cheap however long the retained history is. `seq`
 * is never reused: pruning always keeps the newest row, so the next rowid
 * stays above every seq ever handed out.
 */
export const LOG_DDL = [
  `CREATE TABLE IF NOT EXISTS ${quoteIdent(LOG_TABLE)} (
  seq INTEGER PRIMARY KEY,
  tbl TEXT NOT NULL,
  op TEXT NOT NULL,
  pk TEXT NOT NULL,
  row_json TEXT NOT NULL,
  claimed_by TEXT,
  claimed_at INTEGER,
  done_at INTEGER
)`,
  `CREATE INDEX IF NOT EXISTS ${quoteIdent(`${LOG_TABLE}_pending`)} ON ${quoteIdent(LOG_TABLE)} (seq) WHERE done_at IS NULL`,
];

export type ChangeOp = "insert" | "update" | "delete";

/** One captured change, as claimed from the log. */
export interface ChangeRecord {
  seq: number;
  table: string;
  op: ChangeOp;
  /** JSON array of the key values. */
  pk: string;
  /** JSON object of the row's columns. */
  row: string;
}

export interface PollResult {
  /** `PRAGMA schema_version`: changes when any connection alters the schema (a migration). */
  schemaVersion: number;
  /** Whether this feed could claim something now. */
  claimable: boolean;
}

const T = quoteIdent(LOG_TABLE);

/**
 * A change is claimable when nobody claimed it or its claim expired. Feeds
 * take turns: while another live feed holds claims, nobody else claims, so
 * changes are dispatched in seq order across processes, not only within one.
 */
const CLAIMABLE = `done_at IS NULL AND (claimed_by IS NULL OR claimed_at <= :expired)`;
const OTHERS_HOLD_CLAIMS = `EXISTS (SELECT 1 FROM ${T} WHERE done_at IS NULL AND claimed_by <> :owner AND claimed_at > :expired)`;

/** Prepared statements over the change log of one connection. Create it once the table exists. */
export class ChangeLog {
  readonly #poll: Database.Statement;
  readonly #claim: Database.Statement;
  readonly #complete: Database.Statement;
  readonly #renew: Database.Statement;
  readonly #release: Database.Statement;
  readonly #prune: Database.Statement;
  readonly #completeAndClaim: Database.Transaction<
    (owner: string, doneUpTo: number, now: number, expired: number, limit: number) => ChangeRecord[]
  >;

  constructor(client: Database.Database) {
    this.#poll = client.prepare(
      `SELECT (SELECT schema_version FROM pragma_schema_version) AS schemaVersion,
        EXISTS (SELECT 1 FROM ${T} WHERE ${CLAIMABLE}) AND NOT ${OTHERS_HOLD_CLAIMS} AS claimable`,
    );
    this.#claim = client.prepare(
      `UPDATE ${T} SET claimed_by = :owner, claimed_at = :now
       WHERE seq IN (SELECT seq FROM ${T} WHERE ${CLAIMABLE} ORDER BY seq LIMIT :limit)
         AND NOT ${OTHERS_HOLD_CLAIMS}
       RETURNING seq, tbl AS "table", op, pk, row_json AS "row"`,
    );
    this.#complete = client.prepare(
      `UPDATE ${T} SET done_at = :now WHERE done_at IS NULL AND claimed_by = :owner AND seq <= :upTo`,
    );
    this.#renew = client.prepare(`UPDATE ${T} SET claimed_at = :now WHERE done_at IS NULL AND claimed_by = :owner`);
    this.#release = client.prepare(
      `UPDATE ${T} SET claimed_by = NULL, claimed_at = NULL WHERE done_at IS NULL AND claimed_by = :owner`,
    );
    this.#prune = client.prepare(
      `DELETE FROM ${T}
       WHERE done_at IS NOT NULL
         AND seq < (SELECT max(seq) FROM ${T})
         AND (seq <= (SELECT max(seq) FROM ${T}) - :count OR done_at <= :cutoff)`,
    );
    // one write transaction per batch: the previous batch is completed as the next one is claimed
    this.#completeAndClaim = client.transaction(
      (owner: string, doneUpTo: number, now: number, expired: number, limit: number): ChangeRecord[] => {
        if (doneUpTo > 0) this.#complete.run({ owner, now, upTo: doneUpTo });
        return this.#claim.all({ owner, now, expired, limit }) as ChangeRecord[];
      },
    );
  }

  /** One cheap indexed read: is there work for this feed, and did the schema change? */
  poll(owner: string, expired: number): PollResult {
    const row = this.#poll.get({ owner, expired }) as { schemaVersion: number; claimable: number };
    return { schemaVersion: row.schemaVersion, claimable: row.claimable === 1 };
  }

  /**
   * Marks this feed's claimed changes up to `doneUpTo` done (0: none), then
   * claims up to `limit` changes, oldest first, in one write transaction.
   * Returns them in seq order; empty when nothing is claimable or another
   * feed holds live claims.
   */
  completeAndClaim(owner: string, doneUpTo: number, now: number, expired: number, limit: number): ChangeRecord[] {
    // IMMEDIATE: take the write lock up front, so the claim never fails on a stale read snapshot
    const claimed = this.#completeAndClaim.immediate(owner, doneUpTo, now, expired, limit);
    // RETURNING gives no order guarantee
    return claimed.length > 1 ? claimed.sort((a, b) => a.seq - b.seq) : claimed;
  }

  /** Marks this feed's claimed changes up to `upTo` done. Returns how many. */
  complete(owner: string, upTo: number, now: number): number {
    return this.#complete.run({ owner, now, upTo }).changes;
  }

  /** Extends this feed's claims: it is alive and still dispatching. */
  renew(owner: string, now: number): void {
    this.#renew.run({ owner, now });
  }

  /** Gives back this feed's claims that were not dispatched (on close), for any feed to take at once. */
  release(owner: string): number {
    return this.#release.run({ owner }).changes;
  }

  /**
   * Deletes done changes that are older than `ageMs` or not among the newest
   * `count`; pending changes and the newest row always stay.
   */
  prune(now: number, retain: { count: number; ageMs: number }): number {
    return this.#prune.run({ count: retain.count, cutoff: now - retain.ageMs }).changes;
  }
}
