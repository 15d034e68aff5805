import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import pg from "pg";

/** The test server (trust auth). */
export const PG_URL = process.env.TURBOCAST_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/test";

/**
 * A schema of its own for one test (tests run in parallel with others on one
 * server), and pools whose search_path is that schema, as an app's would be.
 * `drop()` removes the schema with everything in it.
 */
export interface TestSchema {
  name: string;
  url: string;
  /** Pool options of a connection that finds the schema's tables unqualified. */
  config: pg.PoolConfig;
  pool(max?: number): pg.Pool;
  /** A superuser pool outside the schema's search_path (for setup and inspection). */
  admin: pg.Pool;
  /** Runs SQL through the psql command-line client in the schema, as another service or an operator would. */
  psql(statements: string): void;
  drop(): Promise<void>;
}

export async function createTestSchema(prefix = "tc"): Promise<TestSchema> {
  const name = `${prefix}_${randomBytes(5).toString("hex")}`;
  const admin = new pg.Pool({ connectionString: PG_URL, max: 2 });
  await admin.query(`CREATE SCHEMA "${name}"`);
  // application_name: the test's own connections (the feed's too) can be told from everyone else's
  const config: pg.PoolConfig = { connectionString: PG_URL, options: `-c search_path=${name}`, application_name: name };
  const pools: pg.Pool[] = [];
  return {
    name,
    url: PG_URL,
    config,
    admin,
    pool(max = 4) {
      const pool = new pg.Pool({ ...config, max });
      // an idle connection terminated by a test is dropped by the pool; unheard, its error would crash the run
      pool.on("error", () => {});
      pools.push(pool);
      return pool;
    },
    psql(statements) {
      const result = spawnSync(
        "psql",
        [PG_URL, "-v", "ON_ERROR_STOP=1", "-q", "-c", `SET search_path = "${name}"; ${statements}`],
        { encoding: "utf8" },
      );
      if (result.status !== 0) throw new Error(`psql failed: ${result.stderr}`);
    },
    async drop() {
      await Promise.all(pools.map((p) => p.end().catch(() => {})));
      await admin.query(`DROP SCHEMA IF EXISTS "${name}" CASCADE`);
      await admin.end();
    },
  };
}
