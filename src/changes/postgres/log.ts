import { createHash } from "node:crypto";
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

/**
 * A claim's read: the window's next changes (hi null), or the next window's snapshot (hi), its first
 * change (first, null when it has none) and its first changes (one row with a null seq when none).
 */
interface FetchedRow extends ChangeRow {
  hi: string | null;
  first: string | null;
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
    }>({ ...this.#sql.poll, values: [relations] });
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
   * Two round trips: the lock and the read, then the cursor's update and
   * COMMIT.
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
      // One round trip: begin, lock the cursor, and read the window's next changes as far as this feed
      // completed them — or, when the window has none left, open the next window and read its first
      // changes (all discarded below when another live feed holds the cursor). Prepared statements:
      // planning these took several times longer than running them.
      const sql = this.#sql;
      const fetch = sql.fetch(limit);
      const lock = sql.lock(relations);
      const needed = [lock, fetch, sql.take, sql.idle];
      let have = preparedOn.get(client);
      const prepare = needed.filter((p) => !have?.has(p.name));
      const results = (await client.query(
        `${prepare.map((p) => p.prepare).join("")}BEGIN;
        EXECUTE ${lock.name};
        EXECUTE ${fetch.name}(${quoteLiteral(owner)}, ${int(doneUpTo)})`,
      )) as unknown as pg.QueryResult[];
      if (prepare.length > 0) {
        if (!have) preparedOn.set(client, (have = new Set()));
        for (const p of prepare) have.add(p.name);
      }
      const locked = results[results.length - 2] as pg.QueryResult<CursorRow>;
      const fetched = results[results.length - 1] as pg.QueryResult<FetchedRow>;
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
      // never empty: a window with nothing left reads as the next one (a row even when that has nothing)
      if (rows.length === 0) throw new Error("change log: a claim read neither the window nor the next one");
      const next = rows[0]!.hi === null ? null : rows[0]!;
      if (next) {
        // the window was exhausted (or there was none): what it held is done, and the read opened the next
        lo = hi ?? lo;
        hi = next.hi;
        if (next.first === null) {
          await client.query(`EXECUTE ${sql.idle.name}(${quoteLiteral(hi!)}, ${int(doneMax)}); COMMIT`);
          return [];
        }
        done = Number(next.first) - 1;
        if (next.seq === null) rows = [];
      }
      const last = rows.length > 0 ? Number(rows[rows.length - 1]!.seq) : done;
      await client.query(
        `EXECUTE ${sql.take.name}(${quoteLiteral(lo)}, ${quoteLiteral(hi!)}, ${int(done)}, ${int(doneMax)}, ` +
          `${quoteLiteral(owner)}, ${int(last)}, ${int(now + leaseMs)}); COMMIT`,
      );
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
    const { rowCount } = await this.#pool.query({ ...this.#sql.complete, values: [owner, upTo] });
    return rowCount === 1;
  }

  /** Extends this feed's hold on the cursor to `until` (this machine's clock), counted from the server's. */
  async renew(owner: string, until: number): Promise<void> {
    await this.#pool.query({ ...this.#sql.renew, values: [owner, Math.max(0, until - Date.now())] });
  }

  /**
   * Deletes dispatched changes older than `ageMs` or not among the newest
   * `count`; changes not dispatched yet always stay.
   */
  async prune(retain: { count: number; ageMs: number }): Promise<number> {
    const { rowCount } = await this.#pool.query({ ...this.#sql.prune, values: [retain.count, retain.ageMs] });
    return rowCount ?? 0;
  }
}

/** An integer inlined into SQL (claims run as simple-protocol round trips, which take no parameters). */
function int(value: number): string {
  if (!Number.isSafeInteger(value)) throw new TypeError(`not an integer: ${value}`);
  return String(value);
}

/** A text[] literal. */
function textArray(values: readonly string[]): string {
  return values.length === 0 ? "'{}'::text[]" : `ARRAY[${values.map(quoteLiteral).join(", ")}]::text[]`;
}

/**
 * A statement prepared on the server (SQL `PREPARE`), named after its text
 * so that two logs of one schema share it and two schemas do not collide.
 */
interface Prepared {
  name: string;
  /** `PREPARE name (types) AS …;` */
  prepare: string;
}

function prepared(kind: string, types: string, body: string): Prepared {
  const name = `_turbocast_${kind}_${createHash("sha1").update(body).digest("hex").slice(0, 16)}`;
  return { name, prepare: `PREPARE ${name}${types ? ` (${types})` : ""} AS ${body};\n` };
}

/** A node-postgres query config whose statement is parsed once per connection (the protocol's named statements). */
function named(kind: string, text: string): { name: string; text: string } {
  return { name: `_turbocast_${kind}_${createHash("sha1").update(text).digest("hex").slice(0, 16)}`, text };
}

/** The names each connection has prepared (a connection that fails mid-claim is dropped, and with it its entry). */
const preparedOn = new WeakMap<object, Set<string>>();

