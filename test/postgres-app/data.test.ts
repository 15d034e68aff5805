import { spawn } from "node:child_process";
import path from "node:path";
import { Browser } from "happy-dom";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import type { Published } from "../../src/brokers/broker.js";
import { dataChannel } from "../../src/data/channel.js";
import { KindStream, dataStreams } from "../fixtures/data/schema-pg.js";
import { SECRET, syncHooks } from "../fixtures/data/schema.js";
import { waitFor } from "../helpers.js";
import { type DataApp, type DialectContext, type SharedSocket, describeOn, openShared } from "../data/dialects.js";

/**
 * What only PostgreSQL apps have to prove about data subscribers: column
 * types decoded through Drizzle's pg columns, a sync that loses no change
 * of a transaction in flight at its snapshot, and cached sets kept current
 * by writers outside the app. (Everything the two dialects share runs in
 * test/data/ on both.)
 */
const WRITER = path.join(import.meta.dirname, "..", "fixtures", "data", "pg-writer.ts");

const sockets: SharedSocket[] = [];
const clients: pg.Client[] = [];

/** A connection of the test's own in the schema (a writer that holds a transaction open). */
async function connect(context: DialectContext): Promise<pg.Client> {
  const client = new pg.Client(context.schema!.config);
  await client.connect();
  clients.push(client);
  return client;
}

/** Subscribes room 1's data with a sync on the shared WebSocket. */
async function syncRoom(app: DataApp, context: DialectContext): Promise<SharedSocket> {
  const socket = await openShared(app);
  sockets.push(socket);
  const room = app.turbo.signStreamName(context.streams.RoomStream.for(1).name);
  socket.send({ type: "subscribe", id: "room", streams: [room], data: true, sync: true });
  await waitFor(() => socket.messages.some((m) => m.type === "subscribed"));
  return socket;
}

async function seqOf(context: DialectContext, body: string): Promise<number> {
  const { rows } = await context.schema!.admin.query(
    `SELECT seq::int FROM "${context.schema!.name}"._turbocast_changes WHERE row_data->>'body' = $1`,
    [body],
  );
  return rows[0].seq as number;
}

