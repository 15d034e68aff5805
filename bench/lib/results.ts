import type { FanoutCell, MemoryCell } from "../sections/fanout.js";
import type { ThroughputResult } from "../sections/throughput.js";
import type { BroadcastSample } from "./target.js";

/** Everything one run measured; written to results.json and rendered into RESULTS.md and fanout.svg. */
export interface Results {
  env: Record<string, string>;
  labels: Record<string, string>;
  fanout: FanoutCell[];
  memory: MemoryCell[];
  throughput: ThroughputResult[];
  endToEnd: EndToEnd | null;
  render: RenderCost[] | null;
  writeCost: WriteCost | null;
  /** Absent in runs before it was measured. */
  bulkUpdate?: BulkUpdate | null;
  /** Change capture on a PostgreSQL app (procs/write-cost-pg.ts); absent in runs before it was measured. */
  postgresCapture?: PostgresCapture | null;
  reauthorize?: ReauthorizeCost | null;
  /** Data subscribers (bench/sections/data.ts); absent in runs before it was measured. */
  data?: DataCost | null;
  clock: Array<{ target: string; server: ClockOffset; clients: ClockOffset }>;
  /** What could not be measured, and why. */
  missing: string[];
  notes: string[];
}

export interface ClockOffset {
  offset: number;
  uncertainty: number;
}

/** End to end on one app (bench/sections/turbocast.ts). */
export interface EndToEndRun {
  n: number;
  /** Drizzle insert -> capture -> onSave -> render -> frame at every subscriber. */
  samples: BroadcastSample[];
  /** turbocast WS fan-out alone (broadcastRaw of a built frame), interleaved with the inserts. */
  fanoutSamples: BroadcastSample[];
}

/**
 * End to end on the SQLite app (the run's own fields; empty samples when only the PostgreSQL one was
 * measured) and on the PostgreSQL app, alternated sample by sample with it.
 */
export interface EndToEnd extends EndToEndRun {
  /** The same app on PostgreSQL (BENCH_PG_URL); null when it was not measured, absent in runs before it was. */
  postgres?: EndToEndRun | null;
}

export interface RenderCost {
  n: number;
  broadcasts: number;
  /** Template renders counted through the wrapped nunjucks environment during those broadcasts. */
  renders: number;
  /** Publish (append, which renders) to last delivery. */
  samples: BroadcastSample[];
}

export interface WriteCost {
  /** Inserts per round. */
  inserts: number;
  workloads: Array<{
    workload: "per-turn" | "burst" | "update";
    /** Inserts per second, one figure per round: bare Drizzle. */
    without: number[];
    /** Bare Drizzle plus turbocast's prepared-statement cache alone (no capture). Absent in runs before it was measured. */
    cached?: number[];
    /** With turbocast and change capture. */
    with: number[];
    /**
     * The same rounds in writes per second of the process's CPU time (user +
     * system, every thread: GC included): steadier than the wall clock on a
     * shared machine, and blind to I/O waits (WAL checkpoints). Absent in runs
     * before it was measured.
     */
    withoutCpu?: number[];
    cachedCpu?: number[];
    withCpu?: number[];
  }>;
}

export interface BulkUpdate {
  cells: Array<{
    /** The app's database: a Drizzle better-sqlite3 or node-postgres app. Absent in runs before PostgreSQL apps were measured (SQLite). */
    app?: "sqlite" | "postgres";
    /** Rows changed by the one UPDATE of a round (one frame each). */
    rows: number;
    broker: "memory" | "redis" | "postgres";
    /** fire: onSave broadcasts without awaiting; await: an async onSave that awaits its broadcast. */
    hook: "fire" | "await";
    /** Rows / seconds from the UPDATE to the last frame back in the app's hub, one figure per round. */
    changesPerSecond: number[];
  }>;
}

export interface PostgresCapture {
  /** Inserts per round. */
  inserts: number;
  /** Inserts per second, one figure per round, without turbocast and with capture (round ends when all reached onSave). */
  workloads: Array<{
    workload: "per-turn" | "burst";
    without: number[];
    with: number[];
    /** Per round, without / with of the two measured back to back (absent in runs before it was measured). */
    ratios?: number[];
    /**
     * The same rounds in inserts per second of CPU time: the bench process's (user + system, the
     * feed's dispatch included) plus that of the side's own server backends (its pool's, and the
     * feed's and LISTEN connections'), read from /proc — absent when the server's processes cannot be
     * read there, and in runs before it was measured. The server's shared work (WAL writer,
     * checkpointer, autovacuum) is not in it. Steadier than the wall clock on a shared machine.
     */
    withoutCpu?: number[];
    withCpu?: number[];
    /** Per round, the CPU time with capture over that without, of the two measured back to back. */
    cpuRatios?: number[];
  }>;
  /** One UPDATE of `rows` rows: changes dispatched per second (statement start to last onSave), per round. */
  bulk: { rows: number; sqlite: number[]; postgres: number[] };
}

/** The periodic re-check's CPU per round (every subscription checked once, as over one reauthorizeMs), in-process. */
export interface ReauthorizeCost {
  subscriptions: number;
  reauthorizeMs: number;
  slots: number;
  /** CPU ms of one round, per measured round: a userPassesTest that returns at once. */
  trivialMs: number[];
  /** The same with one SQLite primary-key lookup per check. */
  lookupMs: number[];
  trivialMedianMs: number;
  lookupMedianMs: number;
}

/** Data subscribers (in-process): delivery per write with HTML subscribers alone and with data subscribers beside them; ETag hits. */
export interface DataCost {
  subscribers: number;
  writes: number;
  noSubscribersMedianMs: number;
  htmlMedianMs: number;
  htmlAndDataMedianMs: number;
  htmlP99Ms: number;
  htmlAndDataP99Ms: number;
  htmlBytesPerWrite: number;
  htmlAndDataBytesPerWrite: number;
  rows: number;
  firstGetMs: number;
  firstGetBytes: number;
  etagHitP50Ms: number;
  etagHitP99Ms: number;
  handlerHitP50Us: number;
}
