import { describe, expect, it } from "vitest";
import type { Published } from "../../src/brokers/broker.js";
import { dataChannel } from "../../src/data/channel.js";
import { type DataStart, subscribeData } from "../../src/data/subscription.js";
import { ModelStream, type Turbo } from "../../src/index.js";
import { captureBroadcasts } from "../../src/testing.js";
import { PASSWORD_HASH, SECRET, syncHooks } from "../fixtures/data/schema.js";
import { waitFor } from "../helpers.js";
import { type DataApp, describeDialects } from "./dialects.js";

interface DataEvent {
  action: string;
  table?: string;
  key?: unknown;
  data?: Record<string, unknown>;
  rows?: Record<string, unknown>[];
  version: number;
}

/** Every payload any test saw: the hidden columns' values must appear in none. */
const payloads: string[] = [];

/** The data events of a stream, as this process's hub delivers them. */
async function dataEventsOf(turbo: Turbo, stream: string): Promise<DataEvent[]> {
  const events: DataEvent[] = [];
  await turbo.hub.subscribe([dataChannel(stream)], {
    send(frame: Published) {
      payloads.push(frame.frame);
      events.push(JSON.parse(frame.frame) as DataEvent);
    },
  });
  return events;
}

describeDialects("data events", (context) => {
  describe("static fields", () => {
    it("sends only the key and version by default, to the row's own stream and the table-wide one", async () => {
      const { UserStream } = context.streams;
      const app = await context.open();
      const own = await dataEventsOf(app.turbo, UserStream.for(1).name);
      const all = await dataEventsOf(app.turbo, UserStream.all().name);
      await app.write(`insert into users (id, name, password_hash) values (1, 'ada', '${PASSWORD_HASH}')`);
      await waitFor(() => own.length === 1 && all.length === 1);
      expect(own[0]).toEqual({ action: "created", table: "users", key: 1, data: { id: 1 }, version: own[0]!.version });
      expect(all).toEqual(own);
      expect(own[0]!.version).toBeGreaterThan(0);
    });

    it("carries the listed columns, and every column with '*'", async () => {
      const { tables, RoomStream, MessageStream } = context.streams;
      class StarUserStream extends ModelStream {
        static override model = tables.users;
        static override fields = "*" as const;
      }
      const app = await context.open({}, [RoomStream, MessageStream, StarUserStream]);
      const all = await dataEventsOf(app.turbo, StarUserStream.all().name);
      await app.write("insert into users (id, name, password_hash) values (2, 'grace', 'visible-by-choice')");
      await waitFor(() => all.length === 1);
      expect(all[0]!.data).toEqual({ id: 2, name: "grace", passwordHash: "visible-by-choice" });
    });

    it("refuses at start a field that is not a column, naming it", async () => {
      class TypoStream extends ModelStream {
        static override model = context.streams.tables.users;
        static override fields = ["name", "pasword"];
      }
      const error = await context.open({}, [TypoStream]).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "TURBOCAST_DATA_FIELDS" });
      expect((error as Error).message).toContain('"pasword"');
    });
  });

  describe("data events", () => {
    it("go where the row's HTML goes: created, updated, deleted in order with increasing versions", async () => {
      const { RoomStream } = context.streams;
      const app = await context.open();
      await app.write("insert into rooms (id, name) values (1, 'one'), (2, 'two')");
      const room1 = await dataEventsOf(app.turbo, RoomStream.for(1).name);
      const room2 = await dataEventsOf(app.turbo, RoomStream.for(2).name);
      await app.write(
        "insert into messages (id, room_id, body) values (10, 1, 'hi')",
        "update messages set body = 'hello' where id = 10",
        "update messages set room_id = 2 where id = 10",
        "delete from messages where id = 10",
      );
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
      const { RoomStream } = context.streams;
      const app = await context.open();
      const html: string[] = [];
      await app.turbo.hub.subscribe([RoomStream.for(1).name], { send: (f) => void html.push(f.frame) });
      const data = await dataEventsOf(app.turbo, RoomStream.for(1).name);
      const tapped = await captureBroadcasts(app.turbo, async () => {
        await app.write("insert into messages (room_id, body) values (1, 'only html')");
        await waitFor(() => html.length === 1 && data.length === 1);
      });
      expect(html[0]).toMatch(/^<turbo-stream action="append"/);
      expect(tapped.map((b) => b.stream)).toEqual([RoomStream.for(1).name]);
    });
  });

  describe("sync", () => {
    it("reads the set through each row's fields, at the change log's position", async () => {
      const { RoomStream } = context.streams;
      const app = await context.open();
      await app.exec("insert into messages (room_id, body) values (1, 'a'), (1, 'b'), (2, 'c')");
      const set = await app.turbo.sync(RoomStream.for(1));
      payloads.push(JSON.stringify(set));
      expect(set.rows).toEqual([
        { id: 1, roomId: 1, body: "a" },
        { id: 2, roomId: 1, body: "b" },
      ]);
      expect(set.version).toBe(await app.newestSeq());
    });

    for (const mode of context.syncModes) {
      it(`stays consistent when another connection writes during a ${mode} sync: each change in the set or after it, once`, async () => {
        const { RoomStream } = context.streams;
        const app = await context.open();
        await app.write("insert into messages (room_id, body) values (1, 'before')");
        const events = await dataEventsOf(app.turbo, RoomStream.for(1).name);
        let writes = 0;
        syncHooks.async = mode === "async";
        syncHooks.during = () => {
          if (writes++ < 1) return app.other("insert into messages (room_id, body) values (1, 'during')");
        };
        try {
          const set = await app.turbo.sync(RoomStream.for(1));
          syncHooks.during = null;
          await app.turbo.feed.drain();
          await waitFor(() => events.some((e) => e.data?.body === "during"));
          const after = events.filter((e) => e.version > set.version);
          const bodies = [...set.rows.map((r) => r.body), ...after.map((e) => e.data?.body)];
          expect(bodies.sort()).toEqual(["before", "during"]);
        } finally {
          syncHooks.during = null;
          syncHooks.async = false;
        }
      });
    }

    it("refuses a set larger than maxSyncRows with a clear answer", async () => {
      const app = await context.open({ data: { maxSyncRows: 2 } });
      await app.exec("insert into messages (room_id, body) values (1, 'a'), (1, 'b'), (1, 'c')");
      const error = await app.turbo.sync(context.streams.RoomStream.for(1)).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: "TURBOCAST_SYNC", status: 413 });
      expect((error as Error).message).toContain("at most 2 (maxSyncRows)");
    });

    it("syncs a row's own stream to its row; a table-wide stream without sync has nothing to sync", async () => {
      const { UserStream } = context.streams;
      const app = await context.open();
      await app.exec(`insert into users (id, name, password_hash) values (3, 'lin', '${PASSWORD_HASH}')`);
      const set = await app.turbo.sync(UserStream.for(3));
      payloads.push(JSON.stringify(set));
      expect(set.rows).toEqual([{ id: 3 }]);
      await expect(app.turbo.sync(UserStream.all())).rejects.toMatchObject({ code: "TURBOCAST_SYNC", status: 404 });
    });
  });

  describe("dataHandler", () => {
    async function serve(app: DataApp): Promise<string> {
      const { RoomStream, UserStream } = context.streams;
      app.web.get(
        "/rooms/:id/messages.json",
        app.turbo.dataHandler((req) => RoomStream.for(Number(req.params.id))),
      );
      app.web.get(
        "/users/:id.json",
        app.turbo.dataHandler((req) => UserStream.for(Number(req.params.id))),
      );
      return app.url;
    }

    it("answers the set with an ETag, 304 for it, and the new set after a write", async () => {
      const app = await context.open();
      await app.write("insert into messages (room_id, body) values (1, 'first')");
      const url = await serve(app);
      const first = await fetch(`${url}/rooms/1/messages.json`);
      const text = await first.text();
      payloads.push(text);
      expect(first.status).toBe(200);
      const etag = first.headers.get("etag")!;
      expect(JSON.parse(text)).toEqual({ version: expect.any(Number), rows: [{ id: 1, roomId: 1, body: "first" }] });
      expect(etag).toBe(`"${JSON.parse(text).version}"`);

      const again = await fetch(`${url}/rooms/1/messages.json`, { headers: { "if-none-match": etag } });
      expect(again.status).toBe(304);

      await app.write("insert into messages (room_id, body) values (1, 'second')");
      const changed = await waitFor(async () => {
        const response = await fetch(`${url}/rooms/1/messages.json`, { headers: { "if-none-match": etag } });
        return response.status === 200 ? response : null;
      });
      const body = await changed.text();
      payloads.push(body);
      expect(JSON.parse(body).rows.map((r: { body: string }) => r.body)).toEqual(["first", "second"]);
      expect(changed.headers.get("etag")).not.toBe(etag);
      // a write elsewhere in the database leaves this set's ETag alone
      await app.write("insert into messages (room_id, body) values (2, 'other room')");
      const still = await fetch(`${url}/rooms/1/messages.json`, {
        headers: { "if-none-match": changed.headers.get("etag")! },
      });
      expect(still.status).toBe(304);
    });

    it("refuses a user the stream's userPassesTest refuses, and says why a sync cannot be answered", async () => {
      const url = await serve(await context.open());
      expect((await fetch(`${url}/rooms/1/messages.json`, { headers: { "x-user": "banned" } })).status).toBe(403);
      const users = await fetch(`${url}/users/1.json`);
      expect(users.status).toBe(200);
      expect(await users.json()).toEqual({ version: expect.any(Number), rows: [] });
    });
  });

  describe("data subscriptions (hub level)", () => {
    function subscriber(app: DataApp) {
      const { turbo } = app;
      const init = { hub: turbo.hub, broker: turbo.broker, registry: turbo.registry, reader: app.reader() };
      const got: Array<{ position: string; event: DataEvent }> = [];
      const sink = {
        send(frame: Published) {
          payloads.push(frame.frame);
          got.push({ position: frame.position, event: JSON.parse(frame.frame) as DataEvent });
        },
      };
      return {
        got,
        subscribe: (start: DataStart) => subscribeData(init, [context.streams.RoomStream.for(1).name], sink, start),
      };
    }

    it("sends the sync first, then every change after its version once, even one written during the sync", async () => {
      const app = await context.open();
      await app.write("insert into messages (room_id, body) values (1, 'before')");
      syncHooks.during = () => {
        syncHooks.during = null;
        return app.other("insert into messages (room_id, body) values (1, 'during')");
      };
      const { got, subscribe } = subscriber(app);
      try {
        await subscribe({ sync: true, after: null, version: null });
      } finally {
        syncHooks.during = null;
      }
      await app.write("insert into messages (room_id, body) values (1, 'after')");
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

    it("resumes from the last position with the sync's version: no gap and no duplicate", async () => {
      const app = await context.open();
      const first = subscriber(app);
      const unsubscribe = await first.subscribe({ sync: true, after: null, version: null });
      await app.write("insert into messages (room_id, body) values (1, 'one')");
      await waitFor(() => first.got.length === 2);
      unsubscribe();
      // missed while away
      await app.write(
        "insert into messages (room_id, body) values (1, 'two')",
        "update messages set body = 'one, edited' where body = 'one'",
      );
      const [sync, last] = [first.got[0]!, first.got[first.got.length - 1]!];
      const again = subscriber(app);
      await again.subscribe({ sync: false, after: last.position, version: sync.event.version });
      await app.write("insert into messages (room_id, body) values (1, 'three')");
      await waitFor(() => again.got.length === 3);
      expect(again.got.map((g) => [g.event.action, g.event.data?.body])).toEqual([
        ["created", "two"],
        ["updated", "one, edited"],
        ["created", "three"],
      ]);
      // resuming from the sync's own position: everything after the sync once, nothing the sync held
      const fromSync = subscriber(app);
      await fromSync.subscribe({ sync: false, after: sync.position, version: sync.event.version });
      await waitFor(() => fromSync.got.length === 4);
      expect(fromSync.got.map((g) => g.event.data?.body)).toEqual(["one", "two", "one, edited", "three"]);
    });

    it("keeps a channel's events for resuming from its first subscription on; a resume from before that, across events nobody kept, gets a refresh", async () => {
      const app = await context.open();
      const { turbo } = app;
      const before = await turbo.broker.head();
      // nobody subscribes to room 1's data yet: the in-memory broker keeps none of its events
      await app.write("insert into messages (room_id, body) values (1, 'kept by nobody')");
      const frames: Published[] = [];
      const init = { hub: turbo.hub, broker: turbo.broker, registry: turbo.registry, reader: app.reader() };
      const unsubscribe = await subscribeData(
        init,
        [context.streams.RoomStream.for(1).name],
        { send: (frame) => frames.push(frame) },
        { sync: false, after: before, version: null },
      );
      // never a silent gap: the subscriber is told to sync again
      await waitFor(() => frames.length === 1);
      expect(frames[0]!.frame).toContain('action="refresh"');
      unsubscribe();
      // from its first subscription on, the channel is kept: a later resume replays what was missed
      const first = subscriber(app);
      const stop = await first.subscribe({ sync: true, after: null, version: null });
      stop();
      await app.write("insert into messages (room_id, body) values (1, 'while away')");
      const again = subscriber(app);
      await again.subscribe({ sync: false, after: first.got[0]!.position, version: first.got[0]!.event.version });
      await waitFor(() => again.got.length === 1);
      expect(again.got.map((g) => [g.event.action, g.event.data?.body])).toEqual([["created", "while away"]]);
    });

    it("refuses a sync of a stream without one, or of several streams at once", async () => {
      const { RoomStream, UserStream } = context.streams;
      const { turbo, reader } = await context.open();
      const init = { hub: turbo.hub, broker: turbo.broker, registry: turbo.registry, reader: reader() };
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
      const { RoomStream, MessageStream, UserStream } = context.streams;
      const app = await context.open();
      const streams = [RoomStream.for(1).name, RoomStream.all().name, MessageStream.all().name, UserStream.all().name];
      for (const stream of streams) await dataEventsOf(app.turbo, stream);
      const before = payloads.length;
      await app.write(
        "insert into rooms (id, name) values (1, 'r')",
        `insert into users (id, name, password_hash) values (9, 'u', '${PASSWORD_HASH}')`,
        "insert into messages (room_id, body) values (1, 'm')",
        "update messages set body = 'n'",
        "delete from messages",
        "delete from users",
      );
      // rooms 2 (its own stream, the table-wide one), users 2, messages 3 (to their room, by broadcastsTo)
      await waitFor(() => payloads.length === before + 7);
      for (const payload of payloads) {
        expect(payload).not.toContain(SECRET);
        expect(payload).not.toContain(PASSWORD_HASH);
        expect(payload).not.toContain("secret");
      }
    });
  });
});
