import http from "node:http";
import type { Socket } from "node:net";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { sql } from "drizzle-orm";
import { drizzle as sqliteDrizzle } from "drizzle-orm/better-sqlite3";
import { drizzle as pgDrizzle } from "drizzle-orm/node-postgres";
import express from "express";
import WebSocket from "ws";
import nunjucks from "nunjucks";
import { afterEach, beforeEach, describe } from "vitest";
import { sqliteClient } from "../../src/changes/sqlite-capture.js";
import { type PgSyncDatabase, SyncReader, postgresSyncSource, sqliteSyncSource } from "../../src/data/sync.js";
import { type Turbo, type TurboOptions, createTurbo } from "../../src/index.js";
import { DDL as SQLITE_DDL, TEMPLATES, schema as sqliteTables } from "../fixtures/data/schema.js";
import * as sqliteFixture from "../fixtures/data/schema.js";
import { DDL as PG_DDL, schema as pgTables } from "../fixtures/data/schema-pg.js";
import * as pgFixture from "../fixtures/data/schema-pg.js";
import type { defineDataStreams } from "../fixtures/data/streams.js";
import { closeServer, listen, memoryLogger, tempDir } from "../helpers.js";
import { type TestSchema, createTestSchema } from "../postgres-app/pg-helpers.js";

/**
 * The data tests run against both app databases: one suite, two dialects
 * (STYLE.md: "every database dialect runs the same tests"). Each test gets
 * a fresh database — a SQLite file in a temporary folder, or a PostgreSQL
 * schema of its own on the test server, dropped after it — and an app on
 * it: createTurbo over the dialect's Drizzle database with the data stream
 * classes, Express with turbo.middleware(), and turbo.listen on port 0.
 */
export type DialectName = "SQLite" | "PostgreSQL";

export type DataStreams = ReturnType<typeof defineDataStreams>;

export interface DataApp {
  turbo: Turbo;
  /** The app's Express app (routes added by a test come after turbo.middleware()). */
  web: express.Express;
  /** http://127.0.0.1:<port> of the app's server; its subscription path is /turbo-streams. */
  url: string;
  /** Runs SQL through the app's own Drizzle database (raw SQL, as an app may). */
  exec(statement: string): Promise<void>;
  /** Runs each statement through exec, then waits until the feed dispatched them. */
  write(...statements: string[]): Promise<void>;
  /**
   * Runs SQL on a connection of its own, as another writer would. SQLite:
   * synchronously (a sync()'s `during` hook may call it and stay synchronous).
   */
  other(statement: string): void | Promise<void>;
  /** The newest seq of the change log. */
  newestSeq(): Promise<number>;
  /** A SyncReader like the one the app's subscriptions use (maxRows 1,000). */
  reader(): SyncReader;
  /** Drops every connection to the app's server, as a network failure would (clients reconnect). */
  cut(): void;
}

export interface DialectContext {
  name: DialectName;
  /** The data stream classes over this dialect's tables. */
  streams: DataStreams;
  /** How a RoomStream sync may return its rows: SQLite reads synchronously or not; PostgreSQL's read is a promise. */
  syncModes: ReadonlyArray<"synchronous" | "async">;
  /** The test's app (closed after the test). */
  open(options?: Partial<TurboOptions>, streams?: TurboOptions["streams"]): Promise<DataApp>;
  /** PostgreSQL: the test's schema. */
  readonly schema: TestSchema | undefined;
}

const SECRET_OPTIONS = { secret: "data-dialects-secret-0123456789abcdef" };

interface Dialect {
  name: DialectName;
  streams: DataStreams;
  syncModes: ReadonlyArray<"synchronous" | "async">;
  /** Makes the test's empty database; returns what opens apps on it and what drops it. */
  prepare(): Promise<{
    schema?: TestSchema;
    open(
      options: Partial<TurboOptions>,
      views: nunjucks.Environment,
    ): Promise<Omit<DataApp, "web" | "url" | "cut" | "write">>;
    drop(): Promise<void>;
  }>;
}

const sqlite: Dialect = {
  name: "SQLite",
  streams: sqliteFixture,
  syncModes: ["synchronous", "async"],
  async prepare() {
    const tmp = tempDir("turbocast-data-");
    const file = path.join(tmp.dir, "app.db");
    const connections: Database.Database[] = [];
    const connect = () => {
      const connection = new Database(file);
      connection.pragma("busy_timeout = 5000");
      connections.push(connection);
      return connection;
    };
    const first = connect();
    first.pragma("journal_mode = WAL");
    first.exec(SQLITE_DDL);
    return {
      async open(options, views) {
        const db = sqliteDrizzle(connect(), { schema: sqliteTables });
        const turbo = await createTurbo({ db, views, streams: sqliteFixture.dataStreams, ...options });
        let other: Database.Database | undefined;
        return {
          turbo,
          async exec(statement) {
            db.run(sql.raw(statement));
          },
          other(statement) {
            other ??= connect();
            other.exec(statement);
          },
          async newestSeq() {
            return Number(first.prepare("SELECT coalesce(max(seq), 0) FROM _turbocast_changes").pluck().get());
          },
          reader: () => new SyncReader({ source: sqliteSyncSource(sqliteClient(db)), maxRows: 1000 }),
        };
      },
      async drop() {
        for (const connection of connections) connection.close();
        tmp.cleanup();
      },
    };
  },
};

