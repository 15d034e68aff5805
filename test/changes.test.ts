import path from "node:path";
import Database from "better-sqlite3";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  type Broker,
  CaptureInstallError,
  ConfigError,
  NotBoundError,
  createTurbo,
  dropCaptureTriggers,
  memoryBroker,
} from "../src/index.js";
import { captureContract } from "./capture/contract.js";
import { type SqliteDatabase, sqliteDialect, turbocastObjects, views } from "./capture/sqlite.js";
import { DDL, items, kinds, notes, schema, tags } from "./fixtures/capture/schema.js";
import { ItemStream, NoteStream, captureStreams, recorder } from "./fixtures/capture/streams.js";
import { type LogEntry, memoryLogger, tempDir, waitFor } from "./helpers.js";

describe("the capture contract on SQLite", () => {
  captureContract(sqliteDialect);
});

describe("capture on SQLite alone", () => {
  let database: SqliteDatabase;

  beforeEach(async () => {
    recorder.reset();
    database = await sqliteDialect.create();
  });

  afterEach(async () => {
    await database.drop();
    recorder.reset();
  });

  const saves = (table = "items") => recorder.calls.filter((c) => c.table === table);
  const bodies = (): unknown[] => saves().map((c) => c.entity.body);
  const triggerSql = (name: string): string =>
    database.inspect
      .prepare("SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?")
      .pluck()
      .get(name) as string;

  describe("dispatch", () => {
    it("dispatches the app's own writes right after commit, without waiting for the poll", async () => {
      const { db } = await database.open({ capture: { pollIntervalMs: 60_000 } });
      const started = Date.now();
      db.insert(items).values({ body: "prompt" }).run();
      await waitFor(() => recorder.calls.length === 1, { timeoutMs: 2000 });
      expect(Date.now() - started).toBeLessThan(2000);
      // many writes in one turn of the event loop: one drain, every change
      for (let i = 0; i < 20; i++)
        db.insert(items)
          .values({ body: `burst ${i}` })
          .run();
      await waitFor(() => recorder.calls.length === 21, { timeoutMs: 2000 });
      expect(bodies().slice(1)).toEqual(Array.from({ length: 20 }, (_, i) => `burst ${i}`));
    });

    it("logs a row its Drizzle column cannot decode, like a hook failure, and goes on", async () => {
      const app = await database.open();
      app.db.run(sql`INSERT INTO kinds (id, blob_doc) VALUES (1, CAST('not json' AS BLOB))`);
      app.db.insert(kinds).values({ id: 2 }).run();
      await waitFor(() => recorder.calls.length === 1);
      expect(recorder.calls[0]!.entity.id).toBe(2);
      const [error] = app.log.filter((e) => e.level === "error");
      expect(error!.message).toMatch(/decoding a row of KindStream failed for table "kinds" key 1 \(change 1\)/);
      expect(error!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "kinds", key: 1, seq: 1 });
    });

    it("captures blobs written by raw SQL into blob columns, of any Drizzle mode", async () => {
      const app = await database.open();
      app.db.run(
        sql`INSERT INTO kinds (id, bytes, blob_doc, big, where_at) VALUES (9, x'00ff10', CAST('{"ok":false}' AS BLOB), CAST('42' AS BLOB), '1,2')`,
      );
      await waitFor(() => recorder.calls.length === 1);
      expect(recorder.calls[0]!.entity).toEqual(app.db.select().from(kinds).get());
      expect([...(recorder.calls[0]!.entity.bytes as Buffer)]).toEqual([0, 255, 16]);
      expect(recorder.calls[0]!.entity.big).toBe(42n);
      expect(recorder.calls[0]!.entity.blobDoc).toEqual({ ok: false });
      expect(recorder.calls[0]!.entity.where).toEqual({ x: 1, y: 2 });
    });

    it("decodes a composite key with a blob part, equal to what db.select() reads", async () => {
      const { db } = await database.open();
      db.insert(tags)
        .values({ owner: Buffer.from([0xde, 0xad]), label: "blob key" })
        .run();
      await waitFor(() => recorder.calls.length === 1);
      expect(recorder.calls[0]!.entity).toEqual(db.select().from(tags).get());
    });

    it("warns once when another feed dispatches the same file's changes while this one uses the in-memory broker", async () => {
      const otherFeedWarning = (log: LogEntry[]) =>
        log.filter((e) => e.level === "warn" && e.message.includes("uses the in-memory broker"));
      const app = await database.open({ capture: { pollIntervalMs: 60_000 } });
      // writers that do not dispatch (another connection, a script) are not another feed
      const writer = new Database(database.file);
      for (let i = 0; i < 3; i++) writer.prepare("INSERT INTO items (body) VALUES (?)").run(`plain ${i}`);
      await app.db.insert(items).values({ body: "own" });
      await waitFor(() => recorder.calls.length === 4);
      expect(otherFeedWarning(app.log)).toEqual([]);

      // a second app on the same file; polls far apart, so only the drains below dispatch
      const second = await database.open({ capture: { pollIntervalMs: 60_000 } });
      try {
        await second.turbo.feed.drain();
        writer.prepare("INSERT INTO items (body) VALUES ('for the first')").run();
        await app.turbo.feed.drain();
        writer.prepare("INSERT INTO items (body) VALUES ('for the second')").run();
        await second.turbo.feed.drain(); // sees done_seq moved past what it dispatched
        writer.prepare("INSERT INTO items (body) VALUES ('for the first again')").run();
        await app.turbo.feed.drain();
        expect(recorder.calls.map((c) => c.entity.body).slice(-3)).toEqual([
          "for the first",
          "for the second",
          "for the first again",
        ]);
        for (let i = 0; i < 3; i++) {
          writer.prepare("INSERT INTO items (body) VALUES (?)").run(`more ${i}`);
          await (i % 2 === 0 ? second : app).turbo.feed.drain();
        }
        expect(otherFeedWarning(second.log)).toHaveLength(1);
        expect(otherFeedWarning(app.log)).toHaveLength(1);
      } finally {
        writer.close();
      }
    });
  });

  describe("triggers follow the schema", () => {
    it("regenerates a table's triggers after ALTER TABLE ADD COLUMN, by the app's connection or another, while running and at start", async () => {
      const app = await database.open();
      // a migration through the app's own connection: the triggers follow before the next turn of the event loop
      app.db.run(sql`ALTER TABLE notes ADD COLUMN mood TEXT`);
      await app.turbo.feed.drain();
      expect(triggerSql("_turbocast_notes_ins")).toContain(`'mood'`);
      app.db.insert(notes).values({ id: 2, body: "after", mood: "happy" }).run();
      await waitFor(() => saves("notes").length === 1);
      expect(saves("notes")[0]!.entity).toEqual({ id: 2, body: "after", mood: "happy" });
      expect(triggerSql("_turbocast_notes_ins")).toContain(`'mood'`);

      // a migration by another connection while the app runs: picked up by the poll
      await database.execute("ALTER TABLE notes ADD COLUMN extra TEXT");
      await waitFor(() => triggerSql("_turbocast_notes_upd").includes(`'extra'`));
      // and while the app is down: at start
      await app.close();
      await database.execute("ALTER TABLE notes ADD COLUMN later INTEGER");
      const again = await database.open();
      expect(triggerSql("_turbocast_notes_del")).toContain(`'later'`);
      again.db.update(notes).set({ mood: "calm" }).where(eq(notes.id, 2)).run();
      await waitFor(() => saves("notes").length === 2);
      expect(saves("notes")[1]!.entity).toEqual({ id: 2, body: "after", mood: "calm" });
    });

    it("lets a migration drop a column of a bound table after dropCaptureTriggers, and puts the triggers back", async () => {
      const app = await database.open({ capture: { pollIntervalMs: 20 } });
      const other = new Database(database.file);
      try {
        other.exec("ALTER TABLE items ADD COLUMN legacy TEXT");
        await waitFor(() => triggerSql("_turbocast_items_ins").includes("'legacy'"));
        expect(() => other.exec("ALTER TABLE items DROP COLUMN legacy")).toThrow(/trigger/);
        other.transaction(() => {
          expect(dropCaptureTriggers(other, "items").sort()).toEqual([
            "_turbocast_items_del",
            "_turbocast_items_ins",
            "_turbocast_items_upd",
          ]);
          other.exec("ALTER TABLE items DROP COLUMN legacy");
        })();
      } finally {
        other.close();
      }
      await waitFor(() => triggerSql("_turbocast_items_ins") !== undefined);
      expect(triggerSql("_turbocast_items_ins")).not.toContain("legacy");
      app.db.insert(items).values({ body: "after the migration" }).run();
      await waitFor(() => recorder.calls.length === 1);
      expect(recorder.calls[0]!.entity).toEqual({ id: 1, body: "after the migration", version: 0 });
    });

    it("leaves matching triggers alone: a restart with the same bindings rewrites nothing", async () => {
      const { inspect } = database;
      const first = await database.open();
      const before = inspect.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name").all();
      expect(turbocastObjects(inspect)).toEqual([
        "_turbocast_changes",
        "_turbocast_cursor",
        ...["items", "kinds", "notes", "tags"].flatMap((t) => [
          `_turbocast_${t}_del`,
          `_turbocast_${t}_ins`,
          `_turbocast_${t}_upd`,
        ]),
      ]);
      const schemaVersion = inspect.pragma("schema_version", { simple: true });
      await first.close();

      await database.open();
      expect(inspect.pragma("schema_version", { simple: true })).toBe(schemaVersion);
      expect(inspect.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name").all()).toEqual(
        before,
      );
    });
  });

  describe("the change log", () => {
    it("marks a drain's last batch done by the next claim, or soon after, and at once on drain()", async () => {
      const app = await database.open();
      app.db.insert(items).values({ body: "a" }).run();
      await waitFor(() => recorder.calls.length === 1);
      // dispatched; the feed keeps the cursor a moment, for the next drain to mark it done as it claims
      app.db.insert(items).values({ body: "b" }).run();
      await waitFor(() => recorder.calls.length === 2);
      await waitFor(async () => (await database.cursor()).owner === null, {
        message: "cursor given back when no drain followed",
      });
      expect(await database.cursor()).toMatchObject({ done: 2, owner: null });
      app.db.insert(items).values({ body: "c" }).run();
      await app.turbo.feed.drain();
      expect(await database.cursor()).toMatchObject({ done: 3, owner: null });
    });

    it("prunes dispatched changes older than the retained age, keeping the newest row so seq is never reused", async () => {
      const app = await database.open({ capture: { pollIntervalMs: 20, retain: { count: 10_000, ageMs: 0 } } });
      for (let i = 0; i < 5; i++)
        app.db
          .insert(items)
          .values({ body: `n${i}` })
          .run();
      await waitFor(() => recorder.calls.length === 5);
      await waitFor(async () => (await database.logRows()).length === 1);
      expect((await database.logRows())[0]!.seq).toBe(5);
      app.db.insert(items).values({ body: "next" }).run();
      await waitFor(() => recorder.calls.length === 6);
      expect((await database.logRows()).map((r) => r.seq)).toContain(6);
    });
  });

  describe("lifecycle", () => {
    it("close() waits for the change being dispatched, gives back the rest, and the next start dispatches them", async () => {
      const app = await database.open();
      let release!: () => void;
      const slow = new Promise<void>((resolve) => (release = resolve));
      recorder.behaviour = (call) => (call.entity.body === "slow" ? slow : undefined);
      app.db.transaction((tx) => {
        tx.insert(items).values({ body: "slow" }).run();
        tx.insert(items).values({ body: "queued" }).run();
      });
      await waitFor(() => recorder.calls.length === 1);
      expect(app.turbo.feed.state).toBe("running");
      const closed = app.turbo.close();
      expect(app.turbo.feed.state).toBe("closing");
      let closeResolved = false;
      void closed.then(() => (closeResolved = true));
      await new Promise((resolve) => setImmediate(resolve));
      expect(closeResolved).toBe(false);
      release();
      await closed;
      expect(app.turbo.feed.state).toBe("closed");
      await app.turbo.close(); // twice is fine
      expect(bodies()).toEqual(["slow"]);
      expect((await database.logRows()).map((r) => [r.body, r.done])).toEqual([
        ["slow", true],
        ["queued", false],
      ]);
      expect((await database.cursor()).owner).toBeNull();
      await app.close();
      await database.open();
      await waitFor(() => recorder.calls.length === 2);
      expect(bodies()).toEqual(["slow", "queued"]);
    });

    it("rejects bad capture options at once", async () => {
      const sqlite = new Database(database.file);
      try {
        for (const capture of [
          { batchSize: 0 },
          { pollIntervalMs: 2.5 },
          { leaseMs: -1 },
          { hookTimeoutMs: 0 },
          { retain: { count: -1 } },
        ]) {
          const error = await createTurbo({
            db: drizzle(sqlite),
            views,
            streams: [],
            capture,
            logger: memoryLogger(),
          }).catch((e: unknown) => e);
          expect(error).toBeInstanceOf(ConfigError);
          expect((error as ConfigError).message).toMatch(/capture\./);
        }
      } finally {
        sqlite.close();
      }
    });
  });
});

