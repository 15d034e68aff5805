import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { eq } from "drizzle-orm";
import { afterEach, beforeEach, expect, it } from "vitest";
import {
  type Broker,
  BrokerError,
  HookError,
  type ModelStream,
  TemplateRenderError,
  memoryBroker,
} from "../../src/index.js";
import { type HookCall, recorder } from "../fixtures/capture/streams.js";
import { tempDir, waitFor } from "../helpers.js";
import type { CaptureDatabase, CaptureDialect } from "./dialect.js";

/**
 * The capture behaviour every database dialect must have: one feed, two
 * capture adapters, the same guarantees. Every write to a bound table —
 * Drizzle, raw SQL, a bulk UPDATE, another connection, the shell — reaches
 * its hooks once, after commit, decoded as db.select() reads it; nothing of
 * a rolled-back transaction does; a failing hook stops nothing. Call inside a
 * `describe`; each test gets a fresh database. The multi-process cases are
 * captureProcessesContract, run from a file of their own.
 */
export function captureContract(dialect: CaptureDialect): void {
  const { items, notes, kinds, plain } = dialect.tables;
  const boundTables = dialect.streams.map((s) => (s as typeof ModelStream).tableInfo().name).sort();
  let database: CaptureDatabase;

  beforeEach(async () => {
    recorder.reset();
    database = await dialect.create();
  });

  afterEach(async () => {
    await database.drop();
    recorder.reset();
  });

  const saves = (table = "items"): HookCall[] => recorder.calls.filter((c) => c.table === table);
  const bodies = (): unknown[] => saves().map((c) => c.entity.body);
  const everyChangeDone = async (): Promise<boolean> => (await database.logRows()).every((r) => r.done);

  it("dispatches Drizzle insert, update and delete to onSave / onDelete, with .stream on the entity and the change context", async () => {
    const { db } = await database.open();
    const [created] = await db.insert(items).values({ body: "first" }).returning();
    await waitFor(() => recorder.calls.length === 1);
    await db.update(items).set({ body: "edited", version: 1 }).where(eq(items.id, created!.id));
    await waitFor(() => recorder.calls.length === 2);
    await db.delete(items).where(eq(items.id, created!.id));
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
        // version: the change's seq, the same in every process
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
    await waitFor(everyChangeDone);
    expect((await database.logRows()).map((r) => r.op)).toEqual(["insert", "update", "delete"]);
  });

  it("dispatches raw SQL run through the app's Drizzle db (db.run / db.execute)", async () => {
    const app = await database.open();
    await app.sql("INSERT INTO items (body) VALUES ('raw one'), ('raw two')");
    await waitFor(() => recorder.calls.length === 2);
    await app.sql("UPDATE items SET version = version + 1 WHERE body = 'raw two'");
    await waitFor(() => recorder.calls.length === 3);
    await app.sql("DELETE FROM items WHERE body = 'raw one'");
    await waitFor(() => recorder.calls.length === 4);
    expect(recorder.calls.map((c) => [c.hook, c.created, c.entity.body, c.entity.version])).toEqual([
      ["onSave", true, "raw one", 0],
      ["onSave", true, "raw two", 0],
      ["onSave", false, "raw two", 1],
      ["onDelete", undefined, "raw one", 0],
    ]);
  });

  it("dispatches writes made on db.$client, bypassing Drizzle", async () => {
    const app = await database.open({ capture: { pollIntervalMs: 20 } });
    await app.client("INSERT INTO items (body) VALUES ('bypass')");
    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toEqual({ id: 1, body: "bypass", version: 0 });
  });

  it("dispatches writes made through another connection", async () => {
    await database.open();
    await database.execute(
      "INSERT INTO items (body) VALUES ('from another connection'); UPDATE items SET version = 5;",
    );
    await waitFor(() => recorder.calls.length === 2);
    expect(recorder.calls.map((c) => [c.created, c.entity.body, c.entity.version])).toEqual([
      [true, "from another connection", 0],
      [false, "from another connection", 5],
    ]);
  });

  it.runIf(dialect.hasShell)("dispatches writes made with the command-line shell (sqlite3 / psql)", async () => {
    await database.open();
    const run = database.shell(
      "INSERT INTO items (body) VALUES ('from the shell'); UPDATE items SET version = 5; DELETE FROM items WHERE body = 'from the shell';",
    );
    expect(run.stderr).toBe("");
    expect(run.status).toBe(0);
    await waitFor(() => recorder.calls.length === 3);
    expect(recorder.calls.map((c) => [c.hook, c.created, c.entity.body, c.entity.version])).toEqual([
      ["onSave", true, "from the shell", 0],
      ["onSave", false, "from the shell", 5],
      ["onDelete", undefined, "from the shell", 5],
    ]);
  });

  it("treats an upsert by what it did: an insert, an update, or nothing", async () => {
    const { db } = await database.open();
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
    const app = await database.open({ capture: { batchSize: 100 } });
    await app.sql(
      "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10000) INSERT INTO items (body) SELECT 'row ' || n FROM g",
    );
    await waitFor(() => recorder.calls.length === 10_000, { timeoutMs: 30_000 });
    expect(recorder.calls.every((c) => c.created === true)).toBe(true);

    recorder.calls = [];
    let callsWhenLoopTurned: number | undefined;
    recorder.behaviour = () => {
      if (recorder.calls.length === 1) setImmediate(() => (callsWhenLoopTurned = recorder.calls.length));
    };
    const started = performance.now();
    const result = await app.db.update(items).set({ version: 7 });
    expect(dialect.affectedRows(result)).toBe(10_000);
    await waitFor(() => recorder.calls.length === 10_000, { timeoutMs: 30_000 });
    console.log(`[${dialect.name}] 10,000-row UPDATE dispatched in ${(performance.now() - started).toFixed(0)} ms`);
    expect(recorder.calls.map((c) => c.entity.id)).toEqual(Array.from({ length: 10_000 }, (_, i) => i + 1));
    expect(recorder.calls.every((c) => c.hook === "onSave" && c.created === false && c.entity.version === 7)).toBe(
      true,
    );
    // the event loop turned after the first batch, long before the last change
    expect(callsWhenLoopTurned).toBe(100);
  }, 60_000);

  it("never dispatches a rolled-back transaction", async () => {
    const app = await database.open();
    await expect(app.transaction([(tx) => tx.insert(items).values({ body: "ghost 1" })], "rollback")).rejects.toThrow(
      /Rollback/,
    );
    await expect(
      app.transaction(
        [(tx) => tx.insert(items).values({ body: "ghost 2" }), (tx) => tx.update(items).set({ body: "ghost 3" })],
        new Error("handler failed"),
      ),
    ).rejects.toThrow("handler failed");
    await app.db.insert(items).values({ body: "committed" });
    await waitFor(() => bodies().includes("committed"));
    await app.turbo.feed.drain();
    expect(bodies()).toEqual(["committed"]);
    expect((await database.logRows()).map((r) => r.body)).toEqual(["committed"]);
  });

  it("does not dispatch an UPDATE that changes no column (turbo-rails #610)", async () => {
    const app = await database.open();
    const { db } = app;
    await db.insert(items).values({ body: "same" });
    await waitFor(() => recorder.calls.length === 1);
    await db.update(items).set({ body: "same" }).where(eq(items.id, 1));
    await app.sql("UPDATE items SET body = body, version = version");
    await db.update(items).set({ version: 2 }).where(eq(items.id, 1));
    await waitFor(() => recorder.calls.length === 2);
    expect(recorder.calls.map((c) => [c.created, c.entity.version])).toEqual([
      [true, 0],
      [false, 2],
    ]);
    expect((await database.logRows()).map((r) => r.op)).toEqual(["insert", "update"]);
  });

  it("logs a throwing hook (and a throwing template) with table, key and seq, then dispatches the next change", async () => {
    const app = await database.open();
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
    expect(errors[0]!.message).toMatch(/ItemStream\.onSave failed for table "items" key 1 \(change 1\): kaboom/);
    expect(errors[0]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 1, seq: 1 });
    expect(errors[1]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 2, seq: 2 });
    expect(errors[1]!.details!.error).toBeInstanceOf(TemplateRenderError);
    expect(new HookError("x", { table: "t", key: 1, seq: 1 }, new Error("y")).code).toBe("TURBOCAST_HOOK_FAILED");
    // every change is done: a failing hook is not retried forever
    await waitFor(everyChangeDone);
  });

  it("gives up waiting for an async hook after hookTimeoutMs, logs it, and goes on", async () => {
    const app = await database.open({ capture: { hookTimeoutMs: 100 } });
    recorder.behaviour = (call) => (call.entity.body === "hang" ? new Promise(() => {}) : Promise.resolve());
    await app.db.insert(items).values([{ body: "hang" }, { body: "next" }]);
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
    const app = await database.open({ broker });
    // the hook awaits its broadcast, so the refused publish fails the hook
    recorder.behaviour = (_call, stream) => stream.remove({ target: "x" });
    const failing = 20;
    for (let i = 0; i < failing; i++) await app.db.insert(items).values({ body: `m${i}` });
    await waitFor(async () => recorder.calls.length === failing && (await everyChangeDone()));
    const errors = app.log.filter((e) => e.level === "error");
    expect(errors).toHaveLength(1);
    expect(errors[0]!.message).toMatch(
      /ItemStream\.onSave failed for table "items" key 1 \(change 1\): broker unreachable/,
    );
    expect(errors[0]!.details).toMatchObject({ code: "TURBOCAST_HOOK_FAILED", table: "items", key: 1, seq: 1 });
    // the publisher logs the outage once as well
    expect(app.log.filter((e) => e.level === "warn" && /broadcast to .* failed/.test(e.message))).toHaveLength(1);

    down = false;
    await app.db.insert(items).values({ body: "back" });
    await waitFor(() => app.log.some((e) => /ItemStream\.onSave works again/.test(e.message)));
    const recovered = app.log.find((e) => /ItemStream\.onSave works again/.test(e.message))!;
    expect(recovered).toMatchObject({ level: "info" });
    expect(recovered.message).toContain(`(${failing - 1} more like it were not logged)`);
    expect(app.log.filter((e) => e.level === "error")).toHaveLength(1);
  });

  it("decodes every column type through the Drizzle column, equal to what db.select() reads", async () => {
    const { db } = await database.open();
    await db.insert(kinds).values(dialect.kinds.values);
    await db.insert(kinds).values({ id: 2 });
    await waitFor(() => recorder.calls.length === 2);

    const [one, two] = (await db.select().from(kinds)).sort((a, b) => (a.id as number) - (b.id as number));
    expect(recorder.calls[0]!.entity).toEqual(one);
    expect(recorder.calls[1]!.entity).toEqual(two);
    dialect.kinds.expectDecoded(recorder.calls[0]!.entity);
    // a row of nulls: every column there, each null
    expect(recorder.calls[1]!.entity).toEqual(
      Object.fromEntries(Object.keys(one!).map((key) => [key, key === "id" ? 2 : null])),
    );

    await db.update(kinds).set({ flag: false }).where(eq(kinds.id, 1));
    await db.delete(kinds).where(eq(kinds.id, 1));
    await waitFor(() => recorder.calls.length === 4);
    expect(recorder.calls[2]!.entity).toEqual({ ...one, flag: false });
    expect(recorder.calls[3]!).toMatchObject({ hook: "onDelete", entity: { ...one, flag: false } });
  });

  it("writes to tables no stream binds reach no hook and leave no log row", async () => {
    const { db } = await database.open();
    await db.insert(plain).values({ id: 1, body: "nobody listens" });
    await db.insert(items).values({ body: "marker" });
    await waitFor(() => recorder.calls.length === 1);
    expect((await database.logRows()).map((r) => r.tbl)).toEqual(["items"]);
  });

  it("dispatches changes committed while no app ran when the app starts", async () => {
    // no triggers yet: the first start installs them; a write after a close() is kept for the next start
    await database.execute("INSERT INTO items (body) VALUES ('before')");
    const first = await database.open();
    await first.close();
    await database.execute("INSERT INTO items (body) VALUES ('while down')");
    expect(recorder.calls).toEqual([]);
    await database.open();
    await waitFor(() => recorder.calls.length === 1);
    expect(bodies()).toEqual(["while down"]);
  });

  it("drain() resolves once everything committed so far is dispatched", async () => {
    const app = await database.open();
    await database.execute("INSERT INTO items (body) VALUES ('other')");
    await app.db.insert(items).values({ body: "own" });
    await app.turbo.feed.drain();
    expect(bodies().sort()).toEqual(["other", "own"]);
  });

  it("decodes a column a migration adds while the app runs", async () => {
    const app = await database.open();
    expect(app.log.some((e) => e.level === "warn" && /"notes" has no column mood/.test(e.message))).toBe(true);
    await app.sql("INSERT INTO notes (id, body) VALUES (1, 'before')");
    await waitFor(() => saves("notes").length === 1);
    expect(saves("notes")[0]!.entity).toEqual({ id: 1, body: "before", mood: undefined });

    // a migration through the app's own connection; on SQLite the triggers follow before the next write
    await app.sql("ALTER TABLE notes ADD COLUMN mood TEXT");
    await app.turbo.feed.drain();
    await app.db.insert(notes).values({ id: 2, body: "after", mood: "happy" });
    await waitFor(() => saves("notes").length === 2);
    expect(saves("notes")[1]!.entity).toEqual({ id: 2, body: "after", mood: "happy" });
  });

  it("starts without a bound table that does not exist yet, and captures it once a migration creates it", async () => {
    await database.execute("DROP TABLE notes");
    const app = await database.open({ capture: { pollIntervalMs: 20 } });
    expect(app.log.some((e) => e.level === "warn" && e.message.includes('table "notes" does not exist yet'))).toBe(
      true,
    );
    await database.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL, mood text)");
    await waitFor(async () => {
      const installed = await database.captureObjects();
      return dialect.objectsFor(["notes"]).every((name) => installed.includes(name));
    });
    await database.execute("INSERT INTO notes (id, body) VALUES (1, 'new table')");
    await waitFor(() => saves("notes").length === 1);
    expect(saves("notes")[0]!.entity).toEqual({ id: 1, body: "new table", mood: null });
  });

  it("drops the triggers of tables no longer bound at start, and captures only the tables still bound", async () => {
    const first = await database.open();
    expect(await database.captureObjects()).toEqual(dialect.objectsFor(boundTables));
    await first.close();

    const app = await database.open({ streams: [dialect.itemStream] });
    expect(await database.captureObjects()).toEqual(dialect.objectsFor(["items"]));
    await app.sql("INSERT INTO notes (id, body) VALUES (1, 'unbound now')");
    await app.db.insert(items).values({ body: "still bound" });
    await waitFor(() => recorder.calls.length === 1);
    await app.turbo.feed.drain();
    expect(recorder.calls.map((c) => c.entity.body)).toEqual(["still bound"]);
  });

  it("prunes dispatched changes beyond the retained count", async () => {
    const app = await database.open({ capture: { pollIntervalMs: 20, retain: { count: 10, ageMs: 3_600_000 } } });
    for (let i = 0; i < 40; i++) await app.db.insert(items).values({ body: `n${i}` });
    await waitFor(() => recorder.calls.length === 40);
    await waitFor(async () => (await database.logRows()).length === 10, { message: "log pruned to 10 rows" });
    expect((await database.logRows()).map((r) => r.seq)).toEqual(Array.from({ length: 10 }, (_, i) => 31 + i));
  });

  it("prunes under a steady stream of writes, while the feed keeps the cursor from drain to drain", async () => {
    const app = await database.open({ capture: { pollIntervalMs: 20, retain: { count: 10, ageMs: 3_600_000 } } });
    const oldest = async (): Promise<number | undefined> => (await database.logRows())[0]?.seq;
    const deadline = Date.now() + 5000;
    let i = 0;
    // a write every millisecond or so: each drain's last batch is marked done by the next drain's claim
    for (; (i < 50 || (await oldest()) === 1) && Date.now() < deadline; i++) {
      await app.db.insert(items).values({ body: `n${i}` });
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(await oldest(), `pruned while ${i} writes kept coming`).toBeGreaterThan(1);
  });
}

