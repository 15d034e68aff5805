import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Redis } from "ioredis";
import pg from "pg";
import { describe, it } from "vitest";
import { withDefaultUser } from "../../src/brokers/postgres.js";
import { waitFor } from "../helpers.js";

/** The Redis the broker tests talk to. */
export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
/** The PostgreSQL database the broker tests talk to (trust auth, current OS user). */
export const PG_URL = process.env.TURBOCAST_PG_URL ?? process.env.DATABASE_URL ?? "postgres://127.0.0.1:5432/test";

/** A plain pg client on `url` (as the OS user when the URL names none, like psql). */
export function pgClient(url = PG_URL): pg.Client {
  const client = new pg.Client({ connectionString: withDefaultUser(url), connectionTimeoutMillis: 2_000 });
  client.on("error", () => {});
  return client;
}

export const inCI = process.env.CI === "true" || process.env.CI === "1";

/** A name no other test (or test file running in parallel) uses. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString("hex")}`;
}

/** `null` when Redis answers PING at `url`, else why not. */
export async function redisUnavailable(url = REDIS_URL): Promise<string | null> {
  const client = new Redis(url, {
    lazyConnect: true,
    retryStrategy: () => null,
    connectTimeout: 2_000,
    maxRetriesPerRequest: 0,
  });
  let cause: unknown;
  client.on("error", (error: unknown) => (cause ??= error));
  try {
    await client.connect();
    await client.ping();
    return null;
  } catch (error) {
    const reason = cause ?? error;
    return `Redis at ${url}: ${(reason instanceof Error ? reason.message : String(reason)).replace(/\.$/, "")}`;
  } finally {
    client.disconnect();
  }
}

/** `null` when PostgreSQL accepts a connection at `url`, else why not. */
export async function postgresUnavailable(url = PG_URL): Promise<string | null> {
  const client = pgClient(url);
  try {
    await client.connect();
    await client.query("select 1");
    return null;
  } catch (error) {
    return `PostgreSQL at ${url}: ${(error instanceof Error ? error.message : String(error)).replace(/\.$/, "")}`;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * `describe` for tests that need a real server. When the server is
 * unreachable: outside CI the tests are skipped and the reason printed; in CI
 * (CI=true) the suite fails, so a CI run can never pass without them.
 */
export function describeWithServer(title: string, unavailable: string | null, body: () => void): void {
  if (unavailable !== null && inCI) {
    describe(title, () => {
      it("needs its server, which is unreachable in CI", () => {
        throw new Error(`${unavailable} — CI must run these tests (see scripts/services.sh)`);
      });
    });
    return;
  }
  if (unavailable !== null) {
    console.warn(`[turbocast tests] skipping "${title}": ${unavailable}. Run scripts/services.sh to start it.`);
  }
  describe.skipIf(unavailable !== null)(unavailable === null ? title : `${title} (skipped: ${unavailable})`, body);
}

/** Deletes every Redis key under a prefix. */
export async function deleteRedisKeys(url: string, prefix: string): Promise<void> {
  const client = new Redis(url, { maxRetriesPerRequest: 1 });
  client.on("error", () => {});
  try {
    let cursor = "0";
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) await client.del(...keys);
    } while (cursor !== "0");
  } finally {
    client.disconnect();
  }
}

/** Drops the tables of a postgres broker namespace. */
export async function dropPostgresNamespace(url: string, prefix: string): Promise<void> {
  const client = pgClient(url);
  await client.connect();
  try {
    await client.query(
      `drop table if exists "${prefix}_frames", "${prefix}_meta", "${prefix}_floors", "${prefix}_watches"`,
    );
  } finally {
    await client.end();
  }
}

/** Connections of Redis clients named `name`, as CLIENT LIST reports them. */
export async function redisClients(
  admin: Redis,
  name: string,
): Promise<Array<{ id: string; flags: string; cmd: string }>> {
  const list = (await admin.client("LIST")) as string;
  return list
    .split("\n")
    .filter((line) => line.includes(` name=${name} `))
    .map((line) => {
      const field = (key: string) => new RegExp(`(?:^| )${key}=(\\S*)`).exec(line)?.[1] ?? "";
      return { id: field("id"), flags: field("flags"), cmd: field("cmd") };
    });
}

/** A free TCP port on 127.0.0.1 (free when asked; the caller binds it right away). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** `null` when a redis-server binary can be started here (for PrivateRedis), else why not. */
export function redisServerMissing(): string | null {
  const result = spawnSync("redis-server", ["--version"], { stdio: "ignore" });
  return result.error || result.status !== 0
    ? "no redis-server binary on PATH to start a private Redis (scripts/services.sh installs it)"
    : null;
}

/**
 * A private redis-server (no persistence) as a child process, which a test
 * may kill and start again on the same port: a Redis restart that loses
 * every key, without touching the shared server other tests use.
 */
export class PrivateRedis {
  readonly port: number;
  readonly url: string;
  #child: ChildProcess | null = null;

