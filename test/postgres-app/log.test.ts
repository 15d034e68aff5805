import pg from "pg";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CaptureInstallError } from "../../src/errors.js";
import { LOG_CONNECTION_OPTIONS, PgChangeLog, type PgChangeRecord } from "../../src/changes/postgres/log.js";
import { channelFor, syncPgTriggers } from "../../src/changes/postgres/triggers.js";
import { waitFor } from "../helpers.js";
import { createTestSchema, type TestSchema } from "./pg-helpers.js";

const TABLES = [
  { name: "items", keys: ["id"], columns: ["id", "body", "version"] },
  { name: "notes", keys: ["id"], columns: ["id", "body", "mood"] },
];
const DDL = `
CREATE TABLE items (id serial PRIMARY KEY, body text NOT NULL, version int NOT NULL DEFAULT 0);
CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL);
CREATE TABLE plain (id int PRIMARY KEY, body text);
`;

let schema: TestSchema;
let pool: pg.Pool;
let log: PgChangeLog;

beforeEach(async () => {
  schema = await createTestSchema("tclog");
  pool = schema.pool();
  await pool.query(DDL);
  const client = await pool.connect();
  try {
    await syncPgTriggers(client, TABLES);
  } finally {
    client.release();
  }
  log = new PgChangeLog(pool, schema.name);
});

afterEach(async () => {
  await schema.drop();
});

/** Claims and completes everything claimable now, as one feed would. */
async function drainAll(owner = "me", limit = 100): Promise<PgChangeRecord[]> {
  const out: PgChangeRecord[] = [];
  let doneUpTo = 0;
  for (;;) {
    const batch = await log.completeAndClaim(owner, doneUpTo, Date.now(), 30_000, limit);
    if (batch.length === 0) break;
    out.push(...batch);
    doneUpTo = batch[batch.length - 1]!.seq;
  }
  return out;
}

const bodies = (records: PgChangeRecord[]) => records.map((r) => [r.op, JSON.parse(r.row).body]);

