/**
 * Bulk update through each broker, in a process of its own: a SQLite app
 * like the demo (rooms and their messages, a MessageStream whose onSave
 * replaces the message's element on its room's stream) takes one UPDATE of
 * every message row, and the round ends when a subscriber of every room, in
 * this process's hub, has received one frame per row — so the figure covers
 * capture, claims, the hook, the render, the publish through the broker and
 * the delivery back from it. Memory, Redis and PostgreSQL brokers take turns
 * round after round (a fresh SQLite file and broker namespace each), so a
 * noisy neighbour on the machine hits them alike.
 *
 * Hooks:
 *   fire   onSave broadcasts without awaiting (the frames of a claimed batch
 *          reach the broker together)
 *   await  async onSave that awaits its broadcast (one broker round trip per
 *          change: the feed runs async hooks one at a time)
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import nunjucks from "nunjucks";
import pg from "pg";
import { withDefaultUser } from "../../src/brokers/postgres.js";
import { type Broker, ModelStream, createTurbo, memoryBroker, postgresBroker, redisBroker } from "../../src/index.js";
import { serve } from "../lib/ipc.js";

export type BrokerKind = "memory" | "redis" | "postgres";
export type HookStyle = "fire" | "await";

const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const PG_URL = process.env.TURBOCAST_PG_URL ?? process.env.DATABASE_URL ?? "postgres://127.0.0.1:5432/test";
const ROOMS = 100;

const rooms = sqliteTable("rooms", {
  id: integer("id").primaryKey(),
  name: text("name").notNull(),
});
const messages = sqliteTable("messages", {
  id: integer("id").primaryKey(),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
  editedAt: integer("edited_at", { mode: "timestamp_ms" }),
});
type Message = typeof messages.$inferSelect;

let style: HookStyle = "fire";

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
}

class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override onSave(message: Message): void | Promise<void> {
    const sent = RoomStream.for(message.roomId).replace(
      "messages/_message.njk",
      { message },
      { target: `message_${message.id}` },
    );
    if (style === "await") return sent.then(() => {});
  }
}

const TEMPLATE = `<li id="message_{{ message.id }}" class="message" data-room="{{ message.roomId }}">
  <span class="body">{{ message.body }}</span>
  {% if message.editedAt %}<span class="edited">(edited)</span>{% endif %}
</li>`;

const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-bulk-update-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
mkdirSync(path.join(dir, "views", "messages"), { recursive: true });
writeFileSync(path.join(dir, "views", "messages", "_message.njk"), TEMPLATE);
const views = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(dir, "views")), { autoescape: true });
let files = 0;

/** A broker of `kind` in a namespace of its own, and how to remove that namespace afterwards. */
function makeBroker(kind: BrokerKind, round: number): { broker: Broker; cleanup: () => Promise<void> } {
  const name = `bench_bulk_${process.pid}_${round}`;
  if (kind === "memory") return { broker: memoryBroker(), cleanup: async () => {} };
  if (kind === "redis") {
    return {
      broker: redisBroker({ url: REDIS_URL, keyPrefix: `${name}:` }),
      cleanup: async () => {
        const { Redis } = await import("ioredis");
        const redis = new Redis(REDIS_URL);
        try {
          const keys = await redis.keys(`${name}:*`);
          if (keys.length > 0) await redis.del(...keys);
        } finally {
          redis.disconnect();
        }
      },
    };
  }
  return {
    broker: postgresBroker({ connectionString: PG_URL, prefix: name }),
    cleanup: async () => {
      const client = new pg.Client({ connectionString: withDefaultUser(PG_URL) });
      await client.connect();
      try {
        await client.query(`drop table if exists "${name}_frames", "${name}_meta", "${name}_floors"`);
      } finally {
        await client.end();
      }
    },
  };
}

