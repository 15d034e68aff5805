import type pg from "pg";
import { LogThrottle } from "../log-throttle.js";
import type { BrokerEvents, HistoryOptions } from "./broker.js";
import type { Statements } from "./postgres-sql.js";

/** How long one prune may run (server-side statement_timeout). */
const SWEEP_TIMEOUT_MS = 60_000;
const PRUNE_FAILING = "prune failing";

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
  /** A failing prune is logged once, then counted until a prune succeeds again. */
  #throttle: LogThrottle;
  #sweeping = false;

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
    const log = options.events.log;
    this.#throttle = new LogThrottle(
      {
        info: (message) => log("info", message),
        warn: (message, details) => log("warn", message, details?.error),
        error: (message, details) => log("error", message, details?.error),
      },
      { intervalMs: Number.POSITIVE_INFINITY },
    );
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
      this.#throttle.recovered(PRUNE_FAILING);
    } catch (error) {
      if (client) {
        await client.query("rollback").catch(() => {});
        client.release(error as Error);
      }
      // a slow or failing prune is not an outage (the heartbeat and the
      // listener tell those)
      this.#throttle.log(PRUNE_FAILING, "warn", "postgres broker could not prune old frames; retrying every sweep", {
        error,
      });
    } finally {
      this.#sweeping = false;
    }
  }
}
