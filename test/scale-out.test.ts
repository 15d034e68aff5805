/**
 * The scale-out proof at full stack: three worker processes — each a real
 * app (createTurbo over one shared SQLite file, Express, an http.Server with
 * SSE and WebSocket subscriptions) on one Redis or PostgreSQL broker — with
 * real clients on every worker. A write through one worker (and one by a
 * plain fourth process) reaches every client on every worker exactly once,
 * in order, and each change's hook runs exactly once across the workers.
 */
import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";
import Database from "better-sqlite3";
import { EventSource } from "eventsource";
import { afterEach, describe, expect, it } from "vitest";
import {
  PG_URL,
  REDIS_URL,
  deleteRedisKeys,
  describeWithServer,
  dropPostgresNamespace,
  postgresUnavailable,
  redisUnavailable,
  uniqueName,
} from "./brokers/servers.js";
import { DDL, type WorkerConfig, type WorkerEvent, type WorkerRequest } from "./fixtures/app-worker-shared.js";
import {
  type LiveSubscriber,
  openWs,
  subscribeSse,
  subscribeWs,
  tempDir,
  unescapeHtml,
  waitFor,
  withoutPosition,
} from "./helpers.js";

const root = path.resolve(import.meta.dirname, "..");
const FIXTURE = path.join(import.meta.dirname, "fixtures", "app-worker.ts");
const SECRET = "scale-out-test-secret-0123456789abcdef";

type HookEvent = Extract<WorkerEvent, { event: "hook" }>;
type LogEvent = Extract<WorkerEvent, { event: "log" }>;

/** One app process (test/fixtures/app-worker.ts) driven over IPC. */
class AppWorker {
  readonly hooks: HookEvent[] = [];
  readonly logs: LogEvent[] = [];
  port = 0;
  #child: ChildProcess;
  #stderr = "";
  #rid = 0;
  #pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly ready: Promise<void>;

  constructor(
    readonly index: number,
    config: WorkerConfig,
  ) {
    const child = spawn(process.execPath, ["--import", "tsx", FIXTURE, "serve", JSON.stringify(config)], {
      cwd: root,
      stdio: ["ignore", "ignore", "pipe", "ipc"],
    });
    this.#child = child;
    children.add(child);
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (this.#stderr += chunk));
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        children.delete(child);
        for (const pending of this.#pending.values())
          pending.reject(new Error(`worker ${index} exited (${signal ?? code}): ${this.#stderr}`));
        this.#pending.clear();
        resolve({ code, signal });
      });
    });
    let ready!: () => void;
    this.ready = new Promise<void>((resolve, reject) => {
      ready = resolve;
      void this.exited.then(({ code, signal }) =>
        reject(new Error(`worker ${index} exited (${signal ?? code}) before it was ready: ${this.#stderr}`)),
      );
    });
    this.ready.catch(() => {});
    child.on(
      "message",
      (message: WorkerEvent | { rid: number; ok: boolean; value?: unknown; error?: { message: string } }) => {
        if ("rid" in message) {
          const pending = this.#pending.get(message.rid);
          this.#pending.delete(message.rid);
          if (message.ok) pending?.resolve(message.value);
          else pending?.reject(new Error(`worker ${index}: ${message.error?.message}`));
        } else if (message.event === "ready") {
          this.port = message.port;
          ready();
        } else if (message.event === "hook") {
          this.hooks.push(message);
        } else if (message.event === "log") {
          this.logs.push(message);
        }
      },
    );
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get stderr(): string {
    return this.#stderr;
  }

  request<T = unknown>(request: WorkerRequest): Promise<T> {
    const rid = ++this.#rid;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(rid, { resolve: resolve as (value: unknown) => void, reject });
      this.#child.send({ rid, ...request });
    });
  }

  insert(roomId: number, body: string): Promise<{ id: number; roomId: number; body: string }> {
    return this.request({ op: "insert", roomId, body });
  }

  /** The `src` of the room page's `<turbo-stream-source>`, as this worker renders it (signed, with the render-time position). */
  async pageSrc(roomId: number, transport: "sse" | "websocket"): Promise<string> {
    const response = await fetch(`${this.url}/rooms/${roomId}?transport=${transport}`);
    const html = await response.text();
    const match = /<turbo-stream-source src="([^"]*)"/.exec(html);
    if (!response.ok || !match)
      throw new Error(
        `worker ${this.index}: no <turbo-stream-source> in /rooms/${roomId} (${response.status}): ${html}`,
      );
    const src = unescapeHtml(match[1]!);
    return src.startsWith("/") ? `${this.url}${src}` : src;
  }

  /** Asks the worker to close turbocast and its server; resolves with how the process ended (by itself). */
  async close(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    await this.request({ op: "close" });
    return this.exited;
  }

  kill(): void {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill("SIGKILL");
  }
}