describe("a createTurbo that throws leaves nothing running", () => {
  // a file of their own, without the capture tables
  let tmp: { dir: string; cleanup: () => void };
  beforeEach(() => {
    tmp = tempDir("turbocast-capture-start-");
    recorder.reset();
  });
  afterEach(() => {
    recorder.reset();
    tmp.cleanup();
  });

  /** Records every timer and immediate created while it is on, and which are still pending. */
  function trackTimers() {
    const live = new Set<unknown>();
    const real = { setInterval, clearInterval, setTimeout, clearTimeout, setImmediate, clearImmediate };
    const spies = [
      vi.spyOn(globalThis, "setInterval").mockImplementation(((fn: () => void, ms?: number) => {
        const handle = real.setInterval(fn, ms);
        live.add(handle);
        return handle;
      }) as typeof setInterval),
      vi.spyOn(globalThis, "clearInterval").mockImplementation(((handle: NodeJS.Timeout) => {
        live.delete(handle);
        real.clearInterval(handle);
      }) as typeof clearInterval),
      vi.spyOn(globalThis, "setTimeout").mockImplementation(((fn: () => void, ms?: number) => {
        const handle: NodeJS.Timeout = real.setTimeout(() => {
          live.delete(handle);
          fn();
        }, ms);
        live.add(handle);
        return handle;
      }) as typeof setTimeout),
      vi.spyOn(globalThis, "clearTimeout").mockImplementation(((handle: NodeJS.Timeout) => {
        live.delete(handle);
        real.clearTimeout(handle);
      }) as typeof clearTimeout),
      vi.spyOn(globalThis, "setImmediate").mockImplementation(((fn: () => void) => {
        const handle: NodeJS.Immediate = real.setImmediate(() => {
          live.delete(handle);
          fn();
        });
        live.add(handle);
        return handle;
      }) as typeof setImmediate),
      vi.spyOn(globalThis, "clearImmediate").mockImplementation(((handle: NodeJS.Immediate) => {
        live.delete(handle);
        real.clearImmediate(handle);
      }) as typeof clearImmediate),
    ];
    return {
      live,
      restore: () => {
        for (const s of spies) s.mockRestore();
      },
    };
  }

  it("when a bound table is a view: no trigger, no change log, no timer, no instrumentation", async () => {
    const sqlite = new Database(path.join(tmp.dir, "app.db"));
    sqlite.exec(`CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0);
      CREATE VIEW notes AS SELECT id, body, NULL AS mood FROM items;`);
    const db = drizzle(sqlite, { schema });
    const timers = trackTimers();
    let error: unknown;
    try {
      error = await createTurbo({ db, views, streams: [ItemStream, NoteStream], logger: memoryLogger() }).catch(
        (e: unknown) => e,
      );
    } finally {
      timers.restore();
    }
    try {
      expect(error).toBeInstanceOf(CaptureInstallError);
      expect((error as CaptureInstallError).code).toBe("TURBOCAST_CAPTURE_INSTALL_FAILED");
      expect((error as Error).message).toMatch(/"notes".*view/);
      expect(turbocastObjects(sqlite)).toEqual([]);
      expect(timers.live.size).toBe(0);
      expect(() => ItemStream.for(1).remove({ target: "x" })).toThrow(NotBoundError);
      // no hook hears a write, and the db is free for a createTurbo that works
      db.insert(items).values({ body: "after failure" }).run();
      const turbo = await createTurbo({ db, views, streams: [ItemStream], logger: memoryLogger() });
      await turbo.feed.drain();
      expect(recorder.calls).toEqual([]);
      db.insert(items).values({ body: "captured" }).run();
      await waitFor(() => recorder.calls.length === 1);
      await turbo.close();
    } finally {
      sqlite.close();
    }
  });

  it("when the broker cannot start: no trigger, no timer", async () => {
    const sqlite = new Database(path.join(tmp.dir, "app.db"));
    sqlite.exec(DDL);
    const inner = memoryBroker();
    const broker: Broker = {
      kind: "failing",
      start: async () => {
        throw new Error("broker unreachable");
      },
      publish: (s, f) => inner.publish(s, f),
      history: (s, a) => inner.history(s, a),
      head: () => inner.head(),
      control: (m) => inner.control(m),
      close: () => inner.close(),
    };
    const timers = trackTimers();
    let error: unknown;
    try {
      error = await createTurbo({
        db: drizzle(sqlite, { schema }),
        views,
        streams: captureStreams,
        broker,
        logger: memoryLogger(),
      }).catch((e: unknown) => e);
    } finally {
      timers.restore();
    }
    try {
      expect((error as Error).message).toBe("broker unreachable");
      expect(turbocastObjects(sqlite)).toEqual([]);
      expect(timers.live.size).toBe(0);
    } finally {
      sqlite.close();
    }
  });
});
