/**
 * What a data sync costs on a PostgreSQL app, quiet and under concurrent
 * writers: `turbo.sync` of a 100-row set (one REPEATABLE READ transaction,
 * then the version below the writers in flight at its snapshot), p50 / p99
 * per round, and how many syncs answered version 0 (a writer outlived
 * syncWaitMs) or failed. The writers insert rows of another set as fast as
 * they can, each on a connection of its own.
 *
 * Run: npx tsx --conditions=turbocast-source bench/pg-sync-quick.ts [rounds=3] [syncs=300] [writers=2]
 * Needs PostgreSQL (TURBOCAST_BENCH_PG, default postgres://postgres@127.0.0.1:5432/test); a schema of its own, dropped after.
 * Not part of npm test.
 */
import { randomBytes } from "node:crypto";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { integer, pgTable, serial, text } from "drizzle-orm/pg-core";
import nunjucks from "nunjucks";
import pg from "pg";
import { ModelStream, createTurbo } from "../src/index.js";

const [rounds = 3, syncs = 300, writers = 2] = process.argv.slice(2).map(Number);
const url = process.env.TURBOCAST_BENCH_PG ?? "postgres://postgres@127.0.0.1:5432/test";
const schema = `tcsyncbench_${randomBytes(4).toString("hex")}`;

const items = pgTable("items", {
  id: serial("id").primaryKey(),
  setId: integer("set_id").notNull(),
  body: text("body"),
});
const sets = pgTable("sets", { id: integer("id").primaryKey() });

class ItemStream extends ModelStream<typeof items> {
  static override model = items;
  static override fields = ["setId", "body"];
}
class SetStream extends ModelStream<typeof sets> {
  static override model = sets;
  static override sync = (set: SetStream) =>
    (set.db as unknown as ReturnType<typeof drizzle>)
      .select()
      .from(items)
      .where(eq(items.setId, Number(set.pk)));
}

const admin = new pg.Client({ connectionString: url });
await admin.connect();
await admin.query(`CREATE SCHEMA ${schema}; SET search_path = ${schema};
  CREATE TABLE items (id serial PRIMARY KEY, set_id integer NOT NULL, body text);
  CREATE TABLE sets (id integer PRIMARY KEY);
  INSERT INTO items (set_id, body) SELECT 1, 'item ' || g FROM generate_series(1, 100) g`);
const config = { connectionString: url, options: `-c search_path=${schema}` };
const pool = new pg.Pool({ ...config, max: 8 });
const db = drizzle(pool);
const turbo = await createTurbo({
  db,
  views: new nunjucks.Environment(),
  streams: [ItemStream, SetStream],
  logger: { info() {}, warn() {}, error: console.error },
});
// one captured change, so a version of 0 means a sync that gave up waiting (the rows above were never captured)
await pool.query("INSERT INTO items (set_id, body) VALUES (1, 'captured')");

const quantile = (xs: number[], p: number): string =>
  xs.length === 0 ? "-" : [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) * p)]!.toFixed(2);

async function round(concurrent: number): Promise<string> {
  let stop = false;
  const writing = Array.from({ length: concurrent }, async () => {
    const client = new pg.Client(config);
    await client.connect();
    while (!stop) await client.query("INSERT INTO items (set_id, body) VALUES (2, 'elsewhere')");
    await client.end();
  });
  const times: number[] = [];
  let zero = 0;
  let failed = 0;
  for (let i = 0; i < syncs; i++) {
    const started = performance.now();
    const set = await turbo.sync(SetStream.for(1)).catch(() => null);
    if (set === null) failed++;
    else {
      times.push(performance.now() - started);
      if (set.version === 0) zero++;
    }
  }
  stop = true;
  await Promise.all(writing);
  return `${concurrent} writers: p50 ${quantile(times, 0.5)} ms, p99 ${quantile(times, 0.99)} ms, version 0: ${zero}, failed: ${failed} of ${syncs}`;
}

try {
  for (let r = 0; r < rounds; r++) console.log(`round ${r + 1}: ${await round(0)}  |  ${await round(writers)}`);
} finally {
  await turbo.close();
  await pool.end();
  await admin.query(`DROP SCHEMA ${schema} CASCADE`);
  await admin.end();
}