function statements(schema: string) {
  const { changes: T, cursor: C } = logNames(schema);
  const fetches = new Map<number, Prepared>();
  const locks = new Map<string, Prepared>();
  return {
    poll: named(
      "poll",
      `
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
    ),
    /**
     * The cursor, locked, with the server's clock and the schema signature of `relations` (inlined: a
     * statement without parameters keeps one plan, where a text[] parameter had it planned every time).
     */
    lock(relations: readonly string[]): Prepared {
      const key = JSON.stringify(relations);
      let statement = locks.get(key);
      if (statement) return statement;
      statement = prepared(
        "lock",
        "",
        `
      SELECT ${SERVER_MS} AS "serverNow", done_snapshot::text AS lo, window_snapshot::text AS hi, window_done::text AS done,
             done_max::text AS "doneMax", owner, lease_until::text AS "leaseUntil",
             ${signatureSubquery(textArray(relations))} AS signature
      FROM ${C} WHERE id = 1 FOR UPDATE`,
      );
      locks.set(key, statement);
      return statement;
    },
    /**
     * The window's next `limit` changes after what the feed $1 completed ($2) — or, when the window
     * has none left (or there is none), the next window: a snapshot taken now, its first change, and
     * its first `limit` changes (one row with a null seq when it has none). Run with the cursor locked.
     */
    fetch(limit: number): Prepared {
      let statement = fetches.get(limit);
      if (statement) return statement;
      statement = prepared(
        `fetch${int(limit)}`,
        "text, bigint",
        `
      WITH rest AS MATERIALIZED (
        SELECT l.seq, l.tbl, l.op, l.row_data, l.old_data, l.request_id
        FROM ${T} l
        -- scalar subqueries, evaluated once: the bound on seq is an index condition, the scan stops after the limit
        WHERE l.seq > (
            SELECT greatest(window_done, CASE WHEN owner = $1 THEN $2 ELSE 0 END)
            FROM ${C} WHERE id = 1 AND window_snapshot IS NOT NULL)
          AND pg_visible_in_snapshot(l.xid, (SELECT window_snapshot FROM ${C} WHERE id = 1))
          AND NOT pg_visible_in_snapshot(l.xid, (SELECT done_snapshot FROM ${C} WHERE id = 1))
        ORDER BY l.seq LIMIT ${int(limit)}
      ), next AS MATERIALIZED (
        -- what the last window's snapshot (or the done one) did not see and one taken now does; its first
        -- change found through the xid index
        SELECT s.hi, s.lo, (
          SELECT min(seq) FROM ${T}
          WHERE xid >= pg_snapshot_xmin(s.lo) AND xid < pg_snapshot_xmax(s.hi)
            AND pg_visible_in_snapshot(xid, s.hi) AND NOT pg_visible_in_snapshot(xid, s.lo)
        ) AS first
        FROM (
          SELECT pg_current_snapshot() AS hi, coalesce(window_snapshot, done_snapshot) AS lo
          FROM ${C} WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM rest)
        ) s
      )
      SELECT NULL AS hi, NULL AS first, r.seq::text AS seq, r.tbl, r.op, r.row_data::text AS row,
             r.old_data::text AS previous, r.request_id, r.seq AS k
      FROM rest r
      UNION ALL
      -- then in seq order from the first change, through the primary key
      SELECT n.hi::text, n.first::text, l.seq::text, l.tbl, l.op, l.row_data::text, l.old_data::text, l.request_id, l.seq
      FROM next n LEFT JOIN LATERAL (
        SELECT * FROM ${T} l
        WHERE l.seq >= n.first AND pg_visible_in_snapshot(l.xid, n.hi) AND NOT pg_visible_in_snapshot(l.xid, n.lo)
        ORDER BY l.seq LIMIT ${int(limit)}
      ) l ON true
      ORDER BY k`,
      );
      fetches.set(limit, statement);
      return statement;
    },
    /** Nothing in the next window ($1 its snapshot): it is done, and the cursor free. */
    idle: prepared(
      "idle",
      "pg_snapshot, bigint",
      `
      UPDATE ${C} SET done_snapshot = $1, window_snapshot = NULL, window_done = 0,
        done_max = $2, owner = NULL, claimed_seq = NULL, lease_until = NULL
      WHERE id = 1`,
    ),
    /** The cursor taken: done ($1), window ($2) dispatched up to $3, owner $5 up to $6 until $7. */
    take: prepared(
      "take",
      "pg_snapshot, pg_snapshot, bigint, bigint, text, bigint, bigint",
      `
      UPDATE ${C} SET done_snapshot = $1, window_snapshot = $2, window_done = $3, done_max = $4,
        owner = $5, claimed_seq = $6, lease_until = $7
      WHERE id = 1`,
    ),
    complete: named(
      "complete",
      `
      UPDATE ${C} SET window_done = greatest(window_done, $2), done_max = greatest(done_max, $2),
        owner = NULL, claimed_seq = NULL, lease_until = NULL
      WHERE id = 1 AND owner = $1`,
    ),
    renew: named(
      "renew",
      `UPDATE ${C} SET lease_until = (extract(epoch from clock_timestamp()) * 1000)::bigint + $2 WHERE id = 1 AND owner = $1`,
    ),
    prune: named(
      "prune",
      `
      DELETE FROM ${T} l USING ${C} c
      -- dispatched: done, or in the window up to what was marked done there (the last window stays open
      -- until a later write opens the next one)
      WHERE c.id = 1
        AND (pg_visible_in_snapshot(l.xid, c.done_snapshot)
          OR (c.window_snapshot IS NOT NULL AND pg_visible_in_snapshot(l.xid, c.window_snapshot) AND l.seq <= c.window_done))
        AND (l.seq <= (SELECT max(seq) FROM ${T}) - $1 OR l.at <= now() - $2 * interval '1 millisecond')`,
    ),
  };
}
