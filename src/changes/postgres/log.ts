import type pg from "pg";
import type { ChangeOp, TakeOver } from "../capture.js";
import { ownerMayBeAlive } from "../owner.js";
import { CURSOR_TABLE, LOG_TABLE, quoteIdent, quoteLiteral } from "../sql.js";
import { signatureSubquery } from "./triggers.js";

/**
 * The change log on PostgreSQL and its cursor.
 *
 * `_turbocast_changes` is append-only, written by the capture triggers in the
 * writer's transaction:
 *
 *   seq         bigserial: the change's version (the same in every process)
 *   xid         the writing transaction (pg_current_xact_id(), xid8)
 *   tbl, op     the bound table's name; 'insert' | 'update' | 'delete'
 *   row_data    to_jsonb(NEW), or to_jsonb(OLD) for a delete
 *   old_data    to_jsonb(OLD) of an update
 *   request_id  the writer's `turbocast.request_id` setting, if it set one
 *   at          when it was written (for pruning by age)
 *
 * Why not a seq cursor, as on SQLite: PostgreSQL assigns seq when a row is
 * written, not when its transaction commits, so seq 5 may be visible while
 * seq 4 is still in flight (and commits later); a reader that moved a cursor
 * past 5 would never see 4. Dispatch goes by snapshots instead, as PgQ's
 * batches do. The cursor keeps the snapshot `done_snapshot`: every change
 * whose transaction is visible in it was dispatched. A claim takes a new
 * snapshot (`window_snapshot`); the changes visible in it and not in
 * `done_snapshot` form the window, dispatched in seq order, `window_done`
 * saying how far. When the window is exhausted, it becomes the done
 * snapshot and the next claim opens the next window.
 *
 * So the order is: windows in the order they were taken, and within a
 * window, seq order. Two writes to one row are always in that order: the
 * second writer waits on the first one's row lock, so the first commits
 * before the second writes (lower seq, and in the same window or an earlier
 * one). Writes to different rows in transactions that overlapped may be
 * dispatched out of seq order (by commit, roughly). A transaction that stays
 * open for long holds nothing back: windows pass it by and it lands in the
 * one after its commit.
 *
 * `done_max` is the highest seq any feed marked done: it only grows, so a
 * feed that sees it pass what it completed itself knows another feed works
 * on the same log.
 *
 * Claims are exclusive across processes and machines: a claim is one
 * transaction that locks the cursor row (`SELECT … FOR UPDATE`), and one
 * feed holds the cursor at a time, with a lease (`owner`, `lease_until`), as
 * on SQLite. Leases are kept in the server's clock (ms since the epoch), not
 * the machines': a machine whose clock runs ahead must not take a live claim
 * over.
 */
export function logNames(schema: string): { changes: string; cursor: string } {
  const s = quoteIdent(schema);
  return { changes: `${s}.${quoteIdent(LOG_TABLE)}`, cursor: `${s}.${quoteIdent(CURSOR_TABLE)}` };
}

export function logDdl(schema: string): string[] {
  const { changes, cursor } = logNames(schema);
  return [
    `CREATE TABLE IF NOT EXISTS ${changes} (
  seq bigserial PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  tbl text NOT NULL,
  op text NOT NULL,
  row_data jsonb NOT NULL,
  old_data jsonb,
  request_id text,
  at timestamptz NOT NULL DEFAULT now()
)`,
    `CREATE INDEX IF NOT EXISTS ${quoteIdent(`${LOG_TABLE}_xid`)} ON ${changes} (xid)`,
    `CREATE TABLE IF NOT EXISTS ${cursor} (
  id int PRIMARY KEY CHECK (id = 1),
  done_snapshot pg_snapshot NOT NULL,
  window_snapshot pg_snapshot,
  window_done bigint NOT NULL DEFAULT 0,
  done_max bigint NOT NULL DEFAULT 0,
  owner text,
  claimed_seq bigint,
  lease_until bigint
)`,
    // '1:1:' sees no transaction: every change is after it
    `INSERT INTO ${cursor} (id, done_snapshot) VALUES (1, '1:1:') ON CONFLICT (id) DO NOTHING`,
  ];
}

/** One captured change, as claimed from the log. */
export interface PgChangeRecord {
  seq: number;
  table: string;
  op: ChangeOp;
  /** jsonb text of the row (the new one; the old one for a delete). */
  row: string;
  /** jsonb text of the row before an update, else null. */
  previous: string | null;
  /** The writer's `turbocast.request_id`, if it set one. */
  requestId: string | null;
}