const children = new Set<ChildProcess>();

/** A frame as a client saw it: its position and the `<turbo-stream>` markup without transport decoration. */
interface Received {
  position: string;
  frame: string;
}

interface Client {
  label: string;
  worker: number;
  received: Received[];
  close(): void;
}

/** An EventSource on `url`; `route` may send each (re)connection attempt elsewhere, and hold it back until a promise settles. */
async function sseClient(
  label: string,
  worker: number,
  url: string,
  route: (attempt: number) => Promise<string> | string = () => url,
): Promise<Client & { source: EventSource; lastEventIds: Array<string | null> }> {
  const received: Received[] = [];
  const lastEventIds: Array<string | null> = [];
  let attempts = 0;
  const source = new EventSource(url, {
    fetch: async (_input, init) => {
      const target = await route(++attempts);
      lastEventIds.push((init.headers as Record<string, string>)["Last-Event-ID"] ?? null);
      return fetch(target, init);
    },
  });
  source.onmessage = (event) => received.push({ position: event.lastEventId, frame: event.data });
  await new Promise<void>((resolve, reject) => {
    source.addEventListener("open", () => resolve(), { once: true });
    source.addEventListener("error", () => reject(new Error(`${label}: EventSource failed to open ${url}`)), {
      once: true,
    });
  });
  clients.push({ label, worker, received, close: () => source.close() });
  return { label, worker, received, source, lastEventIds, close: () => source.close() };
}

const POSITION = / data-turbocast-position="([^"]+)"/;

async function wsClient(label: string, worker: number, url: string): Promise<Client & { closed: Promise<unknown> }> {
  // openWs records every message from the first one on, replayed frames that arrive with the handshake included
  const { ws, messages, closed } = await openWs(url);
  const client = {
    label,
    worker,
    get received(): Received[] {
      return messages.map((m) => ({ position: POSITION.exec(m)?.[1] ?? "", frame: m.replace(POSITION, "") }));
    },
    closed,
    close: () => ws.close(),
  };
  clients.push(client);
  return client;
}

const clients: Client[] = [];
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  for (const child of children) child.kill("SIGKILL");
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const append = (id: number, body: string) =>
  `<turbo-stream action="append" target="messages"><template><li id="message_${id}">${body}</li></template></turbo-stream>`;
const replace = (id: number, body: string) =>
  `<turbo-stream action="replace" target="message_${id}"><template><li id="message_${id}">${body}</li></template></turbo-stream>`;
const remove = (id: number) => `<turbo-stream action="remove" target="message_${id}"></turbo-stream>`;

