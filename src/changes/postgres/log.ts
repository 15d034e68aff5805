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

/**
 * Startup options of the connections a PgChangeLog runs on (the feed's own): plan with ordered index
 * scans. Its claim and poll are prepared once per connection and their generic plans kept; planned
 * while the log was small (a new app's), they read it whole — a claim at 10,000 retained changes cost
 * three times one on a small log — and a bitmap scan reads a whole 10,000-row window to return its
 * first 100. Every claim and poll has an index to go by. No JIT: a statement that must scan a table
 * (the prune, some catalog reads of a sync) is costed past jit_above_cost once sequential scans are
 * "disabled", and compiling it took 70-170 ms where running it takes 2.
 */
export const LOG_CONNECTION_OPTIONS = "-c enable_seqscan=off -c enable_bitmapscan=off -c jit=off";

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
const SERVER_MS_BIGINT = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
const SERVER_MS = `${SERVER_MS_BIGINT}::text`;

/**
 * A claim's answer: a first row with the cursor as it was and what the claim did (change columns
 * null), then one row per claimed change (state columns null).
 */
interface ClaimRow {
  /** The cursor's owner before the claim. */
  prior: string | null;
  /** Whether the claim took the cursor (false: another feed's lease is live). */
  taken: boolean;
  /** Whether the prior owner's lease had run out. */
  expired: boolean;
  /** done_max after the claim. */
  doneMax: string;
  /** The seq after which the claimed window's changes are dispatched. */
  after: string;
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
 * its own (opened with LOG_CONNECTION_OPTIONS); `relations` (relationNames of the bound tables) lets a poll or a
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
   * One round trip (see the claim statement); a second one only to take
   * over from a feed whose lease is live but whose process is gone.
   */
  async completeAndClaim(
    owner: string,
    doneUpTo: number,
    _now: number,
    leaseMs: number,
    limit: number,
    relations: readonly string[] = [],
  ): Promise<PgChangeRecord[]> {
    const first = await this.#claim(owner, doneUpTo, leaseMs, limit, relations, null);
    if (typeof first !== "string") return first;
    // the holder's lease is live but its process is gone (owner.ts): take it over now — if it still holds it
    const taken = await this.#claim(owner, doneUpTo, leaseMs, limit, relations, first);
    return typeof taken === "string" ? [] : taken;
  }

