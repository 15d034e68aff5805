import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import nunjucks from "nunjucks";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CaptureOptions, type Turbo, createTurbo } from "../src/index.js";
import { DDL, schema } from "./fixtures/capture/schema.js";
import { captureStreams, recorder } from "./fixtures/capture/streams.js";
import { memoryLogger, tempDir, waitFor } from "./helpers.js";

const root = path.resolve(import.meta.dirname, "..");
const worker = path.join(import.meta.dirname, "fixtures", "capture", "worker.ts");

interface Worker {
  child: ChildProcess;
  messages: unknown[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const children = new Set<ChildProcess>();

function startWorker(...args: string[]): Worker {
  const child = spawn(process.execPath, ["--import", "tsx", worker, ...args], {
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

const received = (w: Worker, key: string) => () =>
  w.messages.some((m) => typeof m === "object" && m !== null && key in m);

interface Dispatched {
  pid: number;
  hook: string;
  created?: boolean;
  id: number;
  body: string;
  version: number;
  /** The change context's version (the change's log seq). */
  seq: number;
}

const readLines = (file: string): Dispatched[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Dispatched)
    : [];

let tmp: { dir: string; cleanup: () => void };
let file: string;
const opened: Array<{ turbo?: Turbo; sqlite: Database.Database }> = [];

/** The database file, created in WAL mode with the capture schema (no turbocast yet). */
function createDatabase(): void {
  const sqlite = new Database(file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(DDL);
  sqlite.close();
}

async function startApp(capture?: CaptureOptions): Promise<{ turbo: Turbo; sqlite: Database.Database }> {
  const sqlite = new Database(file);
  const turbo = await createTurbo({
    db: drizzle(sqlite, { schema }),
    views: new nunjucks.Environment(null, { autoescape: true }),
    streams: captureStreams,
    logger: memoryLogger(),
    capture,
  });
  const app = { turbo, sqlite };
  opened.push(app);
  return app;
}

beforeEach(() => {
  tmp = tempDir("turbocast-processes-");
  file = path.join(tmp.dir, "app.db");
  recorder.reset();
});

afterEach(async () => {
  for (const child of children) child.kill("SIGKILL");
  for (const { turbo, sqlite } of opened.splice(0)) {
    await turbo?.close();
    sqlite.close();
  }
  recorder.reset();
  tmp.cleanup();
});

describe("change capture across processes", () => {
  it("dispatches writes made by a second Node process", async () => {
    createDatabase();
    await startApp({ pollIntervalMs: 50 });
    const writer = startWorker("write", file, "3", "from-child");
    expect(await writer.exited).toEqual({ code: 0, signal: null });
    await waitFor(() => recorder.calls.length === 3);
    expect(recorder.calls.map((c) => [c.created, c.entity.body])).toEqual([
      [true, "from-child-0"],
      [true, "from-child-1"],
      [true, "from-child-2"],
    ]);
  });

  it("dispatches, on restart, a change committed by a process killed right after the commit", async () => {
    createDatabase();
    const doomed = startWorker("commit-and-die", file, "last words");
    const { signal } = await doomed.exited;
    expect(signal, doomed.stderr()).toBe("SIGKILL");
    const check = new Database(file);
    expect(check.prepare("SELECT seq, op FROM _turbocast_changes").all()).toEqual([{ seq: 1, op: "insert" }]);
    expect(check.prepare("SELECT done_seq, owner FROM _turbocast_cursor").get()).toEqual({ done_seq: 0, owner: null });
    check.close();

    await startApp();
    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toMatchObject({ body: "last words" });
  });

  it("takes over at once the claim of a process on this host killed while dispatching, without waiting for its lease", async () => {
    createDatabase();
    const out = path.join(tmp.dir, "dying.jsonl");
    const leaseMs = 60_000;
    const dying = startWorker("serve", file, out, JSON.stringify({ capture: { pollIntervalMs: 20, leaseMs } }));
    await waitFor(received(dying, "ready"), { timeoutMs: 15_000, message: dying.stderr() });
    const writer = new Database(file);
    writer.prepare("INSERT INTO items (body) VALUES ('hang here')").run();
    writer.close();
    await waitFor(() => readLines(out).length === 1, { message: "the hook started in the child" });
    const check = new Database(file);
    const cursor = () =>
      check.prepare("SELECT done_seq, owner, claimed_seq, lease_until FROM _turbocast_cursor").get() as {
        done_seq: number;
        owner: string | null;
        claimed_seq: number | null;
        lease_until: number;
      };
    // the hook hangs, but the child is alive: a feed on the same host, which could check its pid, leaves its claim alone
    const logger = memoryLogger();
    const sqlite = new Database(file);
    const turbo = await createTurbo({
      db: drizzle(sqlite, { schema }),
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: captureStreams,
      logger,
      capture: { pollIntervalMs: 20, leaseMs },
    });
    opened.push({ turbo, sqlite });
    await turbo.feed.drain(); // claims nothing: the cursor is the live child's
    expect(recorder.calls).toHaveLength(0);

    let dispatchedAt = 0;
    recorder.behaviour = () => void (dispatchedAt = Date.now());
    // its lease has a minute to run: only the pid check can free the claim in time
    dying.child.kill("SIGKILL");
    await dying.exited;
    const killedAt = Date.now();
    const claim = cursor();
    check.close();
    expect(claim).toMatchObject({ done_seq: 0, claimed_seq: 1 });
    expect(claim.owner).toContain(`/${dying.child.pid}/`);

    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toMatchObject({ body: "hang here" });
    // the one change, dispatched in both processes: the same version in each
    expect(readLines(out)[0]!.seq).toBe(1);
    expect(recorder.calls[0]!.context.version).toBe(1);
    expect(dispatchedAt).toBeLessThan(claim.lease_until);
    expect(dispatchedAt - killedAt).toBeLessThan(5000);
    expect(
      logger.entries.some(
        (e) =>
          e.level === "warn" &&
          e.message.includes("its process on this host is gone") &&
          e.message.includes(claim.owner!),
      ),
    ).toBe(true);
  });

  it("waits out the lease of a claim made on another host before taking it over", async () => {
    createDatabase();
    const sqlite = new Database(file);
    const logger = memoryLogger();
    const turbo = await createTurbo({
      db: drizzle(sqlite, { schema }),
      views: new nunjucks.Environment(null, { autoescape: true }),
      streams: captureStreams,
      logger,
      capture: { pollIntervalMs: 20 },
    });
    opened.push({ turbo, sqlite });
    // another host's feed claimed seq 1 and vanished (its pid means nothing here)
    const leaseUntil = Date.now() + 1200;
    const foreign = "some-other-host/5b1f3c2e-8d4a-4f6b-9c0d-2e7a1b3c4d5e/pid:[4026531836]/4242/cafebabe";
    sqlite.transaction(() => {
      sqlite.prepare("INSERT INTO items (body) VALUES ('claimed elsewhere')").run();
      sqlite
        .prepare("UPDATE _turbocast_cursor SET owner = ?, claimed_seq = 1, lease_until = ?")
        .run(foreign, leaseUntil);
    })();
    let dispatchedAt = 0;
    recorder.behaviour = () => void (dispatchedAt = Date.now());
    await waitFor(() => recorder.calls.length === 1, { timeoutMs: 10_000 });
    expect(dispatchedAt).toBeGreaterThanOrEqual(leaseUntil);
    expect(
      logger.entries.some(
        (e) => e.level === "warn" && e.message.includes("its lease ran out") && e.message.includes(foreign),
      ),
    ).toBe(true);
  });

  it("two processes draining one file dispatch each change exactly once, in seq order", async () => {
    createDatabase();
    const rows = 150;
    const outs = [path.join(tmp.dir, "a.jsonl"), path.join(tmp.dir, "b.jsonl")];
    const workers = outs.map((out, i) =>
      startWorker(
        "serve",
        file,
        out,
        JSON.stringify({ capture: { pollIntervalMs: 10, batchSize: 7 }, write: { count: rows, prefix: `w${i}` } }),
      ),
    );
    for (const w of workers) await waitFor(received(w, "written"), { timeoutMs: 30_000, message: w.stderr() });
    // every change of both writers, inserts and updates: 2 per row
    await waitFor(() => outs.flatMap(readLines).length >= 4 * rows, { timeoutMs: 15_000 });
    const check = new Database(file);
    await waitFor(
      () =>
        check
          .prepare("SELECT max(seq) = (SELECT done_seq FROM _turbocast_cursor) FROM _turbocast_changes")
          .pluck()
          .get() === 1,
    );
    check.close();
    for (const w of workers) w.child.send("close");
    for (const w of workers) expect(await w.exited).toEqual({ code: 0, signal: null });

    const [a, b] = outs.map(readLines) as [Dispatched[], Dispatched[]];
    const all = [...a, ...b];
    const keys = all.map((d) => `${d.id}@${d.version}`);
    expect(new Set(keys).size).toBe(4 * rows);
    // versions are the log's seqs, whichever process dispatched: each one once, 1..4×rows
    expect(all.map((d) => d.seq).sort((x, y) => x - y)).toEqual(Array.from({ length: 4 * rows }, (_, i) => i + 1));
    expect(keys).toHaveLength(4 * rows);
    expect(all.filter((d) => d.created === true).every((d) => d.version === 0)).toBe(true);
    expect(all.filter((d) => d.created === false).every((d) => d.version === 1)).toBe(true);
    // each one's share arrived in id order for inserts (seq order within a process). Which feed
    // dispatches what is up to timing: one that keeps finding work keeps the cursor, and on a loaded
    // machine it may take every change (still each exactly once); usually both take part.
    console.log(`[two processes] dispatched ${a.length} + ${b.length} changes`);
    for (const share of [a, b]) {
      const inserted = share.filter((d) => d.created).map((d) => d.id);
      expect(inserted).toEqual([...inserted].sort((x, y) => x - y));
    }
  });
});