/** The server's clock in ms since the epoch (leases are measured in it). */
const SERVER_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint::text";

interface CursorRow {
  serverNow: string;
  lo: string;
  hi: string | null;
  done: string;
  doneMax: string;
  owner: string | null;
  leaseUntil: string | null;
  signature: string | null;
}

interface ChangeRow {
  seq: string;
  tbl: string;
  op: ChangeOp;
  row: string;
  previous: string | null;
  request_id: string | null;
}

/** What a poll read: is there work this feed could claim, how far dispatch got, and the schema signature. */
export interface PgPoll {
  claimable: boolean;
  doneSeq: number;
  signature: string;
}

/**
 * The change log of one schema. Every method runs on a pool connection of
 * its own; `relations` (relationNames of the bound tables) lets a poll or a
 * claim read the schema signature in the same round trip.
 */
export class PgChangeLog {
  readonly #pool: pg.Pool;
  readonly #sql: ReturnType<typeof statements>;
  readonly #mayBeAlive: (owner: string) => boolean;
  #lostClaim = false;
  #tookOver: TakeOver | null = null;
  #doneSeq = -1;
  #signature = "";

  constructor(pool: pg.Pool, schema: string, options: { mayBeAlive?: (owner: string) => boolean } = {}) {
    this.#pool = pool;
    this.#sql = statements(schema);
    this.#mayBeAlive = options.mayBeAlive ?? ownerMayBeAlive;
  }

  /** Whether the last `completeAndClaim` could not mark this feed's changes done (its claim was taken over). */
  get lostClaim(): boolean {
    return this.#lostClaim;
  }

  /** Set by the last `completeAndClaim` that took the cursor over from another feed, else null. */
  get tookOver(): TakeOver | null {
    return this.#tookOver;
  }

  /** The highest seq any feed marked done, as the last claim read it (-1: no claim yet). */
  get doneSeq(): number {
    return this.#doneSeq;
  }

  /** The schema signature the last claim read. */
  get signature(): string {
    return this.#signature;
  }

  /** `now` is unused: leases are measured in the server's clock. */
  async poll(owner: string, _now: number, relations: readonly string[] = []): Promise<PgPoll> {
    const { rows } = await this.#pool.query<{
      pending: boolean;
      owner: string | null;
      leaseUntil: string | null;
      doneMax: string;
      signature: string | null;
      serverNow: string;
    }>(this.#sql.poll, [relations]);
    const row = rows[0]!;
    const held = this.#heldBy({ owner: row.owner, leaseUntil: row.leaseUntil }, owner, Number(row.serverNow));
    return { claimable: row.pending && held !== "live", doneSeq: Number(row.doneMax), signature: row.signature ?? "" };
  }

