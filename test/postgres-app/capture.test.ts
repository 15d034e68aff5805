import { spawnSync } from "node:child_process";
import path from "node:path";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import nunjucks from "nunjucks";
import pg from "pg";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { pgTable, text } from "drizzle-orm/pg-core";
import {
  CaptureInstallError,
  ConfigError,
  DatabaseUnreachableError,
  ModelStream,
  TemplateRenderError,
  type Turbo,
  type TurboOptions,
  createTurbo,
} from "../../src/index.js";
import { PgChangeLog } from "../../src/changes/postgres/log.js";
import { currentRequestId, runInRequest } from "../../src/delivery/request-context.js";
import { type HookCall, recorder } from "../fixtures/capture/streams.js";
import { DDL, items, kinds, plain, schema as tables } from "../fixtures/capture-pg/schema.js";
import { PgItemStream, pgCaptureStreams } from "../fixtures/capture-pg/streams.js";
import { type LogEntry, memoryLogger, waitFor } from "../helpers.js";
import { createTestSchema, type TestSchema } from "./pg-helpers.js";

const views = path.join(import.meta.dirname, "..", "fixtures", "views");

interface App {
  pool: pg.Pool;
  db: ReturnType<typeof drizzle<typeof tables>>;
  turbo: Turbo;
  log: LogEntry[];
  close(): Promise<void>;
}

let schema: TestSchema;
let apps: App[] = [];

/** A Drizzle node-postgres db whose search_path is the test's schema, and a running turbocast over it. */
async function openApp(options: Partial<TurboOptions> = {}): Promise<App> {
  const pool = schema.pool();
  const db = drizzle(pool, { schema: tables });
  const logger = memoryLogger();
  const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true });
  const turbo = await createTurbo({ db, views: env, streams: pgCaptureStreams, logger, ...options });
  const app: App = {
    pool,
    db,
    turbo,
    log: logger.entries,
    close: () => turbo.close(),
  };
  apps.push(app);
  return app;
}

const saves = (table = "items"): HookCall[] => recorder.calls.filter((c) => c.table === table);
const bodies = (): unknown[] => saves().map((c) => c.entity.body);

async function logRows(): Promise<Array<{ seq: number; tbl: string; op: string; body: string }>> {
  const { rows } = await schema.admin.query(
    `SELECT seq::int, tbl, op, row_data->>'body' AS body FROM "${schema.name}"._turbocast_changes ORDER BY seq`,
  );
  return rows;
}

/** Runs SQL through the psql command-line client, as another service or an operator would. */
function psql(statements: string): void {
  const result = spawnSync(
    "psql",
    [schema.url, "-v", "ON_ERROR_STOP=1", "-q", "-c", `SET search_path = "${schema.name}"; ${statements}`],
    {
      encoding: "utf8",
    },
  );
  if (result.status !== 0) throw new Error(`psql failed: ${result.stderr}`);
}

beforeEach(async () => {
  schema = await createTestSchema("tccap");
  await schema.admin.query(`SET search_path = "${schema.name}"; ${DDL}`);
  recorder.reset();
});

afterEach(async () => {
  for (const app of apps.splice(0)) await app.close();
  recorder.reset();
  await schema.drop();
});