/** One hook call in a worker process, as it appended it to its file. */
interface Dispatched {
  pid: number;
  /** When the hook ran (ms, comparable across processes on one machine). */
  at: number;
  hook: string;
  created?: boolean;
  id: number;
  body: string;
  version: number;
  /** The change context's version (the change's log seq). */
  seq: number;
}

interface Worker {
  child: ChildProcess;
  messages: unknown[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const root = path.resolve(import.meta.dirname, "..", "..");
const workerScript = path.join(root, "test", "fixtures", "capture", "worker.ts");

const readLines = (file: string): Dispatched[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Dispatched)
    : [];

const received = (w: Worker, key: string) => () =>
  w.messages.some((m) => typeof m === "object" && m !== null && key in m);

/**
 * Capture across processes, on every dialect: writes by another process, a
 * process killed right after its commit or while dispatching, a claim left
 * by another host, and several processes draining one database exactly
 * once. Workers are fixtures/capture/worker.ts. Call inside a `describe`.
 */
export function captureProcessesContract(dialect: CaptureDialect): void {
  let database: CaptureDatabase;
  let tmp: { dir: string; cleanup: () => void };
  const children = new Set<ChildProcess>();

  beforeEach(async () => {
    recorder.reset();
    tmp = tempDir("turbocast-processes-");
    database = await dialect.create();
  });

  afterEach(async () => {
    for (const child of children) child.kill("SIGKILL");
    await database.drop();
    recorder.reset();
    tmp.cleanup();
  });

  function startWorker(command: "write" | "serve" | "commit-and-die", ...args: string[]): Worker {
    const child = spawn(process.execPath, ["--import", "tsx", workerScript, command, database.address, ...args], {
      cwd: root,
      stdio: ["ignore", "ignore", "pipe", "ipc"],
    });
    children.add(child);
    let stderr = "";
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const messages: unknown[] = [];
    child.on("message", (message) => messages.push(message));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.on("exit", (code, signal) => {
        children.delete(child);
        resolve({ code, signal });
      });
    });
    return { child, messages, stderr: () => stderr, exited };
  }

