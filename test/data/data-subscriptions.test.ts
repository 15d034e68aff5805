import http from "node:http";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import express from "express";
import nunjucks from "nunjucks";
import WebSocket from "ws";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type Turbo, createTurbo } from "../../src/index.js";
import {
  DDL,
  PASSWORD_HASH,
  RoomStream,
  SECRET,
  TEMPLATES,
  UserStream,
  dataStreams,
  messages,
  schema,
  users,
} from "../fixtures/data/schema.js";
import { closeServer, listen, memoryLogger, openSse, tempDir, waitFor } from "../helpers.js";

interface App {
  sqlite: Database.Database;
  db: ReturnType<typeof drizzle<typeof schema>>;
  turbo: Turbo;
  url: string;
  server: http.Server;
}

let tmp: { dir: string; cleanup: () => void };
let app: App | undefined;
const sockets: WebSocket[] = [];

async function openApp(): Promise<App> {
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
  const turbo = await createTurbo({
    db,
    views: new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true }),
    streams: dataStreams,
    logger: memoryLogger(),
    secret: "data-subscriptions-secret-0123456789abcdef",
    authenticate: (req) => (req.headers["x-user"] as string | undefined) ?? null,
  });
  const web = express();
  web.use(turbo.middleware());
  const server = http.createServer(web);
  turbo.listen(server);
  const { url } = await listen(server);
  app = { sqlite, db, turbo, url, server };
  return app;
}

interface Message {
  type: string;
  id?: unknown;
  for?: string;
  status?: number;
  position?: string;
  event?: { action: string; version: number; data?: Record<string, unknown>; rows?: Record<string, unknown>[] };
}

/** Every text message any socket got: no hidden column may be in one. */
const seen: string[] = [];

async function shared(user?: string) {
  const ws = new WebSocket(`${app!.url.replace(/^http/, "ws")}/turbo-streams`, "turbocast.v1", {
    headers: user ? { "x-user": user } : {},
  });
  sockets.push(ws);
  const messages: Message[] = [];
  const frames: string[] = [];
  ws.on("message", (data) => {
    const text = data.toString("utf8");
    seen.push(text);
    if (text.startsWith("{")) messages.push(JSON.parse(text) as Message);
    else frames.push(text);
  });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  return {
    ws,
    messages,
    frames,
    send: (message: unknown) => ws.send(JSON.stringify(message)),
    data: () => messages.filter((m) => m.type === "data"),
  };
}

const sign = (name: string) => app!.turbo.signStreamName(name);

beforeEach(() => {
  tmp = tempDir("turbocast-data-subscriptions-");
});

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  if (app) {
    await app.turbo.close();
    await closeServer(app.server);
    app.sqlite.close();
  }
  app = undefined;
  tmp.cleanup();
});

