import { spawnSync } from "node:child_process";
import path from "node:path";
import { sql } from "drizzle-orm";
import { type NodePgDatabase, drizzle } from "drizzle-orm/node-postgres";
import nunjucks from "nunjucks";
import type pg from "pg";
import { expect } from "vitest";
import { createTurbo } from "../../src/index.js";
import { DDL, items, kinds, notes, plain, schema as tables } from "../fixtures/capture-pg/schema.js";
import { ItemStream, captureStreams } from "../fixtures/capture-pg/streams.js";
import { memoryLogger } from "../helpers.js";
import { type TestSchema, createTestSchema } from "../postgres-app/pg-helpers.js";
import type { CaptureApp, CaptureDatabase, CaptureDialect, CursorState, LogRow } from "./dialect.js";

const views = path.join(import.meta.dirname, "..", "fixtures", "views");

export interface PostgresApp extends CaptureApp<NodePgDatabase<typeof tables>> {
  /** db.$client: the app's pool, whose search_path is the test's schema. */
  pool: pg.Pool;
}

export interface PostgresDatabase extends CaptureDatabase<PostgresApp> {
  schema: TestSchema;
}

/**
 * A schema of its own on the test server, one per test; each app is a pool
 * whose search_path is that schema and a Drizzle db over it, as an app's
 * would be. psql is required (scripts/services.sh installs it with the server).
 */
export const postgresDialect: CaptureDialect<PostgresDatabase> = {
  name: "postgres",
  tables: { items, notes, kinds, plain },
  streams: captureStreams,
  itemStream: ItemStream,
  hasShell: true,
  dispatchesInSeqOrder: false,
  objectsFor: (names) =>
    names.flatMap((t) => ["del", "ins", "upd"].map((trigger) => `${t}._turbocast_${trigger}`)).sort(),
  affectedRows: (result) => (result as pg.QueryResult).rowCount ?? 0,
  kinds: {
    values: {
      id: 1,
      at: new Date("2024-05-06T07:08:09.123Z"),
      flag: true,
      doc: { tags: ["a", "b"], n: 3 },
      big: 9_007_199_254_740_993n,
      amount: "12.50",
      uid: "0b5e6f4c-3c56-4c0b-9f0e-2d7a1c2b3a40",
      tags: ["x", "y z"],
    },
    expectDecoded(entity) {
      expect((entity.at as Date).toISOString()).toBe("2024-05-06T07:08:09.123Z");
      expect(entity.big).toBe(9_007_199_254_740_993n);
      expect(entity.amount).toBe("12.50");
      expect(entity.tags).toEqual(["x", "y z"]);
    },
  },
  async create() {
    const schema = await createTestSchema("tccap");
    await schema.admin.query(`SET search_path = "${schema.name}"; ${DDL}`);
    const apps: PostgresApp[] = [];
    const admin = (statements: string) => schema.admin.query(`SET search_path = "${schema.name}"; ${statements}`);
    const database: PostgresDatabase = {
      schema,
      // the search_path rides in the URL, as a deployment's DATABASE_URL may carry it
      address: `${schema.url}?options=${encodeURIComponent(`-c search_path=${schema.name}`)}`,
      async open(options = {}) {
        const pool = schema.pool();
        const db = drizzle(pool, { schema: tables });
        const logger = memoryLogger();
        const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true });
        const turbo = await createTurbo({ db, views: env, streams: captureStreams, logger, ...options });
        const app: PostgresApp = {
          db,
          pool,
          turbo,
          log: logger.entries,
          sql: async (statement) => void (await db.execute(sql.raw(statement))),
          client: async (statement) => void (await pool.query(statement)),
          transaction: (statements, end) =>
            db.transaction(async (tx) => {
              for (const statement of statements) await statement(tx);
              if (end === "rollback") tx.rollback();
              else if (end) throw end;
            }),
          // the pool is the schema's: drop() ends it
          close: () => turbo.close(),
        };
        apps.push(app);
        return app;
      },
      execute: async (statements) => void (await admin(statements)),
      shell(statements) {
        const run = spawnSync(
          "psql",
          [schema.url, "-v", "ON_ERROR_STOP=1", "-q", "-c", `SET search_path = "${schema.name}"; ${statements}`],
          { encoding: "utf8" },
        );
        if (run.error) throw new Error(`psql could not run (scripts/services.sh installs it): ${run.error.message}`);
        return { status: run.status, stderr: run.stderr };
      },
      async logRows() {
        // done: visible in the done snapshot, or in the open window and no further than window_done (log.ts)
        const { rows } = await schema.admin.query<LogRow>(
          `SELECT l.seq::int, l.tbl, l.op, l.row_data->>'body' AS body,
             pg_visible_in_snapshot(l.xid, c.done_snapshot)
               OR (c.window_snapshot IS NOT NULL AND pg_visible_in_snapshot(l.xid, c.window_snapshot)
                   AND l.seq <= c.window_done) AS done
           FROM "${schema.name}"._turbocast_changes l, "${schema.name}"._turbocast_cursor c
           ORDER BY l.seq`,
        );
        return rows;
      },
      async cursor() {
        const { rows } = await schema.admin.query<CursorState>(
          `SELECT window_done::int AS done, owner, claimed_seq::int AS claimed, lease_until::float8 AS "leaseUntil"
           FROM "${schema.name}"._turbocast_cursor`,
        );
        return rows[0]!;
      },
      async captureObjects() {
        const { rows } = await schema.admin.query<{ name: string }>(
          `SELECT c.relname || '.' || t.tgname AS name FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND t.tgname LIKE '\\_turbocast\\_%'
`,
          [schema.name],
        );
        return rows.map((r) => r.name).sort();
      },
      async drop() {
        for (const app of apps.splice(0)) await app.close();
        await schema.drop();
      },
    };
    return database;
  },
};
