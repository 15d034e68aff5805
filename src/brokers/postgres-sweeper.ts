import type pg from "pg";
import type { BrokerEvents, HistoryOptions } from "./broker.js";
import type { Statements } from "./postgres-sql.js";

/** How long one prune may run (server-side statement_timeout). */
const SWEEP_TIMEOUT_MS = 60_000;

/**
 * The PostgreSQL broker's retention: prunes each stream to its history
 * window and drops streams idle for `idleMs` whole, recording the floors
 * that make older cursors get a refresh. One process sweeps at a time.
 */
export class Sweeper {
  #sql: Statements;
  #prefix: string;
  #history: Required<HistoryOptions>;
  #idleMs: number;
  #events: BrokerEvents;
  #sweeping = false;
  #failing = false;

  constructor(options: {
    sql: Statements;
    prefix: string;
    history: Required<HistoryOptions>;
    idleMs: number;
    events: BrokerEvents;
  }) {
    this.#sql = options.sql;
    this.#prefix = options.prefix;
    this.#history = options.history;
    this.#idleMs = options.idleMs;
    this.#events = options.events;
  }

  async sweep(pool: pg.Pool): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    let client: pg.PoolClient | undefined;
    try {
      client = await pool.connect();
      // pruning a big table may take longer than a publish may: its own,
      // longer timeout, enforced by the server too
      const query = (text: string, values: unknown[] = []) =>
        client!.query({ text, values, query_timeout: SWEEP_TIMEOUT_MS + 5_000 } as pg.QueryConfig);
      await query("begin");
      await query(`set local statement_timeout = ${SWEEP_TIMEOUT_MS}`);
      // one process sweeps at a time; the others skip this round
      const locked = (await query(this.#sql.sweepLock, [`${this.#prefix}_sweep`])).rows[0]?.locked === true;
      if (locked) {
        await query(this.#sql.prune, [this.#history.frames, this.#history.maxFrames, this.#history.ageMs]);
        await query(this.#sql.expire, [this.#idleMs]);
      }
      await query("commit");
      client.release();
      this.#failing = false;
    } catch (error) {
      if (client) {
        await client.query("rollback").catch(() => {});
        client.release(error as Error);
      }
      // a slow or failing prune is not an outage (the heartbeat and the
      // listener tell those), and is logged once until a prune succeeds again
      if (!this.#failing)
        this.#events.log("warn", "postgres broker could not prune old frames; retrying every sweep", error);
      this.#failing = true;
    } finally {
      this.#sweeping = false;
    }
  }
}
