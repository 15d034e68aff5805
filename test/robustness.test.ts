import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import nunjucks from "nunjucks";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { Broker, BrokerEvents, ControlMessage, Published } from "../src/brokers/broker.js";
import { MemoryBroker } from "../src/brokers/memory.js";
import { runInRequest } from "../src/delivery/request-context.js";
import { BrokerError, ClosedError, type Turbo, createTurbo } from "../src/index.js";
import { RoomStream } from "./fixtures/streams-basic/rooms.js";
import { DDL } from "./fixtures/schema.js";
import { createChatApp } from "../src/app/app.js";
import { listen, memoryLogger, tempDir, waitFor } from "./helpers.js";

const SECRET = "robustness-secret-0123456789abcdef012345";

/** A memory broker whose server can be "down": publish() then rejects, as Redis's and PostgreSQL's do in an outage. */
class FlakyBroker implements Broker {
  readonly kind = "flaky";
  readonly inner = new MemoryBroker();
  down = false;
  start(deliver: (frame: Published) => void, events: BrokerEvents) {
    return this.inner.start(deliver, events);
  }
  publish(stream: string, frame: string) {
    return this.down ? Promise.reject(new BrokerError("broker unreachable")) : this.inner.publish(stream, frame);
  }
  history(streams: readonly string[], after: string) {
    return this.inner.history(streams, after);
  }
  head() {
    return this.inner.head();
  }
  control(message: ControlMessage) {
    return this.down ? Promise.reject(new BrokerError("broker unreachable")) : this.inner.control(message);
  }
  close() {
    return this.inner.close();
  }
}

let cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const fn of cleanup.reverse()) await fn();
  cleanup = [];
});

async function start(options: { broker?: Broker; refreshDebounceMs?: number } = {}) {
  const tmp = tempDir();
  const sqlite = new Database(path.join(tmp.dir, "app.db"));
  sqlite.exec(DDL);
  const log = memoryLogger();
  const turbo: Turbo = await createTurbo({
    db: drizzle(sqlite),
    views: new nunjucks.Environment(null, { autoescape: true }),
    streams: [RoomStream],
    secret: SECRET,
    logger: log,
    ...options,
  });
  const frames: Published[] = [];
  await turbo.hub.subscribe([RoomStream.for(1).name], { send: (f) => frames.push(f) });
  cleanup.push(
    () => turbo.close(),
    () => sqlite.close(),
    tmp.cleanup,
  );
  return { turbo, log, frames };
}

describe("a broker outage", () => {
  it("never turns an un-awaited broadcast into an unhandled rejection, and logs once per outage", async () => {
    const broker = new FlakyBroker();
    const { log, frames } = await start({ broker, refreshDebounceMs: 5 });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    cleanup.push(() => process.off("unhandledRejection", onUnhandled));

    broker.down = true;
    // a hook that fires and forgets, as DESIGN's example does
    for (let i = 0; i < 50; i++) void RoomStream.for(1).remove({ target: `m${i}` });
    void RoomStream.for(1).refresh();
    await new Promise((resolve) => setTimeout(resolve, 50));
    // and an awaiting caller still sees the error
    await expect(RoomStream.for(1).remove({ target: "x" })).rejects.toThrow(BrokerError);
    expect(unhandled).toEqual([]);
    expect(log.entries.filter((e) => e.level === "warn")).toHaveLength(1);

    broker.down = false;
    await RoomStream.for(1).remove({ target: "back" });
    expect(frames.map((f) => f.frame)).toEqual([`<turbo-stream action="remove" target="back"></turbo-stream>`]);
    expect(log.entries.at(-1)).toEqual({ level: "info", message: "broadcasts work again after 52 failed" });
  });
});

describe("debounced refreshes", () => {
  it("never give one request's refresh another request's id", async () => {
    const { frames } = await start({ refreshDebounceMs: 20 });
    const stream = RoomStream.for(1);
    const [a1, a2, b, none] = await Promise.all([
      runInRequest({ requestId: "req-a" }, () => stream.refresh()),
      runInRequest({ requestId: "req-a" }, () => stream.refresh()),
      runInRequest({ requestId: "req-b" }, () => stream.refresh()),
      stream.refresh(),
    ]);
    expect(a1).toBe(a2);
    expect(new Set([a1, b, none]).size).toBe(3);
    expect(frames.map((f) => f.frame).sort()).toEqual([
      `<turbo-stream action="refresh" request-id="req-a"></turbo-stream>`,
      `<turbo-stream action="refresh" request-id="req-b"></turbo-stream>`,
      `<turbo-stream action="refresh"></turbo-stream>`,
    ]);
  });

  it("are settled with ClosedError, not left hanging, when the instance closes", async () => {
    const { turbo } = await start({ refreshDebounceMs: 60_000 });
    const pending = RoomStream.for(1).refresh();
    await turbo.close();
    await expect(pending).rejects.toThrow(ClosedError);
  });
});