const postgres: Dialect = {
  name: "PostgreSQL",
  streams: pgFixture,
  syncModes: ["async"],
  async prepare() {
    const schema = await createTestSchema("tcdata");
    await schema.admin.query(`SET search_path = "${schema.name}"; ${PG_DDL}`);
    const changes = `"${schema.name}"._turbocast_changes`;
    return {
      schema,
      async open(options, views) {
        const db = pgDrizzle(schema.pool(), { schema: pgTables });
        const turbo = await createTurbo({ db, views, streams: pgFixture.dataStreams, ...options });
        let other: ReturnType<TestSchema["pool"]> | undefined;
        return {
          turbo,
          async exec(statement) {
            await db.execute(sql.raw(statement));
          },
          async other(statement) {
            other ??= schema.pool(2);
            await other.query(statement);
          },
          async newestSeq() {
            const { rows } = await schema.admin.query(`SELECT coalesce(max(seq), 0)::int AS seq FROM ${changes}`);
            return rows[0].seq as number;
          },
          reader: () =>
            new SyncReader({
              source: postgresSyncSource({
                db: db as unknown as PgSyncDatabase,
                changesTable: () => changes,
                waitMs: 1000,
              }),
              maxRows: 1000,
            }),
        };
      },
      drop: () => schema.drop(),
    };
  },
};

export const DIALECTS: readonly Dialect[] = [sqlite, postgres];

/**
 * Declares `body`'s tests once per dialect, each dialect in a describe of
 * its own titled "<title> (<dialect>)".
 */
export function describeDialects(title: string, body: (context: DialectContext) => void): void {
  for (const dialect of DIALECTS) describeOn(dialect.name, title, body);
}

/** Declares `body`'s tests on one dialect (what only it can do), titled "<title> (<dialect>)". */
export function describeOn(name: DialectName, title: string, body: (context: DialectContext) => void): void {
  const dialect = DIALECTS.find((d) => d.name === name)!;
  describe(`${title} (${dialect.name})`, () => {
    let database: Awaited<ReturnType<Dialect["prepare"]>> | undefined;
    let views: { dir: string; cleanup: () => void } | undefined;
    const closing: Array<() => Promise<void>> = [];

    beforeEach(async () => {
      views = tempDir("turbocast-data-views-");
      for (const [name, text] of Object.entries(TEMPLATES)) {
        mkdirSync(path.dirname(path.join(views.dir, name)), { recursive: true });
        writeFileSync(path.join(views.dir, name), text);
      }
      database = await dialect.prepare();
    });

    afterEach(async () => {
      for (const close of closing.splice(0).reverse()) await close();
      await database?.drop();
      database = undefined;
      views?.cleanup();
    });

    body({
      name: dialect.name,
      streams: dialect.streams,
      syncModes: dialect.syncModes,
      get schema() {
        return database?.schema;
      },
      async open(options = {}, streams) {
        const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(views!.dir), { autoescape: true });
        const app = await database!.open(
          {
            logger: memoryLogger(),
            ...SECRET_OPTIONS,
            authenticate: (req) => (req.headers["x-user"] as string | undefined) ?? null,
            ...(streams === undefined ? {} : { streams }),
            ...options,
          },
          env,
        );
        const web = express();
        web.use(app.turbo.middleware());
        const server = http.createServer(web);
        const connections = new Set<Socket>();
        server.on("connection", (socket) => {
          connections.add(socket);
          socket.once("close", () => connections.delete(socket));
        });
        app.turbo.listen(server);
        const { url } = await listen(server);
        closing.push(async () => {
          await app.turbo.close();
          await closeServer(server);
        });
        const cut = () => {
          for (const socket of connections) socket.destroy();
        };
        const write = async (...statements: string[]) => {
          for (const statement of statements) await app.exec(statement);
          await app.turbo.feed.drain();
        };
        return { ...app, web, url, cut, write };
      },
    });
  });
}

/** A JSON message of the shared connection (a control answer, or a data message). */
export interface SharedMessage {
  type: string;
  id?: unknown;
  for?: string;
  status?: number;
  position?: string;
  event?: { action: string; version: number; data?: Record<string, unknown>; rows?: Record<string, unknown>[] };
}

export interface SharedSocket {
  ws: WebSocket;
  /** JSON messages, in order. */
  messages: SharedMessage[];
  /** Frames (HTML), in order. */
  frames: string[];
  send(message: unknown): void;
  /** The data messages so far. */
  data(): SharedMessage[];
}

/** A `ws` client on the app's shared connection (`turbocast.v1`), as the client script opens it; `user` goes in x-user. */
export async function openShared(
  app: Pick<DataApp, "url">,
  options: { user?: string | undefined; onText?: (text: string) => void } = {},
): Promise<SharedSocket> {
  const ws = new WebSocket(`${app.url.replace(/^http/, "ws")}/turbo-streams`, "turbocast.v1", {
    headers: options.user === undefined ? {} : { "x-user": options.user },
  });
  const messages: SharedMessage[] = [];
  const frames: string[] = [];
  ws.on("message", (data) => {
    const text = data.toString("utf8");
    options.onText?.(text);
    if (text.startsWith("{")) messages.push(JSON.parse(text) as SharedMessage);
    else frames.push(text);
  });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  return {
    ws,
    messages,
    frames,
    send: (message) => ws.send(JSON.stringify(message)),
    data: () => messages.filter((m) => m.type === "data"),
  };
}
