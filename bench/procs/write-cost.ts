/**
 * Write cost of change capture, in a process of its own: Drizzle inserts per
 * second into a SQLite file with turbocast's capture running and without it,
 * in alternating rounds (a fresh file per round: WAL, synchronous=NORMAL).
 * A third mode, *cached*, is bare Drizzle with only turbocast's cache of
 * prepared write statements (src/db/instrument.ts) and no capture: it shows
 * how much of the difference is that cache rather than capture itself.
 * With capture a round ends only when every insert has reached its onSave
 * hook (a no-op that counts), so the figure includes the triggers, the
 * change-log claims and the dispatch. `npx tsx bench/write-cost-quick.ts`
 * runs it on its own, repeated.
 *
 * Workloads:
 *   per-turn  one insert per turn of the event loop, as requests arrive
 *             (each insert is claimed and completed on its own)
 *   burst     inserts back to back in one turn, drained in batches after
 *   update    one Drizzle UPDATE of an existing row per turn (the rows are
 *             inserted first, untimed): the trigger writes the new and the
 *             previous row, so this is what capturing the old row costs
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import nunjucks from "nunjucks";
import { instrumentDatabase } from "../../src/db/instrument.js";
import { ModelStream, createTurbo } from "../../src/index.js";
import { silentLogger } from "../../src/logger.js";
import { serve } from "../lib/ipc.js";
import type { WriteCost } from "../lib/results.js";

const messages = sqliteTable("messages", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
  createdAt: integer("created_at", { mode: "timestamp_ms" }).notNull(),
});
const DDL =
  "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL)";

let dispatched = 0;
class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override onSave(): void {
    dispatched++;
  }
}

export type Workload = "per-turn" | "burst" | "update";
const WORKLOADS = ["per-turn", "burst", "update"] as const;
export type Mode = "without" | "cached" | "with";

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-write-cost-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
let files = 0;

/** One round: `n` writes; returns writes per second of wall-clock time and of the process's CPU time. */
async function round(mode: Mode, workload: Workload, n: number): Promise<{ wall: number; cpu: number }> {
  const sqlite = new Database(path.join(dir, `${files++}.db`));
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("synchronous = NORMAL");
  sqlite.exec(DDL);
  const db = drizzle(sqlite);
  const cacheOnly =
    mode === "cached" ? instrumentDatabase(db, { classFor: () => undefined, onWrite: () => {} }) : undefined;
  const turbo =
    mode === "with"
      ? await createTurbo({
          db,
          views: new nunjucks.Environment(null, { autoescape: true }),
          streams: [MessageStream],
          secret: "bench-secret-0123456789abcdef0123456789",
          secretFile: path.join(dir, ".turbocast-secret"),
          logger: silentLogger,
        })
      : undefined;
  const row = (i: number) => ({
    roomId: i % 10,
    body: `message number ${i} with a little text`,
    createdAt: new Date(),
  });
  if (workload === "update") {
    for (let i = 0; i < n; i++) db.insert(messages).values(row(i)).run();
    await turbo?.feed.drain();
  }
  dispatched = 0;
  const started = process.hrtime.bigint();
  const cpuAtStart = process.cpuUsage();
  if (workload === "update") {
    for (let i = 0; i < n; i++) {
      db.update(messages)
        .set({ body: `edited message ${i}` })
        .where(eq(messages.id, i + 1))
        .run();
      await turn();
    }
  } else if (workload === "per-turn") {
    for (let i = 0; i < n; i++) {
      db.insert(messages).values(row(i)).run();
      await turn();
    }
  } else {
    for (let i = 0; i < n; i++) db.insert(messages).values(row(i)).run();
  }
  if (turbo) {
    await turbo.feed.drain();
    if (dispatched !== n) throw new Error(`expected ${n} writes dispatched to onSave, got ${dispatched}`);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuAtStart);
  await turbo?.close();
  cacheOnly?.restore();
  sqlite.close();
  return { wall: n / seconds, cpu: n / ((cpu.user + cpu.system) / 1e6) };
}

serve({
  /** `workloads`: measure only these (bench/write-cost-quick.ts --only=...); default all. */
  async measure(args: { inserts: number; rounds: number; workloads?: Workload[] }) {
    const workloads = WORKLOADS.filter((w) => args.workloads === undefined || args.workloads.includes(w));
    // warm up both paths (JIT, page cache)
    for (const mode of ["without", "cached", "with"] as const) {
      for (const workload of workloads) await round(mode, workload, Math.min(1000, args.inserts));
    }
    const out: WriteCost["workloads"] = [];
    for (const workload of workloads) {
      const result = {
        workload,
        without: [] as number[],
        cached: [] as number[],
        with: [] as number[],
        withoutCpu: [] as number[],
        cachedCpu: [] as number[],
        withCpu: [] as number[],
      };
      for (let r = 0; r < args.rounds; r++) {
        const order: Mode[] = r % 2 === 0 ? ["without", "cached", "with"] : ["with", "cached", "without"];
        for (const mode of order) {
          const { wall, cpu } = await round(mode, workload, args.inserts);
          result[mode].push(wall);
          result[`${mode}Cpu`].push(cpu);
        }
      }
      out.push(result);
    }
    return out;
  },
});
