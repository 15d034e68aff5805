import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { drizzle } from "drizzle-orm/node-postgres";
import nunjucks from "nunjucks";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CaptureOptions, type Turbo, createTurbo } from "../../src/index.js";
import { recorder } from "../fixtures/capture/streams.js";
import { DDL, schema as tables } from "../fixtures/capture-pg/schema.js";
import { pgCaptureStreams } from "../fixtures/capture-pg/streams.js";
import { memoryLogger, tempDir, waitFor } from "../helpers.js";
import { createTestSchema, type TestSchema } from "./pg-helpers.js";

const root = path.resolve(import.meta.dirname, "..", "..");
const worker = path.join(import.meta.dirname, "..", "fixtures", "capture-pg", "worker.ts");

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
  /** When the hook ran (ms, comparable across processes on one machine). */
  at: number;
  hook: string;
  created?: boolean;
  id: number;
  body: string;
  version: number;
}

const readLines = (file: string): Dispatched[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line) as Dispatched)
    : [];

let schema: TestSchema;
let tmp: { dir: string; cleanup: () => void };
const opened: Turbo[] = [];

async function startApp(capture?: CaptureOptions, logger = memoryLogger()): Promise<Turbo> {
  const turbo = await createTurbo({
    db: drizzle(schema.pool(), { schema: tables }),
    views: new nunjucks.Environment(null, { autoescape: true }),
    streams: pgCaptureStreams,
    logger,
    capture,
  });
  opened.push(turbo);
  return turbo;
}

function psql(statements: string): void {
  const result = spawnSync(
    "psql",
    [schema.url, "-v", "ON_ERROR_STOP=1", "-q", "-c", `SET search_path = "${schema.name}"; ${statements}`],
    { encoding: "utf8" },
  );
  if (result.status !== 0) throw new Error(`psql failed: ${result.stderr}`);
}

const cursor = async () =>
  (
    await schema.admin.query(
      `SELECT window_done::int AS done, owner, claimed_seq::int AS claimed, lease_until::bigint AS "leaseUntil"
       FROM "${schema.name}"._turbocast_cursor`,
    )
  ).rows[0] as { done: number; owner: string | null; claimed: number | null; leaseUntil: string | null };

beforeEach(async () => {
  schema = await createTestSchema("tcproc");
  await schema.admin.query(`SET search_path = "${schema.name}"; ${DDL}`);
  tmp = tempDir("turbocast-pg-processes-");
  recorder.reset();
});

afterEach(async () => {
  for (const child of children) child.kill("SIGKILL");
  for (const turbo of opened.splice(0)) await turbo.close();
  recorder.reset();
  tmp.cleanup();
  await schema.drop();
});