describe("every write to a bound PostgreSQL table reaches its hooks once, after commit", () => {
  it("dispatches Drizzle insert, update and delete to onSave / onDelete, with .stream on the entity", async () => {
    const { db } = await openApp();
    const [created] = await db.insert(items).values({ body: "first" }).returning();
    await waitFor(() => recorder.calls.length === 1);
    await db.update(items).set({ body: "edited", version: 1 }).where(eq(items.id, created!.id));
    await waitFor(() => recorder.calls.length === 2);
    await db.delete(items).where(eq(items.id, created!.id));
    await waitFor(() => recorder.calls.length === 3);
    const stream = PgItemStream.for(created!).name;
    expect(recorder.calls).toEqual([
      {
        table: "items",
        hook: "onSave",
        created: true,
        entity: { id: 1, body: "first", version: 0 },
        stream,
        entityStream: stream,
        thisEntity: true,
        // version: the change's seq, the same in every process (as on SQLite)
        context: {
          created: true,
          previous: undefined,
          changed: ["id", "body", "version"],
          version: 1,
          actor: undefined,
        },
      },
      {
        table: "items",
        hook: "onSave",
        created: false,
        entity: { id: 1, body: "edited", version: 1 },
        stream,
        entityStream: stream,
        thisEntity: true,
        context: {
          created: false,
          previous: { id: 1, body: "first", version: 0 },
          changed: ["body", "version"],
          version: 2,
          actor: undefined,
        },
      },
      {
        table: "items",
        hook: "onDelete",
        created: undefined,
        entity: { id: 1, body: "edited", version: 1 },
        stream,
        entityStream: stream,
        thisEntity: true,
        context: { version: 3, actor: undefined },
      },
    ]);
    expect(JSON.stringify(recorder.calls[0]!.entity)).toBe(`{"id":1,"body":"first","version":0}`);
    expect((await logRows()).map((r) => r.op)).toEqual(["insert", "update", "delete"]);
  });

  it("dispatches every writer's commit at once (NOTIFY), without waiting for the poll", async () => {
    const { db, pool } = await openApp({ capture: { pollIntervalMs: 60_000 } });
    const started = Date.now();
    await db.insert(items).values({ body: "prompt" });
    await waitFor(() => recorder.calls.length === 1, { timeoutMs: 2000 });
    expect(Date.now() - started).toBeLessThan(2000);
    await Promise.all(Array.from({ length: 20 }, (_, i) => db.insert(items).values({ body: `burst ${i}` })));
    await pool.query("INSERT INTO items (body) VALUES ('bypassing Drizzle')");
    psql("INSERT INTO items (body) VALUES ('from psql')");
    await waitFor(() => recorder.calls.length === 23, { timeoutMs: 2000 });
    expect(new Set(bodies()).size).toBe(23);
  });

  it("dispatches raw SQL run through db.execute(sql`...`)", async () => {
    const { db } = await openApp();
    await db.execute(sql`INSERT INTO items (body) VALUES ('raw one'), ('raw two')`);
    await waitFor(() => recorder.calls.length === 2);
    await db.execute(sql`UPDATE items SET version = version + 1 WHERE body = 'raw two'`);
    await waitFor(() => recorder.calls.length === 3);
    await db.execute(sql`DELETE FROM items WHERE body = 'raw one'`);
    await waitFor(() => recorder.calls.length === 4);
    expect(recorder.calls.map((c) => [c.hook, c.created, c.entity.body, c.entity.version])).toEqual([
      ["onSave", true, "raw one", 0],
      ["onSave", true, "raw two", 0],
      ["onSave", false, "raw two", 1],
      ["onDelete", undefined, "raw one", 0],
    ]);
  });

  it("dispatches writes made through psql", async () => {
    await openApp();
    psql("INSERT INTO items (body) VALUES ('psql one'); UPDATE items SET version = 5; DELETE FROM items");
    await waitFor(() => recorder.calls.length === 3);
    expect(recorder.calls.map((c) => [c.hook, c.created, c.entity.body, c.entity.version])).toEqual([
      ["onSave", true, "psql one", 0],
      ["onSave", false, "psql one", 5],
      ["onDelete", undefined, "psql one", 5],
    ]);
  });

  it("treats an upsert by what it did: an insert, an update, or nothing", async () => {
    const { db } = await openApp();
    const upsert = (body: string) =>
      db.insert(items).values({ id: 1, body }).onConflictDoUpdate({ target: items.id, set: { body } });
    await upsert("new");
    await upsert("changed");
    await upsert("changed");
    await db.insert(items).values({ id: 1, body: "ignored" }).onConflictDoNothing();
    await db.insert(items).values({ id: 2, body: "marker" });
    await waitFor(() => bodies().includes("marker"));
    expect(recorder.calls.map((c) => [c.created, c.entity.body])).toEqual([
      [true, "new"],
      [false, "changed"],
      [true, "marker"],
    ]);
  });

  it("turns one 10,000-row UPDATE into 10,000 onSave calls, in seq order, in batches that yield to the event loop", async () => {
    const { db, pool } = await openApp({ capture: { batchSize: 100 } });
    await pool.query("INSERT INTO items (body) SELECT 'row ' || g FROM generate_series(1, 10000) g");
    await waitFor(() => recorder.calls.length === 10_000, { timeoutMs: 30_000 });
    recorder.calls = [];
    let callsWhenLoopTurned: number | undefined;
    recorder.behaviour = () => {
      if (recorder.calls.length === 1) setImmediate(() => (callsWhenLoopTurned = recorder.calls.length));
    };
    const started = performance.now();
    const result = await db.update(items).set({ version: 7 });
    expect(result.rowCount).toBe(10_000);
    await waitFor(() => recorder.calls.length === 10_000, { timeoutMs: 30_000 });
    console.log(`[postgres] 10,000-row UPDATE dispatched in ${(performance.now() - started).toFixed(0)} ms`);
    expect(recorder.calls.map((c) => c.entity.id)).toEqual(Array.from({ length: 10_000 }, (_, i) => i + 1));
    expect(recorder.calls.every((c) => c.hook === "onSave" && c.created === false && c.entity.version === 7)).toBe(
      true,
    );
    expect(callsWhenLoopTurned).toBe(100);
  }, 60_000);

  it("spaces its claims under a stream of writes (each takes the changes of a span), and dispatches each once, in order", async () => {
    const { db } = await openApp();
    await db.insert(items).values({ body: "warm-up" });
    await waitFor(() => bodies().includes("warm-up"));
    recorder.calls = [];
    const claims: Array<{ start: number; ms: number; changes: number }> = [];
    const claim = PgChangeLog.prototype.completeAndClaim;
    const spy = vi.spyOn(PgChangeLog.prototype, "completeAndClaim").mockImplementation(async function (
      this: PgChangeLog,
      ...args
    ) {
      const start = performance.now();
      const changes = await claim.apply(this, args);
      claims.push({ start, ms: performance.now() - start, changes: changes.length });
      return changes;
    });
    try {
      // one insert at a time, as requests arrive: without spacing, the feed claims again as soon as its last
      // claim is back (about one claim per insert, each a round trip that commits)
      for (let i = 0; i < 200; i++) await db.insert(items).values({ body: `row ${i}` });
      await waitFor(() => recorder.calls.length === 200);
    } finally {
      spy.mockRestore();
    }
    expect(bodies()).toEqual(Array.from({ length: 200 }, (_, i) => `row ${i}`));
    const taking = claims.filter((c) => c.changes > 0);
    const gaps = taking.slice(1).map((c, i) => c.start - taking[i]!.start);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
    // the spacing is 16 claim durations (20 ms at most): well over the claim itself
    expect(median(gaps)).toBeGreaterThan(1.5 * median(claims.map((c) => c.ms)));
    expect(taking.length).toBeLessThan(100);
  }, 30_000);

  it("never dispatches a rolled-back transaction", async () => {
    const { db } = await openApp();
    await expect(
      db.transaction(async (tx) => {
        await tx.insert(items).values({ body: "ghost 1" });
        tx.rollback();
      }),
    ).rejects.toThrow(/Rollback/);
    await expect(
      db.transaction(async (tx) => {
        await tx.insert(items).values({ body: "ghost 2" });
        await tx.update(items).set({ body: "ghost 3" });
        throw new Error("handler failed");
      }),
    ).rejects.toThrow("handler failed");
    await db.insert(items).values({ body: "committed" });
    await waitFor(() => bodies().includes("committed"));
    await turboDrained();
    expect(bodies()).toEqual(["committed"]);
    expect((await logRows()).map((r) => r.body)).toEqual(["committed"]);
  });

  it("does not dispatch an UPDATE that changes no column (turbo-rails #610)", async () => {
    const { db } = await openApp();
    await db.insert(items).values({ body: "same" });
    await waitFor(() => recorder.calls.length === 1);
    await db.update(items).set({ body: "same" }).where(eq(items.id, 1));
    await db.execute(sql`UPDATE items SET body = body, version = version`);
    await db.update(items).set({ version: 2 }).where(eq(items.id, 1));
    await waitFor(() => recorder.calls.length === 2);
    expect(recorder.calls.map((c) => [c.created, c.entity.version])).toEqual([
      [true, 0],
      [false, 2],
    ]);
    expect((await logRows()).map((r) => r.op)).toEqual(["insert", "update"]);
  });

  it("logs a throwing hook (and a throwing template) with table, key and seq, then dispatches the next change", async () => {
    const app = await openApp();
    recorder.behaviour = (call, stream) => {
      if (call.entity.body === "boom") throw new Error("kaboom");
      if (call.entity.body === "bad template") return stream.append("broken.njk", {}, { target: "items" });
      return undefined;
    };
    await app.db.insert(items).values([{ body: "boom" }, { body: "bad template" }]);
    await app.db.insert(items).values({ body: "fine" });
    await waitFor(() => bodies().includes("fine"));
    expect(bodies()).toEqual(["boom", "bad template", "fine"]);
    const errors = app.log.filter((e) => e.level === "error");
    expect(errors).toHaveLength(2);
    expect(errors[0]!.message).toMatch(/PgItemStream\.onSave failed for table "items" key 1 \(change 1\): kaboom/);
    expect(errors[0]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 1, seq: 1 });
    expect(errors[1]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 2, seq: 2 });
    expect(errors[1]!.details!.error).toBeInstanceOf(TemplateRenderError);
  });

  it("gives up waiting for an async hook after hookTimeoutMs, logs it, and goes on", async () => {
    const app = await openApp({ capture: { hookTimeoutMs: 100 } });
    recorder.behaviour = (call) => (call.entity.body === "hang" ? new Promise(() => {}) : Promise.resolve());
    await app.db.insert(items).values([{ body: "hang" }, { body: "next" }]);
    await waitFor(() => recorder.calls.length === 2);
    expect(bodies()).toEqual(["hang", "next"]);
    const [error] = app.log.filter((e) => e.level === "error");
    expect(error!.message).toMatch(
      /PgItemStream\.onSave failed for table "items" key 1 \(change 1\): did not settle within 100 ms/,
    );
  });

  it("decodes every column through the Drizzle column, equal to what db.select() reads", async () => {
    const { db } = await openApp();
    await db.insert(kinds).values({
      id: 1,
      at: new Date("2024-05-06T07:08:09.123Z"),
      flag: true,
      doc: { tags: ["a", "b"], n: 3 },
      big: 9_007_199_254_740_993n,
      amount: "12.50",
      uid: "0b5e6f4c-3c56-4c0b-9f0e-2d7a1c2b3a40",
      tags: ["x", "y z"],
    });
    await db.insert(kinds).values({ id: 2 });
    await waitFor(() => recorder.calls.length === 2);
    const [one, two] = await db.select().from(kinds).orderBy(kinds.id);
    expect(recorder.calls[0]!.entity).toEqual(one);
    expect(recorder.calls[1]!.entity).toEqual(two);
    expect(recorder.calls[0]!.entity.big).toBe(9_007_199_254_740_993n);
    expect(recorder.calls[0]!.entity.amount).toBe("12.50");
    await db.update(kinds).set({ flag: false }).where(eq(kinds.id, 1));
    await db.delete(kinds).where(eq(kinds.id, 1));
    await waitFor(() => recorder.calls.length === 4);
    expect(recorder.calls[2]!.entity).toEqual({ ...one, flag: false });
    expect(recorder.calls[3]!).toMatchObject({ hook: "onDelete", entity: { ...one, flag: false } });
  });

  it("writes to tables no stream binds reach no hook and leave no log row", async () => {
    const { db } = await openApp();
    await db.insert(plain).values({ id: 1, body: "nobody listens" });
    await db.insert(items).values({ body: "marker" });
    await waitFor(() => recorder.calls.length === 1);
    expect((await logRows()).map((r) => r.tbl)).toEqual(["items"]);
  });

  it("runs the hooks of a write made inside a request inside that request's id, as on SQLite", async () => {
    const app = await openApp();
    const seen: Array<string | undefined> = [];
    recorder.behaviour = () => void seen.push(currentRequestId());
    // awaited inside the scope, as a route handler awaits: a Drizzle builder runs when awaited
    await runInRequest({ requestId: "req-1" }, async () => {
      await app.db.insert(items).values({ body: "in a request" });
    });
    await runInRequest({ requestId: "req-2" }, () =>
      app.db.transaction(async (tx) => {
        await tx.insert(items).values({ body: "in a request's transaction" });
      }),
    );
    await expect(
      runInRequest({ requestId: "req-3" }, async () => {
        await app.db.insert(items).values({ id: 1, body: "duplicate key" });
      }),
    ).rejects.toThrow();
    await app.db.insert(items).values({ body: "outside" });
    psql("INSERT INTO items (body) VALUES ('psql')");
    await waitFor(() => recorder.calls.length === 4);
    expect(bodies()).toEqual(["in a request", "in a request's transaction", "outside", "psql"]);
    expect(seen).toEqual(["req-1", "req-2", undefined, undefined]);
  });

  it("dispatches no change the app wrote inside turbo.suppressingBroadcasts", async () => {
    const app = await openApp();
    await app.turbo.suppressingBroadcasts(async () => {
      await app.db.insert(items).values({ body: "quiet" });
      await app.db.transaction(async (tx) => {
        await tx.insert(items).values({ body: "quiet in a transaction" });
      });
    });
    await app.db.insert(items).values({ body: "heard" });
    await waitFor(() => bodies().includes("heard"));
    await app.turbo.feed.drain();
    expect(bodies()).toEqual(["heard"]);
  });

  it("dispatches changes committed while no app ran when the app starts", async () => {
    psql("INSERT INTO items (body) VALUES ('before')");
    // no triggers yet: the first start installs them; a write after a close() is kept for the next start
    const first = await openApp();
    await first.close();
    apps = [];
    psql("INSERT INTO items (body) VALUES ('while down')");
    await openApp();
    await waitFor(() => bodies().includes("while down"));
    expect(bodies()).toEqual(["while down"]);
  });
});

