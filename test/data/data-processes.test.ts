import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterAll, beforeAll, expect, it } from "vitest";
import { REDIS_URL, deleteRedisKeys, describeWithServer, redisUnavailable, uniqueName } from "../brokers/servers.js";
import { DDL, SECRET, TEMPLATES } from "../fixtures/data/schema.js";
import { tempDir, waitFor } from "../helpers.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const WORKER = path.join(here, "../fixtures/data/worker.ts");

describeWithServer("dataHandler across two processes on Redis", await redisUnavailable(), () => {
  let tmp: { dir: string; cleanup: () => void };
  const children: ChildProcess[] = [];
  let keyPrefix: string;
  let file: string;
  let ports: number[] = [];

  function start(pollIntervalMs: number): Promise<number> {
    const config = {
      db: file,
      views: path.join(tmp.dir, "views"),
      redisUrl: REDIS_URL,
      keyPrefix,
      pollIntervalMs,
    };
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
    tmp = tempDir("turbocast-data-processes-");
    keyPrefix = `${uniqueName("data")}:`;
    file = path.join(tmp.dir, "app.db");
    const sqlite = new Database(file);
    sqlite.pragma("journal_mode = WAL");
    sqlite.exec(DDL);
    sqlite.close();
    for (const [name, text] of Object.entries(TEMPLATES)) {
      const at = path.join(tmp.dir, "views", name);
      mkdirSync(path.dirname(at), { recursive: true });
      writeFileSync(at, text);
    }
    // the first process never polls: changes written by a third process are dispatched by the second
    ports = await Promise.all([start(3_600_000), start(20)]);
  }, 60_000);

  afterAll(async () => {
    for (const child of children) {
      child.disconnect();
      await new Promise((resolve) => child.once("exit", resolve));
    }
    await deleteRedisKeys(REDIS_URL, keyPrefix);
    tmp?.cleanup();
  });

  it("keeps each process's cached set current when another process dispatches the change", async () => {
    const [a, b] = ports.map((port) => `http://127.0.0.1:${port}/rooms/1/messages.json`) as [string, string];
    const writer = new Database(file);
    writer.pragma("busy_timeout = 5000");
    writer.prepare("insert into messages (room_id, body) values (1, 'one')").run();
    const firstA = await waitFor(async () => {
      const response = await fetch(a);
      const body = (await response.json()) as { rows: { body: string }[] };
      return body.rows.length === 1 ? response : null;
    });
    const etagA = firstA.headers.get("etag")!;
    expect((await fetch(a, { headers: { "if-none-match": etagA } })).status).toBe(304);

    writer.prepare("insert into messages (room_id, body) values (1, 'two')").run();
    writer.close();
    // A cached the set and dispatches nothing: only B's data event, through Redis, can tell it
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
