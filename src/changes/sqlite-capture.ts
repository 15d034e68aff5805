import type Database from "better-sqlite3";
import type { BetterSQLite3Database } from "drizzle-orm/better-sqlite3";
import { ConfigError } from "../errors.js";
import type { TableInfo } from "../streams/table.js";
import type { CaptureAdapter, CapturePoll, CaptureSync, Claim } from "./capture.js";
import { type RowDecoder, rowDecoder } from "./decode.js";
import { ChangeLog } from "./log.js";
import { type RequestScopeAccess, RequestNotes } from "./request-notes.js";
import { type CaptureTable, syncTriggers } from "./triggers.js";

/**
 * Change capture on SQLite, over the app's own better-sqlite3 connection:
 * AFTER triggers (triggers.ts) append to the change log, whose cursor is
 * claimed in IMMEDIATE transactions (log.ts); changes written inside a
 * request are noted on the connection (request-notes.ts). The schema
 * version is `PRAGMA schema_version`.
 */
export class SqliteCapture implements CaptureAdapter {
  readonly #client: Database.Database;
  readonly #requests: RequestScopeAccess | undefined;
  #log: ChangeLog | null = null;
  #notes: RequestNotes | null = null;
  /** schema_version after the last successful sync (-1: none yet): a different one means a migration ran. */
  #syncedVersion = -1;
  /** The triggers the last sync wanted (see SyncOptions). */
  #wanted: Map<string, string> | undefined;

  /**
   * @param client the app's own connection (its journal mode and busy timeout are left as they are)
   * @param requests the request scope: changes written inside a request are dispatched inside it again
   */
  constructor(client: Database.Database, requests?: RequestScopeAccess) {
    this.#client = client;
    this.#requests = requests;
  }

  get busy(): boolean {
    return this.#client.inTransaction;
  }

  sync(tables: readonly TableInfo[]): CaptureSync {
    const result = syncTriggers(this.#client, tables.map(captureTable), { previous: this.#wanted });
    this.#syncedVersion = result.schemaVersion;
    this.#wanted = result.wanted;
    return result;
  }

  open(): void {
    this.#log ??= new ChangeLog(this.#client);
    if (this.#requests && !this.#notes) {
      this.#notes = new RequestNotes(this.#client, this.#requests);
      this.#notes.install();
    }
  }

  close(): void {
    this.#notes?.uninstall();
  }

  poll(owner: string, now: number): CapturePoll {
    const poll = this.#log!.poll(owner, now);
    return {
      claimable: poll.claimable,
      doneSeq: poll.doneSeq,
      schemaChanged: poll.schemaVersion !== this.#syncedVersion,
    };
  }

  claim(owner: string, doneUpTo: number, now: number, leaseMs: number, limit: number): Claim {
    const log = this.#log!;
    const changes = log.completeAndClaim(owner, doneUpTo, now, leaseMs, limit);
    return {
      changes,
      doneSeq: log.doneSeq,
      lostClaim: log.lostClaim,
      tookOver: log.tookOver,
      schemaChanged: log.schemaVersion !== this.#syncedVersion,
    };
  }

  complete(owner: string, upTo: number): boolean {
    return this.#log!.complete(owner, upTo);
  }

  renew(owner: string, until: number): void {
    this.#log!.renew(owner, until);
  }

  prune(now: number, retain: { count: number; ageMs: number }): number {
    return this.#log!.prune(now, retain);
  }

  requestIds(first: number, last: number): Map<number, string> | null {
    return this.#notes?.take(first, last) ?? null;
  }

  forgetRequests(doneSeq: number): void {
    this.#notes?.forget(doneSeq);
  }

  decoderFor(info: TableInfo): RowDecoder {
    return rowDecoder(info);
  }
}

/** What the triggers of a bound table need to know: its keys, its columns, and which ones to hex-encode. */
function captureTable(info: TableInfo): CaptureTable {
  const columns = Object.values(info.columns);
  return {
    name: info.name,
    keys: info.keys.map((k) => k.column.name),
    columns: columns.map((c) => c.name),
    blobColumns: columns
      .filter(
        (c) =>
          c.columnType.startsWith("SQLiteBlob") ||
          c.columnType === "SQLiteBigInt" ||
          c.columnType === "SQLiteCustomColumn",
      )
      .map((c) => c.name),
  };
}

/** The better-sqlite3 connection under a Drizzle database; ConfigError for anything else. */
// biome-ignore lint/suspicious/noExplicitAny: any schema
export function sqliteClient(db: BetterSQLite3Database<any>): Database.Database {
  const candidate =
    (db as unknown as { $client?: unknown }).$client ??
    (db as unknown as { session?: { client?: unknown } }).session?.client;
  const client = candidate as Partial<Database.Database> | undefined;
  if (!client || typeof client.prepare !== "function" || typeof client.transaction !== "function") {
    throw new ConfigError(
      "db must be a Drizzle better-sqlite3 database (drizzle(new Database(file))) or a Drizzle node-postgres one (drizzle(pool))",
    );
  }
  return client as Database.Database;
}