describe("the memory broker", () => {
  it("forgets a stream idle for idleMs, and answers cursors older than its last frame with a gap", async () => {
    const broker = new MemoryBroker({ history: { frames: 1000, ageMs: 10 }, idleMs: 30 });
    await broker.start(() => {}, { gap: () => {}, log: () => {} });
    cleanup.push(() => broker.close());
    const start = await broker.head();
    await broker.publish("quiet", "1");
    const afterQuiet = await broker.head();
    expect(await broker.history(["quiet"], start)).toHaveLength(1);
    await waitFor(async () => (await broker.history(["quiet"], start)) === null, {
      message: "the idle stream is forgotten",
    });
    // a cursor taken after its last frame is unaffected
    await broker.publish("busy", "2");
    expect((await broker.history(["busy", "quiet"], afterQuiet))!.map((f) => f.frame)).toEqual(["2"]);
  });
});

describe("the demo's error handler", () => {
  const bodies: Array<{ label: string; status: number; init: { headers: Record<string, string>; body: string } }> = [
    {
      label: "a charset=utf-7 form",
      status: 415,
      init: { headers: { "content-type": "application/x-www-form-urlencoded; charset=utf-7" }, body: "name=x" },
    },
    {
      label: "a body over the 16 KB limit",
      status: 413,
      init: {
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: `name=${"a".repeat(16 * 1024)}`,
      },
    },
    {
      label: "Content-Encoding: bogus",
      status: 415,
      init: {
        headers: { "content-type": "application/x-www-form-urlencoded", "content-encoding": "bogus" },
        body: "name=x",
      },
    },
  ];

  for (const { label, status, init } of bodies) {
    it(`answers ${label} with ${status}, a short plain message and at most one log line`, async () => {
      const tmp = tempDir();
      const log = memoryLogger();
      const chat = await createChatApp({ dbFile: path.join(tmp.dir, "chat.db"), secret: SECRET, logger: log });
      cleanup.push(() => chat.close(), tmp.cleanup);
      const { url } = await listen(chat.server);
      const before = log.entries.length;

      for (let i = 0; i < 20; i++) {
        const res = await fetch(`${url}/login`, { method: "POST", ...init });
        const text = await res.text();
        expect(res.status).toBe(status);
        expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
        expect(text.length).toBeLessThan(200);
        expect(text).not.toMatch(/\n\s+at |node_modules|Error:/);
      }
      const lines = log.entries.slice(before);
      expect(lines).toHaveLength(1);
      expect(lines[0]!.level).toBe("info");
      expect(lines[0]!.message).toMatch(new RegExp(`^request refused \\(${status}\\): `));
      expect(lines[0]!.message).not.toContain("\n");
      expect(lines[0]!.details).toBeUndefined();
    });
  }

  it("answers a server error with 500 and no stack, and logs the stack once", async () => {
    const tmp = tempDir();
    const log = memoryLogger();
    const chat = await createChatApp({ dbFile: path.join(tmp.dir, "chat.db"), secret: SECRET, logger: log });
    cleanup.push(() => chat.close(), tmp.cleanup);
    const { url } = await listen(chat.server);
    const login = await fetch(`${url}/login`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "name=alice",
      redirect: "manual",
    });
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    // every signed-in request now fails where it reads the user: a bug, as far as the client can tell
    chat.db.$client.exec("ALTER TABLE users RENAME TO users_gone");
    const before = log.entries.length;

    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${url}/`, { headers: { cookie } });
      const text = await res.text();
      expect(res.status).toBe(500);
      expect(text).toBe("Internal Server Error");
    }
    const lines = log.entries.slice(before);
    expect(lines).toHaveLength(1);
    expect(lines[0]!.level).toBe("error");
    expect(String(lines[0]!.details?.error)).toMatch(/no such table: users[\s\S]*\n\s+at /);
    chat.db.$client.exec("ALTER TABLE users_gone RENAME TO users");
  });
});
