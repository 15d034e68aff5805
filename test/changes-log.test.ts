import path from "node:path";
import Database from "better-sqlite3";
import { getTableConfig, integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { rowDecoder } from "../src/changes/decode.js";
import { ChangeLog } from "../src/changes/log.js";
import { type CaptureTable, syncTriggers, triggerName, triggerStatements } from "../src/changes/triggers.js";
import { CaptureInstallError } from "../src/errors.js";
import { tableInfo } from "../src/streams/table.js";
import { tempDir } from "./helpers.js";

let tmp: { dir: string; cleanup: () => void };
let connections: Database.Database[];

function open(): Database.Database {
  const db = new Database(path.join(tmp.dir, "log.db"));
  db.pragma("journal_mode = WAL");
  connections.push(db);
  return db;
}

beforeEach(() => {
  tmp = tempDir("turbocast-log-");
  connections = [];
});

afterEach(() => {
  for (const db of connections) db.close();
  tmp.cleanup();
});

const items: CaptureTable = { name: "items", keys: ["id"], columns: ["id", "body"] };

describe("triggers", () => {
  it("are stored exactly as generated, so a second sync changes nothing", () => {
    const db = open();
    db.exec(`CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT)`);
    const first = syncTriggers(db, [items]);
    expect(first.created.sort()).toEqual(["_turbocast_items_del", "_turbocast_items_ins", "_turbocast_items_upd"]);
    const stored = db.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger'").all() as Array<{ name: string; sql: string }>;
    const expected = triggerStatements("items", ["id", "body"], ["id"]);
    for (const { name, sql } of stored) expect(sql).toBe(expected.get(name));
    const second = syncTriggers(db, [items]);
    expect(second).toMatchObject({ created: [], dropped: [], schemaVersion: first.schemaVersion });
  });

  it("quote every name: a table and columns with quotes and spaces are captured", () => {
    const db = open();
    db.exec(`CREATE TABLE "we""ird t'able" ("k ey" TEXT PRIMARY KEY, "c""ol" TEXT, "s'q" INTEGER)`);
    const table: CaptureTable = { name: `we"ird t'able`, keys: ["k ey"], columns: ["k ey", `c"ol`, "s'q"] };
    syncTriggers(db, [table]);
    expect(syncTriggers(db, [table]).created).toEqual([]);
    db.prepare(`INSERT INTO "we""ird t'able" VALUES (?, ?, ?)`).run("a'b\"c", "v", 3);
    const row = db.prepare("SELECT tbl, op, pk, row_json FROM _turbocast_changes").get();
    expect(row).toEqual({ tbl: `we"ird t'able`, op: "insert", pk: `["a'b\\"c"]`, row_json: `{"k ey":"a'b\\"c","c\\"ol":"v","s'q":3}` });
    expect(triggerName(`we"ird t'able`, "ins")).toBe(`_turbocast_we"ird t'able_ins`);
  });

  it("count a change of case under a NOCASE column as a change, and equal values as none", () => {
    const db = open();
    db.exec(`CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT COLLATE NOCASE)`);
    syncTriggers(db, [items]);
    db.exec(`INSERT INTO items VALUES (1, 'abc'); UPDATE items SET body = 'ABC'; UPDATE items SET body = 'ABC'; UPDATE items SET id = 1`);
    expect(db.prepare("SELECT op FROM _turbocast_changes ORDER BY seq").pluck().all()).toEqual(["insert", "update"]);
  });

  it("sync is one transaction: a view among the bound tables leaves no trigger and no log behind", () => {
    const db = open();
    db.exec(`CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT); CREATE VIEW shown AS SELECT * FROM items`);
    const shown: CaptureTable = { name: "shown", keys: ["id"], columns: ["id", "body"] };
    expect(() => syncTriggers(db, [items, shown])).toThrow(CaptureInstallError);
    expect(db.prepare("SELECT name FROM sqlite_schema WHERE name LIKE '%turbocast%'").all()).toEqual([]);
  });

  it("refuse a table whose key columns are missing from the database", () => {
    const db = open();
    db.exec(`CREATE TABLE items (uid INTEGER PRIMARY KEY, body TEXT)`);
    const error = (() => {
      try {
        syncTriggers(db, [items]);
      } catch (e) {
        return e as CaptureInstallError;
      }
    })();
    expect(error?.code).toBe("TURBOCAST_CAPTURE_INSTALL_FAILED");
    expect(error?.message).toMatch(/"items".*id/);
  });
});

describe("the change log", () => {
  function seed(db: Database.Database, n: number): void {
    db.exec(`CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, body TEXT)`);
    syncTriggers(db, [items]);
    const insert = db.prepare("INSERT INTO items (body) VALUES (?)");
    for (let i = 0; i < n; i++) insert.run(`b${i}`);
  }

  it("lets one feed claim at a time, so feeds take turns in seq order", () => {
    const a = open();
    const b = open();
    seed(a, 5);
    const logA = new ChangeLog(a);
    const logB = new ChangeLog(b);
    const now = 1_000_000;
    const lease = 30_000;
    const first = logA.completeAndClaim("A", 0, now, now - lease, 2);
    expect(first.map((c) => c.seq)).toEqual([1, 2]);
    // A holds live claims: B may not claim, not even the later changes
    expect(logB.poll("B", now - lease).claimable).toBe(false);
    expect(logB.completeAndClaim("B", 0, now, now - lease, 10)).toEqual([]);
    // A completes its batch and claims nothing more: B's turn
    expect(logA.completeAndClaim("A", 2, now, now - lease, 0)).toEqual([]);
    expect(logB.poll("B", now - lease).claimable).toBe(true);
    const rest = logB.completeAndClaim("B", 0, now, now - lease, 10);
    expect(rest.map((c) => [c.seq, c.table, c.op, c.pk, JSON.parse(c.row).body])).toEqual([
      [3, "items", "insert", "[3]", "b2"],
      [4, "items", "insert", "[4]", "b3"],
      [5, "items", "insert", "[5]", "b4"],
    ]);
  });

  it("hands an expired claim to another feed, and a released one at once", () => {
    const a = open();
    const b = open();
    seed(a, 3);
    const logA = new ChangeLog(a);
    const logB = new ChangeLog(b);
    const lease = 30_000;
    logA.completeAndClaim("A", 0, 1000, 1000 - lease, 10);
    expect(logB.completeAndClaim("B", 0, 1000 + lease - 1, 1000 - 1, 10)).toEqual([]);
    // A renews: still alive
    logA.renew("A", 20_000);
    expect(logB.completeAndClaim("B", 0, 1000 + lease, 1000, 10)).toEqual([]);
    // A goes silent past its lease: B takes every change over
    const later = 20_000 + lease;
    expect(logB.completeAndClaim("B", 0, later, later - lease, 10).map((c) => c.seq)).toEqual([1, 2, 3]);
    expect(logB.release("B")).toBe(3);
    expect(logA.completeAndClaim("A", 0, later, later - lease, 1).map((c) => c.seq)).toEqual([1]);
  });

  it("prunes done changes by count and age, never pending ones nor the newest", () => {
    const db = open();
    seed(db, 10);
    const log = new ChangeLog(db);
    const now = 5_000_000;
    log.completeAndClaim("A", 0, now, now - 1, 6);
    log.complete("A", 6, now);
    const seqs = () => db.prepare("SELECT seq FROM _turbocast_changes ORDER BY seq").pluck().all();
    // newest 7 seqs kept by count (4..10); done ones older than that go
    expect(log.prune(now, { count: 7, ageMs: 3_600_000 })).toBe(3);
    expect(seqs()).toEqual([4, 5, 6, 7, 8, 9, 10]);
    // by age: every done change, pending ones stay
    expect(log.prune(now + 10, { count: 10_000, ageMs: 5 })).toBe(3);
    expect(seqs()).toEqual([7, 8, 9, 10]);
    // the newest row stays even when done and old, so seq is never handed out twice
    log.completeAndClaim("A", 0, now, now - 1, 10);
    log.complete("A", 10, now);
    log.prune(now + 10, { count: 0, ageMs: 0 });
    expect(seqs()).toEqual([10]);
    db.prepare("INSERT INTO items (body) VALUES ('next')").run();
    expect(seqs()).toEqual([10, 11]);
  });
});

describe("row decoding", () => {
  const table = sqliteTable("decoded", {
    id: integer("id").primaryKey(),
    on: integer("on_flag", { mode: "boolean" }),
    label: text("label"),
  });

  it("maps through the Drizzle columns, by property name; blobs from their hex form; absent columns undefined", () => {
    expect(getTableConfig(table).name).toBe("decoded");
    const decode = rowDecoder(tableInfo(table));
    expect(decode(`{"id":1,"on_flag":1,"label":["00FF"],"unknown":5}`)).toEqual({ id: 1, on: true, label: Buffer.from([0, 255]) });
    expect(decode(`{"id":2,"on_flag":null}`)).toEqual({ id: 2, on: null, label: undefined });
  });
});
