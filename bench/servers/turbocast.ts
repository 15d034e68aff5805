import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import express from "express";
import nunjucks from "nunjucks";
import { ModelStream, type Stream, createTurbo } from "../../src/index.js";
import type { AnyStreamClass } from "../../src/streams/registry.js";
import { now } from "../lib/clock.js";
import { MARK, MESSAGE_BODY } from "../lib/frame.js";
import type { BenchServer } from "./types.js";

const rooms = sqliteTable("rooms", {
  id: integer("id").primaryKey(),
  name: text("name").notNull(),
});

const messages = sqliteTable("messages", {
  id: integer("id").primaryKey(),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
});

/** A message row as the hook gets it (the same shape on both databases). */
export interface BenchMessage {
  id: number;
  roomId: number;
  body: string;
}

/** What an app's streams/messages.ts does: a new message is appended to its room's page. */
export function appendMessage(room: Stream, message: BenchMessage): Promise<unknown> {
  return room.append("messages/_message.njk", { message }, { target: "messages" });
}

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
}

class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override async onSave(message: BenchMessage, { created }: { created: boolean }): Promise<void> {
    if (created) await appendMessage(RoomStream.for(message.roomId), message);
  }
}

const TEMPLATES: Record<string, string> = {
  "rooms/show.njk": `<h1>{{ room.name }}</h1>\n{{ turbo_stream_from(room, transport=transport) }}\n<div id="messages"></div>\n`,
  // the same ~1 KB frame as every other server's, carrying the broadcast id after the marker
  "messages/_message.njk": `<div id="message_{{ message.id }}" class="message" data-bench="${MARK}{{ message.id }};"><p>{{ message.body }}</p></div>`,
};

/** The `src` of the page's `<turbo-stream-source>`, unescaped. */
function sourceSrc(html: string): string {
  const match = /<turbo-stream-source[^>]*\ssrc="([^"]*)"/.exec(html);
  if (!match) throw new Error(`no <turbo-stream-source> in the page: ${html.slice(0, 200)}`);
  return match[1]!
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");
}

