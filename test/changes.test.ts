import { spawnSync } from "node:child_process";
import path from "node:path";
import Database from "better-sqlite3";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import nunjucks from "nunjucks";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  type Broker,
  BrokerError,
  CaptureInstallError,
  ConfigError,
  dropCaptureTriggers,
  HookError,
  NotBoundError,
  TemplateRenderError,
  type Turbo,
  type TurboOptions,
  createTurbo,
  memoryBroker,
} from "../src/index.js";
import { DDL, items, kinds, notes, plain, schema, tags } from "./fixtures/capture/schema.js";
import { type HookCall, ItemStream, NoteStream, captureStreams, recorder } from "./fixtures/capture/streams.js";
import { type LogEntry, memoryLogger, tempDir, waitFor } from "./helpers.js";

const views = path.join(import.meta.dirname, "fixtures", "views");

interface App {
  file: string;
  sqlite: Database.Database;
  db: ReturnType<typeof drizzle<typeof schema>>;
  turbo: Turbo;
  log: LogEntry[];
  close(): Promise<void>;
}

/** A real SQLite file in WAL mode with the capture schema, a Drizzle db over it, and a running turbocast. */
async function openApp(file: string, options: Partial<TurboOptions> = {}): Promise<App> {
  const sqlite = new Database(file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(DDL);
  const db = drizzle(sqlite, { schema });
  const logger = memoryLogger();
  const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true });
  const turbo = await createTurbo({ db, views: env, streams: captureStreams, logger, ...options });
  return {
    file,
    sqlite,
    db,
    turbo,
    log: logger.entries,
    async close() {
      await turbo.close();
      sqlite.close();
    },
  };
}

const saves = (table = "items"): HookCall[] => recorder.calls.filter((c) => c.table === table);
const bodies = (): unknown[] => saves().map((c) => c.entity.body);
const logRows = (
  sqlite: Database.Database,
): Array<{ seq: number; tbl: string; op: string; row_json: string; done: 0 | 1 }> =>
  sqlite
    .prepare(
      "SELECT seq, tbl, op, row_json, seq <= (SELECT done_seq FROM _turbocast_cursor) AS done FROM _turbocast_changes ORDER BY seq",
    )
    .all() as never;
const turbocastObjects = (sqlite: Database.Database): string[] =>
  sqlite
    .prepare("SELECT name FROM sqlite_schema WHERE name LIKE '\\_turbocast\\_%' ESCAPE '\\' ORDER BY name")
    .pluck()
    .all() as string[];

let tmp: { dir: string; cleanup: () => void };
let app: App | undefined;

beforeEach(() => {
  tmp = tempDir("turbocast-capture-");
  recorder.reset();
});

afterEach(async () => {
  await app?.close();
  app = undefined;
  recorder.reset();
  tmp.cleanup();
});