  it("dispatches writes made by another process", async () => {
    await database.open({ capture: { pollIntervalMs: 50 } });
    const writer = startWorker("write", "3", "from-child");
    expect(await writer.exited).toEqual({ code: 0, signal: null });
    await waitFor(() => recorder.calls.length === 3);
    expect(recorder.calls.map((c) => [c.created, c.entity.body])).toEqual([
      [true, "from-child-0"],
      [true, "from-child-1"],
      [true, "from-child-2"],
    ]);
  });

  it("dispatches, on restart, a change committed by a process killed right after the commit", async () => {
    const doomed = startWorker("commit-and-die", "last words");
    const { signal } = await doomed.exited;
    expect(signal, doomed.stderr()).toBe("SIGKILL");
    // its feed marked nothing done (on PostgreSQL it may have claimed the change: a claim is one round trip,
    // which the server can commit after the process is gone — the claim of a dead process, taken over below)
    expect((await database.logRows()).map(({ seq, op, done }) => ({ seq, op, done }))).toEqual([
      { seq: 1, op: "insert", done: false },
    ]);

    await database.open();
    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toMatchObject({ body: "last words" });
  });

  it("takes over at once the claim of a process on this host killed while dispatching, without waiting for its lease", async () => {
    const out = path.join(tmp.dir, "dying.jsonl");
    const leaseMs = 60_000;
    const dying = startWorker("serve", out, JSON.stringify({ capture: { pollIntervalMs: 20, leaseMs } }));
    await waitFor(received(dying, "ready"), { timeoutMs: 15_000, message: dying.stderr() });
    await database.execute("INSERT INTO items (body) VALUES ('hang here')");
    await waitFor(() => readLines(out).length === 1, { message: "the hook started in the child" });
    // the hook hangs, but the child is alive: a feed on the same host, which could check its pid, leaves its claim alone
    const app = await database.open({ capture: { pollIntervalMs: 20, leaseMs } });
    await app.turbo.feed.drain(); // claims nothing: the cursor is the live child's
    expect(recorder.calls).toHaveLength(0);

    // the child holds the claim while its hook hangs; read it before the kill, since this
    // process's feed (polling every 20 ms) may take it over before a read after it
    const claim = await database.cursor();
    expect(claim).toMatchObject({ done: 0, claimed: 1 });
    expect(claim.owner).toContain(`/${dying.child.pid}/`);
    let dispatchedAt = 0;
    recorder.behaviour = () => void (dispatchedAt = Date.now());
    // its lease has a minute to run: only the pid check can free the claim in time
    dying.child.kill("SIGKILL");
    await dying.exited;
    const killedAt = Date.now();

    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toMatchObject({ body: "hang here" });
    // the one change, dispatched in both processes: the same version in each
    expect(readLines(out)[0]!.seq).toBe(1);
    expect(recorder.calls[0]!.context.version).toBe(1);
    expect(dispatchedAt).toBeLessThan(claim.leaseUntil!);
    expect(dispatchedAt - killedAt).toBeLessThan(5000);
    expect(
      app.log.some(
        (e) =>
          e.level === "warn" &&
          e.message.includes("its process on this host is gone") &&
          e.message.includes(claim.owner!),
      ),
    ).toBe(true);
  });

