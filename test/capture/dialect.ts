import type { Column, SQL, Table } from "drizzle-orm";
import type { Turbo, TurboOptions } from "../../src/index.js";
import type { AnyStreamClass } from "../../src/streams/registry.js";
import type { LogEntry } from "../helpers.js";

/**
 * What the capture contract (contract.ts) needs of a database dialect:
 * SQLite (sqlite.ts) and PostgreSQL (postgres.ts) each implement it over the
 * capture schema (fixtures/capture/schema.ts, fixtures/capture-pg/schema.ts),
 * whose stream classes record every hook call in `recorder`.
 */
export interface CaptureDialect<Database extends CaptureDatabase = CaptureDatabase> {
  name: "sqlite" | "postgres";
  tables: CaptureTables;
  /** Every capture stream class (items, notes, kinds, and whatever else the dialect's schema binds). */
  streams: readonly AnyStreamClass[];
  /** The stream class of `items` alone. */
  itemStream: AnyStreamClass;
  /** The command-line shell (sqlite3 / psql) is installed: the shell test runs only then (and CI never lacks it). */
  hasShell: boolean;
  /**
   * Each process dispatches what it claims in seq order. True on SQLite (seq
   * is commit order); on PostgreSQL a window goes by commit, so only each
   * row's changes keep their order.
   */
  dispatchesInSeqOrder: boolean;
  /** The names captureObjects() lists once `tables` are bound, in its order. */
  objectsFor(tables: readonly string[]): string[];
  /** How many rows an awaited Drizzle UPDATE changed (RunResult.changes / QueryResult.rowCount). */
  affectedRows(result: unknown): number;
  /** A `kinds` row with a value in every column, and the checks of the types a hook must get. */
  kinds: { values: Row & { id: 1 }; expectDecoded(entity: Row): void };
  /** A fresh database with the capture tables (no turbocast yet), for one test. */
  create(): Promise<Database>;
}

/** One test's database. */
export interface CaptureDatabase<App extends CaptureApp = CaptureApp> {
  /** What the capture worker (fixtures/capture/worker.ts) takes to open it: a file, or a postgres:// URL. */
  address: string;
  /** createTurbo over a new Drizzle db of this database, binding every capture stream unless `options.streams` says. */
  open(options?: Partial<TurboOptions>): Promise<App>;
  /** Raw SQL on a connection of its own, with no turbocast: another service, a migration tool. */
  execute(statements: string): Promise<void>;
  /** Runs SQL through the command-line shell (sqlite3 / psql), as an operator would. */
  shell(statements: string): { status: number | null; stderr: string };
  /** The change log, in seq order. */
  logRows(): Promise<LogRow[]>;
  /** The dispatch cursor. */
  cursor(): Promise<CursorState>;
  /** turbocast's capture objects in the database (the form objectsFor gives). */
  captureObjects(): Promise<string[]>;
  /** Closes what open() opened, then removes the database. */
  drop(): Promise<void>;
}

export interface CaptureApp<Db extends ContractDb = ContractDb> {
  db: Db;
  turbo: Turbo;
  log: LogEntry[];
  /** Raw SQL through the app's Drizzle db: db.run(sql) on SQLite, db.execute(sql) on PostgreSQL. */
  sql(statement: string): Promise<void>;
  /** Raw SQL on db.$client, the driver beneath Drizzle (the better-sqlite3 connection, the pg pool). */
  client(statement: string): Promise<void>;
  /** Runs `statements` in one db.transaction, then ends it: commits, calls tx.rollback(), or throws `end`. */
  transaction(statements: TxStatement[], end?: "rollback" | Error): Promise<void>;
  /** Closes turbocast and the connection (twice is fine). */
  close(): Promise<void>;
}

/** A row as the contract reads and writes it. */
export type Row = Record<string, unknown>;

/**
 * The part of a Drizzle database the contract writes through. The query
 * builders are the same on better-sqlite3 and node-postgres when awaited (a
 * better-sqlite3 builder runs when awaited); transactions are not (a
 * better-sqlite3 one is synchronous), hence CaptureApp.transaction.
 */
export interface ContractDb {
  insert(table: Table): { values(rows: Row | Row[]): InsertQuery };
  update(table: Table): { set(values: Row): FilterableQuery };
  delete(table: Table): FilterableQuery;
  select(): { from(table: Table): PromiseLike<Row[]> };
}

interface InsertQuery extends PromiseLike<unknown> {
  returning(): PromiseLike<Row[]>;
  onConflictDoUpdate(config: { target: Column | SQL | Array<Column | SQL>; set: Row }): PromiseLike<unknown>;
  onConflictDoNothing(): PromiseLike<unknown>;
}

interface FilterableQuery extends PromiseLike<unknown> {
  where(condition: SQL | undefined): PromiseLike<unknown>;
}

/** One statement of CaptureApp.transaction, built on the transaction's db. */
export type TxStatement = (tx: ContractDb) => PromiseLike<unknown>;

/** The capture schema's tables as both dialects declare them. */
export interface CaptureTables {
  items: Table & { id: Column; body: Column; version: Column };
  /** Declares `mood`, which the DDL leaves out: a migration adds it. */
  notes: Table & { id: Column; body: Column; mood: Column };
  kinds: Table & { id: Column; flag: Column };
  /** Never bound. */
  plain: Table & { id: Column; body: Column };
}

export interface LogRow {
  seq: number;
  tbl: string;
  op: string;
  /** The row's `body` (null for tables without one). */
  body: string | null;
  /** Dispatched: the cursor is past it. */
  done: boolean;
}

export interface CursorState {
  /** How far dispatch got (SQLite: done_seq; PostgreSQL: window_done, within the open window). */
  done: number;
  owner: string | null;
  claimed: number | null;
  leaseUntil: number | null;
}
