/**
 * Bulk update through each broker, in a process of its own: an app like the
 * demo (rooms and their messages, a MessageStream whose onSave replaces the
 * message's element on its room's stream) takes one UPDATE of every message
 * row, and the round ends when a subscriber of every room, in this process's
 * hub, has received one frame per row — so the figure covers capture, claims,
 * the hook, the render, the publish through the broker and the delivery back
 * from it. The app is a SQLite one (Drizzle better-sqlite3, a fresh file per
 * round) or a PostgreSQL one (Drizzle node-postgres, a fresh schema per
 * round, captured by PostgreSQL triggers); the same hook, template and rows.
 * Memory, Redis and PostgreSQL brokers take turns round after round (a fresh
 * broker namespace each), and so do the two apps, so a noisy neighbour on the
 * machine hits them alike.
 *
 * Hooks:
 *   fire   onSave broadcasts without awaiting (the frames of a claimed batch
 *          reach the broker together)
 *   await  async onSave that awaits its broadcast (one broker round trip per
 *          change: the feed runs async hooks one at a time)
 *
 * On its own (no IPC channel) it runs rounds and prints them:
 *
 *   npx tsx bench/procs/bulk-update.ts [app=sqlite] [brokers=memory,redis,postgres] [hook=fire] [rows=10000] [rounds=3]
 *
 * with BULK_CPU_PROFILE=<dir>, each measured round (UPDATE to last frame) is
 * written there as a .cpuprofile (node:inspector), setup left out; with
 * BULK_VERBOSE=1 each round prints its GC pauses, this process's CPU time and
 * the time from the last hook to the last frame back (the broker's tail).
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import os from "node:os";
import { PerformanceObserver } from "node:perf_hooks";
import path from "node:path";
import Database from "better-sqlite3";
import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { integer as pgInteger, pgTable, text as pgText, timestamp } from "drizzle-orm/pg-core";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import nunjucks from "nunjucks";
import pg from "pg";
import { withDefaultUser } from "../../src/brokers/postgres.js";
import { type Broker, ModelStream, createTurbo, memoryBroker, postgresBroker, redisBroker } from "../../src/index.js";
import { serve } from "../lib/ipc.js";

export type BrokerKind = "memory" | "redis" | "postgres";
export type HookStyle = "fire" | "await";
export type AppKind = "sqlite" | "postgres";

const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const PG_URL = withDefaultUser(
  process.env.TURBOCAST_PG_URL ?? process.env.DATABASE_URL ?? "postgres://127.0.0.1:5432/test",
);
const ROOMS = 100;
const PROFILE_DIR = process.env.BULK_CPU_PROFILE;
const VERBOSE = process.env.BULK_VERBOSE === "1";

/** Milliseconds of GC pauses so far (BULK_VERBOSE). */
let gcMs = 0;
if (VERBOSE) {
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcMs += entry.duration;
  }).observe({ entryTypes: ["gc"] });
}

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
type Message = { id: number; roomId: number; body: string; editedAt: Date | null };

/** The same tables on PostgreSQL. */
const pgRooms = pgTable("rooms", {
  id: pgInteger("id").primaryKey(),
  name: pgText("name").notNull(),
});
const pgMessages = pgTable("messages", {
  id: pgInteger("id").primaryKey(),
  roomId: pgInteger("room_id").notNull(),
  body: pgText("body").notNull(),
  editedAt: timestamp("edited_at", { withTimezone: true, precision: 3 }),
});

let style: HookStyle = "fire";

/** When the last hook ran (BULK_VERBOSE: the round's tail is the time from it to the last frame back). */
let lastHookAt = 0n;

/** The hook of both apps: one replace per row on its room's stream. */
function onSave(rooms: { for(pk: number): { replace: ModelStream["replace"] } }, message: Message) {
  lastHookAt = process.hrtime.bigint();
  const sent = rooms
    .for(message.roomId)
    .replace("messages/_message.njk", { message }, { target: `message_${message.id}` });
  if (style === "await") return sent.then(() => {});
}

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
}
class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override onSave(message: Message): void | Promise<void> {
    return onSave(RoomStream, message);
  }
}
class PgRoomStream extends ModelStream<typeof pgRooms> {
  static override model = pgRooms;
}
class PgMessageStream extends ModelStream<typeof pgMessages> {
  static override model = pgMessages;
  override onSave(message: Message): void | Promise<void> {
    return onSave(PgRoomStream, message);
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
let admin: pg.Pool | null = null;
const adminPool = (): pg.Pool => (admin ??= new pg.Pool({ connectionString: PG_URL, max: 1 }));

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
          // SCAN, not KEYS: the server is shared with other work
          const stream = redis.scanStream({ match: `${name}:*`, count: 1000 });
          for await (const keys of stream as AsyncIterable<string[]>) if (keys.length > 0) await redis.unlink(...keys);
        } finally {
          redis.disconnect();
        }
      },
    };
  }
  return {
    broker: postgresBroker({ connectionString: PG_URL, prefix: name }),
    cleanup: async () => {
      await adminPool().query(
        `drop table if exists "${name}_frames", "${name}_meta", "${name}_floors", "${name}_watches"`,
      );
    },
  };
}

