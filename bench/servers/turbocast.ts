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
import { ModelStream, createTurbo } from "../../src/index.js";
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

type Message = typeof messages.$inferSelect;

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
}

/** What an app's streams/messages.ts does: a new message is appended to its room's page. */
class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override async onSave(message: Message, { created }: { created: boolean }): Promise<void> {
    if (created)
      await RoomStream.for(message.roomId).append("messages/_message.njk", { message }, { target: "messages" });
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

/**
 * turbocast as an app runs it: an Express app over a SQLite file, streams
 * bound to Drizzle tables with change capture, `turbo.middleware()` and
 * `turbo.listen(server)` on one http.Server. Subscribers use the real signed
 * URLs of a page's `<turbo-stream-source>` (fetched from the app itself).
 * Template renders are counted through a wrapped nunjucks environment.
 */
export function turbocastServer(): BenchServer {
  const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-bench-"));
  for (const [name, source] of Object.entries(TEMPLATES)) {
    mkdirSync(path.dirname(path.join(dir, "views", name)), { recursive: true });
    writeFileSync(path.join(dir, "views", name), source);
  }
  const sqlite = new Database(path.join(dir, "app.db"));
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(`
    create table rooms (id integer primary key, name text not null);
    create table messages (id integer primary key, room_id integer not null, body text not null);
    insert into rooms (id, name) values (1, 'General');
  `);
  const db = drizzle(sqlite);
  const views = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(dir, "views")), { autoescape: true });
  let renders = 0;
  const render = views.render.bind(views) as (name: string, context?: object) => string;
  views.render = ((name: string, context?: object, callback?: unknown) => {
    renders++;
    return (render as (n: string, c?: object, cb?: unknown) => string)(name, context, callback);
  }) as typeof views.render;

  const server = http.createServer();
  let turbo: Awaited<ReturnType<typeof createTurbo>> | undefined;
  const room = RoomStream.for(1);

  return {
    async start() {
      turbo = await createTurbo({
        db,
        views,
        streams: [RoomStream, MessageStream],
        secret: "bench-secret-0123456789abcdef0123456789",
        secretFile: path.join(dir, ".turbocast-secret"),
        logger: { info: () => {}, warn: (m) => console.warn(m), error: (m, meta) => console.error(m, meta) },
      });
      const app = express();
      views.express(app);
      app.use(turbo.middleware());
      app.get("/rooms/:id", (req, res) => {
        // read through the app's db, so the row carries its .stream
        const row = db
          .select()
          .from(rooms)
          .where(eq(rooms.id, Number(req.params.id)))
          .get();
        if (!row) return void res.sendStatus(404);
        res.render("rooms/show.njk", { room: row, transport: req.query.transport });
      });
      server.on("request", app);
      turbo.listen(server);
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as AddressInfo;
      const origin = `http://127.0.0.1:${port}`;
      const ws = sourceSrc(await get(`${origin}/rooms/1?transport=websocket`));
      const sse = new URL(sourceSrc(await get(`${origin}/rooms/1?transport=sse`)), origin).href;
      // a page's shared connection holding 1 or 5 subscriptions: the room broadcast to, and 4 other rooms
      const shared = (count: number): string => {
        const subscriptions = Array.from({ length: count }, (_, i) => [
          turbo!.signStreamName(RoomStream.for(i + 1).name),
        ]);
        return `ws://127.0.0.1:${port}${turbo!.path}#${encodeURIComponent(JSON.stringify(subscriptions))}`;
      };
      return { port, origin, urls: { ws, sse, mux1: shared(1), mux5: shared(5) } };
    },
    subscribers: () => turbo?.hub.size ?? 0,
    broadcast(_id, frame) {
      return room.broadcastRaw(frame);
    },
    commands: {
      /** A broadcast that renders its template: `stream.append(template, context)`. */
      append(args: { id: number }) {
        const message = { id: args.id, roomId: 1, body: MESSAGE_BODY };
        const tPub = now();
        const done = room.append("messages/_message.njk", { message }, { target: "messages" });
        const tSync = now();
        return done.then(() => ({ tPub, tSync }));
      },
      /** The whole write path: a Drizzle insert; capture, the hook, the render and the broadcast follow. */
      insert(args: { id: number }) {
        const tPub = now();
        db.insert(messages).values({ id: args.id, roomId: 1, body: MESSAGE_BODY }).run();
        const tSync = now();
        return { tPub, tSync };
      },
      renders: () => renders,
    },
    async close() {
      await turbo?.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      sqlite.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
