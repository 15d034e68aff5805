import Database from "better-sqlite3";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { SQLiteRelationalQuery } from "drizzle-orm/sqlite-core/query-builders/query";
import nunjucks from "nunjucks";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MissingPrimaryKeyError, type Turbo, createTurbo } from "../src/index.js";
import { silentLogger } from "../src/logger.js";
import { MessageStream } from "./fixtures/streams-basic/nested/messages.js";
import { MembershipStream } from "./fixtures/streams-basic/nested/messages.js";
import { RoomStream } from "./fixtures/streams-basic/rooms.js";
import { DDL, memberships, messages, rooms, schema } from "./fixtures/schema.js";
import { tempDir } from "./helpers.js";

const fixtures = path.join(import.meta.dirname, "fixtures");
type Streamed = { stream: { name: string } };

describe("rows of bound tables carry a non-enumerable .stream", () => {
  let turbo: Turbo;
  let sqlite: Database.Database;
  let db: ReturnType<typeof drizzle<typeof schema>>;
  let cleanup: () => void;

  beforeEach(async () => {
    const tmp = tempDir();
    cleanup = tmp.cleanup;
    sqlite = new Database(path.join(tmp.dir, "app.db"));
    sqlite.exec(DDL);
    db = drizzle(sqlite, { schema });
    const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(fixtures, "views")), { autoescape: true });
    turbo = await createTurbo({ db, views: env, streams: [RoomStream, MessageStream, MembershipStream], logger: silentLogger });
    sqlite.exec(`INSERT INTO rooms (id, name) VALUES (1, 'general'), (2, 'random');
      INSERT INTO messages (id, room_id, body, created_at) VALUES (10, 1, 'hello', 0), (11, 1, 'again', 0);
      INSERT INTO memberships (room_id, user_name) VALUES (1, 'ann');`);
  });

  afterEach(async () => {
    await turbo.close();
    sqlite.close();
    cleanup();
  });

  it("on whole-row selects", async () => {
    const all = await db.select().from(rooms);
    expect(all.map((r) => (r as unknown as Streamed).stream.name)).toEqual(["row:rooms:1", "row:rooms:2"]);
    const one = db.select().from(rooms).where(eq(rooms.id, 2)).get();
    expect((one as unknown as Streamed).stream.name).toBe("row:rooms:2");
    expect((one as unknown as Streamed).stream).toBeInstanceOf(RoomStream);
  });

  it("on db.query findMany / findFirst, including related rows loaded with `with`", async () => {
    const found = await db.query.rooms.findMany({ with: { messages: true } });
    expect((found[0] as unknown as Streamed).stream.name).toBe("row:rooms:1");
    expect(found[0]!.messages.map((m) => (m as unknown as Streamed).stream.name)).toEqual(["row:messages:10", "row:messages:11"]);
    const first = await db.query.messages.findFirst({ with: { room: true } });
    expect((first as unknown as Streamed).stream.name).toBe("row:messages:10");
    expect((first!.room as unknown as Streamed).stream.name).toBe("row:rooms:1");
  });

  it("on .returning() from insert and update", async () => {
    const [created] = await db.insert(rooms).values({ name: "new" }).returning();
    expect((created as unknown as Streamed).stream.name).toBe(`row:rooms:${created!.id}`);
    const [updated] = await db.update(rooms).set({ name: "renamed" }).where(eq(rooms.id, 1)).returning();
    expect((updated as unknown as Streamed).stream.name).toBe("row:rooms:1");
  });

  it("with composite keys", async () => {
    const [m] = await db.select().from(memberships);
    expect((m as unknown as Streamed).stream.name).toBe("row:members:ann:1");
  });

  it("invisible to JSON, spreading, Object.keys and templates", async () => {
    const [room] = await db.select().from(rooms).where(eq(rooms.id, 1));
    expect(JSON.stringify(room)).toBe(`{"id":1,"name":"general","isPrivate":false}`);
    expect(Object.keys(room!)).toEqual(["id", "name", "isPrivate"]);
    expect("stream" in { ...room }).toBe(false);
    const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(fixtures, "views")), { autoescape: true });
    expect(env.render("stream-keys.njk", { message: room }).trim()).toBe("id;name;isPrivate;");
  });

  it("absent from partial selects, joins and raw SQL", async () => {
    const [partial] = await db.select({ id: rooms.id, name: rooms.name }).from(rooms);
    expect("stream" in partial!).toBe(false);
    const [joined] = await db.select().from(messages).innerJoin(rooms, eq(messages.roomId, rooms.id));
    expect("stream" in joined!).toBe(false);
    expect("stream" in joined!.rooms).toBe(false);
    const partialQuery = await db.query.rooms.findFirst({ columns: { id: true } });
    expect("stream" in partialQuery!).toBe(false);
    const raw = db.all(sql`select * from rooms`);
    expect("stream" in (raw[0] as object)).toBe(false);
  });

  it("row.stream throws MissingPrimaryKeyError when the key is gone", async () => {
    const [room] = await db.select().from(rooms).where(eq(rooms.id, 1));
    (room as { id: number | null }).id = null;
    expect(() => (room as unknown as Streamed).stream).toThrow(MissingPrimaryKeyError);
  });

  it("stops after close(): rows read later carry no .stream", async () => {
    await turbo.close();
    const [room] = await db.select().from(rooms);
    expect("stream" in room!).toBe(false);
  });
});

describe("the Drizzle internals turbocast hooks into (pinned)", () => {
  it("session.prepareQuery(query, fields, method, arrayMode, mapper) returns all/get/run/values and fields of { path, field }", () => {
    const sqlite = new Database(":memory:");
    sqlite.exec(DDL);
    const db = drizzle(sqlite, { schema });
    const session = (db as unknown as { session: { prepareQuery: Function; transaction: Function; client: unknown } }).session;
    expect(typeof session.prepareQuery).toBe("function");
    expect(typeof session.transaction).toBe("function");
    expect(session.client).toBe(sqlite);
    const calls: unknown[][] = [];
    const original = session.prepareQuery;
    session.prepareQuery = function (this: unknown, ...args: unknown[]) {
      calls.push(args);
      return original.apply(this, args);
    };
    const prepared = db.select().from(rooms).prepare() as unknown as Record<string, unknown>;
    for (const method of ["all", "get", "run", "values"]) expect(typeof prepared[method]).toBe("function");
    const fields = calls[0]![1] as Array<{ path: string[]; field: unknown }>;
    expect(fields.map((f) => f.path)).toEqual([["id"], ["name"], ["isPrivate"]]);
    expect(fields[0]!.field).toBe(rooms.id);
    sqlite.close();
  });

  it("SQLiteRelationalQuery.prototype._prepare sets customResultMapper on its prepared query", () => {
    expect(typeof (SQLiteRelationalQuery.prototype as unknown as { _prepare: unknown })._prepare).toBe("function");
    const sqlite = new Database(":memory:");
    sqlite.exec(DDL);
    const db = drizzle(sqlite, { schema });
    const query = db.query.rooms.findMany() as unknown as { _prepare(): { customResultMapper: unknown }; _toSQL(): { query: { selection: unknown[] } } };
    expect(typeof query._prepare().customResultMapper).toBe("function");
    expect(Array.isArray(query._toSQL().query.selection)).toBe(true);
    sqlite.close();
  });
});
