import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import express from "express";
import nunjucks from "nunjucks";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type Turbo, createTurbo } from "../src/index.js";
import { DDL, cards, schema } from "./fixtures/declarative/schema.js";
import { BoardStream, CardStream, TEMPLATES, cardHooks, declarativeStreams } from "./fixtures/declarative/streams.js";
import { closeServer, listen, memoryLogger, openSse, tempDir, unescapeHtml, waitFor } from "./helpers.js";

interface Server {
  base: string;
  turbo: Turbo;
  sqlite: Database.Database;
  db: ReturnType<typeof drizzle<typeof schema>>;
  file: string;
  authenticated: string[];
  /** Resolved by a test to let POST /quiet finish. */
  gate: { open: () => void; wait: Promise<void> };
  close(): Promise<void>;
}

let tmp: { dir: string; cleanup: () => void };
let server: Server | undefined;
const sources: Array<{ close(): void }> = [];

function gate(): Server["gate"] {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { open, wait };
}

/** A small app: authenticate reads X-User (asynchronously, counting its calls); routes write cards. */
async function start(): Promise<Server> {
  const file = path.join(tmp.dir, "app.db");
  const sqlite = new Database(file);
  sqlite.pragma("journal_mode = WAL");
  sqlite.exec(DDL);
  const db = drizzle(sqlite, { schema });
  const views = path.join(tmp.dir, "views");
  for (const [name, text] of Object.entries(TEMPLATES)) {
    mkdirSync(path.dirname(path.join(views, name)), { recursive: true });
    writeFileSync(path.join(views, name), text);
  }
  const authenticated: string[] = [];
  const turbo = await createTurbo({
    db,
    views: new nunjucks.Environment(new nunjucks.FileSystemLoader(views), { autoescape: true }),
    streams: declarativeStreams,
    logger: memoryLogger(),
    secret: "change-context-secret-0123456789abcdef",
    authenticate: async (req) => {
      const name = req.get("x-user");
      if (name) authenticated.push(name);
      await new Promise((resolve) => setImmediate(resolve));
      return name ? { name } : null;
    },
  });
  const app = express();
  app.use(turbo.middleware());
  app.use(express.json());
  const state = { gate: gate() };
  app.get("/boards/:id", (req, res) => {
    res.type("html").send(turbo.streamSource(res, [BoardStream.for(Number(req.params.id))]));
  });
  app.post("/cards", (req, res) => {
    const titles: string[] = req.body.titles ?? [req.body.title];
    for (const title of titles)
      db.insert(cards)
        .values({ boardId: req.body.boardId ?? 1, title })
        .run();
    res.sendStatus(204);
  });
  app.post("/ping", async (req, res) => {
    await BoardStream.for(1).append(
      "cards/_card.njk",
      { card: { id: 0, title: req.body.title, stream: CardStream.for(99) } },
      { target: "cards", toOthers: true },
    );
    res.sendStatus(204);
  });
  app.post("/quiet", async (_req, res) => {
    await turbo.suppressingBroadcasts(async () => {
      db.insert(cards).values({ boardId: 1, title: "quiet 1" }).run();
      await state.gate.wait;
      db.insert(cards).values({ boardId: 1, title: "quiet 2" }).run();
    });
    res.sendStatus(204);
  });
  const httpServer = http.createServer(app);
  turbo.listen(httpServer);
  const { url } = await listen(httpServer);
  server = {
    base: url,
    turbo,
    sqlite,
    db,
    file,
    authenticated,
    get gate() {
      return state.gate;
    },
    async close() {
      for (const source of sources.splice(0)) source.close();
      await turbo.close();
      await closeServer(httpServer);
      sqlite.close();
    },
  };
  return server;
}

