import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterAll, beforeAll, expect, it } from "vitest";
import {
  REDIS_URL,
  deleteRedisKeys,
  describeWithServer,
  dropPostgresNamespace,
  redisUnavailable,
  uniqueName,
} from "../brokers/servers.js";
import { DDL as PG_DDL } from "../fixtures/data/schema-pg.js";
import { DDL, SECRET, TEMPLATES } from "../fixtures/data/schema.js";
import { tempDir, waitFor } from "../helpers.js";
import { type TestSchema, createTestSchema } from "../postgres-app/pg-helpers.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const WORKER = path.join(here, "../fixtures/data/worker.ts");

/** A database two app processes share, and a writer outside both. */
interface Shared {
  /** The worker's config for this database and its broker (worker.ts). */
  config: Record<string, unknown>;
  /** Inserts a message as a writer outside the apps. */
  insert(roomId: number, body: string): void | Promise<void>;
  close(): Promise<void>;
}

const dialects = [
  {
    title: "on a shared SQLite file with Redis",
    unavailable: await redisUnavailable(),
    async open(): Promise<Shared> {
      const tmp = tempDir("turbocast-data-processes-");
      const file = path.join(tmp.dir, "app.db");
      const sqlite = new Database(file);
      sqlite.pragma("journal_mode = WAL");
      sqlite.exec(DDL);
      sqlite.close();
      const keyPrefix = `${uniqueName("data")}:`;
      const writer = new Database(file);
      writer.pragma("busy_timeout = 5000");
      return {
        config: { dialect: "SQLite", db: file, redisUrl: REDIS_URL, keyPrefix },
        insert: (roomId, body) =>
          void writer.prepare("insert into messages (room_id, body) values (?, ?)").run(roomId, body),
        async close() {
          writer.close();
          await deleteRedisKeys(REDIS_URL, keyPrefix);
          tmp.cleanup();
        },
      };
    },
  },
  {
    title: "on PostgreSQL with the PostgreSQL broker",
    unavailable: null,
    async open(): Promise<Shared> {
      const schema: TestSchema = await createTestSchema("tcdatap");
      await schema.admin.query(`SET search_path = "${schema.name}"; ${PG_DDL}`);
      const brokerPrefix = uniqueName("tcdata").replace(/[^a-z0-9_]/gi, "_");
      return {
        config: { dialect: "PostgreSQL", url: schema.url, schema: schema.name, brokerPrefix },
        insert: (roomId, body) => schema.psql(`insert into messages (room_id, body) values (${roomId}, '${body}')`),
        async close() {
          await dropPostgresNamespace(schema.url, brokerPrefix);
          await schema.drop();
        },
      };
    },
  },
];

for (const dialect of dialects) {
  describeWithServer(`dataHandler across two processes ${dialect.title}`, dialect.unavailable, () => {
    let tmp: { dir: string; cleanup: () => void };
    let shared: Shared;
    const children: ChildProcess[] = [];
    let ports: number[] = [];

    function start(pollIntervalMs: number): Promise<number> {
      const config = { ...shared.config, views: path.join(tmp.dir, "views"), pollIntervalMs };
      const child = spawn(process.execPath, ["--import", "tsx", WORKER, JSON.stringify(config)], {
        cwd: root,
        stdio: ["ignore", "ignore", "pipe", "ipc"],
      });
      children.push(child);
      let stderr = "";
      child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
      return new Promise((resolve, reject) => {
        child.once("message", (message) => resolve((message as { port: number }).port));
        child.once("exit", (code) => reject(new Error(`worker exited (${code}): ${stderr}`)));
      });
    }

    beforeAll(async () => {
      tmp = tempDir("turbocast-data-processes-views-");
      shared = await dialect.open();
      for (const [name, text] of Object.entries(TEMPLATES)) {
        const at = path.join(tmp.dir, "views", name);
        mkdirSync(path.dirname(at), { recursive: true });
        writeFileSync(at, text);
      }
      // on SQLite the first process never polls: changes written by a third process are dispatched by the
      // second (on PostgreSQL every feed is woken at commit; whichever claims a change, the other hears of it
      // through the broker)
      ports = await Promise.all([start(3_600_000), start(20)]);
    }, 60_000);

    afterAll(async () => {
      for (const child of children) {
        child.disconnect();
        await new Promise((resolve) => child.once("exit", resolve));
      }
      await shared?.close();
      tmp?.cleanup();
    });

    it("keeps each process's cached set current when another process dispatches the change", async () => {
      const [a, b] = ports.map((port) => `http://127.0.0.1:${port}/rooms/1/messages.json`) as [string, string];
      await shared.insert(1, "one");
      const firstA = await waitFor(async () => {
        const response = await fetch(a);
        const body = (await response.json()) as { rows: { body: string }[] };
        return body.rows.length === 1 ? response : null;
      });
      const etagA = firstA.headers.get("etag")!;
      expect((await fetch(a, { headers: { "if-none-match": etagA } })).status).toBe(304);

      await shared.insert(1, "two");
      // only a data event (from whichever process dispatched the change, through the broker) can tell A
      const fresh = await waitFor(
        async () => {
          const response = await fetch(a, { headers: { "if-none-match": etagA } });
          return response.status === 200 ? response : null;
        },
        { timeoutMs: 10_000 },
      );
      const text = await fresh.text();
      expect(text).not.toContain(SECRET);
      expect((JSON.parse(text) as { rows: { body: string }[] }).rows.map((r) => r.body)).toEqual(["one", "two"]);
      const fromB = await (await fetch(b)).text();
      expect(JSON.parse(fromB)).toEqual(JSON.parse(text));
      expect((await fetch(a, { headers: { "if-none-match": fresh.headers.get("etag")! } })).status).toBe(304);
    });
  });
}