describe("PostgreSQL change capture across processes", () => {
  it("dispatches writes made by another process (psql)", async () => {
    await startApp({ pollIntervalMs: 60_000 });
    psql("INSERT INTO items (body) VALUES ('from-psql-0'), ('from-psql-1'), ('from-psql-2')");
    await waitFor(() => recorder.calls.length === 3);
    expect(recorder.calls.map((c) => [c.created, c.entity.body])).toEqual([
      [true, "from-psql-0"],
      [true, "from-psql-1"],
      [true, "from-psql-2"],
    ]);
  });

  it("dispatches, on restart, a change committed by a process killed right after the commit", async () => {
    const doomed = startWorker("commit-and-die", schema.url, schema.name, "last words");
    const { signal } = await doomed.exited;
    expect(signal, doomed.stderr()).toBe("SIGKILL");
    const { rows } = await schema.admin.query(`SELECT seq::int, op FROM "${schema.name}"._turbocast_changes`);
    expect(rows).toEqual([{ seq: 1, op: "insert" }]);
    expect(await cursor()).toMatchObject({ done: 0, owner: null });
    await startApp();
    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toMatchObject({ body: "last words" });
  });

  it("takes over at once the claim of a process on this host killed while dispatching, without waiting for its lease", async () => {
    const out = path.join(tmp.dir, "dying.jsonl");
    const leaseMs = 60_000;
    const dying = startWorker(
      "serve",
      schema.url,
      schema.name,
      out,
      JSON.stringify({ capture: { pollIntervalMs: 20, leaseMs } }),
    );
    await waitFor(received(dying, "ready"), { timeoutMs: 15_000, message: dying.stderr() });
    psql("INSERT INTO items (body) VALUES ('hang here')");
    await waitFor(() => readLines(out).length === 1, { message: "the hook started in the child" });
    const logger = memoryLogger();
    const turbo = await startApp({ pollIntervalMs: 20, leaseMs }, logger);
    await turbo.feed.drain(); // claims nothing: the cursor is the live child's
    expect(recorder.calls).toHaveLength(0);

    // the child holds the claim while its hook hangs; read it before the kill, since
    // this process's feed (polling every 20 ms) may take it over before a read after it
    const claim = await cursor();
    expect(claim).toMatchObject({ done: 0, claimed: 1 });
    expect(claim.owner).toContain(`/${dying.child.pid}/`);
    let dispatchedAt = 0;
    recorder.behaviour = () => void (dispatchedAt = Date.now());
    dying.child.kill("SIGKILL");
    await dying.exited;
    const killedAt = Date.now();

    await waitFor(() => recorder.calls.length === 1);
    expect(recorder.calls[0]!.entity).toMatchObject({ body: "hang here" });
    expect(dispatchedAt).toBeLessThan(Number(claim.leaseUntil));
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
    const logger = memoryLogger();
    await startApp({ pollIntervalMs: 20 }, logger);
    const leaseUntil = Date.now() + 1200;
    const foreign = "some-other-host/5b1f3c2e-8d4a-4f6b-9c0d-2e7a1b3c4d5e/pid:[4026531836]/4242/cafebabe";
    let dispatchedAt = 0;
    recorder.behaviour = () => void (dispatchedAt = Date.now());
    // another host's feed holds the cursor (as if it had claimed what follows) and vanished
    await schema.admin.query(
      `UPDATE "${schema.name}"._turbocast_cursor SET owner = $1, claimed_seq = 1, lease_until = $2`,
      [foreign, leaseUntil],
    );
    psql("INSERT INTO items (body) VALUES ('claimed elsewhere')");
    await waitFor(() => recorder.calls.length === 1, { timeoutMs: 10_000 });
    expect(dispatchedAt).toBeGreaterThanOrEqual(leaseUntil);
    expect(
      logger.entries.some(
        (e) => e.level === "warn" && e.message.includes("its lease ran out") && e.message.includes(foreign),
      ),
    ).toBe(true);
  });

  for (const processes of [2, 3]) {
    it(`${processes} processes draining one database dispatch each change exactly once, each row's changes in order`, async () => {
      const rows = 100;
      const outs = Array.from({ length: processes }, (_, i) => path.join(tmp.dir, `${i}.jsonl`));
      const workers = outs.map((out, i) =>
        startWorker(
          "serve",
          schema.url,
          schema.name,
          out,
          JSON.stringify({ capture: { pollIntervalMs: 50, batchSize: 7 }, write: { count: rows, prefix: `w${i}` } }),
        ),
      );
      for (const w of workers) await waitFor(received(w, "written"), { timeoutMs: 60_000, message: w.stderr() });
      psql("INSERT INTO items (body) SELECT 'psql-' || g FROM generate_series(1, 50) g");
      const total = 2 * rows * processes + 50;
      await waitFor(() => outs.flatMap(readLines).length >= total, { timeoutMs: 30_000 });
      for (const w of workers) w.child.send("close");
      for (const w of workers) expect(await w.exited).toEqual({ code: 0, signal: null });

      const shares = outs.map(readLines);
      const all = shares.flat();
      const keys = all.map((d) => `${d.id}@${d.version}@${d.created}`);
      expect(new Set(keys).size).toBe(total);
      expect(keys).toHaveLength(total);
      console.log(`[${processes} processes] dispatched ${shares.map((s) => s.length).join(" + ")} changes`);
      // a row's insert is dispatched before its update, whichever processes dispatched them
      const insertedAt = new Map(all.filter((d) => d.created).map((d) => [d.id, d.at]));
      for (const d of all.filter((e) => e.created === false))
        expect(d.at).toBeGreaterThanOrEqual(insertedAt.get(d.id)!);
    }, 120_000);
  }
});
