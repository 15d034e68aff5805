import { afterEach, describe, expect, it } from "vitest";
import type { Connection } from "../../src/delivery/connection.js";
import { ConnectionRegistry } from "../../src/delivery/connection-registry.js";
import { LiveAuthorization } from "../../src/delivery/live-authorization.js";
import { memoryBroker } from "../../src/index.js";
import { LogThrottle } from "../../src/log-throttle.js";
import { StreamRegistry } from "../../src/streams/registry.js";
import type { TurboOptions } from "../../src/turbo.js";
import { type LiveSubscriber, memoryLogger, subscribeSse, subscribeWs, waitFor, withoutPosition } from "../helpers.js";
import { RoomStream, type TestApp, startApp } from "./fixture.js";

let app: TestApp | undefined;
const cleanups: Array<() => void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) cleanup();
  await app?.close();
  app = undefined;
});

const REFRESH = '<turbo-stream action="refresh"></turbo-stream>';
const isRefresh = (frame: string): boolean => frame.includes('action="refresh"');
const plain = withoutPosition;

/** Users are `{ name }` (the fixture's x-user header); their key is the name. */
const start = (options: Partial<TurboOptions> = {}): Promise<TestApp> =>
  startApp({ userKey: (user) => (user as { name: string }).name, ...options });

/** A subscription as `user`, kept for cleanup. */
function sse(url: string, user: string): LiveSubscriber {
  const subscriber = subscribeSse(url, { "x-user": user });
  cleanups.push(subscriber.close);
  return subscriber;
}

function websocket(url: string, user: string): LiveSubscriber {
  const subscriber = subscribeWs(url, { "x-user": user });
  cleanups.push(subscriber.close);
  return subscriber;
}

/** Publishes a message to room `id` through the app, as a route would. */
async function post(id: number, body: string): Promise<void> {
  const response = await fetch(`${app!.url}/rooms/${id}/messages`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ body }),
  });
  expect(response.status).toBe(201);
}

const makePrivate = (id: number): void => void app!.sqlite.prepare("update rooms set private = 1 where id = ?").run(id);

