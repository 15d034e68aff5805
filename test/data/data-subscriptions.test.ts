import { afterEach, describe, expect, it } from "vitest";
import { PASSWORD_HASH, SECRET } from "../fixtures/data/schema.js";
import { openSse, waitFor } from "../helpers.js";
import {
  type DataApp,
  type SharedMessage as Message,
  type SharedSocket,
  describeDialects,
  openShared,
} from "./dialects.js";

/** Every text message any socket got: no hidden column may be in one. */
const seen: string[] = [];
const sockets: SharedSocket[] = [];

async function shared(app: DataApp, user?: string): Promise<SharedSocket> {
  const socket = await openShared(app, { user, onText: (text) => seen.push(text) });
  sockets.push(socket);
  return socket;
}

afterEach(() => {
  for (const socket of sockets.splice(0)) socket.ws.terminate();
});

const sign = (app: DataApp, name: string) => app.turbo.signStreamName(name);

describeDialects("data subscriptions", (context) => {
  describe("on the shared WebSocket", () => {
    it("sends the sync, then events; an HTML subscription of the same stream on the same socket gets frames only", async () => {
      const app = await context.open();
      await app.write("insert into messages (room_id, body) values (1, 'first')");
      const client = await shared(app);
      const room = sign(app, context.streams.RoomStream.for(1).name);
      client.send({ type: "subscribe", id: "d", streams: [room], data: true, sync: true });
      client.send({ type: "subscribe", id: "h", streams: [room] });
      await waitFor(() => client.messages.filter((m) => m.type === "subscribed").length === 2);
      const [sync] = client.data();
      expect(sync).toMatchObject({ type: "data", for: "d", event: { action: "sync" } });
      expect(sync!.event!.rows).toEqual([{ id: 1, roomId: 1, body: "first" }]);
      // the sync comes before the subscribed answer
      expect(client.messages.findIndex((m) => m.type === "data")).toBeLessThan(
        client.messages.findIndex((m) => m.type === "subscribed" && m.id === "d"),
      );
      await app.write("insert into messages (room_id, body) values (1, 'second')");
      await waitFor(() => client.data().length === 2 && client.frames.length === 1);
      const event = client.data()[1]!;
      expect(event).toMatchObject({
        for: "d",
        event: { action: "created", data: { id: 2, roomId: 1, body: "second" } },
      });
      expect(event.event!.version).toBeGreaterThan(sync!.event!.version);
      expect(client.frames[0]).toContain('data-turbocast-for="h"');
      expect(client.frames[0]).toContain('action="append"');
    });

    it("resumes on a new socket from the last position and the sync's version: what was missed, once", async () => {
      const app = await context.open();
      const first = await shared(app);
      const room = sign(app, context.streams.RoomStream.for(1).name);
      first.send({ type: "subscribe", id: 1, streams: [room], data: true, sync: true });
      await waitFor(() => first.messages.some((m) => m.type === "subscribed"));
      await app.write("insert into messages (room_id, body) values (1, 'one')");
      await waitFor(() => first.data().length === 2);
      first.ws.terminate();
      await app.write(
        "insert into messages (room_id, body) values (1, 'two')",
        "update messages set body = 'one, edited' where id = 1",
      );
      const [sync, last] = first.data() as [Message, Message];
      const again = await shared(app);
      again.send({
        type: "subscribe",
        id: 1,
        streams: [room],
        data: true,
        after: last.position,
        version: sync.event!.version,
      });
      await waitFor(() => again.data().length === 2);
      expect(again.data().map((m) => [m.event!.action, m.event!.data!.body])).toEqual([
        ["created", "two"],
        ["updated", "one, edited"],
      ]);
    });

    it("refuses what cannot be answered: userPassesTest, a stream without sync, a malformed data subscribe", async () => {
      const { RoomStream, UserStream } = context.streams;
      const app = await context.open();
      const banned = await shared(app, "banned");
      banned.send({ type: "subscribe", id: 1, streams: [sign(app, RoomStream.for(1).name)], data: true });
      const client = await shared(app);
      const all = sign(app, UserStream.all().name);
      client.send({ type: "subscribe", id: 2, streams: [all], data: true, sync: true });
      client.send({ type: "subscribe", id: 3, streams: [all], data: "yes" });
      client.send({ type: "subscribe", id: 4, streams: ["forged.signature"], data: true });
      await waitFor(() => banned.messages.length === 1 && client.messages.length === 3);
      expect(banned.messages[0]).toMatchObject({ type: "refused", id: 1, status: 403 });
      expect(client.messages).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ type: "refused", id: 2, status: 404 }),
          expect.objectContaining({ type: "error", id: 3, status: 400 }),
          expect.objectContaining({ type: "refused", id: 4, status: 403 }),
        ]),
      );
    });

    it("ends a data subscription whose access ends (turbo.disconnect), like a frame subscription", async () => {
      const { RoomStream } = context.streams;
      const app = await context.open();
      const client = await shared(app);
      client.send({ type: "subscribe", id: 1, streams: [sign(app, RoomStream.for(1).name)], data: true, sync: true });
      await waitFor(() => client.messages.some((m) => m.type === "subscribed"));
      expect(await app.turbo.disconnect({ stream: RoomStream.for(1) })).toBe(1);
      await waitFor(() => client.messages.some((m) => m.type === "refused"));
      expect(client.messages.find((m) => m.type === "refused")).toMatchObject({ id: 1, status: 403 });
      await app.write("insert into messages (room_id, body) values (1, 'after access ended')");
      expect(client.data().map((m) => m.event!.action)).toEqual(["sync"]);
    });

    it("never sends a hidden column", async () => {
      const { RoomStream, UserStream } = context.streams;
      const app = await context.open();
      const client = await shared(app);
      client.send({ type: "subscribe", id: 1, streams: [sign(app, UserStream.all().name)], data: true });
      client.send({ type: "subscribe", id: 2, streams: [sign(app, RoomStream.for(1).name)], data: true, sync: true });
      await waitFor(() => client.messages.filter((m) => m.type === "subscribed").length === 2);
      await app.write(
        `insert into users (id, name, password_hash) values (1, 'ada', '${PASSWORD_HASH}')`,
        "insert into messages (room_id, body) values (1, 'm')",
        "delete from messages",
      );
      await waitFor(() => client.data().length === 4);
      for (const text of seen) {
        expect(text).not.toContain(PASSWORD_HASH);
        expect(text).not.toContain(SECRET);
      }
    });
  });

  describe("over SSE", () => {
    it("sends the sync and events as named turbocast-data events, which an unnamed listener (Turbo) never sees", async () => {
      const app = await context.open();
      await app.write("insert into messages (room_id, body) values (1, 'first')");
      const token = encodeURIComponent(sign(app, context.streams.RoomStream.for(1).name));
      const sse = openSse(`${app.url}/turbo-streams?s=${token}&data=1&sync=1`);
      const named: Array<{ id: string; event: Message["event"] }> = [];
      sse.source.addEventListener("turbocast-data", (event) => {
        const message = event as MessageEvent<string>;
        seen.push(message.data);
        named.push({ id: message.lastEventId, event: JSON.parse(message.data) });
      });
      await sse.opened;
      await waitFor(() => named.length === 1);
      expect(named[0]!.event).toMatchObject({ action: "sync", rows: [{ id: 1, roomId: 1, body: "first" }] });
      await app.write("insert into messages (room_id, body) values (1, 'second')");
      await waitFor(() => named.length === 2);
      expect(named[1]!.event).toMatchObject({ action: "created", data: { body: "second" } });
      expect(named[1]!.id).toMatch(/\./);
      expect(sse.messages).toEqual([]);
      sse.source.close();
    });

    it("resumes with Last-Event-ID after a cut: what was missed, once", async () => {
      const app = await context.open();
      const token = encodeURIComponent(sign(app, context.streams.RoomStream.for(1).name));
      const url = `${app.url}/turbo-streams?s=${token}&data=1`;
      const first = openSse(url);
      const events = (source: ReturnType<typeof openSse>["source"], into: Message["event"][], ids: string[]) =>
        source.addEventListener("turbocast-data", (event) => {
          const message = event as MessageEvent<string>;
          seen.push(message.data);
          into.push(JSON.parse(message.data));
          ids.push(message.lastEventId);
        });
      const got: Message["event"][] = [];
      const ids: string[] = [];
      events(first.source, got, ids);
      await first.opened;
      await app.write("insert into messages (room_id, body) values (1, 'one')");
      await waitFor(() => got.length === 1);
      first.source.close();
      await app.write(
        "insert into messages (room_id, body) values (1, 'two')",
        "update messages set body = 'one, edited' where id = 1",
      );
      // a new EventSource carrying the header, as a reconnecting one does
      const again = openSse(url, { headers: { "last-event-id": ids[0]! } });
      const missed: Message["event"][] = [];
      events(again.source, missed, []);
      await again.opened;
      await waitFor(() => missed.length === 2);
      await app.write("insert into messages (room_id, body) values (1, 'three')");
      await waitFor(() => missed.length === 3);
      expect(missed.map((e) => [e!.action, e!.data!.body])).toEqual([
        ["created", "two"],
        ["updated", "one, edited"],
        ["created", "three"],
      ]);
      again.source.close();
    });

    it("answers a sync it cannot give before the stream starts", async () => {
      const { RoomStream, UserStream } = context.streams;
      const app = await context.open();
      const all = encodeURIComponent(sign(app, UserStream.all().name));
      const two = [RoomStream.for(1), RoomStream.for(2)]
        .map((s) => `s=${encodeURIComponent(sign(app, s.name))}`)
        .join("&");
      const status = async (query: string) =>
        (await fetch(`${app.url}/turbo-streams?${query}`, { headers: { accept: "text/event-stream" } })).status;
      expect(await status(`s=${all}&data=1&sync=1`)).toBe(404);
      expect(await status(`${two}&data=1&sync=1`)).toBe(400);
      expect(await status(`s=${all}&data=yes`)).toBe(400);
    });
  });
});