describe("capture follows the schema", () => {
  it("decodes a column a migration adds while running, with no trigger change", async () => {
    const app = await openApp({ capture: { pollIntervalMs: 50 } });
    await app.pool.query("INSERT INTO notes (id, body) VALUES (1, 'before')");
    await waitFor(() => saves("notes").length === 1);
    expect(saves("notes")[0]!.entity).toEqual({ id: 1, body: "before", mood: undefined });
    expect(app.log.some((e) => e.level === "warn" && e.message.includes("no column mood"))).toBe(true);
    psql("ALTER TABLE notes ADD COLUMN mood text; INSERT INTO notes VALUES (2, 'after', 'happy')");
    await waitFor(() => saves("notes").length === 2);
    expect(saves("notes")[1]!.entity).toEqual({ id: 2, body: "after", mood: "happy" });
    // a dropped column fails no write
    psql("ALTER TABLE notes DROP COLUMN mood; INSERT INTO notes VALUES (3, 'dropped')");
    await waitFor(() => saves("notes").length === 3);
    expect(saves("notes")[2]!.entity).toEqual({ id: 3, body: "dropped", mood: undefined });
  });

  it("starts without a bound table that does not exist yet, and captures it once a migration creates it", async () => {
    await schema.admin.query(`DROP TABLE "${schema.name}".notes`);
    const app = await openApp({ capture: { pollIntervalMs: 50 } });
    expect(app.log.some((e) => e.message.includes('table "notes" does not exist yet'))).toBe(true);
    psql("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL, mood text)");
    await waitFor(async () => {
      const { rows } = await schema.admin.query(
        `SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = '"${schema.name}".notes'::regclass AND tgname LIKE '\\_turbocast\\_%'`,
      );
      return rows[0].n === 4;
    });
    psql("INSERT INTO notes VALUES (1, 'created later', null)");
    await waitFor(() => saves("notes").length === 1);
  });

  it("drops the triggers of tables no longer bound at start, and leaves matching triggers alone", async () => {
    const first = await openApp();
    await first.close();
    apps = [];
    const triggers = async () =>
      (
        await schema.admin.query(
          `SELECT c.relname || '.' || t.tgname AS name FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND t.tgname LIKE '\\_turbocast\\_%' ORDER BY 1`,
          [schema.name],
        )
      ).rows.map((r) => r.name as string);
    expect(await triggers()).toHaveLength(12);
    await openApp({ streams: [PgItemStream] });
    expect(await triggers()).toEqual([
      "items._turbocast_del",
      "items._turbocast_ins",
      "items._turbocast_notify",
      "items._turbocast_upd",
    ]);
  });
});

