/**
 * Inserts per second through Drizzle, with and without turbocast's change
 * capture, measured side by side in one run: same machine, same file setup
 * (a fresh SQLite file per round, WAL, synchronous=NORMAL), rounds
 * alternating which mode goes first. With capture, a round ends only when
 * every insert has reached its onSave hook (a no-op that counts), so the
 * figure includes the triggers, the claims and the dispatch.
 *
 * Two workloads:
 *   per-turn  one insert per turn of the event loop, as requests arrive:
 *             every insert is drained on its own (claim + complete per insert)
 *   burst     inserts back to back in one turn: drained in batches afterwards
 *
 * Run: npx tsx bench/capture.ts [inserts per round=5000] [rounds=5]
 * Not part of npm test.
 */
import path from "node:path";
import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import nunjucks from "nunjucks";
import { ModelStream, createTurbo } from "../src/index.js";
import { silentLogger } from "../src/logger.js";
import { tempDir } from "../test/helpers.js";

const messages = sqliteTable("messages", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
  createdAt: integer("created_at", { mode: "timestamp_ms" }).notNull(),
});
const DDL = `CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL)`;

let dispatched = 0;
class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override onSave(): void {
    dispatched++;
  }
}

type Mode = "plain" | "capture";
type Workload = "per-turn" | "burst";

const inserts = Number(process.argv[2] ?? 5000);
const rounds = Number(process.argv[3] ?? 5);
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const tmp = tempDir("turbocast-bench-");

async function round(mode: Mode, workload: Workload, n: number, index: number): Promise<number> {
  const sqlite = new Database(path.join(tmp.dir, `${mode}-${workload}-${index}.db`));
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("synchronous = NORMAL");
  sqlite.exec(DDL);
  const db = drizzle(sqlite);
  const turbo =
    mode === "capture"
      ? await createTurbo({ db, views: new nunjucks.Environment(null, { autoescape: true }), streams: [MessageStream], logger: silentLogger })
      : undefined;
  dispatched = 0;
  const row = (i: number) => ({ roomId: i % 10, body: `message number ${i} with a little text`, createdAt: new Date() });
  const started = process.hrtime.bigint();
  if (workload === "per-turn") {
    for (let i = 0; i < n; i++) {
      db.insert(messages).values(row(i)).run();
      await turn();
    }
  } else {
    for (let i = 0; i < n; i++) db.insert(messages).values(row(i)).run();
  }
  if (turbo) {
    await turbo.feed.drain();
    if (dispatched !== n) throw new Error(`expected ${n} dispatched, got ${dispatched}`);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await turbo?.close();
  sqlite.close();
  return n / seconds;
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

try {
  console.log(`turbocast capture benchmark: ${inserts} Drizzle inserts per round, ${rounds} rounds, node ${process.version}, SQLite ${new Database(":memory:").prepare("select sqlite_version()").pluck().get()}`);
  console.log(`file per round: WAL, synchronous=NORMAL; with capture a round ends when every insert reached onSave\n`);
  // warm up both paths (JIT, page cache)
  for (const mode of ["plain", "capture"] as const) {
    for (const workload of ["per-turn", "burst"] as const) await round(mode, workload, Math.min(1000, inserts), -1);
  }
  console.log("workload    round   without capture   with capture    ratio");
  for (const workload of ["per-turn", "burst"] as const) {
    const plain: number[] = [];
    const capture: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const order: Mode[] = r % 2 === 0 ? ["plain", "capture"] : ["capture", "plain"];
      for (const mode of order) (mode === "plain" ? plain : capture).push(await round(mode, workload, inserts, r));
      console.log(
        `${workload.padEnd(10)}  ${String(r + 1).padStart(5)}   ${plain[r]!.toFixed(0).padStart(11)}/s   ${capture[r]!.toFixed(0).padStart(10)}/s   ${(plain[r]! / capture[r]!).toFixed(2)}x`,
      );
    }
    const p = median(plain);
    const c = median(capture);
    console.log(`${workload.padEnd(10)}  median  ${p.toFixed(0).padStart(11)}/s   ${c.toFixed(0).padStart(10)}/s   ${(p / c).toFixed(2)}x slower with capture\n`);
  }
} finally {
  tmp.cleanup();
}