  it("waits out the lease of a claim made on another host before taking it over", async () => {
    const app = await database.open({ capture: { pollIntervalMs: 20 } });
    const leaseUntil = Date.now() + 1200;
    const foreign = "some-other-host/5b1f3c2e-8d4a-4f6b-9c0d-2e7a1b3c4d5e/pid:[4026531836]/4242/cafebabe";
    let dispatchedAt = 0;
    recorder.behaviour = () => void (dispatchedAt = Date.now());
    // another host's feed claimed seq 1 and vanished (its pid means nothing here)
    await database.execute(
      `BEGIN;
       UPDATE _turbocast_cursor SET owner = '${foreign}', claimed_seq = 1, lease_until = ${leaseUntil};
       INSERT INTO items (body) VALUES ('claimed elsewhere');
       COMMIT;`,
    );
    await waitFor(() => recorder.calls.length === 1, { timeoutMs: 10_000 });
    expect(dispatchedAt).toBeGreaterThanOrEqual(leaseUntil);
    expect(
      app.log.some((e) => e.level === "warn" && e.message.includes("its lease ran out") && e.message.includes(foreign)),
    ).toBe(true);
  });

  for (const processes of [2, 3]) {
    it(`${processes} processes draining one database dispatch each change exactly once, each row's changes in order`, async () => {
      const rows = 150;
      const outs = Array.from({ length: processes }, (_, i) => path.join(tmp.dir, `${i}.jsonl`));
      const workers = outs.map((out, i) =>
        startWorker(
          "serve",
          out,
          JSON.stringify({ capture: { pollIntervalMs: 50, batchSize: 7 }, write: { count: rows, prefix: `w${i}` } }),
        ),
      );
      for (const w of workers) await waitFor(received(w, "written"), { timeoutMs: 60_000, message: w.stderr() });
      // and a writer that dispatches nothing: 50 rows in one statement
      await database.execute(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50) INSERT INTO items (body) SELECT 'other-' || n FROM g",
      );
      // every worker's inserts and updates (2 changes per row), and the other writer's inserts
      const total = 2 * rows * processes + 50;
      await waitFor(() => outs.flatMap(readLines).length >= total, { timeoutMs: 30_000 });
      await waitFor(async () => (await database.logRows()).every((r) => r.done), {
        message: "the cursor is past every change",
      });
      for (const w of workers) w.child.send("close");
      for (const w of workers) expect(await w.exited).toEqual({ code: 0, signal: null });

      const shares = outs.map(readLines);
      const all = shares.flat();
      const keys = all.map((d) => `${d.id}@${d.version}@${d.created}`);
      expect(new Set(keys).size).toBe(total);
      expect(keys).toHaveLength(total);
      // versions are the log's seqs, whichever process dispatched: each one once, 1..total
      expect(all.map((d) => d.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
      expect(all.filter((d) => d.created === true).every((d) => d.version === 0)).toBe(true);
      expect(all.filter((d) => d.created === false).every((d) => d.version === 1)).toBe(true);
      // Which feed dispatches what is up to timing: one that keeps finding work keeps the cursor, and on
      // a loaded machine it may take every change (still each exactly once); usually all take part.
      console.log(`[${dialect.name}, ${processes} processes] dispatched ${shares.map((s) => s.length).join(" + ")}`);
      // a row's insert is dispatched before its update, whichever processes dispatched them
      const insertedAt = new Map(all.filter((d) => d.created).map((d) => [d.id, d.at]));
      for (const d of all.filter((e) => e.created === false))
        expect(d.at).toBeGreaterThanOrEqual(insertedAt.get(d.id)!);
      if (dialect.dispatchesInSeqOrder) {
        // each process's share arrived in seq order, so its inserts in id order
        for (const share of shares) {
          const seqs = share.map((d) => d.seq);
          expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
          const inserted = share.filter((d) => d.created).map((d) => d.id);
          expect(inserted).toEqual([...inserted].sort((x, y) => x - y));
        }
      }
    }, 120_000);
  }
}