  #heldBy(
    cursor: { owner: string | null; leaseUntil: string | null },
    owner: string,
    now: number,
  ): "free" | "live" | "expired" | "gone" {
    if (cursor.owner === null || cursor.owner === owner) return "free";
    if (Number(cursor.leaseUntil ?? 0) <= now) return "expired";
    return this.#mayBeAlive(cursor.owner) ? "live" : "gone";
  }

  /**
   * In one transaction holding the cursor row's lock: marks this feed's
   * changes up to `doneUpTo` done (0: none), then takes the cursor for the
   * next `limit` changes and returns them in dispatch order. Empty when
   * there is nothing to dispatch or another live feed holds the cursor.
   * The lease runs `leaseMs` from the server's clock (`_now` is unused).
   */
  async completeAndClaim(
    owner: string,
    doneUpTo: number,
    _now: number,
    leaseMs: number,
    limit: number,
    relations: readonly string[] = [],
  ): Promise<PgChangeRecord[]> {
    const client = await this.#pool.connect();
    let failure: Error | undefined;
    try {
      // one round trip: begin, lock the cursor, and read the window's next changes as far as this
      // feed completed them (discarded below when another live feed holds the cursor)
      const [, locked, fetched] = (await client.query(
        this.#sql.lockAndFetch(owner, doneUpTo, limit, relations),
      )) as unknown as [unknown, pg.QueryResult<CursorRow>, pg.QueryResult<ChangeRow>];
      const cursor = locked.rows[0]!;
      let done = Number(cursor.done);
      let doneMax = Number(cursor.doneMax);
      this.#signature = cursor.signature ?? "";
      this.#lostClaim = false;
      this.#tookOver = null;
      if (doneUpTo > 0) {
        if (cursor.owner === owner) {
          done = Math.max(done, doneUpTo);
          doneMax = Math.max(doneMax, doneUpTo);
        } else {
          this.#lostClaim = true;
        }
      }
      this.#doneSeq = doneMax;
      const now = Number(cursor.serverNow);
      const held = this.#heldBy(cursor, owner, now);
      if (held === "live") {
        await client.query("COMMIT");
        return [];
      }
      let lo = cursor.lo;
      let hi = cursor.hi;
      // read after the same `done` as computed above (doneUpTo counts only when the cursor is this feed's)
      let rows = fetched.rows;
      if (rows.length === 0) {
        // the window is exhausted (or there is none): what it held is done, and the next one opens now
        lo = hi ?? lo;
        const next = (await client.query<{ hi: string; first: string | null }>(this.#sql.open, [lo])).rows[0]!;
        hi = next.hi;
        if (next.first === null) {
          await client.query(this.#sql.idleAndCommit(hi, doneMax));
          return [];
        }
        done = Number(next.first) - 1;
        rows = (await client.query<ChangeRow>(this.#sql.fetch, [lo, hi, done, limit])).rows;
      }
      const last = rows.length > 0 ? Number(rows[rows.length - 1]!.seq) : done;
      await client.query(this.#sql.takeAndCommit(lo, hi!, done, doneMax, owner, last, now + leaseMs));
      if (held !== "free" && rows.length > 0) {
        this.#tookOver = { from: cursor.owner!, why: held, after: done };
      }
      return rows.map((r) => ({
        seq: Number(r.seq),
        table: r.tbl,
        op: r.op,
        row: r.row,
        previous: r.previous,
        requestId: r.request_id || null,
      }));
    } catch (error) {
      await client.query("ROLLBACK").catch(() => {});
      failure = error as Error;
      throw error;
    } finally {
      // a connection that failed mid-transaction is not given back to the pool
      client.release(failure);
    }
  }

  /** Marks this feed's changes up to `upTo` done and gives the cursor back. False when the cursor is no longer this feed's. */
  async complete(owner: string, upTo: number): Promise<boolean> {
    const { rowCount } = await this.#pool.query(this.#sql.complete, [owner, upTo]);
    return rowCount === 1;
  }

  /** Extends this feed's hold on the cursor to `until` (this machine's clock), counted from the server's. */
  async renew(owner: string, until: number): Promise<void> {
    await this.#pool.query(this.#sql.renew, [owner, Math.max(0, until - Date.now())]);
  }

  /**
   * Deletes dispatched changes older than `ageMs` or not among the newest
   * `count`; changes not dispatched yet always stay.
   */
  async prune(retain: { count: number; ageMs: number }): Promise<number> {
    const { rowCount } = await this.#pool.query(this.#sql.prune, [retain.count, retain.ageMs]);
    return rowCount ?? 0;
  }
}

/** An integer inlined into SQL (claims run as one simple-protocol round trip, which takes no parameters). */
function int(value: number): string {
  if (!Number.isSafeInteger(value)) throw new TypeError(`not an integer: ${value}`);
  return String(value);
}

/** A text[] literal. */
function textArray(values: readonly string[]): string {
  return values.length === 0 ? "'{}'::text[]" : `ARRAY[${values.map(quoteLiteral).join(", ")}]::text[]`;
}

function statements(schema: string) {
  const { changes: T, cursor: C } = logNames(schema);
  return {
    poll: `
      SELECT c.owner, c.lease_until::text AS "leaseUntil", c.done_max::text AS "doneMax", ${signatureSubquery("$1")} AS signature,
        ${SERVER_MS} AS "serverNow",
        EXISTS (
          SELECT 1 FROM ${T} l
          WHERE l.xid >= pg_snapshot_xmin(c.done_snapshot)
            AND NOT pg_visible_in_snapshot(l.xid, c.done_snapshot)
            AND pg_visible_in_snapshot(l.xid, pg_current_snapshot())
            AND NOT (c.window_snapshot IS NOT NULL AND pg_visible_in_snapshot(l.xid, c.window_snapshot) AND l.seq <= c.window_done)
        ) AS pending
      FROM ${C} c WHERE c.id = 1`,
    /** BEGIN; the cursor, locked; the window's next changes after what `owner` completed (`doneUpTo`). One round trip. */
    lockAndFetch: (owner: string, doneUpTo: number, limit: number, relations: readonly string[]) => `
      BEGIN;
      SELECT ${SERVER_MS} AS "serverNow", done_snapshot::text AS lo, window_snapshot::text AS hi, window_done::text AS done,
             done_max::text AS "doneMax", owner, lease_until::text AS "leaseUntil",
             ${signatureSubquery(textArray(relations))} AS signature
      FROM ${C} WHERE id = 1 FOR UPDATE;
      SELECT l.seq::text AS seq, l.tbl, l.op, l.row_data::text AS row, l.old_data::text AS previous, l.request_id
      FROM ${T} l
      -- scalar subqueries, evaluated once: the bound on seq is an index condition, the scan stops after the limit
      WHERE l.seq > (
          SELECT greatest(window_done, CASE WHEN owner = ${quoteLiteral(owner)} THEN ${int(doneUpTo)} ELSE 0 END)
          FROM ${C} WHERE id = 1 AND window_snapshot IS NOT NULL)
        AND pg_visible_in_snapshot(l.xid, (SELECT window_snapshot FROM ${C} WHERE id = 1))
        AND NOT pg_visible_in_snapshot(l.xid, (SELECT done_snapshot FROM ${C} WHERE id = 1))
      ORDER BY l.seq LIMIT ${int(limit)}`,
    // in seq order from the window's first change: the primary key serves it, stopping after $4 rows
    fetch: `
      SELECT l.seq::text AS seq, l.tbl, l.op, l.row_data::text AS row, l.old_data::text AS previous, l.request_id
      FROM ${T} l
      WHERE l.seq > $3 AND pg_visible_in_snapshot(l.xid, $2::pg_snapshot) AND NOT pg_visible_in_snapshot(l.xid, $1::pg_snapshot)
      ORDER BY l.seq LIMIT $4`,
    // the next window: a snapshot taken now, and its first change (the xid index serves it)
    open: `
      WITH s AS (SELECT pg_current_snapshot() AS hi)
      SELECT s.hi::text AS hi, (
        SELECT min(seq) FROM ${T}
        WHERE xid >= pg_snapshot_xmin($1::pg_snapshot) AND xid < pg_snapshot_xmax(s.hi)
          AND pg_visible_in_snapshot(xid, s.hi) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot)
      )::text AS first
      FROM s`,
    idleAndCommit: (hi: string, doneMax: number) => `
      UPDATE ${C} SET done_snapshot = ${quoteLiteral(hi)}::pg_snapshot, window_snapshot = NULL, window_done = 0,
        done_max = ${int(doneMax)}, owner = NULL, claimed_seq = NULL, lease_until = NULL
      WHERE id = 1;
      COMMIT`,
    takeAndCommit: (
      lo: string,
      hi: string,
      done: number,
      doneMax: number,
      owner: string,
      last: number,
      leaseUntil: number,
    ) => `
      UPDATE ${C} SET done_snapshot = ${quoteLiteral(lo)}::pg_snapshot, window_snapshot = ${quoteLiteral(hi)}::pg_snapshot,
        window_done = ${int(done)}, done_max = ${int(doneMax)}, owner = ${quoteLiteral(owner)}, claimed_seq = ${int(last)},
        lease_until = ${int(leaseUntil)}
      WHERE id = 1;
      COMMIT`,
    complete: `
      UPDATE ${C} SET window_done = greatest(window_done, $2), done_max = greatest(done_max, $2),
        owner = NULL, claimed_seq = NULL, lease_until = NULL
      WHERE id = 1 AND owner = $1`,
    renew: `UPDATE ${C} SET lease_until = (extract(epoch from clock_timestamp()) * 1000)::bigint + $2 WHERE id = 1 AND owner = $1`,
    prune: `
      DELETE FROM ${T} l USING ${C} c
      WHERE c.id = 1 AND pg_visible_in_snapshot(l.xid, c.done_snapshot)
        AND (l.seq <= (SELECT max(seq) FROM ${T}) - $1 OR l.at <= now() - $2 * interval '1 millisecond')`,
  };
}
