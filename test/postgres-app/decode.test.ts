import { eq, getTableColumns } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import {
  bigint,
  bigserial,
  boolean,
  date,
  doublePrecision,
  integer,
  interval,
  json,
  jsonb,
  numeric,
  pgEnum,
  pgTable,
  primaryKey,
  real,
  serial,
  smallint,
  text,
  time,
  timestamp,
  uuid,
  varchar,
} from "drizzle-orm/pg-core";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type DecodableColumn, parseRowJson, pgRowDecoder } from "../../src/changes/postgres/decode.js";
import { PgChangeLog } from "../../src/changes/postgres/log.js";
import { syncPgTriggers } from "../../src/changes/postgres/triggers.js";
import { tableInfo } from "../../src/streams/table.js";
import { createTestSchema, type TestSchema } from "./pg-helpers.js";

const mood = pgEnum("mood", ["sad", "ok", "happy"]);

const kinds = pgTable("kinds", {
  id: serial("id").primaryKey(),
  big: bigint("big", { mode: "bigint" }),
  bigNumber: bigint("big_number", { mode: "number" }),
  serialBig: bigserial("serial_big", { mode: "bigint" }),
  small: smallint("small"),
  int: integer("int"),
  price: real("price"),
  ratio: doublePrecision("ratio"),
  amount: numeric("amount", { precision: 12, scale: 2 }),
  bare: numeric("bare"),
  flag: boolean("flag"),
  at: timestamp("at"),
  atZone: timestamp("at_zone", { withTimezone: true }),
  atText: timestamp("at_text", { mode: "string", precision: 6 }),
  atZoneText: timestamp("at_zone_text", { withTimezone: true, mode: "string" }),
  day: date("day"),
  dayDate: date("day_date", { mode: "date" }),
  clock: time("clock"),
  span: interval("span"),
  doc: jsonb("doc").$type<Record<string, unknown>>(),
  plainDoc: json("plain_doc").$type<unknown>(),
  uid: uuid("uid"),
  mood: mood("mood"),
  tags: text("tags").array(),
  counts: integer("counts").array(),
  bigs: bigint("bigs", { mode: "bigint" }).array(),
  stamps: timestamp("stamps").array(),
  grid: integer("grid").array().array(),
  name: varchar("name", { length: 40 }),
  note: text("note"),
});

/** Only types that plain JSON.parse reads exactly (decode.ts PLAIN_JSON_TYPES): decoded without parseRowJson. */
const plainKinds = pgTable("plain_kinds", {
  id: serial("id").primaryKey(),
  small: smallint("small"),
  int: integer("int"),
  price: real("price"),
  ratio: doublePrecision("ratio"),
  flag: boolean("flag"),
  at: timestamp("at"),
  atZone: timestamp("at_zone", { withTimezone: true }),
  atZoneText: timestamp("at_zone_text", { withTimezone: true, mode: "string", precision: 6 }),
  day: date("day"),
  clock: time("clock"),
  span: interval("span"),
  doc: jsonb("doc").$type<unknown>(),
  plainDoc: json("plain_doc").$type<unknown>(),
  uid: uuid("uid"),
  counts: integer("counts").array(),
  stamps: timestamp("stamps", { withTimezone: true }).array(),
  name: varchar("name", { length: 40 }),
});

