import Database from "better-sqlite3";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { SQLiteRelationalQuery } from "drizzle-orm/sqlite-core/query-builders/query";
import nunjucks from "nunjucks";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CACHED_SQL_MAX_LENGTH,
  cachingPrepare,
  instrumentDatabase,
  relationalPrototypeOf,
} from "../src/db/instrument.js";
import { MissingPrimaryKeyError, type Turbo, createTurbo, dropCaptureTriggers } from "../src/index.js";
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
    const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(fixtures, "views")), {
      autoescape: true,
    });
    turbo = await createTurbo({
      db,
      views: env,
      streams: [RoomStream, MessageStream, MembershipStream],
      logger: silentLogger,
    });
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
    expect(found[0]!.messages.map((m) => (m as unknown as Streamed).stream.name)).toEqual([
      "row:messages:10",
      "row:messages:11",
    ]);
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

  it("through one getter per class, not one per row", async () => {
    const [first, second] = await db.select().from(rooms);
    const getter = (row: object) => Object.getOwnPropertyDescriptor(row, "stream")!.get;
    // a getter made per row costs each row read an old-generation accessor pair (see attachStream)
    expect(getter(first!)).toBe(getter(second!));
    expect((second as unknown as Streamed).stream.name).toBe("row:rooms:2");
    const [message] = await db.select().from(messages);
    expect(getter(message!)).not.toBe(getter(first!));
    expect((message as unknown as Streamed).stream).toBeInstanceOf(MessageStream);
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
    const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(fixtures, "views")), {
      autoescape: true,
    });
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
    const session = (
      db as unknown as {
        session: { prepareQuery: (...args: unknown[]) => unknown; transaction: unknown; client: unknown };
      }
    ).session;
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
    const query = db.query.rooms.findMany() as unknown as {
      _prepare(): { customResultMapper: unknown };
      _toSQL(): { query: { selection: unknown[] } };
    };
    expect(typeof query._prepare().customResultMapper).toBe("function");
    expect(Array.isArray(query._toSQL().query.selection)).toBe(true);
    sqlite.close();
  });
});

describe("relational queries of an app with its own copy of drizzle-orm", () => {
  it("are hooked through the prototype its db's queries have, not only the one turbocast imports", () => {
    const sqlite = new Database(":memory:");
    sqlite.exec(DDL);
    const real = drizzle(sqlite, { schema });
    // pinned: for the same copy, the db leads to the class turbocast imports
    expect(relationalPrototypeOf(real)).toBe(SQLiteRelationalQuery.prototype);
    expect(relationalPrototypeOf(drizzle(sqlite))).toBeUndefined(); // no schema: no relational queries

    // another copy: a class turbocast never imported, reached only through db.query
    const original = function (this: unknown) {
      return {
        customResultMapper: (rows: unknown[]) => rows,
        all: () => [],
        get: () => undefined,
        run: () => undefined,
        values: () => [],
      };
    };
    class OtherCopyBase {}
    (OtherCopyBase.prototype as unknown as { _prepare: unknown })._prepare = original;
    class OtherCopyQuery extends OtherCopyBase {}
    const fake = {
      session: (real as unknown as { session: unknown }).session,
      query: { notes: { findMany: () => new OtherCopyQuery() } },
    };
    expect(relationalPrototypeOf(fake)).toBe(OtherCopyBase.prototype);
    const instrumentation = instrumentDatabase(fake as never, { classFor: () => undefined, onWrite: () => {} });
    try {
      expect((OtherCopyBase.prototype as unknown as { _prepare: unknown })._prepare).not.toBe(original);
    } finally {
      instrumentation.restore();
      sqlite.close();
    }
  });
});