  private constructor(port: number) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
  }

  static async start(): Promise<PrivateRedis> {
    const server = new PrivateRedis(await freePort());
    await server.start();
    return server;
  }

  async start(): Promise<void> {
    if (this.#child) return;
    const child = spawn(
      "redis-server",
      [
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
      ],
      { stdio: "ignore" },
    );
    this.#child = child;
    child.once("exit", () => {
      if (this.#child === child) this.#child = null;
    });
    await waitFor(async () => (await redisUnavailable(this.url)) === null, {
      timeoutMs: 10_000,
      message: `redis-server on port ${this.port}`,
    });
  }

  /** SIGKILL: the server vanishes mid-conversation, its data with it. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGKILL");
    await exited;
  }
}

/** The initdb and postgres binaries of the newest local PostgreSQL (Debian layout first, then PATH); null when there are none. */
function postgresBinaries(): { initdb: string; postgres: string } | null {
  const debian = "/usr/lib/postgresql";
  if (existsSync(debian)) {
    const versions = readdirSync(debian).sort((a, b) => Number(b) - Number(a));
    for (const version of versions) {
      const bin = path.join(debian, version, "bin");
      if (existsSync(path.join(bin, "initdb")) && existsSync(path.join(bin, "postgres"))) {
        return { initdb: path.join(bin, "initdb"), postgres: path.join(bin, "postgres") };
      }
    }
  }
  const found = spawnSync("initdb", ["--version"], { stdio: "ignore" });
  return found.error || found.status !== 0 ? null : { initdb: "initdb", postgres: "postgres" };
}

/** `null` when a private PostgreSQL can be started here, else why not. */
export function postgresServerMissing(): string | null {
  if (!postgresBinaries())
    return "no initdb/postgres binaries to start a private PostgreSQL (scripts/services.sh installs them)";
  if (process.getuid?.() === 0 && spawnSync("runuser", ["--help"], { stdio: "ignore" }).error) {
    return "running as root without runuser: PostgreSQL refuses to run as root";
  }
  return null;
}

/**
 * A private PostgreSQL cluster in a temporary folder, as a child process,
 * which a test may crash (SIGQUIT: every connection dropped at once, no
 * checkpoint) and start again on the same port — a real server restart,
 * without touching the shared server other tests use. PostgreSQL refuses to
 * run as root, so under root it runs as the `postgres` user.
 */
export class PrivatePostgres {
  readonly port: number;
  readonly url: string;
  #dir: string;
  #child: ChildProcess | null = null;
  #binaries: { initdb: string; postgres: string };

  private constructor(port: number, dir: string, binaries: { initdb: string; postgres: string }) {
    this.port = port;
    this.#dir = dir;
    this.#binaries = binaries;
    this.url = `postgres://${encodeURIComponent(os.userInfo().username)}@127.0.0.1:${port}/postgres`;
  }

  static async start(): Promise<PrivatePostgres> {
    const binaries = postgresBinaries();
    if (!binaries) throw new Error("no PostgreSQL binaries");
    const dir = mkdtempSync(path.join(os.tmpdir(), "turbocast-pg-"));
    const server = new PrivatePostgres(await freePort(), dir, binaries);
    if (process.getuid?.() === 0)
      chownSync(dir, Number(spawnSync("id", ["-u", "postgres"]).stdout.toString().trim()), 0);
    const init = server.#run(binaries.initdb, [
      "-D",
      path.join(dir, "data"),
      "-A",
      "trust",
      "-U",
      os.userInfo().username,
      "--no-sync",
      "-E",
      "UTF8",
    ]);
    const code = await new Promise<number | null>((resolve) => init.once("exit", resolve));
    if (code !== 0) throw new Error(`initdb failed with ${code}`);
    await server.start();
    return server;
  }

  async start(): Promise<void> {
    if (this.#child) return;
    const child = this.#run(this.#binaries.postgres, [
      "-D",
      path.join(this.#dir, "data"),
      "-p",
      String(this.port),
      "-k",
      this.#dir,
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "fsync=off",
      "-c",
      "max_connections=40",
    ]);
    this.#child = child;
    child.once("exit", () => {
      if (this.#child === child) this.#child = null;
    });
    await waitFor(async () => (await postgresUnavailable(this.url)) === null, {
      timeoutMs: 20_000,
      message: `postgres on port ${this.port}`,
    });
  }

  /** SIGQUIT to the postmaster: an immediate shutdown that drops every connection; the data stays. */
  async crash(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    const pid = Number(readFileSync(path.join(this.#dir, "data", "postmaster.pid"), "utf8").split("\n")[0]);
    process.kill(pid, "SIGQUIT");
    await exited;
  }

  /** Stops the server and removes its folder. */
  async destroy(): Promise<void> {
    await this.crash();
    rmSync(this.#dir, { recursive: true, force: true });
  }

  #run(command: string, args: string[]): ChildProcess {
    const asRoot = process.getuid?.() === 0;
    return spawn(asRoot ? "runuser" : command, asRoot ? ["-u", "postgres", "--", command, ...args] : args, {
      stdio: "ignore",
    });
  }
}