for (const [label, open] of [
  ["SSE", sse],
  ["WebSocket", websocket],
] as const) {
  describe(`live authorization over ${label}`, () => {
    it("disconnect closes a revoked user's subscription after exactly one refresh; later frames reach only the others", async () => {
      app = await start();
      const src = `${app.url}${await app.pageSrc("/rooms/1")}`;
      const bob = open(src, "bob");
      const alice = open(src, "alice");
      await Promise.all([bob.ready, alice.ready]);
      await waitFor(() => app!.turbo.hub.size === 2);
      await post(1, "before");
      await waitFor(() => bob.frames.length === 1 && alice.frames.length === 1);

      makePrivate(1); // bob may no longer see room 1; alice still may
      expect(await app.turbo.disconnect({ user: "bob" })).toBe(1);
      await post(1, "after");
      await waitFor(() => alice.frames.length === 2, { message: "alice still gets frames" });
      const end = await bob.ended;
      if (label === "WebSocket") expect(end.code).toBe(4403);
      expect(bob.frames.filter(isRefresh).map(plain)).toEqual([REFRESH]);
      expect(plain(bob.frames.at(-1)!)).toBe(REFRESH);
      expect(bob.frames.some((f) => f.includes("after"))).toBe(false);
      expect(alice.frames.some(isRefresh)).toBe(false);
      // the page's reconnect goes through every check again: refused
      const status = await fetch(src, { method: "HEAD", headers: { "x-user": "bob" } }).then((r) => r.status);
      expect(status).toBe(403);
    });

    it("disconnect by stream closes every subscription holding it; by user and stream only that user's", async () => {
      app = await start();
      const room1 = `${app.url}${await app.pageSrc("/rooms/1")}`;
      const room3 = `${app.url}${await app.pageSrc("/rooms/3")}`;
      const bob1 = open(room1, "bob");
      const bob3 = open(room3, "bob");
      const carol1 = open(room1, "carol");
      const carol3 = open(room3, "carol");
      await Promise.all([bob1.ready, bob3.ready, carol1.ready, carol3.ready]);
      await waitFor(() => app!.turbo.hub.size === 4);

      expect(await app.turbo.disconnect({ user: "bob", stream: RoomStream.for(3) })).toBe(1);
      await bob3.ended;
      expect(await app.turbo.disconnect({ stream: "row:rooms:1" })).toBe(2);
      await Promise.all([bob1.ended, carol1.ended]);
      await post(3, "still here");
      await waitFor(() => carol3.frames.some((f) => f.includes("still here")));
      for (const closed of [bob1, bob3, carol1]) expect(closed.frames.map(plain)).toEqual([REFRESH]);
      // nothing matches: a no-op
      expect(await app.turbo.disconnect({ user: "nobody" })).toBe(0);
      expect(await app.turbo.disconnect({ stream: RoomStream.for(2) })).toBe(0);
      await waitFor(() => app!.turbo.hub.size === 1, { message: "the server let go of it" });
    });

    it("reauthorize closes only the subscriptions whose userPassesTest now fails", async () => {
      app = await start();
      const src = `${app.url}${await app.pageSrc("/rooms/1")}`;
      const bob = open(src, "bob");
      const alice = open(src, "alice");
      await Promise.all([bob.ready, alice.ready]);
      await waitFor(() => app!.turbo.hub.size === 2);
      expect(await app.turbo.reauthorize()).toBe(0);

      makePrivate(1);
      expect(await app.turbo.reauthorize({ stream: RoomStream.for(1) })).toBe(1);
      await bob.ended;
      await post(1, "for alice");
      await waitFor(() => alice.frames.some((f) => f.includes("for alice")));
      expect(bob.frames.map(plain)).toEqual([REFRESH]);
      expect(alice.frames.some(isRefresh)).toBe(false);
    });

    it("the periodic re-check closes a subscription that starts failing within reauthorizeMs plus a second", async () => {
      app = await start({ reauthorizeMs: 600 });
      const src = `${app.url}${await app.pageSrc("/rooms/1")}`;
      const bob = open(src, "bob");
      const alice = open(src, "alice");
      await Promise.all([bob.ready, alice.ready]);
      await waitFor(() => app!.turbo.hub.size === 2);
      makePrivate(1);
      const started = Date.now();
      await bob.ended;
      expect(Date.now() - started).toBeLessThan(600 + 1000);
      expect(bob.frames.map(plain)).toEqual([REFRESH]);
      await waitFor(() => app!.turbo.hub.size === 1, { message: "the server let go of it" });
    });

    it("a userPassesTest that throws during a re-check keeps the subscription (logged once) and is retried", async () => {
      let checks = 0;
      const original = RoomStream.prototype.userPassesTest;
      RoomStream.prototype.userPassesTest = function (user) {
        checks++;
        return original.call(this, user);
      };
      cleanups.push(() => (RoomStream.prototype.userPassesTest = original));
      app = await start({ reauthorizeMs: 300 });
      const src = `${app.url}${await app.pageSrc("/rooms/1")}`;
      const bob = open(src, "bob");
      await bob.ready;
      await waitFor(() => app!.turbo.hub.size === 1);
      // a database hiccup: the table the check reads is gone for a while
      app.sqlite.exec("alter table rooms rename to rooms_away");
      await waitFor(() => app!.logger.entries.some((e) => e.message.includes("threw during a re-check")));
      // more rounds run (the check is retried), the subscription stays, one line is logged
      const before = checks;
      await waitFor(() => checks >= before + 3, { message: "the re-check is retried" });
      expect(app.logger.entries.filter((e) => e.message.includes("threw during a re-check"))).toHaveLength(1);
      expect(app.turbo.hub.size).toBe(1);
      app.sqlite.exec("alter table rooms_away rename to rooms");
      makePrivate(1);
      // retried: now it fails for real
      await bob.ended;
      expect(bob.frames.map(plain)).toEqual([REFRESH]);
    });

    it("closes the subscriptions of a deleted row's stream after the delete's frames", async () => {
      app = await start();
      const room1 = `${app.url}${await app.pageSrc("/rooms/1")}`;
      const room3 = `${app.url}${await app.pageSrc("/rooms/3")}`;
      const bob = open(room1, "bob");
      const carol = open(room3, "carol");
      await Promise.all([bob.ready, carol.ready]);
      await waitFor(() => app!.turbo.hub.size === 2);
      const onDelete = RoomStream.prototype.onDelete;
      RoomStream.prototype.onDelete = async function (room) {
        await this.remove({ target: `room_${room.id}` });
      };
      cleanups.push(() => (RoomStream.prototype.onDelete = onDelete));
      app.sqlite.prepare("delete from rooms where id = 1").run();
      await app.turbo.feed.drain();
      await bob.ended;
      expect(bob.frames.map(plain)).toEqual(['<turbo-stream action="remove" target="room_1"></turbo-stream>', REFRESH]);
      await post(3, "room 3 lives on");
      await waitFor(() => carol.frames.some((f) => f.includes("room 3 lives on")));
      expect(carol.frames.some(isRefresh)).toBe(false);
    });

    it("closes an open subscription when its signature expires", async () => {
      app = await start({ signatureTtlMs: 1500 });
      const rendered = Date.now();
      const src = `${app.url}${await app.pageSrc("/rooms/1")}`;
      const bob = open(src, "bob");
      await bob.ready;
      await bob.ended;
      // the token's expiry is rounded up to whole seconds (≤ 1 s more), the sweep runs every second (≤ 1 s more)
      const expiresAt = Number.parseInt(new URL(src).searchParams.get("s")!.split(".")[1]!, 36) * 1000;
      expect(expiresAt - rendered).toBeLessThanOrEqual(1500 + 1000);
      expect(Date.now()).toBeGreaterThanOrEqual(expiresAt);
      // closed by the next sweep after expiry; the bound leaves room for timers a loaded machine delays
      // (seen 1.5 s late under load): the point is "not before expiry, and soon after"
      expect(Date.now() - expiresAt).toBeLessThan(1000 + 3000);
      expect(bob.frames.map(plain)).toEqual([REFRESH]);
      await waitFor(() => app!.turbo.hub.size === 0, { message: "the server let go of it" });
    });
  });
}