/** The app's database with `rows` messages in ROOMS rooms, the stream classes bound to it, the UPDATE, and its cleanup. */
async function makeApp(
  app: AppKind,
  rows: number,
): Promise<{
  db: Parameters<typeof createTurbo>[0]["db"];
  streams: Array<typeof ModelStream<never>>;
  update: () => Promise<void>;
  cleanup: () => Promise<void>;
}> {
  if (app === "sqlite") {
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
    return {
      db,
      streams: [RoomStream, MessageStream] as never,
      async update() {
        db.update(messages)
          .set({ body: sql`${messages.body} || ' (edited)'`, editedAt: new Date() })
          .run();
      },
      async cleanup() {
        sqlite.close();
      },
    };
  }
  const schema = `bench_bulk_${randomBytes(4).toString("hex")}`;
  await adminPool().query(`
    create schema ${schema};
    create table ${schema}.rooms (id integer primary key, name text not null);
    create table ${schema}.messages (id integer primary key, room_id integer not null, body text not null, edited_at timestamptz(3));
    insert into ${schema}.rooms (id, name) select r, 'room ' || r from generate_series(1, ${ROOMS}) r;
    insert into ${schema}.messages (id, room_id, body)
      select i, i % ${ROOMS} + 1, 'message number ' || i || ' with a little text' from generate_series(1, ${rows}) i;
  `);
  const pool = new pg.Pool({ connectionString: PG_URL, options: `-c search_path=${schema}`, max: 4 });
  const db = drizzlePg(pool);
  return {
    db,
    streams: [PgRoomStream, PgMessageStream] as never,
    async update() {
      await db.update(pgMessages).set({ body: sql`${pgMessages.body} || ' (edited)'`, editedAt: new Date() });
    },
    async cleanup() {
      await pool.end();
      await adminPool().query(`drop schema ${schema} cascade`);
    },
  };
}

/** One round: a `rows`-row UPDATE on `app` through `kind`; returns changes per second, UPDATE to delivery. */
async function round(app: AppKind, kind: BrokerKind, hook: HookStyle, rows: number, id: number): Promise<number> {
  style = hook;
  const database = await makeApp(app, rows);
  const { broker, cleanup } = makeBroker(kind, id);
  let turbo: Awaited<ReturnType<typeof createTurbo>> | undefined;
  try {
    turbo = await createTurbo({
      db: database.db,
      views,
      streams: database.streams,
      broker,
      secret: "bench-secret-0123456789abcdef0123456789",
      secretFile: path.join(dir, ".turbocast-secret"),
      logger: { info: () => {}, warn: (m) => console.warn(m), error: (m, meta) => console.error(m, meta) },
    });
    let received = 0;
    let done: () => void = () => {};
    const all = new Promise<void>((resolve) => (done = resolve));
    const names = Array.from({ length: ROOMS }, (_, r) =>
      app === "sqlite" ? RoomStream.for(r + 1).name : PgRoomStream.for(r + 1).name,
    );
    await turbo.hub.subscribe(names, {
      send() {
        if (++received === rows) done();
      },
    });
    const profile = PROFILE_DIR ? await startProfile() : null;
    const gcBefore = gcMs;
    const cpuBefore = process.cpuUsage();
    const started = process.hrtime.bigint();
    await database.update();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      all,
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${app} app, ${kind}: ${received} of ${rows} frames after 120 s`)),
          120_000,
        );
      }),
    ]).finally(() => clearTimeout(timer));
    const endedAt = process.hrtime.bigint();
    const seconds = Number(endedAt - started) / 1e9;
    const tailMs = Number(endedAt - lastHookAt) / 1e6;
    if (VERBOSE) {
      const cpu = process.cpuUsage(cpuBefore);
      console.log(
        `  ${app} app, ${kind}: ${Math.round(rows / seconds)} changes/s; ${Math.round(seconds * 1000)} ms, of which GC pauses ${Math.round(gcMs - gcBefore)} ms; this process's CPU ${Math.round((cpu.user + cpu.system) / 1000)} ms; last hook to last frame ${Math.round(tailMs)} ms`,
      );
    }
    await profile?.(`${app}-${kind}-${hook}-${id}`);
    return rows / seconds;
  } finally {
    await turbo?.close();
    if (!turbo) await broker.close();
    await database.cleanup();
    await cleanup();
  }
}