describe("PostgreSQL capture triggers and change log", () => {
  it("captures insert, update (with the old row) and delete of every writer, skips no-op updates and unbound tables", async () => {
    await pool.query("INSERT INTO items (body) VALUES ('a'), ('b')");
    await pool.query("UPDATE items SET body = 'a2' WHERE body = 'a'");
    await pool.query("UPDATE items SET body = body, version = version");
    await pool.query("DELETE FROM items WHERE body = 'b'");
    await pool.query("INSERT INTO plain VALUES (1, 'nobody')");
    const records = await drainAll();
    expect(bodies(records)).toEqual([
      ["insert", "a"],
      ["insert", "b"],
      ["update", "a2"],
      ["delete", "b"],
    ]);
    expect(JSON.parse(records[2]!.previous!)).toEqual({ id: 1, body: "a", version: 0 });
    expect(records.map((r) => r.table)).toEqual(["items", "items", "items", "items"]);
    expect(await drainAll()).toEqual([]);
  });

  it("leaves nothing of a rolled-back transaction or savepoint", async () => {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      await client.query("INSERT INTO items (body) VALUES ('ghost')");
      await client.query("ROLLBACK");
      await client.query("BEGIN");
      await client.query("INSERT INTO items (body) VALUES ('kept')");
      await client.query("SAVEPOINT s");
      await client.query("INSERT INTO items (body) VALUES ('ghost 2')");
      await client.query("ROLLBACK TO SAVEPOINT s");
      await client.query("COMMIT");
    } finally {
      client.release();
    }
    expect(bodies(await drainAll())).toEqual([["insert", "kept"]]);
  });

  it("never skips a change whose transaction commits after a later seq was dispatched", async () => {
    const slow = await pool.connect();
    try {
      await slow.query("BEGIN");
      await slow.query("INSERT INTO items (body) VALUES ('slow')"); // lower seq, still in flight
      await pool.query("INSERT INTO items (body) VALUES ('fast')");
      expect(bodies(await drainAll())).toEqual([["insert", "fast"]]);
      // a long transaction holds nothing back
      await pool.query("INSERT INTO items (body) VALUES ('later')");
      expect(bodies(await drainAll())).toEqual([["insert", "later"]]);
      await slow.query("COMMIT");
    } finally {
      slow.release();
    }
    const late = await drainAll();
    expect(bodies(late)).toEqual([["insert", "slow"]]);
    expect(late[0]!.seq).toBe(1);
    expect(await drainAll()).toEqual([]);
  });

  it("dispatches two writes to one row in their order, however their transactions overlap", async () => {
    await pool.query("INSERT INTO items (id, body) VALUES (1, 'v0')");
    await drainAll();
    const first = await pool.connect();
    const second = await pool.connect();
    try {
      await first.query("BEGIN");
      await first.query("UPDATE items SET body = 'v1' WHERE id = 1");
      await second.query("BEGIN");
      await second.query("INSERT INTO items (id, body) VALUES (2, 'other')");
      const waiting = second.query("UPDATE items SET body = 'v2' WHERE id = 1"); // waits on the row lock
      await first.query("COMMIT");
      await waiting;
      await second.query("COMMIT");
    } finally {
      first.release();
      second.release();
    }
    const records = await drainAll();
    expect(bodies(records).filter(([, b]) => b !== "other")).toEqual([
      ["update", "v1"],
      ["update", "v2"],
    ]);
  });

  it("hands each change to exactly one of several concurrent claimers", async () => {
    for (let i = 0; i < 10; i++) {
      await pool.query(
        `INSERT INTO items (body) SELECT 'row ' || g FROM generate_series(${i * 100 + 1}, ${i * 100 + 100}) g`,
      );
    }
    const owners = ["a", "b", "c"];
    const seen: number[] = [];
    await Promise.all(
      owners.map(async (owner) => {
        let doneUpTo = 0;
        let idle = 0;
        while (idle < 20) {
          const batch = await log.completeAndClaim(owner, doneUpTo, Date.now(), 30_000, 37);
          if (batch.length === 0) {
            if (doneUpTo > 0) await log.complete(owner, doneUpTo);
            doneUpTo = 0;
            idle++;
            await new Promise((r) => setImmediate(r));
            continue;
          }
          idle = 0;
          for (const r of batch) seen.push(r.seq);
          doneUpTo = batch[batch.length - 1]!.seq;
        }
      }),
    );
    expect(seen.length).toBe(1000);
    expect(new Set(seen).size).toBe(1000);
    const { rows } = await pool.query("SELECT done_max::int AS m FROM _turbocast_cursor");
    expect(rows[0].m).toBe(1000);
  });

  it("takes over a claim whose lease ran out (by the server's clock), from where it was completed", async () => {
    await pool.query("INSERT INTO items (body) SELECT 'r' || g FROM generate_series(1, 5) g");
    // a lease long enough that the next claim surely falls inside it (the first claims also PREPARE their statements)
    const crashed = await log.completeAndClaim("dead", 0, Date.now(), 1000, 3);
    expect(crashed.map((r) => r.seq)).toEqual([1, 2, 3]);
    expect(await log.completeAndClaim("alive", 0, Date.now(), 30_000, 10)).toEqual([]);
    // leases run on the server's clock: wait them out
    const taken = await waitFor(
      async () => {
        const batch = await log.completeAndClaim("alive", 0, Date.now(), 30_000, 10);
        return batch.length > 0 ? batch : null;
      },
      { timeoutMs: 10_000 },
    );
    expect(taken.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(log.tookOver).toMatchObject({ from: "dead", why: "expired" });
    expect(await log.complete("dead", 3)).toBe(false);
  });

  it("takes over at once a claim whose process is gone, from where it was completed", async () => {
    await pool.query("INSERT INTO items (body) SELECT 'r' || g FROM generate_series(1, 5) g");
    expect((await log.completeAndClaim("dead", 0, Date.now(), 60_000, 3)).map((r) => r.seq)).toEqual([1, 2, 3]);
    // the holder ran on this host and its pid no longer exists (owner.ts): no need to wait out its lease
    const alive = new PgChangeLog(pool, schema.name, { mayBeAlive: (owner) => owner !== "dead" });
    const taken = await alive.completeAndClaim("alive", 0, Date.now(), 30_000, 10);
    expect(taken.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(alive.tookOver).toMatchObject({ from: "dead", why: "gone", after: 0 });
  });

  it("takes over a gone feed's claim only while that feed still holds it (not one another feed took meanwhile)", async () => {
    await pool.query("INSERT INTO items (body) SELECT 'r' || g FROM generate_series(1, 5) g");
    await log.completeAndClaim("dead", 0, Date.now(), 60_000, 3);
    // between the claim that found the holder gone and the one that takes over, another feed takes the cursor
    const racing = schema.pool(2);
    const connect = racing.connect.bind(racing) as () => Promise<pg.PoolClient>;
    let connects = 0;
    (racing as unknown as { connect: () => Promise<pg.PoolClient> }).connect = async () => {
      const client = await connect();
      if (++connects === 2) {
        await client.query(
          "UPDATE _turbocast_cursor SET owner = 'other', lease_until = (extract(epoch from clock_timestamp()) * 1000)::bigint + 60000",
        );
      }
      return client;
    };
    const late = new PgChangeLog(racing, schema.name, { mayBeAlive: (owner) => owner !== "dead" });
    expect(await late.completeAndClaim("late", 0, Date.now(), 30_000, 10)).toEqual([]);
    expect(connects).toBe(2);
    expect(late.tookOver).toBeNull();
    const { rows } = await pool.query("SELECT owner FROM _turbocast_cursor");
    expect(rows[0].owner).toBe("other");
  });

  it("reads only about its own window in a claim, however large the log and however long another transaction has run", async () => {
    // the feed's connection, as PgCapture opens it; its claim planned (and its generic plan kept) while the log was small
    const feedPool = new pg.Pool({
      ...schema.config,
      options: `${schema.config.options} ${LOG_CONNECTION_OPTIONS}`,
      max: 1,
    });
    const feed = new PgChangeLog(feedPool, schema.name);
    const claimAll = async () => {
      let done = 0;
      for (;;) {
        const batch = await feed.completeAndClaim("feed", done, Date.now(), 30_000, 100);
        if (batch.length === 0) return;
        done = batch[batch.length - 1]!.seq;
      }
    };
    // a transaction running elsewhere on the server (it holds every snapshot's xmin back)
    const holder = await schema.admin.connect();
    try {
      for (let i = 0; i < 8; i++) {
        await pool.query("INSERT INTO items (body) VALUES ('small log')");
        await claimAll();
      }
      await holder.query("BEGIN; SELECT pg_current_xact_id()");
      await pool.query("INSERT INTO items (body) SELECT 'r' || g FROM generate_series(1, 10000) g");
      await claimAll();
      await pool.query("INSERT INTO items (body) SELECT 'new ' || g FROM generate_series(1, 10) g");
      const client = await feedPool.connect();
      try {
        const { rows: statements } = await client.query<{ name: string }>("SELECT name FROM pg_prepared_statements");
        const named = (kind: string) => statements.find((s) => s.name.startsWith(`_turbocast_${kind}`))!.name;
        await client.query(`BEGIN; EXECUTE ${named("lock")}`);
        const { rows } = await client.query(
          `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE ${named("claim100")}('feed', 0, 30000, NULL)`,
        );
        await client.query("ROLLBACK");
        const plan = rows[0]["QUERY PLAN"][0].Plan;
        // the whole log is about 250 pages; the window, its index entries and the cursor a few
        expect(plan["Actual Rows"]).toBe(11);
        expect(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]).toBeLessThan(60);
      } finally {
        client.release();
      }
    } finally {
      await holder.query("ROLLBACK");
      holder.release();
      await feedPool.end();
    }
  });

  it("notifies its channel at commit, once per transaction", async () => {
    const listener = await pool.connect();
    try {
      const heard: string[] = [];
      listener.on("notification", (n) => heard.push(n.channel));
      await listener.query(`LISTEN "${channelFor(schema.name)}"`);
      await pool.query("INSERT INTO items (body) SELECT 'n' || g FROM generate_series(1, 50) g");
      await pool.query("SELECT 1"); // a round trip after the commit
      await listener.query("SELECT 1");
      expect(heard).toEqual([channelFor(schema.name)]);
    } finally {
      listener.release();
    }
  });

  it("sends no NOTIFY from a quiet session (turbocast.quiet = on), and one from any other, in commit order", async () => {
    const quiet = new pg.Pool({ ...schema.config, options: `${schema.config.options} -c turbocast.quiet=on`, max: 1 });
    const listener = await pool.connect();
    try {
      const heard: string[] = [];
      listener.on("notification", (n) => heard.push(n.payload ?? ""));
      await listener.query(`LISTEN "${channelFor(schema.name)}"`);
      await quiet.query("INSERT INTO items (body) VALUES ('quiet')");
      await quiet.query("UPDATE items SET body = 'quiet 2'");
      await pool.query("INSERT INTO items (body) VALUES ('loud')");
      await waitFor(() => heard.length > 0);
      await listener.query("SELECT 1");
      expect(heard).toEqual([""]);
      // the quiet writes were captured all the same
      expect(bodies(await drainAll())).toEqual([
        ["insert", "quiet"],
        ["update", "quiet 2"],
        ["insert", "loud"],
      ]);
    } finally {
      listener.release();
      await quiet.end();
    }
  });

  it("drops an earlier version's statement-level notify trigger and its function at start, not in a later sync", async () => {
    // as earlier versions installed them: the quiet test in the trigger's WHEN, read again for every statement
    await pool.query(`CREATE FUNCTION "${schema.name}"._turbocast_notify() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM pg_notify('${channelFor(schema.name)}', ''); RETURN NULL; END $$;
      CREATE TRIGGER _turbocast_notify AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH STATEMENT
      WHEN (current_setting('turbocast.quiet', true) IS DISTINCT FROM 'on') EXECUTE FUNCTION "${schema.name}"._turbocast_notify()`);
    const earlier = async () =>
      (
        await pool.query(
          `SELECT (SELECT count(*)::int FROM pg_trigger WHERE tgrelid = 'items'::regclass AND tgname = '_turbocast_notify') AS triggers,
            (SELECT count(*)::int FROM pg_proc WHERE proname = '_turbocast_notify' AND pronamespace = $1::regnamespace) AS functions`,
          [schema.name],
        )
      ).rows[0];
    const client = await pool.connect();
    try {
      // after a schema change it may be a process of the earlier version's, still running: left alone
      const resync = await syncPgTriggers(client, TABLES, { dropUnbound: false });
      expect(resync.dropped).toEqual([]);
      expect(await earlier()).toEqual({ triggers: 1, functions: 1 });
      const start = await syncPgTriggers(client, TABLES);
      expect(start.dropped).toEqual([`items._turbocast_notify`]);
    } finally {
      client.release();
    }
    expect(await earlier()).toEqual({ triggers: 0, functions: 0 });
  });

  it("runs the quiet test with the catalog's = whatever the writer's search_path", async () => {
    // a SECURITY DEFINER function's bare = would be looked up in the writer's search_path, and run as its owner
    await pool.query(`CREATE FUNCTION "${schema.name}".always(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
      CREATE OPERATOR "${schema.name}".= (LEFTARG = text, RIGHTARG = text, FUNCTION = "${schema.name}".always)`);
    const listener = await pool.connect();
    const writer = new pg.Pool({ ...schema.config, options: `-c search_path=${schema.name},pg_catalog`, max: 1 });
    try {
      const heard: string[] = [];
      listener.on("notification", (n) => heard.push(n.channel));
      await listener.query(`LISTEN "${channelFor(schema.name)}"`);
      await writer.query("INSERT INTO items (body) VALUES ('loud')");
      await waitFor(() => heard.length > 0);
      expect(heard).toEqual([channelFor(schema.name)]);
    } finally {
      listener.release();
      await writer.end();
    }
  });

  it("prunes dispatched changes beyond the retained count, never pending ones", async () => {
    await pool.query("INSERT INTO items (body) SELECT 'p' || g FROM generate_series(1, 10) g");
    await drainAll();
    await pool.query("INSERT INTO items (body) VALUES ('pending')");
    await log.prune({ count: 2, ageMs: 3_600_000 });
    const { rows } = await pool.query("SELECT seq::int FROM _turbocast_changes ORDER BY seq");
    expect(rows.map((r) => r.seq)).toEqual([10, 11]);
    expect(bodies(await drainAll())).toEqual([["insert", "pending"]]);
  });

  it("prunes a window marked done by complete, though no later claim closed it", async () => {
    await pool.query("INSERT INTO items (body) SELECT 'p' || g FROM generate_series(1, 10) g");
    // a feed that claims, dispatches and gives the cursor back with nothing written after: the window stays open
    const batch = await log.completeAndClaim("me", 0, Date.now(), 30_000, 100);
    expect(batch).toHaveLength(10);
    expect(await log.complete("me", 7)).toBe(true);
    await log.prune({ count: 0, ageMs: 3_600_000 });
    const { rows } = await pool.query("SELECT seq::int FROM _turbocast_changes ORDER BY seq");
    expect(rows.map((r) => r.seq)).toEqual([8, 9, 10]);
    expect(bodies(await drainAll())).toEqual([8, 9, 10].map((n) => ["insert", `p${n}`]));
  });

  it("prunes without compiling the statement (JIT), on the feed's connections that plan with index scans", async () => {
    await pool.query("INSERT INTO items (body) SELECT 'p' || g FROM generate_series(1, 50) g");
    await drainAll();
    const feedPool = new pg.Pool({
      ...schema.config,
      options: `${schema.config.options} ${LOG_CONNECTION_OPTIONS}`,
      max: 1,
    });
    try {
      await feedPool.query("SET jit_above_cost = 0"); // however the server is set
      // (EXPLAIN ANALYZE runs the DELETE: rolled back)
      await feedPool.query("BEGIN");
      const { rows } =
        await feedPool.query(`EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM _turbocast_changes l USING _turbocast_cursor c
        WHERE c.id = 1 AND pg_visible_in_snapshot(l.xid, c.done_snapshot)
          AND (l.seq <= (SELECT max(seq) FROM _turbocast_changes) - 10 OR l.at <= now() - interval '1 hour')`);
      await feedPool.query("ROLLBACK");
      expect(rows[0]["QUERY PLAN"][0].JIT).toBeUndefined();
      expect(await new PgChangeLog(feedPool, schema.name).prune({ count: 10, ageMs: 3_600_000 })).toBe(40);
    } finally {
      await feedPool.end();
    }
  });

  it("claims a 10,000-row UPDATE in batches quickly", async () => {
    await pool.query("INSERT INTO items (body) SELECT 'r' || g FROM generate_series(1, 10000) g");
    await drainAll("me", 1000);
    await pool.query("UPDATE items SET version = 7");
    const started = performance.now();
    const records = await drainAll("me", 100);
    const ms = performance.now() - started;
    expect(records.length).toBe(10_000);
    expect(records.every((r, i) => i === 0 || r.seq > records[i - 1]!.seq)).toBe(true);
    expect(ms).toBeLessThan(10_000);
  }, 30_000);
});

