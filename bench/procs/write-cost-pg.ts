/**
 * Change capture on a PostgreSQL app, in a process of its own (the PostgreSQL
 * twin of write-cost.ts):
 *
 * - write cost: Drizzle node-postgres inserts per second into a table with
 *   turbocast's capture running and without it, each side in a schema of its
 *   own set up once. With capture a segment ends only when every insert has
 *   reached its onSave hook (a no-op that counts), so the figure includes the
 *   trigger, the claims and the dispatch. *per-turn*: one insert at a time,
 *   as requests arrive; *burst*: all of them at once over the pool (10
 *   connections), drained in batches after. In each round both workloads
 *   are measured without and with capture back to back (which goes first
 *   alternates), so a pair sees the same moment of this shared machine; the
 *   slowdown is the median of the pairs' ratios.
 * - bulk: one UPDATE of `rows` rows, from the statement's start until the
 *   last onSave, on PostgreSQL and on SQLite (WAL) side by side: changes
 *   dispatched per second by the feed alone (no broker: the hook counts).
 *
 * Each segment's CPU time is measured too: this process's and that of the
 * side's own server backends (application_name is the side's schema, which
 * the feed's connections copy), read from /proc/<pid>/schedstat when the
 * server runs on this machine.
 *
 * The server is BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/test);
 * every schema it creates is dropped.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { drizzle as drizzleSqlite } from "drizzle-orm/better-sqlite3";
import { drizzle } from "drizzle-orm/node-postgres";
import { integer as pgInteger, pgTable, serial, text as pgText, timestamp } from "drizzle-orm/pg-core";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import nunjucks from "nunjucks";
import pg from "pg";
import { ModelStream, createTurbo } from "../../src/index.js";
import { silentLogger } from "../../src/logger.js";
import type { AnyStreamClass } from "../../src/streams/registry.js";
import { serve } from "../lib/ipc.js";
import type { PostgresCapture } from "../lib/results.js";

const url = process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";

const messages = pgTable("messages", {
  id: serial("id").primaryKey(),
  roomId: pgInteger("room_id").notNull(),
  body: pgText("body").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull(),
});
const DDL =
  "CREATE TABLE messages (id serial PRIMARY KEY, room_id integer NOT NULL, body text NOT NULL, created_at timestamptz NOT NULL)";

const sqliteMessages = sqliteTable("messages", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
});

let dispatched = 0;
let expected = 0;
let allDispatched: (() => void) | null = null;
const count = (): void => {
  if (++dispatched === expected) allDispatched?.();
};
class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override onSave(): void {
    count();
  }
}
class SqliteMessageStream extends ModelStream<typeof sqliteMessages> {
  static override model = sqliteMessages;
  override onSave(): void {
    count();
  }
}

export type Workload = "per-turn" | "burst";
type Mode = "without" | "with";

const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-write-cost-pg-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const admin = new pg.Pool({ connectionString: url, max: 1 });

const turboOptions = (streams: AnyStreamClass[]) => ({
  views: new nunjucks.Environment(null, { autoescape: true }),
  streams,
  secret: "bench-secret-0123456789abcdef0123456789",
  secretFile: path.join(dir, ".turbocast-secret"),
  logger: silentLogger,
});

/** A fresh schema with the messages table, a pool whose search_path is it (named after it), and its cleanup. */
async function freshSchema(): Promise<{ name: string; pool: pg.Pool; drop: () => Promise<void> }> {
  const name = `bench_${randomBytes(4).toString("hex")}`;
  await admin.query(`CREATE SCHEMA ${name}; SET search_path = ${name}; ${DDL}; RESET search_path`);
  const pool = new pg.Pool({
    connectionString: url,
    options: `-c search_path=${name}`,
    application_name: name,
    max: 10,
  });
  return {
    name,
    pool,
    async drop() {
      await pool.end();
      await admin.query(`DROP SCHEMA ${name} CASCADE`);
    },
  };
}

/** Resolves once `n` changes reached onSave since `dispatched` was reset. */
const waitForDispatched = (n: number): Promise<void> => {
  if (dispatched >= n) return Promise.resolve();
  expected = n;
  return new Promise<void>((resolve) => {
    allDispatched = () => {
      allDispatched = null;
      resolve();
    };
  });
};

/** One side of the comparison: a schema of its own and a Drizzle db over it, with turbocast running or not. */
interface Side {
  mode: Mode;
  /** The side's schema, and the application_name of its connections (the feed's copy the pool's). */
  name: string;
  db: ReturnType<typeof drizzle>;
  close(): Promise<void>;
}

async function openSide(mode: Mode): Promise<Side> {
  const { name, pool, drop } = await freshSchema();
  const db = drizzle(pool);
  const turbo = mode === "with" ? await createTurbo({ db, ...turboOptions([MessageStream]) }) : undefined;
  return {
    mode,
    name,
    db,
    async close() {
      await turbo?.close();
      await drop();
    },
  };
}

let rows = 0;

/**
 * CPU ns so far of the server backends of `side` (by application_name), or null when their
 * /proc/<pid>/schedstat cannot be read (the server runs elsewhere). A backend that exits between two
 * readings takes its time with it: the sides' connections stay open for the whole measurement.
 */