/** One round: a `rows`-row UPDATE through `kind`; returns changes per second, publish to delivery. */
async function round(kind: BrokerKind, hook: HookStyle, rows: number, id: number): Promise<number> {
  style = hook;
  const sqlite = new Database(path.join(dir, `${files++}.db`));
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("synchronous = NORMAL");
  sqlite.exec(`
    create table rooms (id integer primary key, name text not null);
    create table messages (id integer primary key, room_id integer not null, body text not null, edited_at integer);
  `);
  const insertRoom = sqlite.prepare("insert into rooms (id, name) values (?, ?)");
  const insertMessage = sqlite.prepare("insert into messages (id, room_id, body) values (?, ?, ?)");
  sqlite.transaction(() => {
    for (let r = 1; r <= ROOMS; r++) insertRoom.run(r, `room ${r}`);
    for (let i = 1; i <= rows; i++) insertMessage.run(i, (i % ROOMS) + 1, `message number ${i} with a little text`);
  })();
  const db = drizzle(sqlite);
  const { broker, cleanup } = makeBroker(kind, id);
  const turbo = await createTurbo({
    db,
    views,
    streams: [RoomStream, MessageStream],
    broker,
    secret: "bench-secret-0123456789abcdef0123456789",
    secretFile: path.join(dir, ".turbocast-secret"),
    logger: { info: () => {}, warn: (m) => console.warn(m), error: (m, meta) => console.error(m, meta) },
  });
  try {
    let received = 0;
    let done: () => void = () => {};
    const all = new Promise<void>((resolve) => (done = resolve));
    const names = Array.from({ length: ROOMS }, (_, r) => RoomStream.for(r + 1).name);
    await turbo.hub.subscribe(names, {
      send() {
        if (++received === rows) done();
      },
    });
    const started = process.hrtime.bigint();
    db.update(messages)
      .set({ body: sql`${messages.body} || ' (edited)'`, editedAt: new Date() })
      .run();
    await Promise.race([
      all,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error(`${kind}: ${received} of ${rows} frames after 120 s`)), 120_000).unref(),
      ),
    ]);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return rows / seconds;
  } finally {
    await turbo.close();
    sqlite.close();
    await cleanup();
  }
}

let rounds = 0;

if (!process.send) {
  // on its own: npx tsx bench/procs/bulk-update.ts [broker=redis] [hook=fire] [rows=10000] [rounds=3]
  const [kind = "redis", hook = "fire", rows = "10000", times = "3"] = process.argv.slice(2);
  for (let r = 0; r < Number(times); r++) {
    const cpu = process.cpuUsage();
    const started = performance.now();
    const perSecond = await round(kind as BrokerKind, hook as HookStyle, Number(rows), rounds++);
    const used = process.cpuUsage(cpu);
    const cpuShare = (used.user + used.system) / 1000 / (performance.now() - started);
    console.log(
      `${kind} ${hook} ${rows} rows: ${Math.round(perSecond)} changes/s (this process's CPU ${(cpuShare * 100).toFixed(0)}% of the round, setup included)`,
    );
  }
  process.exit(0);
}

serve({
  /** For each run, `rounds` rounds of each broker (in rotating order) of one hook style and size; changes/s per round. */
  async measure(args: { brokers: BrokerKind[]; runs: Array<{ hook: HookStyle; rows: number; rounds: number }> }) {
    // warm up (JIT, page cache, script and statement caches) with a small update through each
    for (const kind of args.brokers) await round(kind, "fire", 1000, rounds++);
    const out: Array<{ broker: BrokerKind; hook: HookStyle; rows: number; changesPerSecond: number[] }> = [];
    for (const { hook, rows, rounds: n } of args.runs) {
      const cells = args.brokers.map((broker) => ({ broker, hook, rows, changesPerSecond: [] as number[] }));
      for (let r = 0; r < n; r++) {
        for (let k = 0; k < cells.length; k++) {
          const cell = cells[(k + r) % cells.length]!;
          cell.changesPerSecond.push(await round(cell.broker, hook, rows, rounds++));
        }
      }
      out.push(...cells);
    }
    return out;
  },
});
