import { spawn } from "node:child_process";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { getTableConfig, integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { rowDecoder } from "../src/changes/decode.js";
import { ChangeLog, MARK_DONE_MS } from "../src/changes/log.js";
import { newOwner, ownerMayBeAlive } from "../src/changes/owner.js";
import {
  type CaptureTable,
  encodesBlobs,
  syncTriggers,
  triggerName,
  triggerStatements,
} from "../src/changes/triggers.js";
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

const items: CaptureTable = { name: "items", keys: ["id"], columns: ["id", "body"], blobColumns: [] };

describe("triggers", () => {
  it("are stored exactly as generated, so a second sync changes nothing", () => {
    const db = open();
    db.exec(`CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT)`);
    const first = syncTriggers(db, [items]);
    expect(first.created.sort()).toEqual(["_turbocast_items_del", "_turbocast_items_ins", "_turbocast_items_upd"]);
    const stored = db.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger'").all() as Array<{
      name: string;
      sql: string;
    }>;
    const expected = triggerStatements("items", [
      { name: "id", blobSafe: false },
      { name: "body", blobSafe: false },
    ]);
    for (const { name, sql } of stored) expect(sql).toBe(expected.get(name));
    const second = syncTriggers(db, [items]);
    expect(second).toMatchObject({ created: [], dropped: [], schemaVersion: first.schemaVersion });
  });

  it("while running, rewrite only what this process's view changed: no tug of war between two app versions", () => {
    const db = open();
    db.exec(
      `CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT); CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)`,
    );
    const notes: CaptureTable = { name: "notes", keys: ["id"], columns: ["id", "body"], blobColumns: [] };
    const triggers = () =>
      db.prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name").pluck().all();
    // A (new version) binds items and notes; B (old version) only items, and starts later: it drops notes' triggers
    const a = syncTriggers(db, [items, notes]);
    const b = syncTriggers(db, [items]);
    expect(b.dropped.sort()).toEqual(["_turbocast_notes_del", "_turbocast_notes_ins", "_turbocast_notes_upd"]);
    // A sees the schema change and puts back what is missing; B, running, leaves them alone
    const a2 = syncTriggers(db, [items, notes], { previous: a.wanted });
    expect(a2.created.sort()).toEqual(["_turbocast_notes_del", "_turbocast_notes_ins", "_turbocast_notes_upd"]);
    expect(syncTriggers(db, [items], { previous: b.wanted })).toMatchObject({ created: [], dropped: [] });
    expect(triggers()).toHaveLength(6);
    // a trigger written differently by another version is left alone while the columns stay the same...
    db.exec(
      `DROP TRIGGER _turbocast_items_ins; CREATE TRIGGER _turbocast_items_ins AFTER INSERT ON items BEGIN SELECT 1; END`,
    );
    expect(syncTriggers(db, [items], { previous: b.wanted }).created).toEqual([]);
    // ...and rewritten when a migration changes them
    db.exec(`ALTER TABLE items ADD COLUMN extra TEXT`);
    expect(syncTriggers(db, [items], { previous: b.wanted }).created.sort()).toEqual([
      "_turbocast_items_del",
      "_turbocast_items_ins",
      "_turbocast_items_upd",
    ]);
  });

  it("quote every name: a table and columns with quotes and spaces are captured", () => {
    const db = open();
    db.exec(`CREATE TABLE "we""ird t'able" ("k ey" TEXT PRIMARY KEY, "c""ol" TEXT, "s'q" INTEGER)`);
    const table: CaptureTable = {
      name: `we"ird t'able`,
      keys: ["k ey"],
      columns: ["k ey", `c"ol`, "s'q"],
      blobColumns: [],
    };
    syncTriggers(db, [table]);
    expect(syncTriggers(db, [table]).created).toEqual([]);
    db.prepare(`INSERT INTO "we""ird t'able" VALUES (?, ?, ?)`).run("a'b\"c", "v", 3);
    const row = db.prepare("SELECT tbl, op, row_json FROM _turbocast_changes").get();
    expect(row).toEqual({ tbl: `we"ird t'able`, op: "insert", row_json: `{"k ey":"a'b\\"c","c\\"ol":"v","s'q":3}` });
    expect(triggerName(`we"ird t'able`, "ins")).toBe(`_turbocast_we"ird t'able_ins`);
  });

  it("copy blob columns blob-safe: BLOB affinity, STRICT BLOB/ANY, Drizzle blob types; the rest as is", () => {
    const db = open();
    db.exec(`CREATE TABLE loose (id INTEGER PRIMARY KEY, n INTEGER, t VARCHAR(9), b BLOB, u, r REAL, x NUMERIC, d TEXT);
      CREATE TABLE tight (id INTEGER PRIMARY KEY, n INT, t TEXT, b BLOB, a ANY) STRICT;
      CREATE TABLE keyed (id INTEGER PRIMARY KEY, t BLOB) WITHOUT ROWID;`);
    const table = (name: string, columns: string[], blobColumns: string[] = []): CaptureTable => ({
      name,
      keys: ["id"],
      columns,
      blobColumns,
    });
    syncTriggers(db, [
      // `d` is declared TEXT, but its Drizzle type writes Buffers
      table("loose", ["id", "n", "t", "b", "u", "r", "x", "d"], ["d"]),
      table("tight", ["id", "n", "t", "b", "a"]),
      table("keyed", ["id", "t"]),
    ]);
    const safe = (name: string): string[] => {
      const sql = db
        .prepare("SELECT sql FROM sqlite_schema WHERE name = ?")
        .pluck()
        .get(`_turbocast_${name}_ins`) as string;
      return [...sql.matchAll(/CASE typeof\(NEW\."(\w+)"\)/g)].map((m) => m[1]!);
    };
    expect(safe("loose")).toEqual(["b", "u", "d"]);
    expect(safe("tight")).toEqual(["b", "a"]);
    // no rowid alias in a WITHOUT ROWID table: its INTEGER key is an ordinary column
    expect(safe("keyed")).toEqual(["t"]);
    db.exec(`INSERT INTO loose (id, b, u, d) VALUES (1, x'03', x'04', x'05')`);
    expect(db.prepare("SELECT row_json FROM _turbocast_changes").pluck().get()).toBe(
      `{"id":1,"n":null,"t":null,"b":["03"],"u":["04"],"r":null,"x":null,"d":["05"]}`,
    );
    // the documented price: a blob forced into a column declared TEXT fails that write, loudly
    // ("JSON cannot hold BLOB values" before SQLite 3.45, "malformed JSON" since JSONB)
    expect(() => db.exec(`INSERT INTO loose (id, t) VALUES (2, x'06')`)).toThrow(
      /JSON cannot hold BLOB values|malformed JSON/,
    );
    expect(encodesBlobs({ type: "bytea", rowidAlias: false, drizzleBlob: false }, false)).toBe(false);
    expect(encodesBlobs({ type: "", rowidAlias: false, drizzleBlob: false }, false)).toBe(true);
  });

  it("count a change of case under a NOCASE column as a change, and equal values as none", () => {
    const db = open();
    db.exec(`CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT COLLATE NOCASE)`);
    syncTriggers(db, [items]);
    db.exec(
      `INSERT INTO items VALUES (1, 'abc'); UPDATE items SET body = 'ABC'; UPDATE items SET body = 'ABC'; UPDATE items SET id = 1`,
    );
    expect(db.prepare("SELECT op FROM _turbocast_changes ORDER BY seq").pluck().all()).toEqual(["insert", "update"]);
  });

  it("sync is one transaction: a view among the bound tables leaves no trigger and no log behind", () => {
    const db = open();
    db.exec(`CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT); CREATE VIEW shown AS SELECT * FROM items`);
    const shown: CaptureTable = { name: "shown", keys: ["id"], columns: ["id", "body"], blobColumns: [] };
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
  const cursor = (db: Database.Database) =>
    db.prepare("SELECT done_seq, owner, claimed_seq, lease_until FROM _turbocast_cursor").get();

  it("is append-only: a change is one row with its table, operation, row and time", () => {
    const db = open();
    seed(db, 1);
    db.exec("UPDATE items SET body = 'x'; DELETE FROM items");
    const rows = db.prepare("SELECT seq, tbl, op, row_json, at FROM _turbocast_changes").all() as Array<{ at: number }>;
    expect(rows.map((r) => ({ ...r, at: typeof r.at }))).toEqual([
      { seq: 1, tbl: "items", op: "insert", row_json: `{"id":1,"body":"b0"}`, at: "number" },
      { seq: 2, tbl: "items", op: "update", row_json: `{"id":1,"body":"x"}`, at: "number" },
      { seq: 3, tbl: "items", op: "delete", row_json: `{"id":1,"body":"x"}`, at: "number" },
    ]);
    expect(Math.abs(rows[0]!.at - Date.now() / 1000)).toBeLessThan(5);
  });

  it("lets one feed hold the cursor at a time, so feeds take turns in seq order", () => {
    const a = open();
    const b = open();
    seed(a, 5);
    const logA = new ChangeLog(a);
    const logB = new ChangeLog(b);
    const now = 1_000_000;
    const lease = 30_000;
    const first = logA.completeAndClaim("A", 0, now, lease, 2);
    expect(first.map((c) => [c.seq, c.table, c.op, JSON.parse(c.row).body])).toEqual([
      [1, "items", "insert", "b0"],
      [2, "items", "insert", "b1"],
    ]);
    expect(cursor(a)).toEqual({ done_seq: 0, owner: "A", claimed_seq: 2, lease_until: now + lease });
    // A holds the cursor: B may not claim, not even the later changes
    expect(logB.poll("B", now).claimable).toBe(false);
    expect(logB.completeAndClaim("B", 0, now, lease, 10)).toEqual([]);
    // A completes its batch and takes the next one in the same transaction
    expect(logA.completeAndClaim("A", 2, now, lease, 2).map((c) => c.seq)).toEqual([3, 4]);
    expect(logA.complete("A", 4)).toBe(true);
    expect(cursor(a)).toEqual({ done_seq: 4, owner: null, claimed_seq: null, lease_until: null });
    // B's turn
    expect(logB.poll("B", now).claimable).toBe(true);
    expect(logB.completeAndClaim("B", 0, now, lease, 10).map((c) => c.seq)).toEqual([5]);
    expect(logB.complete("B", 5)).toBe(true);
    expect(logA.poll("A", now).claimable).toBe(false);
  });

  it("hands the range of a feed whose lease ran out to another feed, from the last completed change", () => {
    const a = open();
    const b = open();
    seed(a, 3);
    const logA = new ChangeLog(a);
    const logB = new ChangeLog(b);
    const lease = 30_000;
    logA.completeAndClaim("A", 0, 1000, lease, 10);
    expect(logB.completeAndClaim("B", 0, 1000 + lease - 1, lease, 10)).toEqual([]);
    // A renews: still alive
    logA.renew("A", 20_000 + lease);
    expect(logB.completeAndClaim("B", 0, 1000 + lease, lease, 10)).toEqual([]);
    // A dispatched 1 (not recorded), then went silent past its lease: B takes 1..3 over
    const later = 20_000 + lease;
    expect(logB.poll("B", later).claimable).toBe(true);
    expect(logB.completeAndClaim("B", 0, later, lease, 10).map((c) => c.seq)).toEqual([1, 2, 3]);
    // A wakes up: its claim is gone, its completion changes nothing — whether on its own or with its next claim
    expect(logA.completeAndClaim("A", 3, later, lease, 10)).toEqual([]);
    expect(logA.lostClaim).toBe(true);
    expect(logA.complete("A", 3)).toBe(false);
    expect(cursor(a)).toMatchObject({ done_seq: 0, owner: "B" });
    expect(logB.completeAndClaim("B", 3, later, lease, 10)).toEqual([]);
    expect(logB.lostClaim).toBe(false);
    expect(cursor(a)).toMatchObject({ done_seq: 3, owner: null });
  });

  it("while a feed holds the cursor, claims what follows its dispatched batch with a read alone, marked done within MARK_DONE_MS", () => {
    const a = open();
    const b = open();
    seed(a, 8);
    const logA = new ChangeLog(a);
    const logB = new ChangeLog(b);
    const now = 1_000_000;
    const lease = 30_000;
    expect(logA.completeAndClaim("A", 0, now, lease, 2).map((c) => c.seq)).toEqual([1, 2]);
    // 1 and 2 dispatched: 3 and 4 are read, the cursor is not written
    expect(logA.completeAndClaim("A", 2, now + 1, lease, 2).map((c) => c.seq)).toEqual([3, 4]);
    expect(cursor(a)).toEqual({ done_seq: 0, owner: "A", claimed_seq: 2, lease_until: now + lease });
    expect(logB.completeAndClaim("B", 0, now + 1, lease, 10)).toEqual([]);
    // MARK_DONE_MS after the last write, the claim writes: 1..4 done, 5 and 6 claimed
    expect(logA.completeAndClaim("A", 4, now + MARK_DONE_MS, lease, 2).map((c) => c.seq)).toEqual([5, 6]);
    const written = now + MARK_DONE_MS;
    expect(cursor(a)).toEqual({ done_seq: 4, owner: "A", claimed_seq: 6, lease_until: written + lease });
    // with half the lease or less left (no renewal), the claim writes and renews it
    expect(logA.completeAndClaim("A", 6, written + 1, lease, 1).map((c) => c.seq)).toEqual([7]);
    expect(cursor(a)).toMatchObject({ done_seq: 4, claimed_seq: 6 });
    const late = written + lease / 2;
    expect(logA.completeAndClaim("A", 7, late, lease, 1).map((c) => c.seq)).toEqual([8]);
    expect(cursor(a)).toEqual({ done_seq: 7, owner: "A", claimed_seq: 8, lease_until: late + lease });
    expect(logA.complete("A", 8)).toBe(true);
    expect(cursor(a)).toEqual({ done_seq: 8, owner: null, claimed_seq: null, lease_until: null });
  });

  it("marks done what a read-only claim left unmarked when the feed gives the cursor back before dispatching more", () => {
    const db = open();
    seed(db, 4);
    const log = new ChangeLog(db);
    const now = 1_000_000;
    log.completeAndClaim("A", 0, now, 30_000, 2);
    expect(log.completeAndClaim("A", 2, now, 30_000, 2).map((c) => c.seq)).toEqual([3, 4]);
    // closing before 3 was dispatched: 1 and 2 are done, 3 and 4 free for any feed
    expect(log.complete("A", 0)).toBe(true);
    expect(cursor(db)).toEqual({ done_seq: 2, owner: null, claimed_seq: null, lease_until: null });
    expect(log.completeAndClaim("B", 0, now, 30_000, 10).map((c) => c.seq)).toEqual([3, 4]);
  });

  it("prunes dispatched changes by count and age, never pending ones nor the newest", () => {
    const db = open();
    seed(db, 10);
    const log = new ChangeLog(db);
    const now = Date.now();
    log.completeAndClaim("A", 0, now, 1000, 6);
    log.complete("A", 6);
    const seqs = () => db.prepare("SELECT seq FROM _turbocast_changes ORDER BY seq").pluck().all();
    // the newest 7 seqs are kept by count (4..10); dispatched ones before them go
    expect(log.prune(now, { count: 7, ageMs: 3_600_000 })).toBe(3);
    expect(seqs()).toEqual([4, 5, 6, 7, 8, 9, 10]);
    // by age: every dispatched change; the pending ones stay
    expect(log.prune(now + 2000, { count: 10_000, ageMs: 0 })).toBe(3);
    expect(seqs()).toEqual([7, 8, 9, 10]);
    // the newest row stays even when dispatched and old, so seq is never handed out twice
    log.completeAndClaim("A", 0, now, 1000, 10);
    log.complete("A", 10);
    log.prune(now + 2000, { count: 0, ageMs: 0 });
    expect(seqs()).toEqual([10]);
    db.prepare("INSERT INTO items (body) VALUES ('next')").run();
    expect(seqs()).toEqual([10, 11]);
    expect(log.poll("A", now).claimable).toBe(true);
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
    expect(decode(`{"id":1,"on_flag":1,"label":["00FF"],"unknown":5}`)).toEqual({
      id: 1,
      on: true,
      label: Buffer.from([0, 255]),
    });
    expect(decode(`{"id":2,"on_flag":null}`)).toEqual({ id: 2, on: null, label: undefined });
  });
});

describe("claim owners", () => {
  it("name this host, its boot, its pid namespace, the pid and a nonce; only a gone pid of this host, boot and namespace counts as dead", async () => {
    const owner = newOwner();
    const [host, boot, namespace, pid, nonce] = owner.split("/");
    expect(host).toBe(os.hostname());
    expect(pid).toBe(String(process.pid));
    expect(nonce).toMatch(/^[0-9a-f]{8}$/);
    expect(newOwner()).not.toBe(owner);
    expect(ownerMayBeAlive(owner)).toBe(true);

    const child = spawn(process.execPath, ["-e", ""]);
    await new Promise((resolve) => child.once("exit", resolve));
    const gone = `${host}/${boot}/${namespace}/${child.pid}/00000000`;
    // Linux names the boot and the namespace; elsewhere ("-") nothing is known dead and leases decide
    expect(ownerMayBeAlive(gone)).toBe(boot === "-" || namespace === "-");
    expect(ownerMayBeAlive(`another-host/${boot}/${namespace}/${child.pid}/00000000`)).toBe(true);
    expect(ownerMayBeAlive(`${host}/another-boot/${namespace}/${child.pid}/00000000`)).toBe(true);
    expect(ownerMayBeAlive(`${host}/${boot}/pid:[1]/${child.pid}/00000000`)).toBe(true);
    expect(ownerMayBeAlive(`${host}/${child.pid}/00000000`)).toBe(true); // an older format
    expect(ownerMayBeAlive(`${host}/${boot}/${namespace}/not-a-pid/00000000`)).toBe(true);
  });
});
