import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { tempDir, waitFor } from "./helpers.js";

// Follows the README's "A complete app in five files" as a new user would: its shell block (pack the
// checkout, install the tarball and the rest into a new app, write tsconfig.json), its five files taken
// from the README itself, `tsc --noEmit` in the app, then the app on a free port, where a POSTed note
// arrives as a frame on the page's own subscription. Two deviations, both about speed, none about what
// is installed: `npm install` runs with --prefer-offline --ignore-scripts (the local npm cache; the
// registry is reachable for what it lacks), and better-sqlite3's compiled addon is copied from the
// checkout's identical version instead of being compiled again (two minutes; rebuilt if versions differ).

const root = path.resolve(import.meta.dirname, "..");
const readme = readFileSync(path.join(root, "README.md"), "utf8");

/** The README section's shell block and its files, each named by its first line (`// app.ts`, `{# views/x.njk`). */
function fiveFileApp(): { shell: string; files: Map<string, string> } {
  const start = readme.indexOf("## A complete app in five files");
  const end = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, end);
  const blocks = [...section.matchAll(/```(\w+)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1]!, body: m[2]! }));
  const shell = blocks.find((b) => b.lang === "sh")?.body;
  if (!shell) throw new Error("the README's five-file app has no sh block");
  const files = new Map<string, string>();
  for (const { body } of blocks) {
    const name = /^(?:\/\/|\{#)\s*([\w./-]+\.(?:ts|njk))\b/.exec(body)?.[1];
    if (name) files.set(name, body);
  }
  return { shell, files };
}

const tmp = tempDir("turbocast-package-");
let server: ChildProcess | undefined;
afterAll(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server!.once("exit", resolve));
    server.kill("SIGTERM");
    await exited;
  }
  tmp.cleanup();
});

const checkoutStatus = () =>
  execFileSync("git", ["status", "--porcelain", "--ignored=no"], { cwd: root, encoding: "utf8" });

describe("the README's five-file app, installed from a packed tarball", () => {
  it("packs, installs, type-checks and shows a posted note live", { timeout: 300_000 }, async () => {
    const { shell, files } = fiveFileApp();
    expect([...files.keys()].sort()).toEqual([
      "app.ts",
      "schema.ts",
      "streams/notes.ts",
      "views/_note.njk",
      "views/index.njk",
    ]);
    const statusBefore = checkoutStatus();

    const npmFlags = "--prefer-offline --ignore-scripts --no-audit --no-fund";
    const script = [
      "set -e",
      `npm() { if [ "$1" = install ]; then shift; command npm install ${npmFlags} "$@"; else command npm "$@"; fi; }`,
      shell.replaceAll("/path/to/turbocast", root),
    ].join("\n");
    const setup = spawnSync("bash", ["-c", script], {
      cwd: tmp.dir,
      encoding: "utf8",
      env: { ...process.env, NODE_OPTIONS: "", npm_config_update_notifier: "false" },
    });
    expect(setup.status, setup.stderr + setup.stdout).toBe(0);

    const app = path.join(tmp.dir, "notes-app");
    // the tarball carries the build and not the demo; the checkout got nothing but its (ignored) dist/
    const tarball = readdirSync(app).find((f) => /^turbocast-.*\.tgz$/.test(f));
    expect(tarball).toBeDefined();
    const listing = execFileSync("tar", ["-tzf", path.join(app, tarball!)], { encoding: "utf8" }).split("\n");
    for (const file of ["index.js", "index.d.ts", "delivery/client/turbocast-client.js"])
      expect(listing).toContain(`package/dist/${file}`);
    expect(listing.filter((f) => f.includes("/app/"))).toEqual([]);
    expect(checkoutStatus()).toBe(statusBefore);
    expect(readdirSync(root).filter((f) => f.endsWith(".tgz"))).toEqual([]);

    const installed = path.join(app, "node_modules", "turbocast");
    expect(existsSync(path.join(installed, "dist", "index.js"))).toBe(true);
    linkBetterSqlite(app);

    for (const [name, text] of files) {
      mkdirSync(path.dirname(path.join(app, name)), { recursive: true });
      writeFileSync(path.join(app, name), text);
    }
    const tsc = spawnSync(path.join(app, "node_modules", ".bin", "tsc"), ["--noEmit"], { cwd: app, encoding: "utf8" });
    expect(tsc.stdout + tsc.stderr).toBe("");
    expect(tsc.status).toBe(0);

    const child = spawn(path.join(app, "node_modules", ".bin", "tsx"), ["app.ts"], {
      cwd: app,
      env: { ...process.env, PORT: "0", NODE_OPTIONS: "", NODE_ENV: "development" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    server = child;
    let output = "";
    child.stdout!.on("data", (chunk) => (output += chunk));
    child.stderr!.on("data", (chunk) => (output += chunk));
    const port = await waitFor(() => /http:\/\/localhost:(\d+)/.exec(output)?.[1], {
      timeoutMs: 30_000,
      message: `the app prints its URL (output so far: ${output})`,
    });
    const url = `http://127.0.0.1:${port}`;

    const page = await (await fetch(`${url}/`)).text();
    const src = /<turbo-stream-source[^>]*\ssrc="([^"]+)"/.exec(page)?.[1]?.replaceAll("&amp;", "&");
    expect(src).toBeDefined();
    const abort = new AbortController();
    const events = await fetch(new URL(src!, `${url}/`), {
      headers: { accept: "text/event-stream" },
      signal: abort.signal,
    });
    expect(events.status).toBe(200);
    let received = "";
    const reading = (async () => {
      const decoder = new TextDecoder();
      const reader = events.body!.getReader();
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
        received += decoder.decode(chunk.value, { stream: true });
      }
    })().catch(() => {});

    const posted = await fetch(`${url}/notes`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "body=%3Cb%3Efrom+the+package+test%3C%2Fb%3E",
      redirect: "manual",
    });
    expect(posted.status).toBe(303);
    await waitFor(() => received.includes("from the package test"), {
      timeoutMs: 10_000,
      message: `a frame arrives (received: ${received})`,
    });
    const data = received
      .split("\n")
      .filter((line) => line.startsWith("data: "))
      .map((line) => line.slice(6));
    // the template's comment line leaves its line break: the frame is the README's _note.njk, escaped
    expect(data.join("\n")).toContain(
      `<turbo-stream action="append" target="notes"><template>\n<li id="note_1">&lt;b&gt;from the package test&lt;/b&gt;</li>\n</template></turbo-stream>`,
    );
    abort.abort();
    await reading;
    expect(output).not.toMatch(/error/i);
  });
});