async function serverCpuNs(side: Side): Promise<number | null> {
  const { rows: backends } = await admin.query<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
    [side.name],
  );
  let ns = 0;
  for (const { pid } of backends) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      return null;
    }
  }
  return ns;
}

/**
 * One segment: `n` inserts on `side`, and with capture until each reached onSave; returns inserts per
 * second, and per second of CPU time (null when the server's could not be read).
 */
async function segment(side: Side, workload: Workload, n: number): Promise<{ wall: number; cpu: number | null }> {
  dispatched = 0;
  const row = () => {
    const i = rows++;
    return { roomId: i % 10, body: `message number ${i} with a little text`, createdAt: new Date() };
  };
  const serverAtStart = await serverCpuNs(side);
  const cpuAtStart = process.cpuUsage();
  const started = process.hrtime.bigint();
  if (workload === "per-turn") {
    for (let i = 0; i < n; i++) await side.db.insert(messages).values(row());
  } else {
    await Promise.all(Array.from({ length: n }, () => side.db.insert(messages).values(row())));
  }
  if (side.mode === "with") await waitForDispatched(n);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuAtStart);
  const serverAtEnd = serverAtStart === null ? null : await serverCpuNs(side);
  const cpuSeconds = serverAtEnd === null ? null : (cpu.user + cpu.system) / 1e6 + (serverAtEnd - serverAtStart!) / 1e9;
  return { wall: n / seconds, cpu: cpuSeconds === null ? null : n / cpuSeconds };
}

/** One bulk UPDATE of `rows` rows; returns changes dispatched per second, from the statement's start. */
async function bulk(dialect: "postgres" | "sqlite", rows: number): Promise<number> {
  if (dialect === "postgres") {
    const { pool, drop } = await freshSchema();
    await pool.query(
      `INSERT INTO messages (room_id, body, created_at) SELECT g % 10, 'row ' || g, now() FROM generate_series(1, ${rows}) g`,
    );
    const turbo = await createTurbo({ db: drizzle(pool), ...turboOptions([MessageStream]) });
    dispatched = 0;
    const started = process.hrtime.bigint();
    await pool.query("UPDATE messages SET room_id = room_id + 1");
    await waitForDispatched(rows);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    await turbo.close();
    await drop();
    return rows / seconds;
  }
  const sqlite = new Database(path.join(dir, `bulk-${randomBytes(4).toString("hex")}.db`));
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("synchronous = NORMAL");
  sqlite.exec(
    "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL, body TEXT NOT NULL)",
  );
  sqlite
    .prepare(
      "WITH RECURSIVE g(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM g WHERE v < ?) INSERT INTO messages (room_id, body) SELECT v % 10, 'row ' || v FROM g",
    )
    .run(rows);
  const turbo = await createTurbo({ db: drizzleSqlite(sqlite), ...turboOptions([SqliteMessageStream]) });
  dispatched = 0;
  const started = process.hrtime.bigint();
  sqlite.exec("UPDATE messages SET room_id = room_id + 1");
  turbo.feed.notify();
  await waitForDispatched(rows);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await turbo.close();
  sqlite.close();
  return rows / seconds;
}

serve({
  async measure(args: { inserts: number; rounds: number; bulkRows: number; bulkRounds?: number }) {
    // both sides stay up for the whole measurement, so segments can alternate without setting up between them
    const sides = { without: await openSide("without"), with: await openSide("with") };
    const workloads = (["per-turn", "burst"] as const).map((workload) => ({
      workload,
      without: [] as number[],
      with: [] as number[],
      ratios: [] as number[],
      withoutCpu: [] as number[],
      withCpu: [] as number[],
      cpuRatios: [] as number[],
    }));
    try {
      for (const { workload } of workloads) {
        await segment(sides.without, workload, 200);
        await segment(sides.with, workload, 200);
      }
      for (let r = 0; r < args.rounds; r++) {
        for (const result of workloads) {
          const order: Mode[] = r % 2 === 0 ? ["without", "with"] : ["with", "without"];
          const pair = {} as Record<Mode, { wall: number; cpu: number | null }>;
          for (const mode of order) pair[mode] = await segment(sides[mode], result.workload, args.inserts);
          result.without.push(pair.without.wall);
          result.with.push(pair.with.wall);
          result.ratios.push(pair.without.wall / pair.with.wall);
          if (pair.without.cpu !== null && pair.with.cpu !== null) {
            result.withoutCpu.push(pair.without.cpu);
            result.withCpu.push(pair.with.cpu);
            result.cpuRatios.push(pair.without.cpu / pair.with.cpu);
          }
        }
      }
    } finally {
      await sides.without.close();
      await sides.with.close();
    }
    const bulkResult = { rows: args.bulkRows, sqlite: [] as number[], postgres: [] as number[] };
    for (let r = 0; r < (args.bulkRows > 0 ? (args.bulkRounds ?? args.rounds) : 0); r++) {
      bulkResult.sqlite.push(await bulk("sqlite", args.bulkRows));
      bulkResult.postgres.push(await bulk("postgres", args.bulkRows));
    }
    await admin.end();
    return { inserts: args.inserts, workloads, bulk: bulkResult } satisfies PostgresCapture;
  },
});
