import http from "node:http";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import express from "express";
import nunjucks from "nunjucks";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Published } from "../../src/brokers/broker.js";
import { dataChannel } from "../../src/data/channel.js";
import { type DataStart, subscribeData } from "../../src/data/subscription.js";
import { SyncReader, sqliteSyncSource } from "../../src/data/sync.js";
import { sqliteClient } from "../../src/changes/sqlite-capture.js";
import { ModelStream, type Turbo, type TurboOptions, createTurbo } from "../../src/index.js";
import { captureBroadcasts } from "../../src/testing.js";
import {
  DDL,
  MessageStream,
  PASSWORD_HASH,
  RoomStream,
  SECRET,
  TEMPLATES,
  UserStream,
  dataStreams,
  messages,
  rooms,
  schema,
  syncHooks,
  users,
} from "../fixtures/data/schema.js";
import { closeServer, listen, memoryLogger, tempDir, waitFor } from "../helpers.js";

interface App {
  sqlite: Database.Database;
  db: ReturnType<typeof drizzle<typeof schema>>;
  turbo: Turbo;
  file: string;
}

let tmp: { dir: string; cleanup: () => void };
let app: App | undefined;
const cleanups: Array<() => unknown> = [];
/** Every payload any test saw: the hidden columns' values must appear in none. */
const payloads: string[] = [];

async function openApp(
  options: Partial<TurboOptions> = {},
  streams: TurboOptions["streams"] = dataStreams,
): Promise<App> {
  const file = path.join(tmp.dir, "app.db");
  const sqlite = new Database(file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(DDL);
  const db = drizzle(sqlite, { schema });
  const views = path.join(tmp.dir, "views");
  for (const [name, text] of Object.entries(TEMPLATES)) {
    mkdirSync(path.dirname(path.join(views, name)), { recursive: true });
    writeFileSync(path.join(views, name), text);
  }
  const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true });
  const turbo = await createTurbo({
    db,
    views: env,
    streams,
    logger: memoryLogger(),
    secret: "data-test-secret-0123456789abcdef",
    authenticate: (req) => (req.headers["x-user"] as string | undefined) ?? null,
    ...options,
  });
  app = { sqlite, db, turbo, file };
  return app;
}

interface DataEvent {
  action: string;
  table?: string;
  key?: unknown;
  data?: Record<string, unknown>;
  rows?: Record<string, unknown>[];
  version: number;
}

/** The data events of a stream, as this process's hub delivers them. */
async function dataEventsOf(turbo: Turbo, stream: string): Promise<DataEvent[]> {
  const events: DataEvent[] = [];
  const unsubscribe = await turbo.hub.subscribe([dataChannel(stream)], {
    send(frame: Published) {
      payloads.push(frame.frame);
      events.push(JSON.parse(frame.frame) as DataEvent);
    },
  });
  cleanups.push(unsubscribe);
  return events;
}

beforeEach(() => {
  tmp = tempDir("turbocast-data-");
  syncHooks.during = null;
  syncHooks.async = false;
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
  await app?.turbo.close();
  app?.sqlite.close();
  app = undefined;
  tmp.cleanup();
});

describe("static fields", () => {
  it("sends only the key and version by default, to the row's own stream and the table-wide one", async () => {
    const { turbo, db } = await openApp();
    const own = await dataEventsOf(turbo, UserStream.for(1).name);
    const all = await dataEventsOf(turbo, UserStream.all().name);
    db.insert(users).values({ id: 1, name: "ada", passwordHash: PASSWORD_HASH }).run();
    await turbo.feed.drain();
    await waitFor(() => own.length === 1 && all.length === 1);
    expect(own[0]).toEqual({ action: "created", table: "users", key: 1, data: { id: 1 }, version: own[0]!.version });
    expect(all).toEqual(own);
    expect(own[0]!.version).toBeGreaterThan(0);
  });

  it("carries the listed columns, and every column with '*'", async () => {
    class StarUserStream extends ModelStream<typeof users> {
      static override model = users;
      static override fields = "*" as const;
    }
    const { turbo, db } = await openApp({}, [RoomStream, MessageStream, StarUserStream]);
    const all = await dataEventsOf(turbo, StarUserStream.all().name);
    db.insert(users).values({ id: 2, name: "grace", passwordHash: "visible-by-choice" }).run();
    await turbo.feed.drain();
    await waitFor(() => all.length === 1);
    expect(all[0]!.data).toEqual({ id: 2, name: "grace", passwordHash: "visible-by-choice" });
  });

  it("refuses at start a field that is not a column, naming it", async () => {
    class TypoStream extends ModelStream<typeof users> {
      static override model = users;
      static override fields = ["name", "pasword"];
    }
    const error = await openApp({}, [TypoStream]).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "TURBOCAST_DATA_FIELDS" });
    expect((error as Error).message).toContain('"pasword"');
  });
});