describe("every write to a bound table reaches its hooks once, after commit", () => {
  it("dispatches Drizzle insert, update and delete to onSave / onDelete, with .stream on the entity", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const { db } = app;
    const [created] = db.insert(items).values({ body: "first" }).returning().all();
    await waitFor(() => recorder.calls.length === 1);
    db.update(items).set({ body: "edited", version: 1 }).where(eq(items.id, created!.id)).run();
    await waitFor(() => recorder.calls.length === 2);
    db.delete(items).where(eq(items.id, created!.id)).run();
    await waitFor(() => recorder.calls.length === 3);

    expect(recorder.calls).toEqual([
      {
        table: "items",
        hook: "onSave",
        created: true,
        entity: { id: 1, body: "first", version: 0 },
        stream: "row:items:1",
        entityStream: "row:items:1",
        thisEntity: true,
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
        stream: "row:items:1",
        entityStream: "row:items:1",
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
        stream: "row:items:1",
        entityStream: "row:items:1",
        thisEntity: true,
        context: { version: 3, actor: undefined },
      },
    ]);
    // .stream stays invisible to JSON
    expect(JSON.stringify(recorder.calls[0]!.entity)).toBe(`{"id":1,"body":"first","version":0}`);
    await waitFor(() => logRows(app!.sqlite).every((r) => r.done === 1));
    expect(logRows(app.sqlite).map((r) => r.op)).toEqual(["insert", "update", "delete"]);
  });

  it("dispatches the app's own writes right after commit, without waiting for the poll", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), { capture: { pollIntervalMs: 60_000 } });
    const started = Date.now();
    app.db.insert(items).values({ body: "prompt" }).run();
    await waitFor(() => recorder.calls.length === 1, { timeoutMs: 2000 });
    expect(Date.now() - started).toBeLessThan(2000);
    // many writes in one turn of the event loop: one drain, every change
    for (let i = 0; i < 20; i++)
      app.db
        .insert(items)
        .values({ body: `burst ${i}` })
        .run();
    await waitFor(() => recorder.calls.length === 21, { timeoutMs: 2000 });
    expect(bodies().slice(1)).toEqual(Array.from({ length: 20 }, (_, i) => `burst ${i}`));
  });

  it("dispatches raw SQL run through db.run(sql`...`)", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const { db } = app;
    db.run(sql`INSERT INTO items (body) VALUES ('raw one'), ('raw two')`);
    await waitFor(() => recorder.calls.length === 2);
    db.run(sql`UPDATE items SET version = version + 1 WHERE body = 'raw two'`);
    await waitFor(() => recorder.calls.length === 3);
    db.run(sql`DELETE FROM items WHERE body = 'raw one'`);
    await waitFor(() => recorder.calls.length === 4);
    expect(recorder.calls.map((c) => [c.hook, c.created, c.entity.body, c.entity.version])).toEqual([
      ["onSave", true, "raw one", 0],
      ["onSave", true, "raw two", 0],
      ["onSave", false, "raw two", 1],
      ["onDelete", undefined, "raw one", 0],
    ]);
  });

  it("treats an upsert by what it did: an insert, an update, or nothing", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const upsert = (body: string) =>
      app!.db.insert(items).values({ id: 1, body }).onConflictDoUpdate({ target: items.id, set: { body } }).run();
    upsert("new");
    upsert("changed");
    upsert("changed");
    app.db.insert(items).values({ id: 1, body: "ignored" }).onConflictDoNothing().run();
    app.db.insert(items).values({ id: 2, body: "marker" }).run();
    await waitFor(() => bodies().includes("marker"));
    expect(recorder.calls.map((c) => [c.created, c.entity.body])).toEqual([
      [true, "new"],
      [false, "changed"],
      [true, "marker"],
    ]);
  });

  it("dispatches writes made on db.$client, bypassing Drizzle (found by the poll)", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), { capture: { pollIntervalMs: 20 } });
    app.sqlite.prepare("INSERT INTO items (body) VALUES (?)").run("bypass");
    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toEqual({ id: 1, body: "bypass", version: 0 });
  });

  it("turns one 1,000-row UPDATE into 1,000 onSave calls, in seq order, in batches that yield to the event loop", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), { capture: { batchSize: 100 } });
    const { db } = app;
    db.transaction((tx) => {
      for (let i = 0; i < 10; i++) {
        tx.insert(items)
          .values(Array.from({ length: 100 }, (_, j) => ({ body: `row ${i * 100 + j}` })))
          .run();
      }
    });
    await waitFor(() => recorder.calls.length === 1000, { timeoutMs: 10_000 });
    expect(recorder.calls.every((c) => c.created === true)).toBe(true);

    recorder.calls = [];
    let callsWhenLoopTurned: number | undefined;
    recorder.behaviour = () => {
      if (recorder.calls.length === 1) setImmediate(() => (callsWhenLoopTurned = recorder.calls.length));
    };
    const result = db.update(items).set({ version: 7 }).run();
    expect(result.changes).toBe(1000);
    await waitFor(() => recorder.calls.length === 1000, { timeoutMs: 10_000 });
    expect(recorder.calls.map((c) => c.entity.id)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    expect(recorder.calls.every((c) => c.hook === "onSave" && c.created === false && c.entity.version === 7)).toBe(
      true,
    );
    // the event loop turned after the first batch, long before the last change
    expect(callsWhenLoopTurned).toBe(100);
  });

  it("never dispatches a rolled-back transaction", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const { db } = app;
    expect(() =>
      db.transaction((tx) => {
        tx.insert(items).values({ body: "ghost 1" }).run();
        tx.rollback();
      }),
    ).toThrow(/Rollback/);
    expect(() =>
      db.transaction((tx) => {
        tx.insert(items).values({ body: "ghost 2" }).run();
        tx.update(items).set({ body: "ghost 3" }).run();
        throw new Error("handler failed");
      }),
    ).toThrow("handler failed");
    db.insert(items).values({ body: "committed" }).run();
    await waitFor(() => bodies().includes("committed"));
    expect(bodies()).toEqual(["committed"]);
    expect(logRows(app.sqlite).map((r) => JSON.parse(r.row_json).body)).toEqual(["committed"]);
  });

  it("does not dispatch an UPDATE that changes no column (turbo-rails #610)", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const { db } = app;
    db.insert(items).values({ body: "same" }).run();
    await waitFor(() => recorder.calls.length === 1);
    db.update(items).set({ body: "same" }).where(eq(items.id, 1)).run();
    db.run(sql`UPDATE items SET body = body, version = version`);
    db.update(items).set({ version: 2 }).where(eq(items.id, 1)).run();
    await waitFor(() => recorder.calls.length === 2);
    expect(recorder.calls.map((c) => [c.created, c.entity.version])).toEqual([
      [true, 0],
      [false, 2],
    ]);
    expect(logRows(app.sqlite).map((r) => r.op)).toEqual(["insert", "update"]);
  });

  it("logs a throwing hook (and a throwing template) with table, key and seq, then dispatches the next change", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    recorder.behaviour = (call, stream) => {
      if (call.entity.body === "boom") throw new Error("kaboom");
      if (call.entity.body === "bad template") return stream.append("broken.njk", {}, { target: "items" });
      return undefined;
    };
    app.db
      .insert(items)
      .values([{ body: "boom" }, { body: "bad template" }])
      .run();
    app.db.insert(items).values({ body: "fine" }).run();
    await waitFor(() => bodies().includes("fine"));
    expect(bodies()).toEqual(["boom", "bad template", "fine"]);
    const errors = app.log.filter((e) => e.level === "error");
    expect(errors).toHaveLength(2);
    expect(errors[0]!.message).toMatch(/ItemStream\.onSave failed for table "items" key 1 \(change 1\): kaboom/);
    expect(errors[0]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 1, seq: 1 });
    expect(errors[1]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 2, seq: 2 });
    expect(errors[1]!.details!.error).toBeInstanceOf(TemplateRenderError);
    expect(new HookError("x", { table: "t", key: 1, seq: 1 }, new Error("y")).code).toBe("TURBOCAST_HOOK_FAILED");
    // every change is done: a failing hook is not retried forever
    await waitFor(() => logRows(app!.sqlite).every((r) => r.done === 1));
  });

  it("logs a row its Drizzle column cannot decode, like a hook failure, and goes on", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    app.db.run(sql`INSERT INTO kinds (id, blob_doc) VALUES (1, CAST('not json' AS BLOB))`);
    app.db.insert(kinds).values({ id: 2 }).run();
    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity.id).toBe(2);
    const [error] = app.log.filter((e) => e.level === "error");
    expect(error!.message).toMatch(/decoding a row of KindStream failed for table "kinds" key 1 \(change 1\)/);
    expect(error!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "kinds", key: 1, seq: 1 });
  });

  it("gives up waiting for an async hook after hookTimeoutMs, logs it, and goes on", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), { capture: { hookTimeoutMs: 100 } });
    recorder.behaviour = (call) => (call.entity.body === "hang" ? new Promise(() => {}) : Promise.resolve());
    app.db
      .insert(items)
      .values([{ body: "hang" }, { body: "next" }])
      .run();
    await waitFor(() => recorder.calls.length === 2);
    expect(bodies()).toEqual(["hang", "next"]);
    const [error] = app.log.filter((e) => e.level === "error");
    expect(error!.message).toMatch(
      /ItemStream\.onSave failed for table "items" key 1 \(change 1\): did not settle within 100 ms/,
    );
  });

  it("logs hooks failing the same way during a broker outage once in full, counts the rest, and reports the count when the hook works again", async () => {
    const inner = memoryBroker();
    let down = true;
    const broker: Broker = {
      kind: "refusing",
      start: (deliver, events) => inner.start(deliver, events),
      publish: (stream, frame) =>
        down ? Promise.reject(new BrokerError("broker unreachable")) : inner.publish(stream, frame),
      history: (streams, after) => inner.history(streams, after),
      head: () => inner.head(),
      control: (message) => inner.control(message),
      close: () => inner.close(),
    };
    app = await openApp(path.join(tmp.dir, "app.db"), { broker });
    // the hook awaits its broadcast, so the refused publish fails the hook
    recorder.behaviour = (_call, stream) => stream.remove({ target: "x" });
    const failing = 20;
    for (let i = 0; i < failing; i++)
      app.db
        .insert(items)
        .values({ body: `m${i}` })
        .run();
    await waitFor(() => recorder.calls.length === failing && logRows(app!.sqlite).every((r) => r.done === 1));
    const errors = app.log.filter((e) => e.level === "error");
    expect(errors).toHaveLength(1);
    expect(errors[0]!.message).toMatch(
      /ItemStream\.onSave failed for table "items" key 1 \(change 1\): broker unreachable/,
    );
    expect(errors[0]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 1, seq: 1 });
    // the publisher logs the outage once as well
    expect(app.log.filter((e) => e.level === "warn" && /broadcast to .* failed/.test(e.message))).toHaveLength(1);

    down = false;
    app.db.insert(items).values({ body: "back" }).run();
    await waitFor(() => app!.log.some((e) => /ItemStream\.onSave works again/.test(e.message)));
    const recovered = app.log.find((e) => /ItemStream\.onSave works again/.test(e.message))!;
    expect(recovered).toMatchObject({ level: "info" });
    expect(recovered.message).toContain(`(${failing - 1} more like it were not logged)`);
    expect(app.log.filter((e) => e.level === "error")).toHaveLength(1);
  });

  it("decodes every column type through the Drizzle column, equal to what db.select() reads", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const { db } = app;
    db.insert(kinds)
      .values({
        id: 1,
        at: new Date("2024-05-06T07:08:09Z"),
        atMs: new Date("2024-05-06T07:08:09.123Z"),
        flag: true,
        doc: { tags: ["a", "b"], n: 3 },
        blobDoc: { ok: true },
        bytes: Buffer.from([0, 1, 2, 254, 255]),
        big: 12345678901234567890n,
        price: 9.75,
        amount: "12.50",
        where: { x: 3, y: -4 },
        note: `quotes " and ' and \\ and emoji 🎉`,
      })
      .run();
    db.insert(kinds).values({ id: 2 }).run();
    db.insert(tags)
      .values({ owner: Buffer.from([0xde, 0xad]), label: "blob key" })
      .run();
    await waitFor(() => recorder.calls.length === 3);

    const [one, two] = db.select().from(kinds).orderBy(kinds.id).all();
    expect(recorder.calls[0]!.entity).toEqual(one);
    expect(recorder.calls[1]!.entity).toEqual(two);
    const entity = recorder.calls[0]!.entity;
    expect(entity.at).toBeInstanceOf(Date);
    expect((entity.at as Date).toISOString()).toBe("2024-05-06T07:08:09.000Z");
    expect((entity.atMs as Date).toISOString()).toBe("2024-05-06T07:08:09.123Z");
    expect(entity.flag).toBe(true);
    expect(entity.doc).toEqual({ tags: ["a", "b"], n: 3 });
    expect(entity.blobDoc).toEqual({ ok: true });
    expect(Buffer.isBuffer(entity.bytes)).toBe(true);
    expect([...(entity.bytes as Buffer)]).toEqual([0, 1, 2, 254, 255]);
    expect(entity.big).toBe(12345678901234567890n);
    expect(entity.amount).toBe("12.5");
    expect(entity.where).toEqual({ x: 3, y: -4 });
    expect(recorder.calls[1]!.entity).toEqual({
      id: 2,
      at: null,
      atMs: null,
      flag: null,
      doc: null,
      blobDoc: null,
      bytes: null,
      big: null,
      price: null,
      amount: null,
      where: null,
      note: null,
    });
    expect(recorder.calls[2]!.entity).toEqual(db.select().from(tags).get());

    db.update(kinds).set({ flag: false }).where(eq(kinds.id, 1)).run();
    db.delete(kinds).where(eq(kinds.id, 1)).run();
    await waitFor(() => recorder.calls.length === 5);
    expect(recorder.calls[3]!.entity).toEqual({ ...one, flag: false });
    expect(recorder.calls[4]!).toMatchObject({ hook: "onDelete", entity: { ...one, flag: false } });
  });

  it("captures blobs written by raw SQL into blob columns, of any Drizzle mode", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
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

  it("writes to tables no stream binds reach no hook and leave no log row", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    app.db.insert(plain).values({ id: 1, body: "nobody listens" }).run();
    app.db.insert(items).values({ body: "marker" }).run();
    await waitFor(() => recorder.calls.length === 1);
    expect(logRows(app.sqlite).map((r) => r.tbl)).toEqual(["items"]);
  });
});

