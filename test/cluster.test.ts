/**
 * The demo's documented cluster command, run as a user runs it:
 * `WORKERS=3 npm run start:cluster` (and with BROKER=postgres), on a temporary
 * CHAT_DB and a free PORT. A signed-in user's subscriptions — SSE on one room,
 * WebSocket on another, several of each so they land on different workers —
 * each get every posted message exactly once; then SIGINT to the process
 * group (a terminal's Ctrl-C) stops everything.
 */
import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";
import { EventSource } from "eventsource";
import { afterEach, describe, expect, it } from "vitest";
import {
  PG_URL,
  REDIS_URL,
  deleteRedisKeys,
  describeWithServer,
  dropPostgresNamespace,
  freePort,
  postgresUnavailable,
  redisUnavailable,
  uniqueName,
} from "./brokers/servers.js";
import { openWs, tempDir, unescapeHtml, waitFor } from "./helpers.js";

const root = path.resolve(import.meta.dirname, "..");
const WORKERS = 3;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  // every cleanup runs, even after one failed (stopping the cluster checks how it stopped)
  const errors: unknown[] = [];
  for (const cleanup of cleanups.splice(0).reverse())
    await Promise.resolve()
      .then(cleanup)
      .catch((error: unknown) => errors.push(error));
  if (errors.length > 0) throw errors[0];
});

/** Kills every process of the group led by `child` (the command was started detached: it leads its own group). */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    // the group is gone already
  }
}

/** Whether any process of the group led by `pid` is still alive. */
function groupAlive(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function startCluster(kind: "redis" | "postgres"): Promise<{ url: string; db: string; output: () => string }> {
  const tmp = tempDir("turbocast-cluster-");
  cleanups.push(tmp.cleanup);
  const db = path.join(tmp.dir, "chat.db");
  const port = await freePort();
  const prefix = uniqueName("tc_cluster");
  cleanups.push(() =>
    kind === "redis" ? deleteRedisKeys(REDIS_URL, `${prefix}:`) : dropPostgresNamespace(PG_URL, prefix),
  );

  const child = spawn("npm", ["run", "--silent", "start:cluster"], {
    cwd: root,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      WORKERS: String(WORKERS),
      PORT: String(port),
      HOST: "127.0.0.1",
      CHAT_DB: db,
      BROKER: kind,
      BROKER_PREFIX: prefix,
      REDIS_URL,
      DATABASE_URL: PG_URL,
    },
  });
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  cleanups.push(async () => {
    killGroup(child, "SIGKILL");
    await exited;
  });
  await Promise.race([
    waitFor(() => output.includes(`turbocast chat on http://127.0.0.1:${port} with ${WORKERS} workers`), {
      timeoutMs: 30_000,
      message: "the cluster announces that every worker listens",
    }),
    exited.then(() => Promise.reject(new Error(`npm run start:cluster exited: ${output}`))),
  ]).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)}\n--- output ---\n${output}`);
  });

  // stopping is part of the command's contract: Ctrl-C reaches the whole group
  cleanups.push(async () => {
    killGroup(child, "SIGINT");
    await waitFor(() => !groupAlive(child.pid!), {
      timeoutMs: 15_000,
      message: `the cluster stops on SIGINT\n${output}`,
    });
    expect(output).not.toMatch(/exited \(|killing them|did not close cleanly/);
  });
  return { url: `http://127.0.0.1:${port}`, db, output: () => output };
}