/** Starts the CPU profiler; the function it returns stops it and writes `<name>.cpuprofile` to BULK_CPU_PROFILE. */
async function startProfile(): Promise<(name: string) => Promise<void>> {
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.setSamplingInterval", { interval: 200 });
  await session.post("Profiler.start");
  return async (name) => {
    const { profile } = await session.post("Profiler.stop");
    session.disconnect();
    mkdirSync(PROFILE_DIR!, { recursive: true });
    writeFileSync(path.join(PROFILE_DIR!, `${name}.cpuprofile`), JSON.stringify(profile));
  };
}

let rounds = 0;

/**
 * Rounds of each app and broker before any is measured, of the largest size
 * measured: JIT, page cache, script and statement caches. A broker's publish
 * path is longer code than the in-memory one (batching, the wire format, the
 * watch filter) and took a 1,000-row round or two more to reach its steady
 * speed: one small warm-up round left the first measured Redis rounds at
 * 44,000-56,000 changes/s and the later ones at 73,000-77,000, a cold start a
 * running app pays once, not at every bulk update.
 */
const WARM_UP_ROUNDS = 2;

async function warmUp(apps: AppKind[], brokers: BrokerKind[], rows: number): Promise<void> {
  for (let r = 0; r < WARM_UP_ROUNDS; r++) {
    for (const app of apps) for (const kind of brokers) await round(app, kind, "fire", rows, rounds++);
  }
}

type Cell = { app: AppKind; broker: BrokerKind; hook: HookStyle; rows: number; changesPerSecond: number[] };

/**
 * `n` rounds of each app × broker of one hook style and size, taking turns:
 * the apps alternate which goes first, the brokers rotate their order.
 */
async function measure(apps: AppKind[], brokers: BrokerKind[], hook: HookStyle, rows: number, n: number) {
  const cells: Cell[] = apps.flatMap((app) =>
    brokers.map((broker) => ({ app, broker, hook, rows, changesPerSecond: [] as number[] })),
  );
  for (let r = 0; r < n; r++) {
    for (let a = 0; a < apps.length; a++) {
      const app = apps[(a + r) % apps.length]!;
      for (let k = 0; k < brokers.length; k++) {
        const broker = brokers[(k + r) % brokers.length]!;
        const cell = cells.find((c) => c.app === app && c.broker === broker)!;
        cell.changesPerSecond.push(await round(app, broker, hook, rows, rounds++));
      }
    }
  }
  return cells;
}

if (!process.send) {
  const [apps = "sqlite", brokers = "memory,redis,postgres", hook = "fire", rows = "10000", times = "3"] =
    process.argv.slice(2);
  const appList = apps.split(",") as AppKind[];
  const brokerList = brokers.split(",") as BrokerKind[];
  await warmUp(appList, brokerList, Number(rows));
  const cells = await measure(appList, brokerList, hook as HookStyle, Number(rows), Number(times));
  for (const cell of cells) {
    const memory = cells.find((c) => c.app === cell.app && c.broker === "memory");
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
    const ratio = memory ? (med(memory.changesPerSecond) / med(cell.changesPerSecond)).toFixed(2) : "?";
    console.log(
      `${cell.app} app, ${cell.broker}, ${cell.hook}, ${cell.rows} rows: median ${Math.round(med(cell.changesPerSecond))} changes/s (${ratio}x memory); ${cell.changesPerSecond.map(Math.round).join(", ")}`,
    );
  }
  await adminPool().end();
  process.exit(0);
}

serve({
  /**
   * For each run, `rounds` rounds of each app and broker (in rotating order)
   * of one hook style and size; changes/s per round.
   */
  async measure(args: {
    apps: AppKind[];
    brokers: BrokerKind[];
    runs: Array<{ hook: HookStyle; rows: number; rounds: number }>;
  }) {
    await warmUp(args.apps, args.brokers, Math.max(...args.runs.map((run) => run.rows)));
    const out: Cell[] = [];
    for (const { hook, rows, rounds: n } of args.runs)
      out.push(...(await measure(args.apps, args.brokers, hook, rows, n)));
    await admin?.end();
    admin = null;
    return out;
  },
});
