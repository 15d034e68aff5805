import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { schema } from "./schema.js";

/** The demo's database file: CHAT_DB overrides the default `data/chat.db`. */
export function databasePath(): string {
  return path.resolve(process.env.CHAT_DB ?? path.join("data", "chat.db"));
}

const MIGRATION = `
CREATE TABLE IF NOT EXISTS users (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS rooms (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  is_private INTEGER NOT NULL DEFAULT 0,
  transport TEXT NOT NULL DEFAULT 'sse',
  created_by INTEGER REFERENCES users(id),
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
  room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  PRIMARY KEY (room_id, user_id)
);
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
  user_id INTEGER NOT NULL REFERENCES users(id),
  body TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  edited_at INTEGER
);
CREATE INDEX IF NOT EXISTS messages_room ON messages(room_id, id);
`;

/** Opens (creating, migrating and on first start seeding) the demo's SQLite file. */
export function openDatabase(file = databasePath()) {
  mkdirSync(path.dirname(file), { recursive: true });
  const sqlite = new Database(file);
  // WAL lets the change feed's poll and other processes read while the app writes
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("busy_timeout = 5000");
  sqlite.pragma("foreign_keys = ON");
  sqlite.exec(MIGRATION);
  seed(sqlite);
  return { sqlite, db: drizzle(sqlite, { schema }) };
}

function seed(sqlite: Database.Database): void {
  const { n } = sqlite.prepare("SELECT count(*) AS n FROM users").get() as { n: number };
  if (n > 0) return;
  const now = Date.now();
  sqlite.transaction(() => {
    const user = sqlite.prepare("INSERT INTO users (name) VALUES (?)");
    const [alice, bob] = ["alice", "bob", "carol"].map((name) => Number(user.run(name).lastInsertRowid));
    const room = sqlite.prepare(
      "INSERT INTO rooms (name, is_private, transport, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
    );
    const general = Number(room.run("general", 0, "sse", alice, now).lastInsertRowid);
    const random = Number(room.run("random", 0, "websocket", bob, now).lastInsertRowid);
    const secret = Number(room.run("secret plans", 1, "sse", alice, now).lastInsertRowid);
    const member = sqlite.prepare("INSERT INTO memberships (room_id, user_id) VALUES (?, ?)");
    member.run(secret, alice);
    member.run(secret, bob);
    const message = sqlite.prepare("INSERT INTO messages (room_id, user_id, body, created_at) VALUES (?, ?, ?, ?)");
    message.run(general, alice, "Welcome to turbocast! Open this room in a second window and say hello.", now);
    message.run(general, bob, "Every message arrives live, over Server-Sent Events in this room.", now + 1);
    message.run(random, bob, "This room subscribes over WebSocket.", now + 2);
    message.run(secret, alice, "Only members can read this room.", now + 3);
  })();
}

export type ChatDatabase = ReturnType<typeof openDatabase>["db"];

declare module "turbocast" {
  /** `this.db` on the demo's streams is its own database; `actor` its signed-in user. */
  interface Register {
    db: ChatDatabase;
    actor: import("./schema.js").User | null;
  }
}

let current: ChatDatabase | null = null;

/** The process's database, as an app's own db module would export it (set by the server at start). */
export function appDb(): ChatDatabase {
  if (!current) throw new Error("the chat database is not open");
  return current;
}

export function setAppDb(db: ChatDatabase | null): void {
  current = db;
}