describe("writers other than the app's Drizzle db", () => {
  it("dispatches a write made through a second better-sqlite3 connection", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const other = new Database(app.file);
    try {
      other.prepare("INSERT INTO items (body) VALUES (?)").run("from another connection");
      other.prepare("UPDATE items SET version = 5").run();
    } finally {
      other.close();
    }
    await waitFor(() => recorder.calls.length === 2);
    expect(recorder.calls.map((c) => [c.created, c.entity.body, c.entity.version])).toEqual([
      [true, "from another connection", 0],
      [false, "from another connection", 5],
    ]);
  });

  it("warns once when another feed dispatches the same file's changes while this one uses the in-memory broker", async () => {
    const otherFeedWarning = (log: LogEntry[]) =>
      log.filter((e) => e.level === "warn" && e.message.includes("uses the in-memory broker"));
    app = await openApp(path.join(tmp.dir, "app.db"), { capture: { pollIntervalMs: 60_000 } });
    // writers that do not dispatch (another connection, a script) are not another feed
    const writer = new Database(app.file);
    for (let i = 0; i < 3; i++) writer.prepare("INSERT INTO items (body) VALUES (?)").run(`plain ${i}`);
    await app.db.insert(items).values({ body: "own" });
    await waitFor(() => recorder.calls.length === 4);
    expect(otherFeedWarning(app.log)).toEqual([]);

    // a second app on the same file; polls far apart, so only the drains below dispatch
    const second = await openApp(app.file, { capture: { pollIntervalMs: 60_000 } });
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
      await second.close();
    }
  });

  // The sqlite3 shell comes from Debian's sqlite3 package (scripts/services.sh installs it). CI must
  // run this test; elsewhere it is skipped, loudly, when the shell is missing (the second-connection
  // test above still covers writes by another connection).
  const shell = spawnSync("sqlite3", ["-version"], { encoding: "utf8" });
  if (shell.status !== 0) {
    if (process.env.CI) throw new Error("CI: the sqlite3 shell is missing; scripts/services.sh installs it");
    console.warn("[turbocast tests] skipping the sqlite3-shell test: no sqlite3 on PATH (apt-get install sqlite3)");
  }
  it.runIf(shell.status === 0)("dispatches a write made with the sqlite3 shell", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const run = spawnSync(
      "sqlite3",
      [
        app.file,
        "INSERT INTO items (body) VALUES ('from the shell'); DELETE FROM items WHERE body = 'from the shell';",
      ],
      {
        encoding: "utf8",
      },
    );
    expect(run.stderr).toBe("");
    expect(run.status).toBe(0);
    await waitFor(() => recorder.calls.length === 2);
    expect(recorder.calls.map((c) => [c.hook, c.entity.body])).toEqual([
      ["onSave", "from the shell"],
      ["onDelete", "from the shell"],
    ]);
  });

  it("dispatches changes committed while no app ran when the app starts", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    await app.close();
    app = undefined;
    const other = new Database(path.join(tmp.dir, "app.db"));
    other.prepare("INSERT INTO items (body) VALUES (?)").run("while down");
    other.close();
    expect(recorder.calls).toEqual([]);
    app = await openApp(path.join(tmp.dir, "app.db"));
    await waitFor(() => recorder.calls.length === 1);
    expect(bodies()).toEqual(["while down"]);
  });
});