describe("data events", () => {
  it("go where the row's HTML goes: created, updated, deleted in order with increasing versions", async () => {
    const { turbo, db } = await openApp();
    db.insert(rooms)
      .values([
        { id: 1, name: "one" },
        { id: 2, name: "two" },
      ])
      .run();
    await turbo.feed.drain();
    const room1 = await dataEventsOf(turbo, RoomStream.for(1).name);
    const room2 = await dataEventsOf(turbo, RoomStream.for(2).name);
    db.insert(messages).values({ id: 10, roomId: 1, body: "hi" }).run();
    db.update(messages).set({ body: "hello" }).where(eq(messages.id, 10)).run();
    db.update(messages).set({ roomId: 2 }).where(eq(messages.id, 10)).run();
    db.delete(messages).where(eq(messages.id, 10)).run();
    await turbo.feed.drain();
    await waitFor(() => room1.length === 3 && room2.length === 2);
    expect(room1.map((e) => [e.action, e.data])).toEqual([
      ["created", { id: 10, roomId: 1, body: "hi" }],
      ["updated", { id: 10, roomId: 1, body: "hello" }],
      ["deleted", { id: 10, roomId: 2, body: "hello" }],
    ]);
    expect(room2.map((e) => e.action)).toEqual(["created", "deleted"]);
    const versions = [...room1, ...room2].map((e) => e.version).sort((a, b) => a - b);
    expect(new Set(versions).size).toBe(4);
    expect(room1.map((e) => e.version)).toEqual([...room1.map((e) => e.version)].sort((a, b) => a - b));
    expect(room1[0]).toMatchObject({ table: "messages", key: 10 });
  });

  it("never reach HTML subscribers or the broadcast taps", async () => {
    const { turbo, db } = await openApp();
    const html: string[] = [];
    cleanups.push(await turbo.hub.subscribe([RoomStream.for(1).name], { send: (f) => void html.push(f.frame) }));
    const data = await dataEventsOf(turbo, RoomStream.for(1).name);
    const tapped = await captureBroadcasts(turbo, async () => {
      db.insert(messages).values({ roomId: 1, body: "only html" }).run();
      await turbo.feed.drain();
      await waitFor(() => html.length === 1 && data.length === 1);
    });
    expect(html[0]).toMatch(/^<turbo-stream action="append"/);
    expect(tapped.map((b) => b.stream)).toEqual([RoomStream.for(1).name]);
  });
});