describe("data subscriptions on the shared WebSocket", () => {
  it("sends the sync, then events; an HTML subscription of the same stream on the same socket gets frames only", async () => {
    const { db, turbo } = await openApp();
    db.insert(messages).values({ roomId: 1, body: "first" }).run();
    await turbo.feed.drain();
    const client = await shared();
    const room = sign(RoomStream.for(1).name);
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
    db.insert(messages).values({ roomId: 1, body: "second" }).run();
    await turbo.feed.drain();
    await waitFor(() => client.data().length === 2 && client.frames.length === 1);
    const event = client.data()[1]!;
    expect(event).toMatchObject({ for: "d", event: { action: "created", data: { id: 2, roomId: 1, body: "second" } } });
    expect(event.event!.version).toBeGreaterThan(sync!.event!.version);
    expect(client.frames[0]).toContain('data-turbocast-for="h"');
    expect(client.frames[0]).toContain('action="append"');
  });

  it("resumes on a new socket from the last position and version: what was missed, once", async () => {
    const { db, turbo } = await openApp();
    const first = await shared();
    const room = sign(RoomStream.for(1).name);
    first.send({ type: "subscribe", id: 1, streams: [room], data: true, sync: true });
    await waitFor(() => first.messages.some((m) => m.type === "subscribed"));
    db.insert(messages).values({ roomId: 1, body: "one" }).run();
    await turbo.feed.drain();
    await waitFor(() => first.data().length === 2);
    first.ws.terminate();
    db.insert(messages).values({ roomId: 1, body: "two" }).run();
    db.update(messages).set({ body: "one, edited" }).where(eq(messages.id, 1)).run();
    await turbo.feed.drain();
    const last = first.data()[1]!;
    const again = await shared();
    again.send({
      type: "subscribe",
      id: 1,
      streams: [room],
      data: true,
      after: last.position,
      version: last.event!.version,
    });
    await waitFor(() => again.data().length === 2);
    expect(again.data().map((m) => [m.event!.action, m.event!.data!.body])).toEqual([
      ["created", "two"],
      ["updated", "one, edited"],
    ]);
  });

  it("refuses what cannot be answered: userPassesTest, a stream without sync, a malformed data subscribe", async () => {
    await openApp();
    const banned = await shared("banned");
    banned.send({ type: "subscribe", id: 1, streams: [sign(RoomStream.for(1).name)], data: true });
    const client = await shared();
    client.send({ type: "subscribe", id: 2, streams: [sign(UserStream.all().name)], data: true, sync: true });
    client.send({ type: "subscribe", id: 3, streams: [sign(UserStream.all().name)], data: "yes" });
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
    const { db, turbo } = await openApp();
    const client = await shared();
    client.send({ type: "subscribe", id: 1, streams: [sign(RoomStream.for(1).name)], data: true, sync: true });
    await waitFor(() => client.messages.some((m) => m.type === "subscribed"));
    expect(await turbo.disconnect({ stream: RoomStream.for(1) })).toBe(1);
    await waitFor(() => client.messages.some((m) => m.type === "refused"));
    expect(client.messages.find((m) => m.type === "refused")).toMatchObject({ id: 1, status: 403 });
    db.insert(messages).values({ roomId: 1, body: "after access ended" }).run();
    await turbo.feed.drain();
    expect(client.data().map((m) => m.event!.action)).toEqual(["sync"]);
  });

  it("never sends a hidden column", async () => {
    const { db, turbo } = await openApp();
    const client = await shared();
    client.send({ type: "subscribe", id: 1, streams: [sign(UserStream.all().name)], data: true });
    client.send({ type: "subscribe", id: 2, streams: [sign(RoomStream.for(1).name)], data: true, sync: true });
    await waitFor(() => client.messages.filter((m) => m.type === "subscribed").length === 2);
    db.insert(users).values({ id: 1, name: "ada", passwordHash: PASSWORD_HASH }).run();
    db.insert(messages).values({ roomId: 1, body: "m" }).run();
    db.delete(messages).run();
    await turbo.feed.drain();
    await waitFor(() => client.data().length === 4);
    for (const text of seen) {
      expect(text).not.toContain(PASSWORD_HASH);
      expect(text).not.toContain(SECRET);
    }
  });
});

describe("data subscriptions over SSE", () => {
  it("sends the sync and events as named turbocast-data events, which an unnamed listener (Turbo) never sees", async () => {
    const { db, turbo, url } = await openApp();
    db.insert(messages).values({ roomId: 1, body: "first" }).run();
    await turbo.feed.drain();
    const token = encodeURIComponent(sign(RoomStream.for(1).name));
    const sse = openSse(`${url}/turbo-streams?s=${token}&data=1&sync=1`);
    const named: Array<{ id: string; event: Message["event"] }> = [];
    sse.source.addEventListener("turbocast-data", (event) => {
      const message = event as MessageEvent<string>;
      seen.push(message.data);
      named.push({ id: message.lastEventId, event: JSON.parse(message.data) });
    });
    await sse.opened;
    await waitFor(() => named.length === 1);
    expect(named[0]!.event).toMatchObject({ action: "sync", rows: [{ id: 1, roomId: 1, body: "first" }] });
    db.insert(messages).values({ roomId: 1, body: "second" }).run();
    await turbo.feed.drain();
    await waitFor(() => named.length === 2);
    expect(named[1]!.event).toMatchObject({ action: "created", data: { body: "second" } });
    expect(named[1]!.id).toMatch(/\./);
    expect(sse.messages).toEqual([]);
    sse.source.close();
  });

  it("answers a sync it cannot give before the stream starts", async () => {
    const { url } = await openApp();
    const all = encodeURIComponent(sign(UserStream.all().name));
    const two = [RoomStream.for(1), RoomStream.for(2)].map((s) => `s=${encodeURIComponent(sign(s.name))}`).join("&");
    const status = async (query: string) =>
      (await fetch(`${url}/turbo-streams?${query}`, { headers: { accept: "text/event-stream" } })).status;
    expect(await status(`s=${all}&data=1&sync=1`)).toBe(404);
    expect(await status(`${two}&data=1&sync=1`)).toBe(400);
    expect(await status(`s=${all}&data=yes`)).toBe(400);
  });
});