describe("write statements are prepared once per database (the capture trigger is compiled once)", () => {
  let turbo: Turbo;
  let sqlite: Database.Database;
  let db: ReturnType<typeof drizzle<typeof schema>>;
  let cleanup: () => void;
  let prepared: string[];

  beforeEach(async () => {
    const tmp = tempDir();
    cleanup = tmp.cleanup;
    sqlite = new Database(path.join(tmp.dir, "app.db"));
    sqlite.pragma("journal_mode = WAL");
    sqlite.exec(DDL);
    sqlite.exec(`INSERT INTO rooms (id, name) VALUES (1, 'general')`);
    prepared = [];
    const prepare = sqlite.prepare.bind(sqlite);
    sqlite.prepare = ((source: string) => {
      prepared.push(source);
      return prepare(source);
    }) as typeof sqlite.prepare;
    db = drizzle(sqlite, { schema });
    const env = new nunjucks.Environment(null, { autoescape: true });
    turbo = await createTurbo({
      db,
      views: env,
      streams: [RoomStream, MessageStream, MembershipStream],
      logger: silentLogger,
      capture: { pollIntervalMs: 10 },
    });
  });

  afterEach(async () => {
    await turbo.close();
    sqlite.close();
    cleanup();
  });

  const insertMessage = (body: string) =>
    db
      .insert(messages)
      .values({ roomId: 1, body, createdAt: new Date(0) })
      .run();
  const logged = () =>
    sqlite.prepare(`SELECT count(*) FROM _turbocast_changes WHERE tbl = 'messages'`).pluck().get() as number;

  it("inserts, updates and deletes reuse one statement per SQL text; reads and returning() are prepared each time", async () => {
    prepared.length = 0;
    for (let i = 0; i < 5; i++) insertMessage(`m${i}`);
    for (let i = 0; i < 3; i++)
      db.update(messages)
        .set({ body: `edited ${i}` })
        .where(eq(messages.id, 1))
        .run();
    for (let i = 0; i < 3; i++) db.select().from(messages).all();
    const inserted = [0, 1].map((i) =>
      db
        .insert(messages)
        .values({ roomId: 1, body: `r${i}`, createdAt: new Date(0) })
        .returning()
        .get(),
    );
    const count = (fragment: string) => prepared.filter((s) => s.startsWith(fragment)).length;
    expect(count('insert into "messages"')).toBe(1 + 2); // five plain inserts share one statement; each returning() prepares
    expect(count('update "messages"')).toBe(1);
    expect(count('select "id"')).toBe(3);
    // the statement that returned rows in array mode for returning() left nothing behind in a plain select
    expect(inserted.map((m) => m.body)).toEqual(["r0", "r1"]);
    const rows = db.select().from(messages).all();
    expect(rows).toHaveLength(7);
    expect(rows[0]).toMatchObject({ id: 1, body: "edited 2" });
    await turbo.feed.drain();
    expect(logged()).toBe(5 + 3 + 2);
  });

  it("a cached statement follows the capture triggers when they are dropped and recreated", async () => {
    insertMessage("before");
    expect(logged()).toBe(1);
    dropCaptureTriggers(sqlite, "messages");
    insertMessage("while the triggers are gone");
    expect(logged()).toBe(1);
    // the feed's poll sees the schema change and puts the triggers back
    const deadline = Date.now() + 5000;
    while (
      sqlite.prepare(`SELECT count(*) FROM sqlite_schema WHERE name = '_turbocast_messages_ins'`).pluck().get() === 0
    ) {
      if (Date.now() > deadline) throw new Error("triggers not recreated");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    insertMessage("after");
    expect(logged()).toBe(2);
    expect(prepared.filter((s) => s.startsWith('insert into "messages"'))).toHaveLength(1);
  });
});

describe("cachingPrepare", () => {
  const fakeClient = (reader: (sql: string) => boolean) => {
    const made: string[] = [];
    return {
      made,
      prepare(sql: string) {
        made.push(sql);
        return { reader: reader(sql) };
      },
    };
  };

  it("keeps the most recently used write statements, up to its size", () => {
    const client = fakeClient(() => false);
    const prepare = cachingPrepare(client, 2);
    for (const sql of ["insert a", "insert b", "insert a", "update c", "insert a", "insert b"]) prepare(sql);
    // a was used again before c came, so b went
    expect(client.made).toEqual(["insert a", "insert b", "update c", "insert b"]);
  });

  it("keeps neither statements that return rows, nor DDL, nor long texts", () => {
    const client = fakeClient((sql) => /select|returning/i.test(sql));
    const prepare = cachingPrepare(client);
    const long = `insert into t values ${Array.from({ length: 1000 }, (_, i) => `(${i})`).join(", ")}`;
    expect(long.length).toBeGreaterThan(CACHED_SQL_MAX_LENGTH);
    const texts = ["select 1", "insert into t values (1) returning *", "create table u (x)", long, "  DELETE from t"];
    for (const sql of [...texts, ...texts]) prepare(sql);
    expect(client.made).toEqual([...texts, ...texts.slice(0, 4)]);
  });
});
