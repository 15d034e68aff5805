import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { mkdirSync } from "node:fs";
import path from "node:path";
import pg from "pg";
import { MIGRATION as PG_MIGRATION, schema as pgSchema } from "./schema-pg.js";
import { schema, useDialect } from "./schema.js";

/** The demo's PostgreSQL database: DATABASE_URL, unless CHAT_DB names a SQLite file. */
export function chatDatabaseUrl(): string | undefined {
  return process.env.CHAT_DB ? undefined : process.env.DATABASE_URL || undefined;
}

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
  useDialect("sqlite");
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

/**
 * Opens the demo's PostgreSQL database (`DATABASE_URL`): creates the tables
 * when missing and seeds an empty database, in one transaction under an
 * advisory lock (workers of `start:cluster` may start together). The app's
 * code is typed against the SQLite db; on PostgreSQL it awaits the same
 * builders (schema.ts swaps the tables).
 */
export async function openPostgresDatabase(url: string): Promise<{ db: ChatDatabase; pool: pg.Pool }> {
  useDialect("postgres");
  const pool = new pg.Pool({ connectionString: url });
  // an idle connection that dies (a server restart) is dropped by the pool; unheard, it would crash the process
  pool.on("error", () => {});
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query("SELECT pg_advisory_xact_lock(hashtext('turbocast_chat_migration'))");
    await client.query(PG_MIGRATION);
    const { rows } = await client.query<{ n: number }>("SELECT count(*)::int AS n FROM users");
    if (rows[0]!.n === 0) await seedPostgres(client);
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    client.release();
    await pool.end();
    throw error;
  }
  client.release();
  return { db: drizzlePg(pool, { schema: pgSchema }) as unknown as ChatDatabase, pool };
}

async function seedPostgres(client: pg.PoolClient): Promise<void> {
  const now = Date.now();
  const id = async (sql: string, values: unknown[]) =>
    (await client.query<{ id: number }>(`${sql} RETURNING id`, values)).rows[0]!.id;
  const [alice, bob] = [
    await id("INSERT INTO users (name) VALUES ($1)", ["alice"]),
    await id("INSERT INTO users (name) VALUES ($1)", ["bob"]),
  ];
  await id("INSERT INTO users (name) VALUES ($1)", ["carol"]);
  const room = "INSERT INTO rooms (name, is_private, transport, created_by, created_at) VALUES ($1, $2, $3, $4, $5)";
  const general = await id(room, ["general", false, "sse", alice, new Date(now)]);
  const random = await id(room, ["random", false, "websocket", bob, new Date(now)]);
  const secret = await id(room, ["secret plans", true, "sse", alice, new Date(now)]);
  await client.query("INSERT INTO memberships (room_id, user_id) VALUES ($1, $2), ($1, $3)", [secret, alice, bob]);
  const message = "INSERT INTO messages (room_id, user_id, body, created_at) VALUES ($1, $2, $3, $4)";
  await client.query(message, [
    general,
    alice,
    "Welcome to turbocast! Open this room in a second window and say hello.",
    new Date(now),
  ]);
  await client.query(message, [
    general,
    bob,
    "Every message arrives live, over Server-Sent Events in this room.",
    new Date(now + 1),
  ]);
  await client.query(message, [random, bob, "This room subscribes over WebSocket.", new Date(now + 2)]);
  await client.query(message, [secret, alice, "Only members can read this room.", new Date(now + 3)]);
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
