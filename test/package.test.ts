import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";

// What an app gets from `npm install turbocast`: dist/, compiled by `npm run build` (npm runs it as
// "prepare"), imported by plain Node — no tsx, no TypeScript — through the package's exports.

const root = path.resolve(import.meta.dirname, "..");

const APP = `
import Database from "better-sqlite3";
import { drizzle } from "drizzle-orm/better-sqlite3";
import { integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import nunjucks from "nunjucks";
import { ModelStream, createTurbo } from "turbocast";

const items = sqliteTable("items", { id: integer("id").primaryKey(), body: text("body").notNull() });
const seen = [];
class ItemStream extends ModelStream {
  static model = items;
  async onSave(item) {
    seen.push(item.body);
    await this.append("_item.njk", { item }, { target: "items" });
  }
}
const sqlite = new Database(":memory:");
sqlite.exec("create table items (id integer primary key, body text not null)");
const db = drizzle(sqlite);
const frames = [];
const turbo = await createTurbo({
  db,
  views: new nunjucks.Environment({ getSource: () => ({ src: "<li>{{ item.body }}</li>", path: "_item.njk" }) }, { autoescape: true }),
  streams: [ItemStream],
  secret: "package-test-secret-0123456789abcdef",
  logger: { info() {}, warn(message) { console.error(message); }, error(message) { console.error(message); } },
});
await turbo.hub.subscribe([ItemStream.for(1).name], { send: (published) => frames.push(published.frame) });
db.insert(items).values({ id: 1, body: "<b>hello</b>" }).run();
await turbo.feed.drain();
await new Promise((resolve) => setTimeout(resolve, 20));
await turbo.close();
console.log(JSON.stringify({ seen, frames, client: turbo.clientScriptPath }));
`;

describe("the built package", () => {
  it("compiles to dist/ and runs in plain Node through its exports", { timeout: 120_000 }, () => {
    const build = spawnSync(process.execPath, ["scripts/build.mjs"], { cwd: root, encoding: "utf8" });
    expect(build.stderr + build.stdout).toBe("");
    expect(build.status).toBe(0);
    for (const file of ["index.js", "index.d.ts", "delivery/client/turbocast-client.js"])
      expect(existsSync(path.join(root, "dist", file))).toBe(true);
    expect(existsSync(path.join(root, "dist", "app"))).toBe(false);

    // inside the package, "turbocast" is a self-reference; without the turbocast-source condition it is dist/
    const dir = path.join(root, "test-output", "package-check");
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, "app.mjs"), APP);
    try {
      const run = spawnSync(process.execPath, [path.join(dir, "app.mjs")], {
        cwd: dir,
        encoding: "utf8",
        env: { ...process.env, NODE_OPTIONS: "" },
      });
      expect(run.stderr).toBe("");
      expect(run.status).toBe(0);
      expect(JSON.parse(run.stdout)).toEqual({
        seen: ["<b>hello</b>"],
        frames: [
          `<turbo-stream action="append" target="items"><template><li>&lt;b&gt;hello&lt;/b&gt;</li></template></turbo-stream>`,
        ],
        client: "/turbo-streams/client.js",
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
