/**
 * Data subscribers (issue 14), measured in one process:
 *
 * - fan-out: the time from a Drizzle insert to its last delivery, per write,
 *   with 1,000 HTML subscribers of a room's stream alone, then with 1,000
 *   data subscribers of the same stream beside them (each subscriber's bytes
 *   taken from the frame's memoised WebSocket encoding, as the transports do);
 * - ETag hits: `turbo.dataHandler` over HTTP (keep-alive) for a set of
 *   10,000 rows: the first GET (reads and caches the set), then conditional
 *   GETs answered 304 from the cache.
 *
 *   npx tsx bench/sections/data.ts [--quick]   prints the figures as JSON
 */
import http from "node:http";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { eq } from "drizzle-orm";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import express from "express";
import nunjucks from "nunjucks";
import type { Published } from "../../src/brokers/broker.js";
import { dataChannel } from "../../src/data/channel.js";
import { wsFrameBytes } from "../../src/delivery/encode.js";
import { ModelStream, createTurbo } from "../../src/index.js";
import type { DataCost } from "../lib/results.js";
import { median, quantile } from "../lib/stats.js";

const rooms = sqliteTable("rooms", { id: integer("id").primaryKey(), name: text("name").notNull() });
const messages = sqliteTable("messages", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  roomId: integer("room_id").notNull(),
  body: text("body").notNull(),
});

class RoomStream extends ModelStream<typeof rooms> {
  static override model = rooms;
  static override sync = (room: RoomStream) =>
    room.db.select().from(messages).where(eq(messages.roomId, room.pk!)).all();
}

class MessageStream extends ModelStream<typeof messages> {
  static override model = messages;
  static override fields = ["roomId", "body"];
  static override broadcastsTo = (message: typeof messages.$inferSelect) => RoomStream.for(message.roomId);
}

const silent = { info() {}, warn() {}, error() {} };

export async function runDataCost(options: {
  subscribers: number;
  writes: number;
  rows: number;
  hits: number;
}): Promise<DataCost> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-bench-data-"));
  const sqlite = new Database(path.join(dir, "app.db"));
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(`CREATE TABLE rooms (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL, body TEXT NOT NULL);`);
  mkdirSync(path.join(dir, "views", "messages"), { recursive: true });
  writeFileSync(
    path.join(dir, "views", "messages", "_message.njk"),
    `<li id="{{ dom_id(message) }}">{{ message.body }}</li>`,
  );
  const db = drizzle(sqlite);
  const turbo = await createTurbo({
    db,
    views: new nunjucks.Environment(new nunjucks.FileSystemLoader(path.join(dir, "views")), { autoescape: true }),
    streams: [RoomStream, MessageStream],
    logger: silent,
    secret: "bench-data-secret-0123456789abcdef",
    history: { frames: 100, ageMs: 1000 },
  });
  const unsubscribes: Array<() => void> = [];
  try {
    const room = RoomStream.for(1).name;
    let delivered = 0;
    let bytes = 0;
    const subscribe = async (stream: string, encode: (frame: Published) => Buffer, n: number) => {
      for (let i = 0; i < n; i++) {
        unsubscribes.push(
          await turbo.hub.subscribe([stream], {
            send(frame) {
              bytes += encode(frame).length;
              delivered++;
            },
          }),
        );
      }
    };
    /** Per write: ms from the insert to the last of `expected` deliveries. */
    const measure = async (expected: number): Promise<{ ms: number[]; bytesPerWrite: number }> => {
      const ms: number[] = [];
      bytes = 0;
      for (let i = 0; i < options.writes; i++) {
        delivered = 0;
        const start = performance.now();
        db.insert(messages)
          .values({ roomId: 1, body: `message ${i} with a little text in it` })
          .run();
        await turbo.feed.drain();
        while (delivered < expected) await new Promise((resolve) => setImmediate(resolve));
        ms.push(performance.now() - start);
      }
      return { ms, bytesPerWrite: bytes / options.writes };
    };
    const n = options.subscribers;
    await measure(0); // warm up: templates, statements, JIT
    const none = await measure(0);
    await subscribe(room, wsFrameBytes, n);
    const html = await measure(n);
    await subscribe(dataChannel(room), wsFrameBytes, n);
    const both = await measure(2 * n);

    // a set of `rows` rows behind an ETag
    sqlite.exec("DELETE FROM messages WHERE room_id = 2");
    const insert = sqlite.prepare("INSERT INTO messages (room_id, body) VALUES (2, ?)");
    sqlite.transaction(() => {
      for (let i = 0; i < options.rows; i++) insert.run(`row ${i} of the bound set`);
    })();
    await turbo.feed.drain();
    const app = express();
    app.get("/set.json", turbo.dataHandler(RoomStream.for(2)));
    const server = http.createServer(app);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const port = (server.address() as AddressInfo).port;
    const get = (etag?: string) =>
      new Promise<{ status: number; etag: string; ms: number; length: number }>((resolve, reject) => {
        const start = performance.now();
        const req = http.get(
          { host: "127.0.0.1", port, path: "/set.json", agent, headers: etag ? { "if-none-match": etag } : {} },
          (res) => {
            let length = 0;
            res.on("data", (chunk: Buffer) => (length += chunk.length));
            res.on("end", () =>
              resolve({
                status: res.statusCode!,
                etag: String(res.headers.etag),
                ms: performance.now() - start,
                length,
              }),
            );
          },
        );
        req.on("error", reject);
      });
    const first = await get();
    const hits: number[] = [];
    for (let i = 0; i < options.hits; i++) {
      const hit = await get(first.etag);
      if (hit.status !== 304) throw new Error(`expected 304, got ${hit.status}`);
      hits.push(hit.ms);
    }
    // what the handler itself costs, without the HTTP round trip: the cache's answer
    const handlerUs: number[] = [];
    const handler = turbo.dataHandler(RoomStream.for(2));
    for (let i = 0; i < options.hits; i++) {
      const start = performance.now();
      await new Promise<void>((resolve) => {
        const res = {
          statusCode: 200,
          setHeader() {},
          status(code: number) {
            this.statusCode = code;
            return this;
          },
          end: () => resolve(),
          type() {
            return this;
          },
          send: () => resolve(),
          json: () => resolve(),
        };
        handler({ method: "GET", headers: { "if-none-match": first.etag } } as never, res as never, () => resolve());
      });
      handlerUs.push((performance.now() - start) * 1000);
    }
    agent.destroy();
    await new Promise((resolve) => server.close(resolve));
    return {
      subscribers: n,
      writes: options.writes,
      noSubscribersMedianMs: median(none.ms),
      htmlMedianMs: median(html.ms),
      htmlAndDataMedianMs: median(both.ms),
      htmlP99Ms: quantile(html.ms, 0.99),
      htmlAndDataP99Ms: quantile(both.ms, 0.99),
      htmlBytesPerWrite: html.bytesPerWrite,
      htmlAndDataBytesPerWrite: both.bytesPerWrite,
      rows: options.rows,
      firstGetMs: first.ms,
      firstGetBytes: first.length,
      etagHitP50Ms: median(hits),
      etagHitP99Ms: quantile(hits, 0.99),
      handlerHitP50Us: median(handlerUs),
    };
  } finally {
    for (const unsubscribe of unsubscribes) unsubscribe();
    await turbo.close();
    sqlite.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const quick = process.argv.includes("--quick");
  const result = await runDataCost({
    subscribers: 1000,
    writes: quick ? 50 : 200,
    rows: 10_000,
    hits: quick ? 200 : 2000,
  });
  console.log(JSON.stringify(result, null, 2));
}
