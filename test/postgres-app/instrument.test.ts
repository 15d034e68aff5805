import { eq, relations, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { NodePgSession } from "drizzle-orm/node-postgres";
import { integer, pgTable, serial, text } from "drizzle-orm/pg-core";
import { PgRelationalQuery } from "drizzle-orm/pg-core/query-builders/query";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { instrumentPgDatabase, isNodePgDatabase } from "../../src/db/instrument-pg.js";
import { ModelStream } from "../../src/index.js";
import { createTestSchema, type TestSchema } from "./pg-helpers.js";

const rooms = pgTable("rooms", { id: serial("id").primaryKey(), name: text("name").notNull() });
const messages = pgTable("messages", {
  id: serial("id").primaryKey(),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
});
const roomRelations = relations(rooms, ({ many }) => ({ messages: many(messages) }));
const messageRelations = relations(messages, ({ one }) => ({
  room: one(rooms, { fields: [messages.roomId], references: [rooms.id] }),
}));
const schemaObjects = { rooms, messages, roomRelations, messageRelations };

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
}
class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
}

let schema: TestSchema;
let pool: pg.Pool;
let db: ReturnType<typeof drizzle<typeof schemaObjects>>;
let restore: () => void;
let writes = 0;

beforeAll(async () => {
  schema = await createTestSchema("tcinstr");
  pool = schema.pool();
  await pool.query(`
    CREATE TABLE rooms (id serial PRIMARY KEY, name text NOT NULL);
    CREATE TABLE messages (id serial PRIMARY KEY, room_id int NOT NULL REFERENCES rooms, body text NOT NULL);`);
  db = drizzle(pool, { schema: schemaObjects });
  const classes = new Map<unknown, typeof ModelStream>([
    [rooms, RoomStream as unknown as typeof ModelStream],
    [messages, MessageStream as unknown as typeof ModelStream],
  ]);
  restore = instrumentPgDatabase(db, { classFor: (table) => classes.get(table), onWrite: () => writes++ }).restore;
});

afterAll(async () => {
  restore?.();
  await schema?.drop();
});

const streamOf = (row: unknown): string | undefined =>
  Object.hasOwn(row as object, "stream") ? (row as { stream: { name: string } }).stream.name : undefined;

describe("rows of bound PostgreSQL tables carry .stream", () => {
  it("recognises a Drizzle node-postgres database", () => {
    expect(isNodePgDatabase(db)).toBe(true);
    expect(isNodePgDatabase({})).toBe(false);
  });

  it("on .returning(), whole-row selects, and inside transactions", async () => {
    const [room] = await db.insert(rooms).values({ name: "lobby" }).returning();
    expect(streamOf(room)).toBe(RoomStream.for(room!).name);
    const [read] = await db.select().from(rooms).where(eq(rooms.id, room!.id));
    expect(streamOf(read)).toBe(RoomStream.for(room!).name);
    await db.transaction(async (tx) => {
      const [inTx] = await tx.select().from(rooms);
      expect(streamOf(inTx)).toBeDefined();
      const [updated] = await tx.update(rooms).set({ name: "hall" }).returning();
      expect(streamOf(updated)).toBeDefined();
    });
    expect(JSON.stringify(read)).toBe(`{"id":${room!.id},"name":"lobby"}`);
  });

  it("on db.query rows and the related rows loaded with `with`", async () => {
    const [room] = await db.insert(rooms).values({ name: "with" }).returning();
    await db.insert(messages).values({ roomId: room!.id, body: "hi" });
    const found = await db.query.rooms.findFirst({ where: eq(rooms.id, room!.id), with: { messages: true } });
    expect(streamOf(found)).toBe(RoomStream.for(room!).name);
    expect(streamOf(found!.messages[0])).toBe(MessageStream.for(found!.messages[0]!).name);
    const many = await db.query.messages.findMany({ with: { room: true } });
    expect(many.every((m) => streamOf(m) !== undefined && streamOf(m.room) !== undefined)).toBe(true);
  });

  it("not on partial selects, joins or raw SQL", async () => {
    const [partial] = await db.select({ id: rooms.id }).from(rooms).limit(1);
    expect(streamOf(partial)).toBeUndefined();
    const [joined] = await db.select().from(messages).innerJoin(rooms, eq(rooms.id, messages.roomId)).limit(1);
    expect(streamOf(joined)).toBeUndefined();
    const raw = await db.execute(sql`SELECT * FROM rooms LIMIT 1`);
    expect(streamOf(raw.rows[0])).toBeUndefined();
  });
});

describe("the app's own writes on PostgreSQL", () => {
  it("wake the feed after each write statement and transaction, not after reads", async () => {
    writes = 0;
    await db.select().from(rooms);
    await pool.query("SELECT 1");
    expect(writes).toBe(0);
    await db.insert(rooms).values({ name: "w" });
    expect(writes).toBe(1);
    await db.execute(sql`UPDATE rooms SET name = name`);
    await pool.query("DELETE FROM messages WHERE false");
    expect(writes).toBe(3);
    await db.transaction(async (tx) => {
      await tx.insert(rooms).values({ name: "in tx" });
    });
    expect(writes).toBe(4);
  });

  it("run on quiet connections: the pool's new connections send no NOTIFY, and restore() ends it", async () => {
    const quietPool = schema.pool();
    const quietDb = drizzle(quietPool);
    const { restore: undo } = instrumentPgDatabase(quietDb, { classFor: () => undefined, onWrite: () => {} });
    const quiet = async (p: pg.Pool) =>
      (await p.query("SELECT current_setting('turbocast.quiet', true) AS quiet")).rows[0].quiet as string | null;
    expect(await quiet(quietPool)).toBe("on");
    undo();
    const loud = schema.pool();
    expect(await quiet(loud)).toBeNull();
    expect(quietPool.options.options).toBe(`-c search_path=${schema.name}`);
  });
});

describe("the Drizzle internals the PostgreSQL instrumentation relies on", () => {
  it("NodePgSession.prototype.prepareQuery(query, fields, name, arrayMode, mapper) returns a query with execute()", () => {
    expect(Object.hasOwn(NodePgSession.prototype, "prepareQuery")).toBe(true);
    const session = (db as unknown as { session: NodePgSession<never, never> }).session;
    const prepared = session.prepareQuery({ sql: "select 1", params: [] }, undefined, undefined, false);
    expect(typeof prepared.execute).toBe("function");
    expect(Object.getPrototypeOf(session)).toBe(NodePgSession.prototype);
  });

  it("PgRelationalQuery.prototype._prepare passes its result mapper to session.prepareQuery", () => {
    expect(typeof (PgRelationalQuery.prototype as unknown as { _prepare: unknown })._prepare).toBe("function");
    const plain = drizzle(pool, { schema: schemaObjects });
    const session = (plain as unknown as { session: { prepareQuery: (...args: unknown[]) => unknown } }).session;
    const calls: unknown[][] = [];
    const original = session.prepareQuery;
    session.prepareQuery = (...args: unknown[]) => {
      calls.push(args);
      return original.apply(session, args);
    };
    plain.query.rooms.findMany().prepare("p");
    expect(calls).toHaveLength(1);
    expect(calls[0]![1]).toBeUndefined();
    expect(typeof calls[0]![4]).toBe("function");
  });
});