const DDL = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE kinds (
  id serial PRIMARY KEY, big bigint, big_number bigint, serial_big bigserial, small smallint, int integer,
  price real, ratio double precision, amount numeric(12, 2), bare numeric, flag boolean,
  at timestamp, at_zone timestamptz, at_text timestamp(6), at_zone_text timestamptz, day date, day_date date,
  clock time, span interval, doc jsonb, plain_doc json, uid uuid, mood mood, tags text[], counts integer[],
  bigs bigint[], stamps timestamp[], grid integer[][], name varchar(40), note text
);
CREATE TABLE plain_kinds (
  id serial PRIMARY KEY, small smallint, int integer, price real, ratio double precision, flag boolean,
  at timestamp, at_zone timestamptz, at_zone_text timestamptz(6), day date, clock time, span interval, doc jsonb,
  plain_doc json, uid uuid, counts integer[], stamps timestamptz[], name varchar(40)
);`;

let schema: TestSchema;
let pool: pg.Pool;
let db: ReturnType<typeof drizzle>;
let log: PgChangeLog;
let decode: ReturnType<typeof pgRowDecoder>;
let decodePlain: ReturnType<typeof pgRowDecoder>;

beforeAll(async () => {
  schema = await createTestSchema("tcdecode");
  pool = schema.pool();
  // the app's own sessions in UTC (see decode.ts); writers below use other zones
  await pool.query(DDL);
  const client = await pool.connect();
  try {
    const sync = await syncPgTriggers(client, [
      { name: "kinds", keys: ["id"], columns: [] },
      { name: "plain_kinds", keys: ["id"], columns: [] },
    ]);
    decode = pgRowDecoder(
      getTableColumns(kinds) as unknown as Record<string, DecodableColumn>,
      sync.types.get("kinds")!,
    );
    decodePlain = pgRowDecoder(
      getTableColumns(plainKinds) as unknown as Record<string, DecodableColumn>,
      sync.types.get("plain_kinds")!,
    );
  } finally {
    client.release();
  }
  db = drizzle(pool);
  log = new PgChangeLog(pool, schema.name);
});

afterAll(async () => {
  await schema?.drop();
});

async function claimAll() {
  const out = [];
  let done = 0;
  for (;;) {
    const batch = await log.completeAndClaim("t", done, Date.now(), 30_000, 100);
    if (batch.length === 0) return out;
    out.push(...batch);
    done = batch[batch.length - 1]!.seq;
  }
}

describe("decoding captured PostgreSQL rows through the Drizzle columns", () => {
  it("gives what db.select() reads, for every column type", async () => {
    await db.insert(kinds).values({
      big: 9_223_372_036_854_775_807n,
      bigNumber: 42,
      small: -3,
      int: 2_000_000_000,
      price: 1.5,
      ratio: 0.1 + 0.2,
      amount: "12.50",
      bare: "123456789012345678901234567890.000000001",
      flag: true,
      at: new Date("2024-05-06T07:08:09.123Z"),
      atZone: new Date("2024-05-06T07:08:09.456Z"),
      atText: "2024-05-06 07:08:09.123456",
      atZoneText: "2024-05-06 07:08:09.5+00",
      day: "2024-02-29",
      dayDate: new Date("2024-02-29T00:00:00Z"),
      clock: "23:59:58.5",
      span: "1 day 02:03:04",
      doc: { big: 1234567890123456, n: 1.5, nested: [1, "two", { three: null }], s: 'quo"te' },
      plainDoc: [1, 2.5, "x"],
      uid: "0b5e6f4c-3c56-4c0b-9f0e-2d7a1c2b3a40",
      mood: "happy",
      tags: ["a", 'b "quoted"', "c,d", "back\\slash", "NULL", ""],
      counts: [1, 2, 3],
      bigs: [1n, 9_223_372_036_854_775_806n],
      stamps: [new Date("2024-01-01T10:00:00Z"), new Date("2024-01-02T11:30:00.25Z")],
      grid: [
        [1, 2],
        [3, 4],
      ],
      name: "emoji 🎉 and ' quotes",
      note: null,
    });
    await db.insert(kinds).values({});
    // a writer in another time zone, through psql-like raw SQL
    const other = await pool.connect();
    try {
      await other.query("SET TimeZone = 'Asia/Kolkata'");
      await other.query(
        `INSERT INTO kinds (at, at_zone, at_zone_text, stamps, big) VALUES ('2024-05-06 07:08:09', '2024-05-06 07:08:09.123456+05:30', '0099-12-31 23:00:00-02', '{"2024-01-01 10:00:00"}', -9223372036854775808)`,
      );
      await other.query("RESET TimeZone");
    } finally {
      other.release();
    }
    const records = await claimAll();
    expect(records).toHaveLength(3);
    const rows = await db.select().from(kinds).orderBy(kinds.id);
    for (const [i, record] of records.entries()) expect(decode(record.row)).toEqual(rows[i]);
    const first = decode(records[0]!.row);
    expect(first.big).toBe(9_223_372_036_854_775_807n);
    expect(first.amount).toBe("12.50");
    expect(first.ratio).toBe(0.1 + 0.2);
    expect((first.atZone as Date).toISOString()).toBe("2024-05-06T07:08:09.456Z");
    expect(decode(records[2]!.row).atZoneText).toBe("0100-01-01 01:00:00+00");
  });

  it("gives what db.select() reads for a table with no int8 or numeric column (read with plain JSON.parse)", async () => {
    await db.insert(plainKinds).values({
      small: -3,
      int: 2_000_000_000,
      price: 1.1,
      ratio: 0.1 + 0.2,
      flag: false,
      at: new Date("2024-05-06T07:08:09.123Z"),
      atZone: new Date("2024-05-06T07:08:09.456Z"),
      atZoneText: "2024-05-06 07:08:09.123456+00",
      day: "2024-02-29",
      clock: "23:59:58.5",
      span: "1 day 02:03:04",
      doc: { big: 1234567890123456, n: 1.5, nested: [1, "two", { three: null }] },
      plainDoc: { a: [1, 2.5] },
      uid: "0b5e6f4c-3c56-4c0b-9f0e-2d7a1c2b3a40",
      counts: [1, -2, 3],
      stamps: [new Date("2024-01-01T10:00:00Z"), new Date("2024-01-02T11:30:00.25Z")],
      name: "emoji 🎉 and ' quotes",
    });
    await db.insert(plainKinds).values({});
    const other = await pool.connect();
    try {
      await other.query("SET TimeZone = 'America/St_Johns'");
      await other.query(
        `INSERT INTO plain_kinds (at_zone, at_zone_text, stamps, price, ratio, doc, plain_doc) VALUES ('2024-05-06 07:08:09.5-02:30', '0099-12-31 23:00:00-02', '{"2024-01-01 10:00:00+00"}', 'NaN', '-Infinity', '{"big": 12345678901234567890, "n": 1.50}', '{"a": [1.0, 2.50], "big": 12345678901234567890}')`,
      );
      await other.query("RESET TimeZone");
    } finally {
      other.release();
    }
    const records = (await claimAll()).filter((r) => r.table === "plain_kinds");
    expect(records).toHaveLength(3);
    const rows = await db.select().from(plainKinds).orderBy(plainKinds.id);
    for (const [i, record] of records.entries()) expect(decodePlain(record.row)).toEqual(rows[i]);
    expect(decodePlain(records[0]!.row).atZoneText).toBe("2024-05-06 07:08:09.123456+00");
    expect(decodePlain(records[2]!.row).atZoneText).toBe("0100-01-01 01:00:00+00");
  });

  it("decodes the old row of an update and the row of a delete alike", async () => {
    const [row] = await db
      .insert(kinds)
      .values({ note: "before", counts: [7] })
      .returning();
    await claimAll();
    await db.update(kinds).set({ note: "after" }).where(eq(kinds.id, row!.id));
    await db.delete(kinds).where(eq(kinds.id, row!.id));
    const [update, remove] = await claimAll();
    expect(decode(update!.previous!)).toEqual(row);
    expect(decode(update!.row)).toEqual({ ...row, note: "after" });
    expect(decode(remove!.row)).toEqual({ ...row, note: "after" });
  });

  it("reads numbers with their exact digits, and strings untouched", () => {
    const marked = parseRowJson('{"a": 12345678901234567890, "b": "12", "c": [1.50, -2e3], "d": "x\\"1"}') as Record<
      string,
      unknown
    >;
    expect(marked).toEqual({ a: "\u000012345678901234567890", b: "12", c: ["\u00001.50", "\u0000-2e3"], d: 'x"1' });
  });
});

describe("a composite primary key declared in pgTable's extra config", () => {
  it("keys rows by the columns' property names (pg-core hands the callback copies of the columns)", () => {
    const pairs = pgTable(
      "pairs",
      { roomId: integer("room_id").notNull(), userId: integer("user_id").notNull() },
      (t) => [primaryKey({ columns: [t.roomId, t.userId] })],
    );
    const info = tableInfo(pairs);
    expect(info.keys.map((k) => k.key)).toEqual(["roomId", "userId"]);
    expect(info.keys[0]!.column).toBe(getTableColumns(pairs).roomId);
  });
});