describe("turbo.disconnect and turbo.reauthorize", () => {
  it("refuse a call that selects nothing or a user without a key", async () => {
    app = await start();
    await expect(app.turbo.disconnect({})).rejects.toMatchObject({ code: "TURBOCAST_INVALID_SELECTOR" });
    await expect(app.turbo.disconnect({ user: {} })).rejects.toMatchObject({ code: "TURBOCAST_INVALID_SELECTOR" });
    await expect(app.turbo.disconnect({ stream: 42 as never })).rejects.toMatchObject({
      code: "TURBOCAST_INVALID_STREAMABLE",
    });
  });

  it("applies a disconnect locally and logs once when the broker cannot carry it", async () => {
    const broker = memoryBroker();
    broker.control = async () => {
      throw new Error("broker down");
    };
    app = await start({ broker });
    const src = `${app.url}${await app.pageSrc("/rooms/1")}`;
    const bob = sse(src, "bob");
    await bob.ready;
    await waitFor(() => app!.turbo.hub.size === 1);
    expect(await app.turbo.disconnect({ user: "bob" })).toBe(1);
    await bob.ended;
    expect(bob.frames.map(plain)).toEqual([REFRESH]);
    await app.turbo.disconnect({ user: "bob" });
    expect(app.logger.entries.filter((e) => e.message.includes("could not reach the other processes"))).toHaveLength(1);
  });

  it("answers HEAD with the status a subscription would get, subscribing nothing", async () => {
    app = await start();
    const open = `${app.url}${await app.pageSrc("/rooms/1")}`;
    const secret = `${app.url}${await app.pageSrc("/rooms/2")}`;
    const head = (url: string, user: string) =>
      fetch(url, { method: "HEAD", headers: { "x-user": user } }).then((r) => r.status);
    expect(await head(open, "bob")).toBe(200);
    expect(await head(secret, "bob")).toBe(403);
    expect(await head(secret, "alice")).toBe(200);
    expect(await head(`${app.url}/turbo-streams?s=forged`, "alice")).toBe(403);
    expect(await head(`${app.url}/turbo-streams`, "alice")).toBe(400);
    expect(app.turbo.hub.size).toBe(0);
  });
});

describe("LiveAuthorization", () => {
  /** A connection that records the frames it is sent and being revoked. */
  function fakeConnection(): Connection & { revoked: string[] } {
    const connection = {
      state: "open" as "open" | "closing" | "closed",
      revoked: [] as string[],
      revoke(refresh: { frame: string }) {
        if (connection.state !== "open") return;
        connection.revoked.push(refresh.frame);
        connection.state = "closing";
      },
    };
    return connection as unknown as Connection & { revoked: string[] };
  }

  function access(): { live: LiveAuthorization; connections: ConnectionRegistry } {
    const connections = new ConnectionRegistry({ slots: 4 });
    const live = new LiveAuthorization({
      connections,
      registry: new StreamRegistry(),
      log: new LogThrottle(memoryLogger()),
      reauthorizeMs: false,
      expiring: false,
      position: () => "e.7",
    });
    return { live, connections };
  }

  it("revokes at once a subscription admitted after a disconnect that named it began its authorization", () => {
    const { live, connections } = access();
    const mark = live.mark();
    // bob's userPassesTest passed, then he was disconnected, then his connection is registered
    expect(live.disconnect({ userKey: "bob" })).toBe(0);
    const late = fakeConnection();
    expect(live.admit(late, { streams: ["row:rooms:1"], userKey: "bob" }, mark)).toBe(false);
    expect(late.revoked).toEqual([REFRESH]);
    expect(connections.size).toBe(0);
    // others, and bob's authorizations begun after the disconnect, are admitted
    const carol = fakeConnection();
    expect(live.admit(carol, { streams: ["row:rooms:1"], userKey: "carol" }, mark)).toBe(true);
    const again = fakeConnection();
    expect(live.admit(again, { streams: ["row:rooms:1"], userKey: "bob" }, live.mark())).toBe(true);
    expect(connections.size).toBe(2);
  });

  it("revokes each connection once, however often a disconnect names it", () => {
    const { live, connections } = access();
    const bob = fakeConnection();
    live.admit(bob, { streams: ["row:rooms:1"], userKey: "bob" }, live.mark());
    expect(live.disconnect({ userKey: "bob", streams: ["row:rooms:1"] })).toBe(1);
    expect(live.disconnect({ userKey: "bob" })).toBe(0);
    expect(bob.revoked).toEqual([REFRESH]);
    expect(connections.size).toBe(0);
  });
});