describe("sync", () => {
  it("reads the set through each row's fields, at the change log's position", async () => {
    const { turbo, db, sqlite } = await openApp();
    db.insert(messages)
      .values([
        { roomId: 1, body: "a" },
        { roomId: 1, body: "b" },
        { roomId: 2, body: "c" },
      ])
      .run();
    const reader = syncReaderOf(turbo);
    const set = await reader.read(RoomStream.for(1));
    payloads.push(JSON.stringify(set));
    expect(set.rows).toEqual([
      { id: 1, roomId: 1, body: "a" },
      { id: 2, roomId: 1, body: "b" },
    ]);
    expect(set.version).toBe(sqlite.prepare("select max(seq) from _turbocast_changes").pluck().get());
  });

  for (const mode of ["synchronous", "async"] as const) {
    it(`stays consistent when another connection writes during a ${mode} sync: each change in the set or after it, once`, async () => {
      const { turbo, db, file } = await openApp();
      db.insert(messages).values({ roomId: 1, body: "before" }).run();
      await turbo.feed.drain();
      const other = new Database(file);
      cleanups.push(() => other.close());
      const events = await dataEventsOf(turbo, RoomStream.for(1).name);
      let writes = 0;
      syncHooks.async = mode === "async";
      syncHooks.during = () => {
        if (writes++ < 1) other.prepare("insert into messages (room_id, body) values (1, 'during')").run();
      };
      const set = await syncReaderOf(turbo).read(RoomStream.for(1));
      syncHooks.during = null;
      await turbo.feed.drain();
      await waitFor(() => events.some((e) => e.data?.body === "during"));
      const after = events.filter((e) => e.version > set.version);
      const bodies = [...set.rows.map((r) => r.body), ...after.map((e) => e.data?.body)];
      expect(bodies.sort()).toEqual(["before", "during"]);
    });
  }

  it("refuses a set larger than maxSyncRows with a clear answer", async () => {
    const { turbo, db } = await openApp({ data: { maxSyncRows: 2 } });
    db.insert(messages)
      .values([
        { roomId: 1, body: "a" },
        { roomId: 1, body: "b" },
        { roomId: 1, body: "c" },
      ])
      .run();
    const error = await syncReaderOf(turbo)
      .read(RoomStream.for(1))
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "TURBOCAST_SYNC", status: 413 });
    expect((error as Error).message).toContain("at most 2 (maxSyncRows)");
  });

  it("syncs a row's own stream to its row; a table-wide stream without sync has nothing to sync", async () => {
    const { turbo, db } = await openApp();
    db.insert(users).values({ id: 3, name: "lin", passwordHash: PASSWORD_HASH }).run();
    const reader = syncReaderOf(turbo);
    const set = await reader.read(UserStream.for(3));
    payloads.push(JSON.stringify(set));
    expect(set.rows).toEqual([{ id: 3 }]);
    await expect(reader.read(UserStream.all())).rejects.toMatchObject({ code: "TURBOCAST_SYNC", status: 404 });
  });
});

describe("dataHandler", () => {
  async function serve(turbo: Turbo): Promise<string> {
    const web = express();
    web.use(turbo.middleware());
    web.get(
      "/rooms/:id/messages.json",
      turbo.dataHandler((req) => RoomStream.for(Number(req.params.id))),
    );
    web.get(
      "/users/:id.json",
      turbo.dataHandler((req) => UserStream.for(Number(req.params.id))),
    );
    const server = http.createServer(web);
    const { url } = await listen(server);
    cleanups.push(() => closeServer(server));
    return url;
  }

  async function get(url: string, headers: Record<string, string> = {}): Promise<Response> {
    const response = await fetch(url, { headers });
    return response;
  }

  it("answers the set with an ETag, 304 for it, and the new set after a write", async () => {
    const { turbo, db } = await openApp();
    db.insert(messages).values({ roomId: 1, body: "first" }).run();
    await turbo.feed.drain();
    const url = await serve(turbo);
    const first = await get(`${url}/rooms/1/messages.json`);
    const text = await first.text();
    payloads.push(text);
    expect(first.status).toBe(200);
    const etag = first.headers.get("etag")!;
    expect(JSON.parse(text)).toEqual({ version: expect.any(Number), rows: [{ id: 1, roomId: 1, body: "first" }] });
    expect(etag).toBe(`"${JSON.parse(text).version}"`);

    const again = await get(`${url}/rooms/1/messages.json`, { "if-none-match": etag });
    expect(again.status).toBe(304);

    db.insert(messages).values({ roomId: 1, body: "second" }).run();
    await turbo.feed.drain();
    const changed = await waitFor(async () => {
      const response = await get(`${url}/rooms/1/messages.json`, { "if-none-match": etag });
      return response.status === 200 ? response : null;
    });
    const body = await changed.text();
    payloads.push(body);
    expect(JSON.parse(body).rows.map((r: { body: string }) => r.body)).toEqual(["first", "second"]);
    expect(changed.headers.get("etag")).not.toBe(etag);
    // a write elsewhere in the database leaves this set's ETag alone
    db.insert(messages).values({ roomId: 2, body: "other room" }).run();
    await turbo.feed.drain();
    const still = await get(`${url}/rooms/1/messages.json`, { "if-none-match": changed.headers.get("etag")! });
    expect(still.status).toBe(304);
  });

  it("refuses a user the stream's userPassesTest refuses, and says why a sync cannot be answered", async () => {
    const { turbo } = await openApp();
    const url = await serve(turbo);
    expect((await get(`${url}/rooms/1/messages.json`, { "x-user": "banned" })).status).toBe(403);
    const users = await get(`${url}/users/1.json`);
    expect(users.status).toBe(200);
    expect(await users.json()).toEqual({ version: expect.any(Number), rows: [] });
  });
});