/**
 * Gives the app's better-sqlite3 (installed without its install script) the checkout's compiled addon
 * when the versions match, else compiles it.
 */
function linkBetterSqlite(app: string): void {
  const version = (dir: string) =>
    JSON.parse(readFileSync(path.join(dir, "node_modules", "better-sqlite3", "package.json"), "utf8")).version;
  const addon = path.join("node_modules", "better-sqlite3", "build", "Release", "better_sqlite3.node");
  if (version(app) === version(root) && existsSync(path.join(root, addon))) {
    mkdirSync(path.dirname(path.join(app, addon)), { recursive: true });
    copyFileSync(path.join(root, addon), path.join(app, addon));
    return;
  }
  const rebuild = spawnSync("npm", ["rebuild", "better-sqlite3"], { cwd: app, encoding: "utf8" });
  expect(rebuild.status, rebuild.stderr).toBe(0);
}

describe("the package's sources", () => {
  it("never import the demo (src/app), which the package leaves out", () => {
    const src = path.join(root, "src");
    const offenders = readdirSync(src, { recursive: true, encoding: "utf8" })
      .filter((file) => file.endsWith(".ts") && !file.startsWith(`app${path.sep}`))
      .filter((file) => /from\s+["'][^"']*\/app\//.test(readFileSync(path.join(src, file), "utf8")));
    expect(offenders).toEqual([]);
  });
});
