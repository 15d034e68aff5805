import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import express from "express";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import type nunjucks from "nunjucks";
import { afterEach, describe, expect, it } from "vitest";
import { type Turbo, createTurbo } from "../src/index.js";
import { RoomStream } from "./fixtures/streams-basic/rooms.js";
import { DDL } from "./fixtures/schema.js";
import { closeServer, listen, tempDir } from "./helpers.js";

const require = createRequire(import.meta.url);
const SECRET = "views-integration-secret-0123456789abcdef";

/** A second, separate copy of nunjucks, as an app with its own nunjucks dependency has. */
function freshNunjucks(): typeof nunjucks {
  const root = path.dirname(require.resolve("nunjucks/package.json"));
  const saved = Object.keys(require.cache).filter((key) => key.startsWith(root));
  const entries = saved.map((key) => [key, require.cache[key]] as const);
  for (const key of saved) delete require.cache[key];
  try {
    return require("nunjucks") as typeof nunjucks;
  } finally {
    for (const key of Object.keys(require.cache)) if (key.startsWith(root)) delete require.cache[key];
    for (const [key, mod] of entries) require.cache[key] = mod;
  }
}

let cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const fn of cleanups.reverse()) await fn();
  cleanups = [];
});

async function setup(env: nunjucks.Environment, mountMiddleware: boolean) {
  const tmp = tempDir();
  const sqlite = new Database(path.join(tmp.dir, "app.db"));
  sqlite.exec(DDL);
  const warnings: string[] = [];
  const turbo: Turbo = await createTurbo({
    db: drizzle(sqlite),
    views: env,
    streams: [RoomStream],
    secret: SECRET,
    logger: { info() {}, warn: (m) => void warnings.push(m), error() {} },
  });
  const app = express();
  env.express(app);
  if (mountMiddleware) app.use(turbo.middleware());
  app.get("/", (_req, res) => res.render("page.njk", { room: RoomStream.all() }));
  const server = http.createServer(app);
  turbo.listen(server);
  const { url } = await listen(server);
  cleanups.push(
    tmp.cleanup,
    () => sqlite.close(),
    () => turbo.close(),
    () => closeServer(server),
  );
  return { url, warnings };
}

describe("turbo_stream_from in an app's own views", () => {
  it("renders a real tag with an Environment from another copy of nunjucks", async () => {
    const other = freshNunjucks();
    const env = new other.Environment(
      new other.FileSystemLoader(path.join(import.meta.dirname, "fixtures", "views-page")),
      { autoescape: true },
    );
    const { url } = await setup(env, true);
    const html = await (await fetch(url)).text();
    expect(html).toMatch(/^<turbo-stream-source src="\/turbo-streams\?s=[^"]+"><\/turbo-stream-source>/);
    expect(html).not.toContain("&lt;");
  });

  it("warns once when a page renders it without turbo.middleware()", async () => {
    const other = freshNunjucks();
    const env = new other.Environment(
      new other.FileSystemLoader(path.join(import.meta.dirname, "fixtures", "views-page")),
      { autoescape: true },
    );
    const { url, warnings } = await setup(env, false);
    await (await fetch(url)).text();
    await (await fetch(url)).text();
    expect(warnings.filter((w) => w.includes("turbo.middleware()"))).toHaveLength(1);
  });
});
