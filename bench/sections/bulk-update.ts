import { Child } from "../lib/ipc.js";
import { log } from "../lib/log.js";
import type { BulkUpdate } from "../lib/results.js";
import type { AppKind, BrokerKind, HookStyle } from "../procs/bulk-update.js";

export interface BulkUpdateOptions {
  /** The app databases: SQLite (better-sqlite3) and PostgreSQL (node-postgres), taking turns. */
  apps: AppKind[];
  brokers: BrokerKind[];
  /** Per hook style: the rows the UPDATE changes (one frame each) and the rounds per broker, taking turns. */
  runs: Array<{ hook: HookStyle; rows: number; rounds: number }>;
}

/**
 * Bulk update through each broker side by side: one UPDATE of many rows on a
 * SQLite app and on a PostgreSQL app whose hook broadcasts one replace per
 * row, until every frame is back from the broker in the app's hub
 * (bench/procs/bulk-update.ts, in a process of its own). Changes per second
 * per round.
 */
export async function runBulkUpdate(options: BulkUpdateOptions): Promise<BulkUpdate> {
  const child = await Child.spawn("procs/bulk-update.ts", { name: "bulk-update" });
  try {
    const cells = await child.request<BulkUpdate["cells"]>("measure", options, 1_800_000);
    for (const cell of cells) {
      log(
        `  ${cell.app} app, ${cell.hook} hook, ${cell.rows} rows, through ${cell.broker}: ${cell.changesPerSecond.map((x) => Math.round(x)).join(", ")} changes/s`,
      );
    }
    return { cells };
  } finally {
    await child.stop();
  }
}