describe("triggers follow the schema", () => {
  const triggerSql = (sqlite: Database.Database, name: string): string =>
    sqlite.prepare("SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?").pluck().get(name) as string;

  it("regenerates a table's triggers after ALTER TABLE ADD COLUMN, while running and at start", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const { db } = app;
    expect(app.log.some((e) => e.level === "warn" && /notes.*mood/.test(e.message))).toBe(true);
    db.run(sql`INSERT INTO notes (id, body) VALUES (1, 'before')`);
    await waitFor(() => saves("notes").length === 1);
    expect(saves("notes")[0]!.entity).toEqual({ id: 1, body: "before", mood: undefined });

    // a migration through the app's own connection: the triggers follow before the next turn of the event loop
    db.run(sql`ALTER TABLE notes ADD COLUMN mood TEXT`);
    await app.turbo.feed.drain();
    expect(triggerSql(app.sqlite, "_turbocast_notes_ins")).toContain(`'mood'`);
    db.insert(notes).values({ id: 2, body: "after", mood: "happy" }).run();
    await waitFor(() => saves("notes").length === 2);
    expect(saves("notes")[1]!.entity).toEqual({ id: 2, body: "after", mood: "happy" });
    expect(triggerSql(app.sqlite, "_turbocast_notes_ins")).toContain(`'mood'`);

    // a migration by another connection while the app runs: picked up by the poll
    const other = new Database(app.file);
    other.exec("ALTER TABLE notes ADD COLUMN extra TEXT");
    await waitFor(() => triggerSql(app!.sqlite, "_turbocast_notes_upd").includes(`'extra'`));
    // and while the app is down: at start
    await app.close();
    other.exec("ALTER TABLE notes ADD COLUMN later INTEGER");
    other.close();
    app = await openApp(path.join(tmp.dir, "app.db"));
    expect(triggerSql(app.sqlite, "_turbocast_notes_del")).toContain(`'later'`);
    app.db.update(notes).set({ mood: "calm" }).where(eq(notes.id, 2)).run();
    await waitFor(() => saves("notes").length === 3);
    expect(saves("notes")[2]!.entity).toEqual({ id: 2, body: "after", mood: "calm" });
  });

  it("lets a migration drop a column of a bound table after dropCaptureTriggers, and puts the triggers back", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), { capture: { pollIntervalMs: 20 } });
    const other = new Database(app.file);
    try {
      other.exec("ALTER TABLE items ADD COLUMN legacy TEXT");
      await waitFor(() => triggerSql(app!.sqlite, "_turbocast_items_ins").includes("'legacy'"));
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
    await waitFor(() => triggerSql(app!.sqlite, "_turbocast_items_ins") !== undefined);
    expect(triggerSql(app.sqlite, "_turbocast_items_ins")).not.toContain("legacy");
    app.db.insert(items).values({ body: "after the migration" }).run();
    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toEqual({ id: 1, body: "after the migration", version: 0 });
  });

  it("drops the triggers of tables no longer bound, and leaves matching triggers alone", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const before = app.sqlite.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name").all();
    expect(turbocastObjects(app.sqlite)).toEqual([
      "_turbocast_changes",
      "_turbocast_cursor",
      ...["items", "kinds", "notes", "tags"].flatMap((t) => [
        `_turbocast_${t}_del`,
        `_turbocast_${t}_ins`,
        `_turbocast_${t}_upd`,
      ]),
    ]);
    const schemaVersion = app.sqlite.pragma("schema_version", { simple: true });
    await app.close();

    // the same bindings again: nothing is rewritten
    app = await openApp(path.join(tmp.dir, "app.db"));
    expect(app.sqlite.pragma("schema_version", { simple: true })).toBe(schemaVersion);
    expect(
      app.sqlite.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' ORDER BY name").all(),
    ).toEqual(before);
    await app.close();

    app = await openApp(path.join(tmp.dir, "app.db"), { streams: [ItemStream] });
    expect(turbocastObjects(app.sqlite)).toEqual([
      "_turbocast_changes",
      "_turbocast_cursor",
      "_turbocast_items_del",
      "_turbocast_items_ins",
      "_turbocast_items_upd",
    ]);
    app.db.run(sql`INSERT INTO notes (id, body) VALUES (1, 'unbound now')`);
    app.db.insert(items).values({ body: "still bound" }).run();
    await waitFor(() => recorder.calls.length === 1);
    expect(bodies()).toEqual(["still bound"]);
  });

  it("starts without a bound table that does not exist yet, and captures it once a migration creates it", async () => {
    const sqlite = new Database(path.join(tmp.dir, "app.db"));
    sqlite.exec(
      "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0)",
    );
    const logger = memoryLogger();
    const turbo = await createTurbo({
      db: drizzle(sqlite, { schema }),
      views,
      streams: [ItemStream, NoteStream],
      logger,
      capture: { pollIntervalMs: 20 },
    });
    try {
      expect(logger.entries.some((e) => e.level === "warn" && /"notes" does not exist yet/.test(e.message))).toBe(true);
      sqlite.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, mood TEXT)");
      await waitFor(() => turbocastObjects(sqlite).includes("_turbocast_notes_ins"));
      sqlite.prepare("INSERT INTO notes (id, body) VALUES (1, 'new table')").run();
      await waitFor(() => saves("notes").length === 1);
      expect(saves("notes")[0]!.entity).toEqual({ id: 1, body: "new table", mood: null });
    } finally {
      await turbo.close();
      sqlite.close();
    }
  });
});