describe("PostgreSQL capture install errors", () => {
  it("refuses a view and a table whose key column is missing, with nothing installed", async () => {
    await pool.query("CREATE VIEW item_view AS SELECT * FROM items");
    const client = await pool.connect();
    try {
      const error = await syncPgTriggers(client, [{ name: "item_view", keys: ["id"], columns: ["id"] }]).catch(
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(CaptureInstallError);
      expect((error as CaptureInstallError).message).toMatch(/item_view.*view/);
      const wrongKey = await syncPgTriggers(client, [{ name: "plain", keys: ["nope"], columns: [] }]).catch(
        (e: unknown) => e,
      );
      expect((wrongKey as CaptureInstallError).code).toBe("TURBOCAST_CAPTURE_INSTALL_FAILED");
    } finally {
      client.release();
    }
    const { rows } = await pool.query(
      "SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = 'plain'::regclass AND tgname LIKE '\\_turbocast\\_%'",
    );
    expect(rows[0].n).toBe(0);
  });

  it("names the TRIGGER privilege a role lacks", async () => {
    const role = `${schema.name}_role`;
    await schema.admin.query(`CREATE ROLE "${role}" LOGIN`);
    try {
      await schema.admin.query(`GRANT USAGE, CREATE ON SCHEMA "${schema.name}" TO "${role}"`);
      await pool.query(`CREATE TABLE others (id int PRIMARY KEY)`);
      const { default: pgModule } = await import("pg");
      const client = new pgModule.Client({
        ...schema.config,
        connectionString: schema.url.replace("//postgres@", `//${role}@`),
      });
      await client.connect();
      try {
        const error = await syncPgTriggers(client, [{ name: "others", keys: ["id"], columns: ["id"] }], {
          logSchema: `${schema.name}`,
        }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(CaptureInstallError);
        expect((error as Error).message).toMatch(/lacks the TRIGGER privilege on table/);
        expect((error as Error).message).toContain(role);
      } finally {
        await client.end();
      }
    } finally {
      await schema.admin.query(`DROP OWNED BY "${role}"`);
      await schema.admin.query(`DROP ROLE "${role}"`);
    }
  });
});
