import { spawnSync } from "node:child_process";
import path from "node:path";
import Database from "better-sqlite3";
import { sql } from "drizzle-orm";
import { type BetterSQLite3Database, drizzle } from "drizzle-orm/better-sqlite3";
import nunjucks from "nunjucks";
import { expect } from "vitest";
import { createTurbo } from "../../src/index.js";
import { DDL, items, kinds, notes, plain, schema } from "../fixtures/capture/schema.js";
import { ItemStream, captureStreams } from "../fixtures/capture/streams.js";
import { memoryLogger, tempDir } from "../helpers.js";
import type { CaptureApp, CaptureDatabase, CaptureDialect, TxStatement } from "./dialect.js";

export const views = path.join(import.meta.dirname, "..", "fixtures", "views");

export interface SqliteApp extends CaptureApp<BetterSQLite3Database<typeof schema>> {
  /** The app's own connection (db.$client). */
  sqlite: Database.Database;
}

export interface SqliteDatabase extends CaptureDatabase<SqliteApp> {
  file: string;
  /** A connection of the test's own, for inspection (the file is in WAL mode: it sees every commit). */
  inspect: Database.Database;
}

// The sqlite3 shell comes from Debian's sqlite3 package (scripts/services.sh installs it). CI must
// run the shell test; elsewhere it is skipped, loudly, when the shell is missing (the tests of
// writes through another connection still cover writers other than the app).
const shellCheck = spawnSync("sqlite3", ["-version"], { encoding: "utf8" });
if (shellCheck.status !== 0) {
  if (process.env.CI) throw new Error("CI: the sqlite3 shell is missing; scripts/services.sh installs it");
  console.warn("[turbocast tests] skipping the sqlite3-shell test: no sqlite3 on PATH (apt-get install sqlite3)");
}

/** A real SQLite file in WAL mode, one per test; each app is a better-sqlite3 connection and a Drizzle db over it. */
export const sqliteDialect: CaptureDialect<SqliteDatabase> = {
  name: "sqlite",
  tables: { items, notes, kinds, plain },
  streams: captureStreams,
  itemStream: ItemStream,
  hasShell: shellCheck.status === 0,
  dispatchesInSeqOrder: true,
  objectsFor: (tables) =>
    [
      "_turbocast_changes",
      "_turbocast_cursor",
      ...tables.flatMap((t) => [`_turbocast_${t}_del`, `_turbocast_${t}_ins`, `_turbocast_${t}_upd`]),
    ].sort(),
  affectedRows: (result) => (result as Database.RunResult).changes,
  kinds: {
    values: {
      id: 1,
      at: new Date("2024-05-06T07:08:09Z"),
      atMs: new Date("2024-05-06T07:08:09.123Z"),
      flag: true,
      doc: { tags: ["a", "b"], n: 3 },
      blobDoc: { ok: true },
      bytes: Buffer.from([0, 1, 2, 254, 255]),
      big: 12345678901234567890n,
      price: 9.75,
      amount: "12.50",
      where: { x: 3, y: -4 },
      note: `quotes " and ' and \\ and emoji 🎉`,
    },
    expectDecoded(entity) {
      expect(entity.at).toBeInstanceOf(Date);
      expect((entity.at as Date).toISOString()).toBe("2024-05-06T07:08:09.000Z");
      expect((entity.atMs as Date).toISOString()).toBe("2024-05-06T07:08:09.123Z");
      expect(entity.flag).toBe(true);
      expect(entity.doc).toEqual({ tags: ["a", "b"], n: 3 });
      expect(entity.blobDoc).toEqual({ ok: true });
      expect(Buffer.isBuffer(entity.bytes)).toBe(true);
      expect([...(entity.bytes as Buffer)]).toEqual([0, 1, 2, 254, 255]);
      expect(entity.big).toBe(12345678901234567890n);
      // SQLite's NUMERIC affinity stores 12.50 as a number
      expect(entity.amount).toBe("12.5");
      expect(entity.where).toEqual({ x: 3, y: -4 });
    },
  },
  async create() {
    const tmp = tempDir("turbocast-capture-");
    const file = path.join(tmp.dir, "app.db");
    const inspect = new Database(file);
    inspect.pragma("journal_mode = WAL");
    inspect.exec(DDL);
    const apps: SqliteApp[] = [];
    return {
      file,
      address: file,
      inspect,
      async open(options = {}) {
        const sqlite = new Database(file);
        const db = drizzle(sqlite, { schema });
        const logger = memoryLogger();
        const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true });
        let turbo: SqliteApp["turbo"];
        try {
          turbo = await createTurbo({ db, views: env, streams: captureStreams, logger, ...options });
        } catch (error) {
          sqlite.close();
          throw error;
        }
        const app: SqliteApp = {
          db,
          sqlite,
          turbo,
          log: logger.entries,
          sql: async (statement) => void db.run(sql.raw(statement)),
          client: async (statement) => void sqlite.exec(statement),
          transaction: async (statements, end) => runTransaction(db, statements, end),
          async close() {
            await turbo.close();
            sqlite.close();
          },
        };
        apps.push(app);
        return app;
      },
      async execute(statements) {
        const other = new Database(file);
        try {
          other.exec(statements);
        } finally {
          other.close();
        }
      },
      shell(statements) {
        const run = spawnSync("sqlite3", [file, statements], { encoding: "utf8" });
        return { status: run.status, stderr: run.stderr };
      },
      async logRows() {
        return (
          inspect
            .prepare(
              `SELECT seq, tbl, op, json_extract(row_json, '$.body') AS body,
                 seq <= (SELECT done_seq FROM _turbocast_cursor) AS done
               FROM _turbocast_changes ORDER BY seq`,
            )
            .all() as Array<{ seq: number; tbl: string; op: string; body: string | null; done: 0 | 1 }>
        ).map((r) => ({ ...r, done: r.done === 1 }));
      },
      async cursor() {
        return inspect
          .prepare(
            `SELECT done_seq AS done, owner, claimed_seq AS claimed, lease_until AS leaseUntil FROM _turbocast_cursor`,
          )
          .get() as Awaited<ReturnType<SqliteDatabase["cursor"]>>;
      },
      async captureObjects() {
        return turbocastObjects(inspect);
      },
      async drop() {
        for (const app of apps.splice(0)) await app.close();
        inspect.close();
        tmp.cleanup();
      },
    };
  },
};

/** turbocast's tables and triggers in a SQLite database, by name. */
export function turbocastObjects(sqlite: Database.Database): string[] {
  return sqlite
    .prepare("SELECT name FROM sqlite_schema WHERE name LIKE '\\_turbocast\\_%' ESCAPE '\\' ORDER BY name")
    .pluck()
    .all() as string[];
}

/** A better-sqlite3 transaction is synchronous: each statement runs with .run(), none is awaited. */
function runTransaction(
  db: BetterSQLite3Database<typeof schema>,
  statements: TxStatement[],
  end: "rollback" | Error | undefined,
): void {
  db.transaction((tx) => {
    for (const statement of statements) (statement(tx) as unknown as { run(): unknown }).run();
    if (end === "rollback") tx.rollback();
    else if (end) throw end;
  });
}