/** Everything one test needs: a SQLite file with the schema, a broker namespace, and `n` started workers on both. */
async function startWorkers(
  kind: "redis" | "postgres",
  n: number,
): Promise<{ workers: AppWorker[]; file: string; dispatched: () => boolean }> {
  const tmp = tempDir("turbocast-scale-out-");
  cleanups.push(tmp.cleanup);
  const file = path.join(tmp.dir, "app.db");
  const sqlite = new Database(file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(DDL);
  sqlite.close();

  const name = uniqueName("tc_scale");
  let broker: (worker: number) => Record<string, unknown>;
  if (kind === "redis") {
    const keyPrefix = `${name}:`;
    broker = (worker) => ({ url: REDIS_URL, keyPrefix, connectionName: `${name}-w${worker}` });
    cleanups.push(() => deleteRedisKeys(REDIS_URL, keyPrefix));
  } else {
    broker = (worker) => ({ connectionString: PG_URL, prefix: name, applicationName: `${name}_w${worker}` });
    cleanups.push(() => dropPostgresNamespace(PG_URL, name));
  }
  const workers = Array.from(
    { length: n },
    (_, i) => new AppWorker(i, { db: file, worker: i, kind, broker: broker(i), secret: SECRET, pollIntervalMs: 20 }),
  );
  cleanups.push(() => {
    for (const w of workers) w.kill();
  });
  await Promise.all(workers.map((w) => w.ready));

  const check = new Database(file, { readonly: true });
  cleanups.push(() => void check.close());
  /** Every change in the log has been dispatched, and nobody holds a claim. */
  const dispatched = () =>
    check
      .prepare(
        "select (select coalesce(max(seq), 0) from _turbocast_changes) = done_seq and owner is null from _turbocast_cursor",
      )
      .pluck()
      .get() === 1;
  return { workers, file, dispatched };
}

/** A plain fourth process (no turbocast) inserting one message into the SQLite file; resolves once it exited. */
async function writeFromPlainProcess(file: string, roomId: number, body: string): Promise<void> {
  const child = spawn(process.execPath, ["--import", "tsx", FIXTURE, "write", file, String(roomId), body], {
    cwd: root,
    stdio: ["ignore", "ignore", "pipe"],
  });
  children.add(child);
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  children.delete(child);
  if (code !== 0) throw new Error(`the plain writer exited with ${code}: ${stderr}`);
}

/** Waits until `client` holds `expected.length` frames, then checks they are exactly those frames, in order. */
async function expectFrames(client: Client, expected: string[], timeoutMs = 15_000): Promise<void> {
  await waitFor(() => client.received.length >= expected.length, {
    timeoutMs,
    message: `${client.label} got ${client.received.length} of ${expected.length} frames`,
  });
  // a duplicate, a foreign frame or a swap takes a place in the list and fails the comparison
  expect(
    client.received.map((r) => r.frame),
    client.label,
  ).toEqual(expected);
}

const kinds = [
  { kind: "redis" as const, unavailable: await redisUnavailable() },
  { kind: "postgres" as const, unavailable: await postgresUnavailable() },
];

describe.each(kinds)("scale-out at full stack: three app workers on one $kind broker", ({ kind, unavailable }) => {
  describeWithServer(`three workers, real clients, ${kind}`, unavailable, () => {
    it("delivers every change written through one worker (and by a plain process) to every client on every worker exactly once, in order; each hook runs once", async () => {
      const started = performance.now();
      const { workers, file, dispatched } = await startWorkers(kind, 3);
      const bootMs = performance.now() - started;

      // on every worker: two SSE and two WebSocket clients on room 1, one of each on room 2
      const room1: Client[] = [];
      const room2: Client[] = [];
      await Promise.all(
        workers.map(async (w) => {
          for (const n of [0, 1]) {
            room1.push(await sseClient(`w${w.index} room1 sse#${n}`, w.index, await w.pageSrc(1, "sse")));
            room1.push(await wsClient(`w${w.index} room1 ws#${n}`, w.index, await w.pageSrc(1, "websocket")));
          }
          room2.push(await sseClient(`w${w.index} room2 sse`, w.index, await w.pageSrc(2, "sse")));
          room2.push(await wsClient(`w${w.index} room2 ws`, w.index, await w.pageSrc(2, "websocket")));
        }),
      );
      expect(room1).toHaveLength(12);
      expect(room2).toHaveLength(6);

      // every write goes through worker 0 — except one by a plain process with no turbocast at all
      const writer = workers[0]!;
      const writesStarted = performance.now();
      const want1: string[] = [];
      const want2: string[] = [];
      const ids: number[] = [];
      for (let i = 0; i < 20; i++) {
        const row = await writer.insert(1, `m${i}`);
        ids.push(row.id);
        want1.push(append(row.id, `m${i}`));
      }
      const r2 = await writer.insert(2, "room two");
      want2.push(append(r2.id, "room two"));
      await writeFromPlainProcess(file, 1, "from a plain process");
      const plainId = r2.id + 1; // autoincrement: the next id
      want1.push(append(plainId, "from a plain process"));
      await writer.request({ op: "update", id: ids[0]!, body: "m0 &amp; edited <b>" });
      want1.push(replace(ids[0]!, "m0 &amp;amp; edited &lt;b&gt;"));
      await writer.request({ op: "delete", id: ids[1]! });
      want1.push(remove(ids[1]!));
      // last on each stream: everything before it, duplicates included, has arrived once it has
      const end1 = await writer.insert(1, "end");
      want1.push(append(end1.id, "end"));
      const end2 = await writer.insert(2, "end");
      want2.push(append(end2.id, "end"));

      for (const client of room1) await expectFrames(client, want1);
      for (const client of room2) await expectFrames(client, want2);
      const deliveredMs = performance.now() - writesStarted;

      // one position per frame, the same on every client of every worker, increasing
      const positions1 = room1[0]!.received.map((r) => r.position);
      const seqs = positions1.map((p) => Number(p.slice(p.lastIndexOf(".") + 1)));
      for (let i = 1; i < seqs.length; i++) expect(seqs[i]!).toBeGreaterThan(seqs[i - 1]!);
      for (const client of room1)
        expect(
          client.received.map((r) => r.position),
          client.label,
        ).toEqual(positions1);
      const positions2 = room2[0]!.received.map((r) => r.position);
      for (const client of room2)
        expect(
          client.received.map((r) => r.position),
          client.label,
        ).toEqual(positions2);

      // each change's hook ran once, on some worker, and published the frame the clients got
      const changes = want1.length + want2.length;
      await waitFor(dispatched, { timeoutMs: 10_000, message: "every change in the log dispatched" });
      const hooks = workers.flatMap((w) => w.hooks);
      expect(hooks).toHaveLength(changes);
      const keys = hooks.map((h) => `${h.op}:${h.id}`);
      expect(new Set(keys).size).toBe(changes);
      expect(new Set(hooks.map((h) => h.position))).toEqual(new Set([...positions1, ...positions2]));
      const plainHook = hooks.find((h) => h.id === plainId)!;
      expect(plainHook).toMatchObject({ op: "insert", body: "from a plain process" });

      const byWorker = workers.map((w) => w.hooks.length);
      console.info(
        `[scale-out ${kind}] 3 workers up in ${Math.round(bootMs)} ms; ${changes} changes → ${want1.length} frames × ${room1.length} room-1 clients + ` +
          `${want2.length} × ${room2.length} room-2 clients = ${want1.length * room1.length + want2.length * room2.length} deliveries, all in ` +
          `${Math.round(deliveredMs)} ms from the first write; hooks per worker ${JSON.stringify(byWorker)} (the plain process's change on worker ${plainHook.worker})`,
      );

      for (const w of workers)
        expect(
          w.logs.filter((l) => l.level !== "info"),
          `worker ${w.index} logs`,
        ).toEqual([]);
      for (const client of clients.splice(0)) client.close();
      for (const w of workers)
        expect(await w.close(), `worker ${w.index}: ${w.stderr}`).toEqual({ code: 0, signal: null });
    });

    it("a client whose worker dies reconnects to another worker and gets every missed frame exactly once (SSE Last-Event-ID, WebSocket after=)", async () => {
      const { workers, dispatched } = await startWorkers(kind, 3);
      const [a, b, c] = workers as [AppWorker, AppWorker, AppWorker];

      // SSE: the first connection goes to A; reconnections go to B, and wait until the missed frames are written
      let release!: () => void;
      const written = new Promise<void>((resolve) => (release = resolve));
      const sseUrlA = await a.pageSrc(3, "sse");
      const sseUrlB = sseUrlA.replace(a.url, b.url);
      const sse = await sseClient("sse A→B", a.index, sseUrlA, async (attempt) => {
        if (attempt === 1) return sseUrlA;
        await written;
        return sseUrlB;
      });
      const wsUrlA = await a.pageSrc(3, "websocket");
      const ws = await wsClient("ws on A", a.index, wsUrlA);

      const frames: string[] = [];
      const write = async (roomId: number, body: string) => {
        const row = await c.insert(roomId, body);
        if (roomId === 3) frames.push(append(row.id, body));
      };
      await write(3, "m0");
      await write(3, "m1");
      await expectFrames(sse, frames);
      await expectFrames(ws, frames);
      const seen = sse.received.at(-1)!.position;
      expect(ws.received.at(-1)!.position).toBe(seen);

      // A must not die holding a claim on the change log (its lease would delay the others, not lose anything)
      await waitFor(dispatched, { timeoutMs: 15_000, message: "every change dispatched before A dies" });
      a.kill();
      expect(await a.exited).toEqual({ code: null, signal: "SIGKILL" });
      await ws.closed;

      // missed while disconnected, with another stream's frame in between
      await write(3, "m2");
      await write(1, "elsewhere");
      await write(3, "m3");
      await write(3, "m4");
      release();

      // SSE: EventSource reconnects by itself (to B) with Last-Event-ID, which wins over the page's older after=
      await expectFrames(sse, frames);
      expect(sse.lastEventIds).toEqual([null, seen]);
      // WebSocket: reconnect to B with after= the last position seen, as turbocast's client script does
      const wsUrlB = new URL(wsUrlA);
      wsUrlB.port = String(b.port);
      wsUrlB.searchParams.set("after", seen);
      const ws2 = await wsClient("ws on B", b.index, wsUrlB.toString());
      await expectFrames(ws2, frames.slice(2));

      // then live
      await write(3, "m5");
      await expectFrames(sse, frames);
      await expectFrames(ws2, frames.slice(2));
      // across both connections each frame exactly once
      expect([...ws.received, ...ws2.received].map((r) => r.frame)).toEqual(frames);
      expect(sse.received.map((r) => r.frame)).toEqual(frames);
      expect(sse.received.map((r) => r.position)).toEqual([...ws.received, ...ws2.received].map((r) => r.position));

      await waitFor(dispatched, { timeoutMs: 15_000, message: "every change dispatched" });
      const hooks = workers.flatMap((w) => w.hooks);
      expect(hooks.map((h) => `${h.op}:${h.body}`).sort()).toEqual(
        ["m0", "m1", "m2", "m3", "m4", "m5", "elsewhere"].map((b) => `insert:${b}`).sort(),
      );
      console.info(
        `[scale-out ${kind}] failover: SSE resumed on worker ${b.index} after ${sse.lastEventIds.length - 1} reconnection(s) with Last-Event-ID ${seen}; ` +
          `${frames.length} frames, each once per client`,
      );
    });
  });
});

describe.each(kinds)("live authorization across processes on one $kind broker", ({ kind, unavailable }) => {
  describeWithServer(`two workers, ${kind}`, unavailable, () => {
    const REFRESH = '<turbo-stream action="refresh"></turbo-stream>';
    const subscribe = (open: typeof subscribeSse, url: string, user: string): LiveSubscriber => {
      const subscriber = open(url, { "x-user": user });
      cleanups.push(subscriber.close);
      return subscriber;
    };
    const revoke = (file: string, user: string): void => {
      const sqlite = new Database(file);
      sqlite.prepare("insert into revoked (user) values (?)").run(user);
      sqlite.close();
    };

    it("disconnect closes a revoked user's SSE and WebSocket subscriptions on every worker with exactly one refresh; a frame published after it resolved reaches only the others", async () => {
      const { workers, file } = await startWorkers(kind, 2);
      const [local, remote] = workers as [AppWorker, AppWorker];
      const bob = [
        subscribe(subscribeSse, await local.pageSrc(1, "sse"), "bob"),
        subscribe(subscribeSse, await remote.pageSrc(1, "sse"), "bob"),
        subscribe(subscribeWs, await remote.pageSrc(1, "websocket"), "bob"),
      ];
      const alice = [
        subscribe(subscribeSse, await remote.pageSrc(1, "sse"), "alice"),
        subscribe(subscribeWs, await remote.pageSrc(1, "websocket"), "alice"),
      ];
      await Promise.all([...bob, ...alice].map((s) => s.ready));

      revoke(file, "bob");
      expect(await local.request({ op: "disconnect", user: "bob" })).toBe(1);
      const row = await local.insert(1, "after the disconnect");
      for (const s of alice) {
        await waitFor(() => s.frames.length === 1, { timeoutMs: 15_000, message: "alice gets the later frame" });
        expect(withoutPosition(s.frames[0]!)).toBe(append(row.id, "after the disconnect"));
      }
      const ends = await Promise.all(bob.map((s) => s.ended));
      expect(ends[2]!.code).toBe(4403);
      for (const s of bob) expect(s.frames.map(withoutPosition)).toEqual([REFRESH]);
      // their reconnects go through every check again, on either worker
      for (const w of workers) {
        const status = (await fetch(await w.pageSrc(1, "sse"), { method: "HEAD", headers: { "x-user": "bob" } }))
          .status;
        expect(status).toBe(403);
      }
    });

    it("closes the subscriptions of a deleted row's stream on every worker, with exactly one refresh", async () => {
      const { workers } = await startWorkers(kind, 2);
      const [local, remote] = workers as [AppWorker, AppWorker];
      const room3 = [
        subscribe(subscribeSse, await local.pageSrc(3, "sse"), "erin"),
        subscribe(subscribeSse, await remote.pageSrc(3, "sse"), "erin"),
        subscribe(subscribeWs, await remote.pageSrc(3, "websocket"), "erin"),
      ];
      const room1 = subscribe(subscribeWs, await remote.pageSrc(1, "websocket"), "erin");
      await Promise.all([...room3, room1].map((s) => s.ready));
      await local.request({ op: "deleteRoom", id: 3 });
      const ends = await Promise.all(room3.map((s) => s.ended));
      expect(ends[2]!.code).toBe(4403);
      for (const s of room3) expect(s.frames.map(withoutPosition)).toEqual([REFRESH]);
      const row = await local.insert(1, "room 1 lives on");
      await waitFor(() => room1.frames.length === 1, { timeoutMs: 15_000 });
      expect(withoutPosition(room1.frames[0]!)).toBe(append(row.id, "room 1 lives on"));
    });

    it("reauthorize closes, on every worker, only the subscriptions whose userPassesTest now fails", async () => {
      const { workers, file } = await startWorkers(kind, 2);
      const [local, remote] = workers as [AppWorker, AppWorker];
      const carol = [
        subscribe(subscribeSse, await remote.pageSrc(2, "sse"), "carol"),
        subscribe(subscribeWs, await remote.pageSrc(2, "websocket"), "carol"),
      ];
      const dave = subscribe(subscribeWs, await remote.pageSrc(2, "websocket"), "dave");
      await Promise.all([...carol, dave].map((s) => s.ready));
      revoke(file, "carol");
      expect(await local.request({ op: "reauthorize" })).toBe(0);
      await Promise.all(carol.map((s) => s.ended));
      for (const s of carol) expect(s.frames.map(withoutPosition)).toEqual([REFRESH]);
      const row = await local.insert(2, "for dave");
      await waitFor(() => dave.frames.length === 1, { timeoutMs: 15_000 });
      expect(withoutPosition(dave.frames[0]!)).toBe(append(row.id, "for dave"));
    });
  });
});