describe("the change log", () => {
  it("prunes dispatched changes beyond the retained count", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), {
      capture: { pollIntervalMs: 20, retain: { count: 10, ageMs: 3_600_000 } },
    });
    for (let i = 0; i < 40; i++)
      app.db
        .insert(items)
        .values({ body: `n${i}` })
        .run();
    await waitFor(() => recorder.calls.length === 40);
    await waitFor(() => logRows(app!.sqlite).length === 10, { message: "log pruned to 10 rows" });
    expect(logRows(app.sqlite).map((r) => r.seq)).toEqual(Array.from({ length: 10 }, (_, i) => 31 + i));
  });

  it("marks a drain's last batch done by the next claim, or soon after, and at once on drain()", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const cursor = () =>
      app!.sqlite.prepare("SELECT done_seq AS done, owner FROM _turbocast_cursor").get() as {
        done: number;
        owner: string | null;
      };
    app.db.insert(items).values({ body: "a" }).run();
    await waitFor(() => recorder.calls.length === 1);
    // dispatched; the feed keeps the cursor a moment, for the next drain to mark it done as it claims
    app.db.insert(items).values({ body: "b" }).run();
    await waitFor(() => recorder.calls.length === 2);
    await waitFor(() => cursor().owner === null, { message: "cursor given back when no drain followed" });
    expect(cursor()).toEqual({ done: 2, owner: null });
    app.db.insert(items).values({ body: "c" }).run();
    await app.turbo.feed.drain();
    expect(cursor()).toEqual({ done: 3, owner: null });
  });

  it("prunes under a steady stream of writes, while the feed keeps the cursor from drain to drain", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), {
      capture: { pollIntervalMs: 20, retain: { count: 10, ageMs: 3_600_000 } },
    });
    const oldest = (): number => app!.sqlite.prepare("SELECT min(seq) FROM _turbocast_changes").pluck().get() as number;
    const deadline = Date.now() + 5000;
    let i = 0;
    // a write every millisecond or so: each drain's last batch is marked done by the next drain's claim
    for (; (i < 50 || oldest() === 1) && Date.now() < deadline; i++) {
      app.db
        .insert(items)
        .values({ body: `n${i}` })
        .run();
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(oldest(), `pruned while ${i} writes kept coming`).toBeGreaterThan(1);
  });

  it("prunes dispatched changes older than the retained age, keeping the newest row so seq is never reused", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"), {
      capture: { pollIntervalMs: 20, retain: { count: 10_000, ageMs: 0 } },
    });
    for (let i = 0; i < 5; i++)
      app.db
        .insert(items)
        .values({ body: `n${i}` })
        .run();
    await waitFor(() => recorder.calls.length === 5);
    await waitFor(() => logRows(app!.sqlite).length === 1);
    expect(logRows(app.sqlite)[0]!.seq).toBe(5);
    app.db.insert(items).values({ body: "next" }).run();
    await waitFor(() => recorder.calls.length === 6);
    expect(logRows(app.sqlite).map((r) => r.seq)).toContain(6);
  });
});

describe("lifecycle", () => {
  it("close() waits for the change being dispatched, gives back the rest, and the next start dispatches them", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
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
    expect(logRows(app.sqlite).map((r) => [JSON.parse(r.row_json).body, r.done])).toEqual([
      ["slow", 1],
      ["queued", 0],
    ]);
    expect(app.sqlite.prepare("SELECT owner FROM _turbocast_cursor").pluck().get()).toBeNull();
    app.sqlite.close();
    app = await openApp(path.join(tmp.dir, "app.db"));
    await waitFor(() => recorder.calls.length === 2);
    expect(bodies()).toEqual(["slow", "queued"]);
  });

  it("drain() resolves once everything committed so far is dispatched", async () => {
    app = await openApp(path.join(tmp.dir, "app.db"));
    const other = new Database(app.file);
    other.prepare("INSERT INTO items (body) VALUES ('other')").run();
    other.close();
    app.db.insert(items).values({ body: "own" }).run();
    await app.turbo.feed.drain();
    expect(bodies().sort()).toEqual(["other", "own"]);
  });

  it("rejects bad capture options at once", async () => {
    const sqlite = new Database(path.join(tmp.dir, "app.db"));
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

describe("a createTurbo that throws leaves nothing running", () => {
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