  async #claim(
    owner: string,
    doneUpTo: number,
    leaseMs: number,
    limit: number,
    relations: readonly string[],
    gone: string | null,
  ): Promise<PgChangeRecord[] | string> {
    const client = await this.#pool.connect();
    let failure: Error | undefined;
    try {
      // One round trip, one implicit transaction: lock the cursor, then (a statement of its own, so that
      // its snapshot is taken with the lock held) read the next changes and move the cursor. Prepared
      // statements: planning these took several times longer than running them.
      const sql = this.#sql;
      const claim = sql.claim(limit);
      const lock = sql.lock(relations);
      const needed = [lock, claim];
      let have = preparedOn.get(client);
      const prepare = needed.filter((p) => !have?.has(p.name));
      const results = (await client.query(
        `${prepare.map((p) => p.prepare).join("")}EXECUTE ${lock.name};
        EXECUTE ${claim.name}(${quoteLiteral(owner)}, ${int(doneUpTo)}, ${int(leaseMs)}, ${gone === null ? "NULL" : quoteLiteral(gone)})`,
      )) as unknown as pg.QueryResult[];
      if (prepare.length > 0) {
        if (!have) preparedOn.set(client, (have = new Set()));
        for (const p of prepare) have.add(p.name);
      }
      const locked = results[results.length - 2] as pg.QueryResult<{ signature: string | null }>;
      const claimed = results[results.length - 1] as pg.QueryResult<ClaimRow>;
      const state = claimed.rows[0]!;
      this.#signature = locked.rows[0]?.signature ?? "";
      this.#lostClaim = doneUpTo > 0 && state.prior !== owner;
      this.#tookOver = null;
      this.#doneSeq = Number(state.doneMax);
      if (!state.taken) {
        // another feed holds the cursor with a live lease (by the server's clock): leave it, unless its
        // process is gone (then the holder's name: take it over)
        return gone === null && state.prior !== null && !this.#mayBeAlive(state.prior) ? state.prior : [];
      }
      const rows = claimed.rows.slice(1);
      if (state.prior !== null && state.prior !== owner && rows.length > 0) {
        this.#tookOver = { from: state.prior, why: state.expired ? "expired" : "gone", after: Number(state.after) };
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
      failure = error as Error;
      throw error;
    } finally {
      // a connection that failed mid-claim is not given back to the pool (nor its prepared statements)
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

/**
 * A logged change `l` in the open window of the cursor `c`, and no further than what was marked done
 * there: dispatched, though not yet in the done snapshot (the window becomes that only when a later
 * claim opens the next one).
 */
const DONE_IN_WINDOW =
  "(c.window_snapshot IS NOT NULL AND pg_visible_in_snapshot(l.xid, c.window_snapshot) AND l.seq <= c.window_done)";

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

/**
 * NOT_SEEN — how the claim and the poll find the transactions a snapshot `lo` did not see, through the
 * xid index: those running when it was taken (its xip list) and those that started after (xid >=
 * its xmax). A committed transaction is visible in a snapshot exactly when it is in neither, so this is
 * `NOT pg_visible_in_snapshot(xid, lo)` in two index scans. Not `xid >= pg_snapshot_xmin(lo)`: the
 * xmin is the oldest transaction running anywhere on the server, so one long transaction (in any
 * database) made every claim read every change logged since it began.
 */
function statements(schema: string) {
  const { changes: T, cursor: C } = logNames(schema);
  const claims = new Map<number, Prepared>();
  const locks = new Map<string, Prepared>();
  return {
    poll: named(
      "poll",
      `
      SELECT c.owner, c.lease_until::text AS "leaseUntil", c.done_max::text AS "doneMax", ${signatureSubquery("$1")} AS signature,
        ${SERVER_MS} AS "serverNow",
        -- changes visible now that the done snapshot did not see (see NOT_SEEN), but those of the window marked done
        EXISTS (
          SELECT 1 FROM ${T} l
          WHERE l.xid = ANY (ARRAY(SELECT pg_snapshot_xip(c.done_snapshot)))
            AND pg_visible_in_snapshot(l.xid, pg_current_snapshot())
            AND NOT ${DONE_IN_WINDOW}
        ) OR EXISTS (
          SELECT 1 FROM ${T} l
          WHERE l.xid >= pg_snapshot_xmax(c.done_snapshot) AND l.xid < pg_snapshot_xmax(pg_current_snapshot())
            AND pg_visible_in_snapshot(l.xid, pg_current_snapshot())
            AND NOT ${DONE_IN_WINDOW}
        ) AS pending
      FROM ${C} c WHERE c.id = 1`,
    ),
    /**
     * Locks the cursor, and reads the schema signature of `relations` (inlined: a statement without
     * parameters keeps one plan, where a text[] parameter had it planned every time).
     */
    lock(relations: readonly string[]): Prepared {
      const key = JSON.stringify(relations);
      let statement = locks.get(key);
      if (statement) return statement;
      statement = prepared(
        "lock",
        "",
        `SELECT ${signatureSubquery(textArray(relations))} AS signature FROM ${C} WHERE id = 1 FOR UPDATE`,
      );
      locks.set(key, statement);
      return statement;
    },
    /**
     * The claim, run after `lock` in the same transaction (a statement of its own, so its snapshot sees
     * the cursor as its last holder committed it): for the feed $1, which dispatched up to $2 (counted
     * only while the cursor is still its own), unless another feed holds the cursor with a live lease
     * (one held by $4, a feed whose process is gone, is taken) — the window's next `limit` changes, or, when the window has none
     * left (or there is none), the next window: a snapshot taken now (pg_current_snapshot() is the
     * statement's), its first change, and its first `limit` changes. It moves the cursor accordingly,
     * with a lease of $3 ms on the server's clock; a next window with nothing in it is done at once,
     * and the cursor left free.
     */
    claim(limit: number): Prepared {
      let statement = claims.get(limit);
      if (statement) return statement;
      statement = prepared(
        `claim${int(limit)}`,
        "text, bigint, bigint, text",
        `
      WITH st AS MATERIALIZED (
        SELECT c.*,
          CASE WHEN c.owner = $1 THEN greatest(c.window_done, $2) ELSE c.window_done END AS done,
          CASE WHEN c.owner = $1 THEN greatest(c.done_max, $2) ELSE c.done_max END AS dmax,
          coalesce(c.lease_until, 0) <= c.now AS expired,
          c.owner IS NULL OR c.owner = $1 OR coalesce(c.lease_until, 0) <= c.now OR c.owner = $4 AS taken
        FROM (SELECT *, ${SERVER_MS_BIGINT} AS now FROM ${C} WHERE id = 1) c
      ), rest AS MATERIALIZED (
        SELECT l.seq, l.tbl, l.op, l.row_data, l.old_data, l.request_id
        FROM ${T} l
        -- scalar subqueries, evaluated once: the bound on seq is an index condition, the scan stops after the limit
        WHERE l.seq > (SELECT done FROM st WHERE taken AND window_snapshot IS NOT NULL)
          AND pg_visible_in_snapshot(l.xid, (SELECT window_snapshot FROM st))
          AND NOT pg_visible_in_snapshot(l.xid, (SELECT done_snapshot FROM st))
        ORDER BY l.seq LIMIT ${int(limit)}
      ), next AS MATERIALIZED (
        -- what the last window's snapshot (or the done one) did not see and one taken now does; its first
        -- change found through the xid index (see NOT_SEEN)
        -- (OFFSET 0: min(seq) would otherwise be planned as a walk of the primary key from its start)
        SELECT s.hi, s.lo, least((
          SELECT min(seq) FROM (
            SELECT seq FROM ${T}
            WHERE xid = ANY (ARRAY(SELECT pg_snapshot_xip(s.lo))) AND pg_visible_in_snapshot(xid, s.hi) OFFSET 0
          ) running
        ), (
          SELECT min(seq) FROM (
            SELECT seq FROM ${T}
            WHERE xid >= pg_snapshot_xmax(s.lo) AND xid < pg_snapshot_xmax(s.hi) AND pg_visible_in_snapshot(xid, s.hi)
            OFFSET 0
          ) later
        )) AS first
        FROM (
          SELECT pg_current_snapshot() AS hi, coalesce(window_snapshot, done_snapshot) AS lo
          FROM st WHERE taken AND NOT EXISTS (SELECT 1 FROM rest)
        ) s
      ), got AS MATERIALIZED (
        SELECT * FROM rest
        UNION ALL
        -- then in seq order from the first change, through the primary key
        SELECT l.seq, l.tbl, l.op, l.row_data, l.old_data, l.request_id
        FROM next n CROSS JOIN LATERAL (
          SELECT * FROM ${T} l
          WHERE l.seq >= n.first AND pg_visible_in_snapshot(l.xid, n.hi) AND NOT pg_visible_in_snapshot(l.xid, n.lo)
          ORDER BY l.seq LIMIT ${int(limit)}
        ) l
      ), moved AS (
        -- the window goes on (no next), or the next one is opened, or it is empty: done, and the cursor free
        UPDATE ${C} c SET
          done_snapshot = CASE WHEN n.hi IS NULL THEN c.done_snapshot WHEN n.first IS NULL THEN n.hi ELSE n.lo END,
          window_snapshot = CASE WHEN n.hi IS NULL THEN c.window_snapshot WHEN n.first IS NULL THEN NULL ELSE n.hi END,
          window_done = CASE WHEN n.hi IS NULL THEN s.done WHEN n.first IS NULL THEN 0 ELSE n.first - 1 END,
          done_max = s.dmax,
          owner = CASE WHEN n.hi IS NOT NULL AND n.first IS NULL THEN NULL ELSE $1 END,
          claimed_seq = CASE WHEN n.hi IS NOT NULL AND n.first IS NULL THEN NULL
            ELSE coalesce((SELECT max(seq) FROM got), CASE WHEN n.hi IS NULL THEN s.done ELSE n.first - 1 END) END,
          lease_until = CASE WHEN n.hi IS NOT NULL AND n.first IS NULL THEN NULL ELSE s.now + $3 END
        FROM st s LEFT JOIN next n ON true
        WHERE c.id = 1 AND s.taken
      )
      -- the cursor as it was and what the claim did, on a first row of its own; then one row per change
      SELECT u.prior, u.taken, u.expired, u."doneMax", u.after, u.seq::text AS seq, u.tbl, u.op, u.row, u.previous, u.request_id
      FROM (
        SELECT s.owner AS prior, s.taken, s.expired, s.dmax::text AS "doneMax",
          coalesce((SELECT first - 1 FROM next), s.done)::text AS after,
          NULL::bigint AS seq, NULL AS tbl, NULL AS op, NULL AS row, NULL AS previous, NULL AS request_id
        FROM st s
        UNION ALL
        SELECT NULL, NULL, NULL, NULL, NULL, g.seq, g.tbl, g.op, g.row_data::text, g.old_data::text, g.request_id
        FROM got g
      ) u
      ORDER BY u.seq NULLS FIRST`,
      );
      claims.set(limit, statement);
      return statement;
    },
    complete: named(
      "complete",
      `
      UPDATE ${C} SET window_done = greatest(window_done, $2), done_max = greatest(done_max, $2),
        owner = NULL, claimed_seq = NULL, lease_until = NULL
      WHERE id = 1 AND owner = $1`,
    ),
    renew: named("renew", `UPDATE ${C} SET lease_until = ${SERVER_MS_BIGINT} + $2 WHERE id = 1 AND owner = $1`),
    prune: named(
      "prune",
      `
      DELETE FROM ${T} l USING ${C} c
      -- dispatched: done, or in the window up to what was marked done there (the last window stays open
      -- until a later write opens the next one)
      WHERE c.id = 1
        AND (pg_visible_in_snapshot(l.xid, c.done_snapshot)
          OR ${DONE_IN_WINDOW})
        AND (l.seq <= (SELECT max(seq) FROM ${T}) - $1 OR l.at <= now() - $2 * interval '1 millisecond')`,
    ),
  };
}