describeOn("PostgreSQL", "data subscribers on PostgreSQL", (context) => {
  // before the schema is dropped: a transaction left open by a failed test would hold its locks
  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.ws.terminate();
    for (const client of clients.splice(0)) await client.end().catch(() => {});
    syncHooks.during = null;
  });

  describe("column types", () => {
    it("carries each listed column as db.select() decodes it: timestamptz, jsonb, numeric, bigint, uuid", async () => {
      const app = await context.open({}, [...dataStreams, KindStream]);
      const events: string[] = [];
      await app.turbo.hub.subscribe([dataChannel(KindStream.for(1).name)], {
        send: (frame: Published) => void events.push(frame.frame),
      });
      // written outside the app, in a zone other than UTC: what decodes it is the column, not the writer
      context.schema!.psql(`SET TIME ZONE 'Asia/Kolkata';
        INSERT INTO kinds (id, at, doc, amount, big, uid) VALUES (1, '2026-01-02 09:34:05.678', '{"tags": ["a", "b"], "n": 1}',
          12.5, 9007199254740993, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')`);
      await waitFor(() => events.length === 1);
      const data = {
        id: 1,
        at: "2026-01-02T04:04:05.678Z",
        doc: { tags: ["a", "b"], n: 1 },
        amount: "12.50",
        big: "9007199254740993",
        uid: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      };
      expect(JSON.parse(events[0]!)).toEqual({
        version: expect.any(Number),
        action: "created",
        table: "kinds",
        key: 1,
        data,
      });
      // the row's own stream syncs it through the same columns
      const set = await app.turbo.sync(KindStream.for(1));
      expect(JSON.parse(JSON.stringify(set.rows))).toEqual([data]);
      for (const text of [...events, JSON.stringify(set)]) expect(text).not.toContain(SECRET);
    });
  });

  describe("a transaction in flight at the sync's snapshot", () => {
    it("reaches the subscriber when it commits after the sync: the sync's version is below its change", async () => {
      // short, so the test does not wait long: past it, the sync answers version 0
      const app = await context.open({ data: { syncWaitMs: 200 } });
      const held = await connect(context);
      await held.query("BEGIN");
      await held.query("INSERT INTO messages (room_id, body) VALUES (1, 'held')");
      // a later seq, committed and dispatched before the sync
      await app.exec("INSERT INTO messages (room_id, body) VALUES (1, 'later')");
      await app.turbo.feed.drain();

      const socket = await syncRoom(app, context);
      const [sync] = socket.data();
      expect(sync!.event!.rows!.map((r) => r.body)).toEqual(["later"]);
      await held.query("COMMIT");
      await waitFor(() => socket.data().some((m) => m.event!.data?.body === "held"), {
        message: "the held transaction's change reaches the subscriber",
      });
      expect(sync!.event!.version).toBeLessThan(await seqOf(context, "held"));
      // and the change the sync held is not sent again (it was dispatched before the subscription)
      expect(socket.data().map((m) => m.event!.data?.body ?? m.event!.action)).toEqual(["sync", "held"]);
    });

    it("waits for it when it ends meanwhile, and takes the version just below its change", async () => {
      const app = await context.open();
      const held = await connect(context);
      await held.query("BEGIN");
      await held.query("INSERT INTO messages (room_id, body) VALUES (1, 'held')");
      await app.exec("INSERT INTO messages (room_id, body) VALUES (1, 'later')");
      await app.turbo.feed.drain();
      const later = await seqOf(context, "later");
      // commits while the sync reads (after its snapshot was taken), without waiting for it
      let committed: Promise<unknown> | undefined;
      syncHooks.during = () => {
        syncHooks.during = null;
        committed = held.query("COMMIT");
      };
      const socket = await syncRoom(app, context);
      await committed;
      const [sync] = socket.data();
      const seq = await seqOf(context, "held");
      expect(seq).toBeLessThan(later);
      expect(sync!.event!.version).toBe(seq - 1);
      expect(sync!.event!.rows!.map((r) => r.body)).toEqual(["later"]);
      await waitFor(() => socket.data().some((m) => m.event!.data?.body === "held"));
    });

    it("answers dataHandler with an ETag that changes when it commits", async () => {
      const app = await context.open({ data: { syncWaitMs: 100 } });
      app.web.get("/rooms/1/messages.json", app.turbo.dataHandler(context.streams.RoomStream.for(1)));
      const held = await connect(context);
      await held.query("BEGIN");
      await held.query("INSERT INTO messages (room_id, body) VALUES (1, 'held')");
      await app.exec("INSERT INTO messages (room_id, body) VALUES (1, 'later')");
      await app.turbo.feed.drain();
      const first = await fetch(`${app.url}/rooms/1/messages.json`);
      const etag = first.headers.get("etag")!;
      expect((await first.json()).rows.map((r: { body: string }) => r.body)).toEqual(["later"]);
      // version 0 (the held transaction outlived syncWaitMs) does not name the set alone
      expect(etag).toMatch(/^"0-[\w-]+"$/);
      expect((await fetch(`${app.url}/rooms/1/messages.json`, { headers: { "if-none-match": etag } })).status).toBe(
        304,
      );
      await held.query("COMMIT");
      const fresh = await waitFor(async () => {
        const response = await fetch(`${app.url}/rooms/1/messages.json`, { headers: { "if-none-match": etag } });
        return response.status === 200 ? response : null;
      });
      expect((await fresh.json()).rows.map((r: { body: string }) => r.body)).toEqual(["held", "later"]);
      expect(fresh.headers.get("etag")).toBe(`"${await app.newestSeq()}"`);
    });
  });

  describe("the client script", () => {
    it("resumes with its sync's version, so a change dispatched after a higher version is not dropped", async () => {
      const app = await context.open({ data: { syncWaitMs: 100 } });
      const signed = app.turbo.signStreamName(context.streams.RoomStream.for(1).name);
      app.web.get("/page", (_req, res) => {
        res
          .set("Cache-Control", "no-store")
          .type("html")
          .send(`<!doctype html><html><head>
<script defer src="/turbo-streams/client.js"></script>
<script>
  window.got = [];
  window.addEventListener("load", () => {
    Turbocast.subscribe(${JSON.stringify(signed)}, {
      onSync: (event) => window.got.push(["sync", event.rows.map((row) => row.body).join(",")]),
      onEvent: (event) => window.got.push([event.action, event.data.body]),
    });
  });
</script></head><body></body></html>`);
      });
      const held = await connect(context);
      await held.query("BEGIN");
      await held.query("INSERT INTO messages (room_id, body) VALUES (1, 'held')");
      await app.exec("INSERT INTO messages (room_id, body) VALUES (1, 'later')");
      await app.turbo.feed.drain();

      const browser = new Browser({
        settings: { enableJavaScriptEvaluation: true, suppressInsecureJavaScriptEnvironmentWarning: true } as never,
      });
      try {
        const page = browser.newPage();
        await page.goto(`${app.url}/page`);
        const got = () => (page.mainFrame.window as unknown as { got: string[][] }).got;
        await waitFor(() => got().length === 1);
        await app.exec("INSERT INTO messages (room_id, body) VALUES (1, 'after')");
        await waitFor(() => got().length === 2);
        // the network drops; the held transaction (a lower version than 'after') commits while the page is away
        app.cut();
        await waitFor(() => app.turbo.hub.size === 0);
        await held.query("COMMIT");
        await app.turbo.feed.drain();
        await waitFor(() => got().length === 3, { timeoutMs: 10_000, message: "the change made while away" });
        expect(got()).toEqual([
          ["sync", "later"],
          ["created", "after"],
          ["created", "held"],
        ]);
      } finally {
        await browser.close();
      }
    });
  });

  describe("dataHandler", () => {
    it("keeps its cached set current across writes by another process and by psql", async () => {
      const app = await context.open();
      app.web.get("/rooms/1/messages.json", app.turbo.dataHandler(context.streams.RoomStream.for(1)));
      const url = `${app.url}/rooms/1/messages.json`;
      const bodies = async (response: Response) =>
        ((await response.json()) as { rows: { body: string }[] }).rows.map((r) => r.body);
      const changedFrom = (etag: string) =>
        waitFor(async () => {
          const response = await fetch(url, { headers: { "if-none-match": etag } });
          return response.status === 200 ? response : null;
        });

      const empty = await fetch(url);
      expect(await bodies(empty)).toEqual([]);
      await new Promise<void>((resolve, reject) => {
        const child = spawn(
          process.execPath,
          ["--import", "tsx", WRITER, context.schema!.url, context.schema!.name, "1", "from a process"],
          {
            stdio: ["ignore", "ignore", "inherit"],
          },
        );
        child.once("error", reject);
        child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`writer exited ${code}`))));
      });
      const afterProcess = await changedFrom(empty.headers.get("etag")!);
      expect(await bodies(afterProcess)).toEqual(["from a process"]);

      context.schema!.psql("INSERT INTO messages (room_id, body) VALUES (1, 'from psql')");
      const afterPsql = await changedFrom(afterProcess.headers.get("etag")!);
      expect(await bodies(afterPsql)).toEqual(["from a process", "from psql"]);
      const etag = afterPsql.headers.get("etag")!;
      expect(etag).toBe(`"${await app.newestSeq()}"`);

      // another room's write leaves the set, and its ETag, alone
      context.schema!.psql("INSERT INTO messages (room_id, body) VALUES (2, 'elsewhere')");
      await waitFor(async () => (await app.newestSeq()) > Number(JSON.parse(etag)));
      await app.turbo.feed.drain();
      expect((await fetch(url, { headers: { "if-none-match": etag } })).status).toBe(304);
    });
  });
});
