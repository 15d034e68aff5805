import { randomBytes } from "node:crypto";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { integer, pgTable, text } from "drizzle-orm/pg-core";
import pg from "pg";
import { ModelStream } from "../../src/index.js";
import { MESSAGE_BODY } from "../lib/frame.js";
import { type BenchMessage, appendMessage, turbocastApp } from "./turbocast.js";
import type { BenchServer } from "./types.js";

/** The PostgreSQL server of the bench's PostgreSQL app. */
export const BENCH_PG_URL = process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";

const rooms = pgTable("rooms", {
  id: integer("id").primaryKey(),
  name: text("name").notNull(),
});

const messages = pgTable("messages", {
  id: integer("id").primaryKey(),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
});

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
}

/** The SQLite app's MessageStream, on pgTables: the same hook, the same template. */
class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  override async onSave(message: BenchMessage, { created }: { created: boolean }): Promise<void> {
    if (created) await appendMessage(RoomStream.for(message.roomId), message);
  }
}

/**
 * The bench app of turbocast.ts on PostgreSQL (BENCH_PG_URL): Drizzle
 * node-postgres over a pool whose search_path is a schema of its own,
 * created for the run and dropped at close, so capture (triggers, NOTIFY,
 * claims) runs as in an app on PostgreSQL.
 */
export function turbocastPgServer(): BenchServer {
  return turbocastApp(async () => {
    const schema = `bench_e2e_${randomBytes(4).toString("hex")}`;
    const admin = new pg.Client({ connectionString: BENCH_PG_URL });
    await admin.connect();
    const pool = new pg.Pool({ connectionString: BENCH_PG_URL, options: `-c search_path=${schema}`, max: 10 });
    try {
      await admin.query(`CREATE SCHEMA ${schema}; SET search_path = ${schema};
        CREATE TABLE rooms (id integer PRIMARY KEY, name text NOT NULL);
        CREATE TABLE messages (id integer PRIMARY KEY, room_id integer NOT NULL, body text NOT NULL);
        INSERT INTO rooms (id, name) VALUES (1, 'General');
        RESET search_path`);
    } catch (error) {
      await pool.end();
      await admin.end();
      throw error;
    }
    const db = drizzle(pool);
    return {
      db,
      streams: [RoomStream, MessageStream],
      room: (id) => RoomStream.for(id),
      async findRoom(id) {
        const [row] = await db.select().from(rooms).where(eq(rooms.id, id));
        return row;
      },
      insertMessage: (id) => db.insert(messages).values({ id, roomId: 1, body: MESSAGE_BODY }),
      async close() {
        await pool.end();
        try {
          await admin.query(`DROP SCHEMA ${schema} CASCADE`);
        } finally {
          await admin.end();
        }
      },
    };
  });
}