function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => (body += chunk));
        res.on("end", () =>
          res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${url}: ${res.statusCode}`)),
        );
      })
      .on("error", reject);
  });
}

/** What differs between the bench app on SQLite and on PostgreSQL: the database, its tables' stream classes. */
export interface BenchAppDatabase {
  /** The app's Drizzle database, with a `rooms` table holding room 1 and an empty `messages` table. */
  db: unknown;
  /** The stream classes bound to `rooms` and `messages` (MessageStream's onSave calls appendMessage). */
  streams: AnyStreamClass[];
  /** The stream of room `id` (RoomStream.for). */
  room(id: number): Stream;
  /** Room `id` read through the app's db, so the row carries its `.stream`. */
  findRoom(id: number): unknown;
  /** A Drizzle insert of message `id` into room 1 (returns once it committed). */
  insertMessage(id: number): unknown;
  close(): Promise<void>;
}

/**
 * turbocast as an app runs it: an Express app over its database (SQLite
 * here, PostgreSQL in turbocast-pg.ts), streams bound to Drizzle tables with
 * change capture, `turbo.middleware()` and `turbo.listen(server)` on one
 * http.Server. Subscribers use the real signed URLs of a page's
 * `<turbo-stream-source>` (fetched from the app itself). Template renders
 * are counted through a wrapped nunjucks environment.
 */
export function turbocastApp(open: () => Promise<BenchAppDatabase>): BenchServer {
  const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-bench-"));
  for (const [name, source] of Object.entries(TEMPLATES)) {
    mkdirSync(path.dirname(path.join(dir, "views", name)), { recursive: true });
    writeFileSync(path.join(dir, "views", name), source);
  }
  const views = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(dir, "views")), { autoescape: true });
  let renders = 0;
  const render = views.render.bind(views) as (name: string, context?: object) => string;
  views.render = ((name: string, context?: object, callback?: unknown) => {
    renders++;
    return (render as (n: string, c?: object, cb?: unknown) => string)(name, context, callback);
  }) as typeof views.render;

  const server = http.createServer();
  let database: BenchAppDatabase | undefined;
  let turbo: Awaited<ReturnType<typeof createTurbo>> | undefined;
  let room: Stream | undefined;

  return {
    async start() {
      database = await open();
      const app = database;
      turbo = await createTurbo({
        db: app.db as Parameters<typeof createTurbo>[0]["db"],
        views,
        streams: app.streams,
        secret: "bench-secret-0123456789abcdef0123456789",
        secretFile: path.join(dir, ".turbocast-secret"),
        logger: { info: () => {}, warn: (m) => console.warn(m), error: (m, meta) => console.error(m, meta) },
      });
      room = app.room(1);
      const web = express();
      views.express(web);
      web.use(turbo.middleware());
      web.get("/rooms/:id", async (req, res, next) => {
        try {
          const row = await app.findRoom(Number(req.params.id));
          if (!row) return void res.sendStatus(404);
          res.render("rooms/show.njk", { room: row, transport: req.query.transport });
        } catch (error) {
          next(error);
        }
      });
      server.on("request", web);
      turbo.listen(server);
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      const origin = `http://127.0.0.1:${port}`;
      const ws = sourceSrc(await get(`${origin}/rooms/1?transport=websocket`));
      const sse = new URL(sourceSrc(await get(`${origin}/rooms/1?transport=sse`)), origin).href;
      // a page's shared connection holding 1 or 5 subscriptions: the room broadcast to, and 4 other rooms
      const shared = (count: number): string => {
        const subscriptions = Array.from({ length: count }, (_, i) => [turbo!.signStreamName(app.room(i + 1).name)]);
        return `ws://127.0.0.1:${port}${turbo!.path}#${encodeURIComponent(JSON.stringify(subscriptions))}`;
      };
      return { port, origin, urls: { ws, sse, mux1: shared(1), mux5: shared(5) } };
    },
    subscribers: () => turbo?.hub.size ?? 0,
    broadcast(_id, frame) {
      return room!.broadcastRaw(frame);
    },
    commands: {
      /** A broadcast that renders its template: `stream.append(template, context)`. */
      append(args: { id: number }) {
        const message = { id: args.id, roomId: 1, body: MESSAGE_BODY };
        const tPub = now();
        const done = appendMessage(room!, message);
        const tSync = now();
        return done.then(() => ({ tPub, tSync }));
      },
      /**
       * The whole write path: a Drizzle insert; capture, the hook, the render and the broadcast follow.
       * tSync: when the insert returned (SQLite) or committed (PostgreSQL).
       */
      async insert(args: { id: number }) {
        const tPub = now();
        await database!.insertMessage(args.id);
        return { tPub, tSync: now() };
      },
      renders: () => renders,
    },
    async close() {
      await turbo?.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await database?.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The bench app on a SQLite file (WAL). */
export function turbocastServer(): BenchServer {
  return turbocastApp(async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-bench-db-"));
    const sqlite = new Database(path.join(dir, "app.db"));
    sqlite.pragma("journal_mode = WAL");
    sqlite.exec(`
      create table rooms (id integer primary key, name text not null);
      create table messages (id integer primary key, room_id integer not null, body text not null);
      insert into rooms (id, name) values (1, 'General');
    `);
    const db = drizzle(sqlite);
    return {
      db,
      streams: [RoomStream, MessageStream],
      room: (id) => RoomStream.for(id),
      findRoom: (id) => db.select().from(rooms).where(eq(rooms.id, id)).get(),
      insertMessage(id) {
        db.insert(messages).values({ id, roomId: 1, body: MESSAGE_BODY }).run();
      },
      async close() {
        sqlite.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  });
}