describe("data subscriptions (hub level)", () => {
  function subscriber(turbo: Turbo) {
    const reader = new SyncReader({ source: sqliteSyncSource(sqliteClient(app!.db)), maxRows: 1000 });
    const init = { hub: turbo.hub, broker: turbo.broker, registry: turbo.registry, reader };
    const got: Array<{ position: string; event: DataEvent }> = [];
    const sink = {
      send(frame: Published) {
        payloads.push(frame.frame);
        got.push({ position: frame.position, event: JSON.parse(frame.frame) as DataEvent });
      },
    };
    return {
      got,
      subscribe: async (start: DataStart) => {
        const unsubscribe = await subscribeData(init, [RoomStream.for(1).name], sink, start);
        cleanups.push(unsubscribe);
        return unsubscribe;
      },
    };
  }

  it("sends the sync first, then every change after its version once, even one written during the sync", async () => {
    const { turbo, db, file } = await openApp();
    db.insert(messages).values({ roomId: 1, body: "before" }).run();
    await turbo.feed.drain();
    const other = new Database(file);
    cleanups.push(() => other.close());
    syncHooks.during = () => {
      syncHooks.during = null;
      other.prepare("insert into messages (room_id, body) values (1, 'during')").run();
    };
    const { got, subscribe } = subscriber(turbo);
    await subscribe({ sync: true, after: null, version: null });
    db.insert(messages).values({ roomId: 1, body: "after" }).run();
    await turbo.feed.drain();
    await waitFor(() => got.some((g) => g.event.data?.body === "after"));
    const [sync, ...events] = got;
    expect(sync!.event.action).toBe("sync");
    expect(sync!.event.rows!.map((r) => r.body)).toEqual(["before"]);
    expect(events.map((g) => [g.event.action, g.event.data?.body])).toEqual([
      ["created", "during"],
      ["created", "after"],
    ]);
    expect(events.every((g) => g.event.version > sync!.event.version)).toBe(true);
  });

  it("resumes from the last position and version with no gap and no duplicate", async () => {
    const { turbo, db } = await openApp();
    const first = subscriber(turbo);
    const unsubscribe = await first.subscribe({ sync: true, after: null, version: null });
    db.insert(messages).values({ roomId: 1, body: "one" }).run();
    await turbo.feed.drain();
    await waitFor(() => first.got.length === 2);
    unsubscribe();
    // missed while away
    db.insert(messages).values({ roomId: 1, body: "two" }).run();
    db.update(messages).set({ body: "one, edited" }).where(eq(messages.body, "one")).run();
    await turbo.feed.drain();
    const last = first.got[first.got.length - 1]!;
    const again = subscriber(turbo);
    await again.subscribe({ sync: false, after: last.position, version: last.event.version });
    db.insert(messages).values({ roomId: 1, body: "three" }).run();
    await turbo.feed.drain();
    await waitFor(() => again.got.length === 3);
    expect(again.got.map((g) => [g.event.action, g.event.data?.body])).toEqual([
      ["created", "two"],
      ["updated", "one, edited"],
      ["created", "three"],
    ]);
    // resuming from the sync's own position with the version of an event after it: nothing twice
    const fromSync = subscriber(turbo);
    await fromSync.subscribe({ sync: false, after: first.got[0]!.position, version: last.event.version });
    await waitFor(() => fromSync.got.length === 3);
    expect(fromSync.got.map((g) => g.event.data?.body)).toEqual(["two", "one, edited", "three"]);
  });

  it("keeps a channel's events for resuming from its first subscription on; a resume from before that, across events nobody kept, gets a refresh", async () => {
    const { turbo, db } = await openApp();
    const before = await turbo.broker.head();
    // nobody subscribes to room 1's data yet: the in-memory broker keeps none of its events
    db.insert(messages).values({ roomId: 1, body: "kept by nobody" }).run();
    await turbo.feed.drain();
    const frames: Published[] = [];
    const reader = new SyncReader({ source: sqliteSyncSource(sqliteClient(app!.db)), maxRows: 1000 });
    const init = { hub: turbo.hub, broker: turbo.broker, registry: turbo.registry, reader };
    const unsubscribe = await subscribeData(
      init,
      [RoomStream.for(1).name],
      { send: (frame) => frames.push(frame) },
      { sync: false, after: before, version: null },
    );
    cleanups.push(unsubscribe);
    // never a silent gap: the subscriber is told to sync again
    await waitFor(() => frames.length === 1);
    expect(frames[0]!.frame).toContain('action="refresh"');
    // from its subscription on, the channel is kept: a later resume replays what was missed
    const first = subscriber(turbo);
    const stop = await first.subscribe({ sync: true, after: null, version: null });
    stop();
    db.insert(messages).values({ roomId: 1, body: "while away" }).run();
    await turbo.feed.drain();
    const again = subscriber(turbo);
    await again.subscribe({ sync: false, after: first.got[0]!.position, version: first.got[0]!.event.version });
    await waitFor(() => again.got.length === 1);
    expect(again.got.map((g) => [g.event.action, g.event.data?.body])).toEqual([["created", "while away"]]);
  });

  it("refuses a sync of a stream without one, or of several streams at once", async () => {
    const { turbo } = await openApp();
    const reader = new SyncReader({ source: sqliteSyncSource(sqliteClient(app!.db)), maxRows: 1000 });
    const init = { hub: turbo.hub, broker: turbo.broker, registry: turbo.registry, reader };
    const sink = { send() {} };
    const start = { sync: true, after: null, version: null };
    await expect(subscribeData(init, [UserStream.all().name], sink, start)).rejects.toMatchObject({ status: 404 });
    await expect(
      subscribeData(init, [RoomStream.for(1).name, RoomStream.for(2).name], sink, start),
    ).rejects.toMatchObject({ status: 400 });
    expect(turbo.hub.size).toBe(0);
  });
});

// last: every payload the tests above saw
describe("hidden columns", () => {
  it("never appear in any event, sync or HTTP answer", async () => {
    const { turbo, db } = await openApp();
    const streams = [RoomStream.for(1).name, RoomStream.all().name, MessageStream.all().name, UserStream.all().name];
    for (const stream of streams) await dataEventsOf(turbo, stream);
    db.insert(rooms).values({ id: 1, name: "r" }).run();
    db.insert(users).values({ id: 9, name: "u", passwordHash: PASSWORD_HASH }).run();
    db.insert(messages).values({ roomId: 1, body: "m" }).run();
    db.update(messages).set({ body: "n" }).run();
    db.delete(messages).run();
    db.delete(users).run();
    await turbo.feed.drain();
    await waitFor(() => payloads.length >= 10);
    for (const payload of payloads) {
      expect(payload).not.toContain(SECRET);
      expect(payload).not.toContain(PASSWORD_HASH);
      expect(payload).not.toContain("secret");
    }
  });
});

function syncReaderOf(turbo: Turbo): Pick<Turbo, "sync"> & { read: Turbo["sync"] } {
  return { sync: turbo.sync, read: (stream) => turbo.sync(stream) };
}
