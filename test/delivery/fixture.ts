import { writeFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import express from "express";
import nunjucks from "nunjucks";
import { ModelStream, Stream, createTurbo, type Turbo, type TurboOptions } from "../../src/index.js";
import { closeServer, listen, memoryLogger, tempDir, unescapeHtml } from "../helpers.js";

export const rooms = sqliteTable("rooms", {
  id: integer("id").primaryKey(),
  name: text("name").notNull(),
  private: integer("private", { mode: "boolean" }).notNull().default(false),
});

export const messages = sqliteTable("messages", {
  id: integer("id").primaryKey(),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
});

export interface TestUser {
  name: string;
}

/** Rooms: anyone may watch a public room; a private one only "alice" (an async check that loads the row). */
export class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
  override async userPassesTest(user: unknown): Promise<boolean> {
    const room = await this.load();
    if (!room) return false;
    return !room.private || (user as TestUser | null)?.name === "alice";
  }
}

export class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
}

/** A plain named stream everyone may watch. */
export class LobbyStream extends Stream {}

/** A plain named stream nobody may watch (a sync refusal). */
export class VaultStream extends Stream {
  override userPassesTest(): boolean {
    return false;
  }
}

/** A plain named stream whose check throws (a busy database, a bug). */
export class ThrowingStream extends Stream {
  override userPassesTest(): boolean {
    throw new Error("database is locked");
  }
}

export const SECRET = "test-secret-0123456789abcdef0123456789";

const TEMPLATES: Record<string, string> = {
  "room.njk": `<h1>{{ room.name }}</h1>{{ turbo_stream_from(room, "lobby", transport=transport) }}<div id="messages"></div>`,
  "_message.njk": `<p id="message_{{ message.id }}">{{ message.body }}</p>`,
  "lobby.njk": `{{ turbo_stream_from("lobby") }}`,
  "none.njk": `{{ turbo_stream_from() }}`,
  "row.njk": `{{ turbo_stream_from(row) }}`,
};

export interface TestApp {
  turbo: Turbo;
  app: express.Express;
  server: http.Server;
  url: string;
  port: number;
  db: ReturnType<typeof drizzle>;
  sqlite: Database.Database;
  logger: ReturnType<typeof memoryLogger>;
  /** Every socket the server accepted (to cut connections from the server side). */
  sockets: Set<import("node:net").Socket>;
  /** GETs a page and returns the `src` of its `<turbo-stream-source>`, unescaped. */
  pageSrc(pathname: string, headers?: Record<string, string>): Promise<string>;
  close(): Promise<void>;
}

/** A real Express app on 127.0.0.1:0 over a temporary SQLite file, with turbocast mounted. */
export async function startApp(
  options: Partial<TurboOptions> & { trustProxy?: boolean; listen?: boolean } = {},
): Promise<TestApp> {
  const { dir, cleanup } = tempDir("turbocast-delivery-");
  for (const [name, src] of Object.entries(TEMPLATES)) writeFileSync(path.join(dir, name), src);
  const sqlite = new Database(path.join(dir, "app.db"));
  sqlite.exec(`
    create table rooms (id integer primary key, name text not null, private integer not null default 0);
    create table messages (id integer primary key, room_id integer not null, body text not null);
    insert into rooms (id, name, private) values (1, 'General', 0), (2, 'Secret plans', 1), (3, 'Random', 0);
  `);
  const db = drizzle(sqlite);
  const views = new nunjucks.Environment(new nunjucks.FileSystemLoader(dir), { autoescape: true });
  const logger = memoryLogger();
  const { trustProxy, listen: attachUpgrades = true, ...turboOptions } = options;
  const turbo = await createTurbo({
    db,
    views,
    streams: [RoomStream, MessageStream, LobbyStream, VaultStream, ThrowingStream],
    secret: SECRET,
    logger,
    authenticate: (req) => {
      const name = req.get("x-user");
      return name ? { name } : null;
    },
    ...turboOptions,
  });

  const app = express();
  if (trustProxy) app.set("trust proxy", true);
  views.express(app);
  app.set("view engine", "njk");
  app.use(turbo.middleware());
  app.get("/rooms/:id", (req, res) => {
    const room = db
      .select()
      .from(rooms)
      .where(eq(rooms.id, Number(req.params.id)))
      .get();
    if (!room) return void res.sendStatus(404);
    res.render("room.njk", { room, transport: req.query.transport === "websocket" ? "websocket" : "sse" });
  });
  app.post("/rooms/:id/messages", express.json(), async (req, res) => {
    // the Drizzle write; then what MessageStream's hook does once change capture lands
    const message = db
      .insert(messages)
      .values({ roomId: Number(req.params.id), body: String(req.body.body) })
      .returning()
      .get();
    await RoomStream.for(message.roomId).append("_message.njk", { message }, { target: "messages" });
    res.status(201).json(message);
  });
  app.get("/lobby", (_req, res) => res.render("lobby.njk"));

  const server = http.createServer(app);
  const sockets = new Set<import("node:net").Socket>();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  if (attachUpgrades) turbo.listen(server);
  const { url, port } = await listen(server);

  return {
    turbo,
    app,
    server,
    url,
    port,
    db,
    sqlite,
    logger,
    sockets,
    async pageSrc(pathname, headers = {}) {
      const response = await fetch(`${url}${pathname}`, { headers });
      const html = await response.text();
      const match = /<turbo-stream-source src="([^"]*)"/.exec(html);
      if (!match) throw new Error(`no <turbo-stream-source> in ${pathname}: ${html}`);
      return unescapeHtml(match[1]!);
    },
    async close() {
      await turbo.close();
      await closeServer(server);
      sqlite.close();
      cleanup();
    },
  };
}

/** Position of a WebSocket message (the attribute the client script reads). */
export function wsPosition(message: string): string | undefined {
  return /data-turbocast-position="([^"]+)"/.exec(message)?.[1];
}