const post = (base: string, route: string, body: object, headers: Record<string, string> = {}) =>
  fetch(`${base}${route}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });

/** Renders a board page and subscribes to its source, as the page would: its page id and its frames. */
async function openPage(s: Server, boardId: number): Promise<{ page: string; frames: () => string[] }> {
  const tag = await (await fetch(`${s.base}/boards/${boardId}`)).text();
  const src = unescapeHtml(/src="([^"]*)"/.exec(tag)![1]!);
  const page = new URL(src, s.base).searchParams.get("p")!;
  const sse = openSse(`${s.base}${src}`);
  sources.push(sse.source);
  await sse.opened;
  return { page, frames: () => sse.messages.map((m) => m.data).filter((d) => d.includes("<turbo-stream")) };
}

beforeEach(() => {
  tmp = tempDir("turbocast-context-");
  cardHooks.reset();
});

afterEach(async () => {
  CardStream.toOthers = undefined;
  await server?.close();
  server = undefined;
  tmp.cleanup();
});

describe("actor", () => {
  it("is the request's user for its own writes (authenticate asked once per request), undefined for other writers", async () => {
    const s = await start();
    const res = await post(s.base, "/cards", { titles: ["a", "b"] }, { "x-user": "alice" });
    expect(res.status).toBe(204);
    await s.turbo.feed.drain();
    expect(cardHooks.saves.map((c) => [c.card.title, c.context.actor])).toEqual([
      ["a", { name: "alice" }],
      ["b", { name: "alice" }],
    ]);
    expect(s.authenticated).toEqual(["alice"]);

    // authenticate returning null: no actor
    await post(s.base, "/cards", { title: "anonymous" });
    await s.turbo.feed.drain();
    expect(cardHooks.saves.at(-1)!.context.actor).toBeUndefined();

    // outside any request: no actor
    s.db.insert(cards).values({ boardId: 1, title: "script" }).run();
    await s.turbo.feed.drain();
    expect(cardHooks.saves.at(-1)!.context.actor).toBeUndefined();
    expect(cardHooks.saves.at(-1)!.card.title).toBe("script");
  });

  const shell = spawnSync("sqlite3", ["-version"], { encoding: "utf8" });
  if (shell.status !== 0 && process.env.CI) throw new Error("CI: the sqlite3 shell is missing");
  it.runIf(shell.status === 0)("is undefined for a write made with the sqlite3 shell while requests run", async () => {
    const s = await start();
    await post(s.base, "/cards", { title: "from a request" }, { "x-user": "bob" });
    const run = spawnSync("sqlite3", [s.file, "INSERT INTO cards (board_id, title) VALUES (1, 'from the shell');"], {
      encoding: "utf8",
    });
    expect(run.status).toBe(0);
    await waitFor(() => cardHooks.saves.length === 2);
    expect(cardHooks.saves.map((c) => [c.card.title, c.context.actor])).toEqual([
      ["from a request", { name: "bob" }],
      ["from the shell", undefined],
    ]);
  });
});

describe("toOthers", () => {
  it("skips only the page whose request wrote the row (static toOthers)", async () => {
    CardStream.toOthers = true;
    const s = await start();
    const a = await openPage(s, 1);
    const b = await openPage(s, 1);
    expect(a.page).not.toBe(b.page);
    await post(s.base, "/cards", { title: "by a" }, { "x-turbocast-page": a.page });
    await post(s.base, "/cards", { title: "by b" }, { "x-turbocast-page": b.page });
    // no page header (no client script): everyone gets it
    await post(s.base, "/cards", { title: "by a script" });
    await waitFor(() => a.frames().length === 2 && b.frames().length === 2);
    expect(a.frames().map((f) => />([^<]*)<\/li>/.exec(f)![1])).toEqual(["by b", "by a script"]);
    expect(b.frames().map((f) => />([^<]*)<\/li>/.exec(f)![1])).toEqual(["by a", "by a script"]);
  });

  it("skips the acting page on a broadcast method called with { toOthers: true }", async () => {
    const s = await start();
    const a = await openPage(s, 1);
    const b = await openPage(s, 1);
    await post(s.base, "/ping", { title: "from a" }, { "x-turbocast-page": a.page });
    await post(s.base, "/ping", { title: "from b" }, { "x-turbocast-page": b.page });
    await waitFor(() => a.frames().length === 1 && b.frames().length === 1);
    // wait for a marker everyone gets, so a frame wrongly sent to its own page would have arrived before it
    await post(s.base, "/cards", { title: "marker" });
    await waitFor(() => a.frames().length === 2 && b.frames().length === 2);
    expect(a.frames()[0]).toContain("from b");
    expect(b.frames()[0]).toContain("from a");
  });
});

describe("suppressingBroadcasts", () => {
  it("silences only the writes made inside it while another request writes at the same moment", async () => {
    const s = await start();
    const quiet = post(s.base, "/quiet", {});
    await waitFor(() => s.sqlite.prepare("SELECT 1 FROM cards WHERE title = 'quiet 1'").get());
    // the quiet request is waiting inside suppressingBroadcasts: another request writes now
    expect((await post(s.base, "/cards", { title: "loud" }, { "x-user": "carol" })).status).toBe(204);
    await s.turbo.feed.drain();
    s.gate.open();
    expect((await quiet).status).toBe(204);
    await s.turbo.feed.drain();
    expect(cardHooks.saves.map((c) => [c.card.title, c.context.actor])).toEqual([["loud", { name: "carol" }]]);
    // the history is whole
    expect(s.sqlite.prepare("SELECT count(*) FROM _turbocast_changes").pluck().get()).toBe(3);
  });
});