describe("failures", () => {
  it("survives a terminated connection: reconnects, logs once, dispatches what was committed meanwhile", async () => {
    const app = await openApp({ capture: { pollIntervalMs: 60_000 } });
    await app.db.insert(items).values({ body: "before" });
    await waitFor(() => recorder.calls.length === 1);
    // every connection of this app and its feed (LISTEN and claims) goes
    await schema.admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [
      schema.name,
    ]);
    psql("INSERT INTO items (body) VALUES ('while reconnecting')");
    await waitFor(() => bodies().includes("while reconnecting"), { timeoutMs: 10_000 });
    await app.db.insert(items).values({ body: "after" });
    await waitFor(() => bodies().includes("after"));
    expect(bodies()).toEqual(["before", "while reconnecting", "after"]);
    const lost = app.log.filter((e) => e.message.includes("lost its PostgreSQL LISTEN connection"));
    expect(lost).toHaveLength(1);
    // what was committed meanwhile may have gone out before LISTEN came back (the feed looks again after each batch)
    await waitFor(() => app.log.some((e) => e.message.includes("LISTEN connection is back")));
  });

  it("refuses to start when PostgreSQL is unreachable, leaving nothing running", async () => {
    const pool = new pg.Pool({
      connectionString: "postgres://postgres@127.0.0.1:1/test",
      connectionTimeoutMillis: 2000,
    });
    const db = drizzle(pool, { schema: tables });
    const error = await createTurbo({
      db,
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: pgCaptureStreams,
      logger: memoryLogger(),
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DatabaseUnreachableError);
    expect((error as DatabaseUnreachableError).code).toBe("TURBOCAST_DATABASE_UNREACHABLE");
    expect((error as Error).message).toContain("127.0.0.1:1/test");
    await pool.end();
    // bound for nothing: the classes can be bound again
    const app = await openApp();
    await app.db.insert(items).values({ body: "fine" });
    await waitFor(() => recorder.calls.length === 1);
  });

  it("refuses a pgTable without a primary key, and a db that is neither SQLite nor PostgreSQL, with the usual typed errors", async () => {
    const keyless = pgTable("plain_keyless", { body: text("body") });
    class KeylessStream extends ModelStream<typeof keyless> {
      static override model = keyless;
    }
    const pool = schema.pool();
    const views = new nunjucks.Environment(null, { autoescape: true });
    const noKey = await createTurbo({
      db: drizzle(pool),
      views,
      streams: [KeylessStream],
      logger: memoryLogger(),
    }).catch((e: unknown) => e);
    expect((noKey as { code?: string }).code).toBe("TURBOCAST_TABLE_WITHOUT_PRIMARY_KEY");
    const neither = await createTurbo({
      db: { select() {} } as never,
      views,
      streams: pgCaptureStreams,
      logger: memoryLogger(),
    }).catch((e: unknown) => e);
    expect(neither).toBeInstanceOf(ConfigError);
    expect((neither as Error).message).toMatch(/better-sqlite3.*node-postgres/);
  });

  it("refuses a bound view with CaptureInstallError, installing nothing", async () => {
    await schema.admin.query(
      `DROP TABLE "${schema.name}".notes; CREATE VIEW "${schema.name}".notes AS SELECT id, body, body AS mood FROM "${schema.name}".items`,
    );
    const error = await openApp().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CaptureInstallError);
    expect((error as Error).message).toMatch(/"notes".*view/);
    const { rows } = await schema.admin.query(
      `SELECT count(*)::int AS n FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $1 AND t.tgname LIKE '\\_turbocast\\_%'`,
      [schema.name],
    );
    expect(rows[0].n).toBe(0);
  });
});

/** Waits until the feed of every open app has dispatched everything committed so far. */
async function turboDrained(): Promise<void> {
  for (const app of apps) await app.turbo.feed.drain();
}
