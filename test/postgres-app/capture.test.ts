import { drizzle } from "drizzle-orm/node-postgres";
import { pgTable, text } from "drizzle-orm/pg-core";
import nunjucks from "nunjucks";
import pg from "pg";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  CaptureInstallError,
  ConfigError,
  DatabaseUnreachableError,
  ModelStream,
  createTurbo,
} from "../../src/index.js";
import { PgChangeLog } from "../../src/changes/postgres/log.js";
import { currentRequestId, runInRequest } from "../../src/delivery/request-context.js";
import { captureContract } from "../capture/contract.js";
import { type PostgresDatabase, postgresDialect } from "../capture/postgres.js";
import { recorder } from "../fixtures/capture/streams.js";
import { items, schema as tables } from "../fixtures/capture-pg/schema.js";
import { captureStreams } from "../fixtures/capture-pg/streams.js";
import { memoryLogger, waitFor } from "../helpers.js";

describe("the capture contract on PostgreSQL", () => {
  captureContract(postgresDialect);
});

describe("capture on PostgreSQL alone", () => {
  let database: PostgresDatabase;

  beforeEach(async () => {
    recorder.reset();
    database = await postgresDialect.create();
  });

  afterEach(async () => {
    await database.drop();
    recorder.reset();
  });

  const saves = (table = "items") => recorder.calls.filter((c) => c.table === table);
  const bodies = (): unknown[] => saves().map((c) => c.entity.body);

  const psql = (statements: string): void => database.schema.psql(statements);

  describe("dispatch", () => {
    it("dispatches every writer's commit at once (NOTIFY), without waiting for the poll", async () => {
      const { db, pool } = await database.open({ capture: { pollIntervalMs: 60_000 } });
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

    it("spaces its claims under a stream of writes (each takes the changes of a span), and dispatches each once, in order", async () => {
      const { db } = await database.open();
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

    it("runs the hooks of a write made inside a request inside that request's id, as on SQLite", async () => {
      const app = await database.open();
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
      const app = await database.open();
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

    it("decodes a column another writer's migration adds, and fails no write when one drops it", async () => {
      await database.open({ capture: { pollIntervalMs: 50 } });
      psql("ALTER TABLE notes ADD COLUMN mood text; INSERT INTO notes VALUES (2, 'after', 'happy')");
      await waitFor(() => saves("notes").length === 1);
      expect(saves("notes")[0]!.entity).toEqual({ id: 2, body: "after", mood: "happy" });
      // a dropped column fails no write
      psql("ALTER TABLE notes DROP COLUMN mood; INSERT INTO notes VALUES (3, 'dropped')");
      await waitFor(() => saves("notes").length === 2);
      expect(saves("notes")[1]!.entity).toEqual({ id: 3, body: "dropped", mood: undefined });
    });
  });

  describe("failures", () => {
    it("survives a terminated connection: reconnects, logs once, dispatches what was committed meanwhile", async () => {
      const { schema } = database;
      const app = await database.open({ capture: { pollIntervalMs: 60_000 } });
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
        streams: captureStreams,
        logger: memoryLogger(),
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DatabaseUnreachableError);
      expect((error as DatabaseUnreachableError).code).toBe("TURBOCAST_DATABASE_UNREACHABLE");
      expect((error as Error).message).toContain("127.0.0.1:1/test");
      await pool.end();
      // bound for nothing: the classes can be bound again
      const app = await database.open();
      await app.db.insert(items).values({ body: "fine" });
      await waitFor(() => recorder.calls.length === 1);
    });

    it("refuses a pgTable without a primary key, and a db that is neither SQLite nor PostgreSQL, with the usual typed errors", async () => {
      const keyless = pgTable("plain_keyless", { body: text("body") });
      class KeylessStream extends ModelStream<typeof keyless> {
        static override model = keyless;
      }
      const pool = database.schema.pool();
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
        streams: captureStreams,
        logger: memoryLogger(),
      }).catch((e: unknown) => e);
      expect(neither).toBeInstanceOf(ConfigError);
      expect((neither as Error).message).toMatch(/better-sqlite3.*node-postgres/);
    });

    it("refuses a bound view with CaptureInstallError, installing nothing", async () => {
      const { schema } = database;
      await schema.admin.query(
        `DROP TABLE "${schema.name}".notes; CREATE VIEW "${schema.name}".notes AS SELECT id, body, body AS mood FROM "${schema.name}".items`,
      );
      const error = await database.open().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(CaptureInstallError);
      expect((error as Error).message).toMatch(/"notes".*view/);
      expect(await database.captureObjects()).toEqual([]);
    });
  });
});