/** A frame's message body (the demo's messages/_message.njk), or the action and target of anything else. */
function describeFrame(frame: string): string {
  const body = /<span class="body">([^<]*)<\/span>/.exec(frame)?.[1];
  if (body !== undefined) return body;
  return /<turbo-stream action="([^"]+)" target="([^"]+)"/.exec(frame)?.slice(1).join(" ") ?? frame;
}

describe.each([
  { kind: "redis" as const, unavailable: await redisUnavailable() },
  { kind: "postgres" as const, unavailable: await postgresUnavailable() },
])("WORKERS=3 npm run start:cluster with BROKER=$kind", ({ kind, unavailable }) => {
  describeWithServer(`the demo on three workers, ${kind}`, unavailable, () => {
    it("every subscription, on whichever worker it landed, receives each posted message exactly once", async () => {
      const started = performance.now();
      const { url, db } = await startCluster(kind);
      const bootMs = performance.now() - started;

      const login = await fetch(`${url}/login`, {
        method: "POST",
        body: new URLSearchParams({ name: "alice" }),
        redirect: "manual",
      });
      expect(login.status).toBe(303);
      const cookie = /chat_session=[^;]+/.exec(login.headers.get("set-cookie") ?? "")?.[0];
      expect(cookie).toBeDefined();
      const headers = { cookie: cookie! };
      const sourceOf = async (room: number): Promise<string> => {
        const html = await (await fetch(`${url}/rooms/${room}`, { headers })).text();
        const src = /<turbo-stream-source src="([^"]*)"/.exec(html)?.[1];
        if (!src) throw new Error(`no <turbo-stream-source> on /rooms/${room}: ${html}`);
        return unescapeHtml(src);
      };

      // the seeded "general" room subscribes over SSE, "random" over WebSocket; the cluster
      // hands connections to its workers in turn, so six of each reach all three
      const sseSrc = await sourceOf(1);
      const wsSrc = await sourceOf(2);
      expect(sseSrc).toMatch(/^\/turbo-streams\?/);
      expect(wsSrc).toMatch(/^ws:\/\/127\.0\.0\.1:\d+\/turbo-streams\?/);
      const sse: Array<{ source: EventSource; frames: string[] }> = [];
      const ws: Array<{ frames: string[]; close: () => void }> = [];
      for (let i = 0; i < 2 * WORKERS; i++) {
        const frames: string[] = [];
        const source = new EventSource(`${url}${sseSrc}`, {
          fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } }),
        });
        source.onmessage = (event) => frames.push(event.data);
        await new Promise<void>((resolve, reject) => {
          source.addEventListener("open", () => resolve(), { once: true });
          source.addEventListener("error", () => reject(new Error("an SSE subscription failed to open")), {
            once: true,
          });
        });
        sse.push({ source, frames });
        cleanups.push(() => source.close());
        const socket = await openWs(wsSrc, { headers });
        ws.push({ frames: socket.messages, close: () => socket.ws.close() });
        cleanups.push(() => socket.ws.close());
      }

      const post = async (room: number, body: string) => {
        const response = await fetch(`${url}/rooms/${room}/messages`, {
          method: "POST",
          headers,
          body: new URLSearchParams({ body }),
          redirect: "manual",
        });
        expect(response.status).toBe(303);
      };
      const postedAt = performance.now();
      await post(1, "hello from the cluster");
      await post(2, "hello over websocket");
      // a writer outside the app (another service, the sqlite3 shell): some worker's poll picks it up
      const writer = spawn(
        process.execPath,
        ["--import", "tsx", "test/fixtures/chat-writer.ts", db, "1", "1", "written outside"],
        { cwd: root, stdio: "ignore" },
      );
      expect(await new Promise((resolve) => writer.once("exit", resolve))).toBe(0);
      // last: anything sent twice before it would sit in the lists
      await post(1, "end");
      await post(2, "end");

      const want1 = ["hello from the cluster", "written outside", "end"];
      const want2 = ["hello over websocket", "end"];
      for (const [i, client] of sse.entries()) {
        await waitFor(() => client.frames.length >= want1.length, {
          timeoutMs: 10_000,
          message: `SSE subscription ${i}: ${client.frames.length} frames`,
        });
        expect(client.frames.map(describeFrame), `SSE subscription ${i}`).toEqual(want1);
      }
      for (const [i, client] of ws.entries()) {
        await waitFor(() => client.frames.length >= want2.length, {
          timeoutMs: 10_000,
          message: `WebSocket subscription ${i}: ${client.frames.length} frames`,
        });
        expect(client.frames.map(describeFrame), `WebSocket subscription ${i}`).toEqual(want2);
      }
      console.info(
        `[cluster ${kind}] ${WORKERS} workers up in ${Math.round(bootMs)} ms; ${sse.length} SSE + ${ws.length} WebSocket subscriptions got ` +
          `${want1.length} + ${want2.length} messages each, exactly once, within ${Math.round(performance.now() - postedAt)} ms of the first post`,
      );
    });
  });
});
