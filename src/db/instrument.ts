import { Column, getTableColumns, is } from "drizzle-orm";
import type { BetterSQLite3Database } from "drizzle-orm/better-sqlite3";
import { SQLiteRelationalQuery } from "drizzle-orm/sqlite-core/query-builders/query";
import type { SQLiteTable } from "drizzle-orm/sqlite-core";
import { ConfigError } from "../errors.js";
import { type AnyModelStreamClass, attachStream } from "../streams/registry.js";

/**
 * createTurbo instruments the app's Drizzle database so rows of bound tables
 * carry `.stream`, and so the change feed hears of the app's own writes the
 * moment they commit. It relies on three Drizzle internals, each pinned by a
 * test (test/instrument.test.ts) so an upgrade that moves them fails loudly:
 *
 * - `db.session.prepareQuery(query, fields, executeMethod, arrayMode, customResultMapper)`
 *   returns a prepared query whose `all` / `get` / `run` / `values` run it;
 *   `fields` is `{ path, field }[]` for builder selects and `.returning()`.
 * - `db.session.transaction(fn)` runs a better-sqlite3 transaction.
 * - `SQLiteRelationalQuery.prototype._prepare()` builds `db.query.*` queries
 *   and sets `customResultMapper` on the prepared query it returns.
 * - `prepareQuery` prepares through `this.client.prepare(sql)`, which the
 *   instrumentation answers from a cache of write statements (see cachingPrepare).
 */
export interface Instrumentation {
  /** Removes the hooks; the database behaves as before. Safe to call twice. */
  restore(): void;
}

export interface SelectedField {
  path: string[];
  field: unknown;
}

interface PreparedLike {
  stmt?: { readonly?: boolean };
  fields?: SelectedField[];
  customResultMapper?: (rows: unknown[][], mapColumnValue?: (value: unknown) => unknown) => unknown;
  all: (placeholders?: unknown) => unknown;
  get: (placeholders?: unknown) => unknown;
  run: (placeholders?: unknown) => unknown;
  values: (placeholders?: unknown) => unknown;
}

interface StatementLike {
  readonly reader: boolean;
}

interface ClientLike {
  inTransaction?: boolean;
  prepare(sql: string): StatementLike;
}

interface SessionLike {
  prepareQuery: (...args: unknown[]) => PreparedLike;
  transaction: (...args: unknown[]) => unknown;
  client?: ClientLike;
}

/** Write statements kept prepared per instrumented database (least recently used dropped first). */
export const STATEMENT_CACHE_SIZE = 256;

/** Longer statements are not kept: a multi-row INSERT has one text per row count, and few are run twice. */
export const CACHED_SQL_MAX_LENGTH = 4096;

const WRITE_STATEMENT = /^\s*(?:insert|replace|update|delete)\b/i;

/**
 * better-sqlite3's `prepare`, remembering the statements that write and
 * return no rows (INSERT, REPLACE, UPDATE, DELETE without RETURNING) by
 * their SQL text.
 *
 * Drizzle prepares every query anew, and preparing a write to a captured
 * table compiles its capture trigger too: about as much work again as the
 * write itself (see bench/RESULTS.md, "Write cost"). A cached statement is
 * compiled once; SQLite recompiles it by itself after any schema change
 * (a migration, triggers recreated). Only writes without rows are kept:
 * Drizzle switches a statement that returns rows into array mode (`raw()`),
 * which another query with the same SQL must not inherit; DDL runs once.
 * A write statement is never in use when it is handed out again: `run()`
 * finishes before it returns, and SQLite refuses to run a statement from
 * inside a user function.
 *
 * A hit is one Map lookup: the entry notes when it was last used, and the
 * least recently used one is found by a scan only when a new statement
 * enters a full cache (after a prepare, which costs far more). Moving the
 * entry to the end of the Map instead (delete and set again) hashed and
 * looked the SQL text up twice more, on every write.
 */
export function cachingPrepare(client: ClientLike, size = STATEMENT_CACHE_SIZE): (sql: string) => StatementLike {
  const cache = new Map<string, { statement: StatementLike; used: number }>();
  let uses = 0;
  return (sql) => {
    const cached = cache.get(sql);
    if (cached !== undefined) {
      cached.used = ++uses;
      return cached.statement;
    }
    const statement = client.prepare(sql);
    if (!statement.reader && sql.length <= CACHED_SQL_MAX_LENGTH && WRITE_STATEMENT.test(sql)) {
      if (cache.size >= size) cache.delete(leastRecentlyUsed(cache));
      cache.set(sql, { statement, used: ++uses });
    }
    return statement;
  };
}

function leastRecentlyUsed(cache: Map<string, { used: number }>): string {
  let oldest: string | undefined;
  let oldestUse = Number.POSITIVE_INFINITY;
  for (const [sql, { used }] of cache) {
    if (used < oldestUse) {
      oldest = sql;
      oldestUse = used;
    }
  }
  return oldest!;
}

/** One field of a relational query's selection, as Drizzle describes it (`_toSQL().query.selection`). */
export interface RelationalSelectionItem {
  tsKey: string;
  relationTableTsKey?: string;
  selection: RelationalSelectionItem[];
}

/**
 * Gives `.stream` to the rows a relational query returned (`value`: a row,
 * an array of rows, or nothing) whose table is bound, and to the related
 * rows loaded with `with`, following the query's selection through the
 * schema. Rows missing some of their table's columns (a partial `columns`)
 * get none. Shared by both dialects' instrumentation.
 */
export function attachRelational<T extends object>(
  value: unknown,
  table: T,
  items: readonly RelationalSelectionItem[],
  fullSchema: Record<string, unknown>,
  classFor: (table: T) => AnyModelStreamClass | undefined,
): void {
  if (!value || typeof value !== "object") return;
  if (Array.isArray(value)) {
    for (const item of value) attachRelational(item, table, items, fullSchema, classFor);
    return;
  }
  const row = value as Record<string, unknown>;
  const cls = classFor(table);
  if (cls && Object.keys(getTableColumns(table as never)).every((k) => k in row)) attachStream(row, cls);
  for (const item of items) {
    if (!item.relationTableTsKey) continue;
    const related = fullSchema[item.relationTableTsKey] as T | undefined;
    if (related) attachRelational(row[item.tsKey], related, item.selection ?? [], fullSchema, classFor);
  }
}

export interface InstrumentOptions {
  /** Which class, if any, is bound to a table. */
  classFor(table: SQLiteTable): AnyModelStreamClass | undefined;
  /** Called after a statement that may have written, outside any open transaction. */
  onWrite(): void;
}

/** Sessions we instrumented -> their options (the relational-query hook is shared by the whole process). */
const instrumented = new WeakMap<object, InstrumentOptions>();
/** Relational-query prototypes whose `_prepare` is hooked: the one turbocast imports and, when an app has its own copy of drizzle-orm, the app's. */
const hookedPrototypes = new WeakSet<object>();

export function instrumentDatabase(
  db: BetterSQLite3Database<Record<string, unknown>>,
  options: InstrumentOptions,
): Instrumentation {
  const session = (db as unknown as { session?: SessionLike }).session;
  if (!session || typeof session.prepareQuery !== "function" || typeof session.transaction !== "function") {
    throw new ConfigError("db must be a Drizzle better-sqlite3 database (drizzle(new Database(file)))");
  }
  if (instrumented.has(session)) {
    throw new ConfigError("this Drizzle database is already used by a running turbocast instance; close() it first");
  }
  installRelationalHook(SQLiteRelationalQuery.prototype);
  // an app may load another copy of drizzle-orm than turbocast does (a symlinked install, a version apart)
  const appPrototype = relationalPrototypeOf(db);
  if (appPrototype) installRelationalHook(appPrototype);
  instrumented.set(session, options);

  const ownPrepare = Object.hasOwn(session, "prepareQuery");
  const ownTransaction = Object.hasOwn(session, "transaction");
  const prepareQuery = session.prepareQuery;
  const transaction = session.transaction;
  const client = session.client;
  // Drizzle's prepareQuery reads `this.client.prepare`: run it on a view of the session whose client caches
  const cachingSession: SessionLike | undefined =
    client && typeof client.prepare === "function"
      ? Object.create(session, {
          client: { value: Object.assign(Object.create(client) as ClientLike, { prepare: cachingPrepare(client) }) },
        })
      : undefined;
  const afterStatement = (prepared: PreparedLike): void => {
    if (prepared.stmt?.readonly === true) return;
    if (client?.inTransaction) return;
    options.onWrite();
  };

  session.prepareQuery = function (this: SessionLike, ...args: unknown[]): PreparedLike {
    const prepared = prepareQuery.apply(this === session && cachingSession ? cachingSession : this, args);
    const fields = args[1] as SelectedField[] | undefined;
    const table = wholeRowTable(fields);
    const cls = table ? options.classFor(table) : undefined;
    const { all, get, run, values } = prepared;
    prepared.run = (p) => {
      try {
        return run.call(prepared, p);
      } finally {
        afterStatement(prepared);
      }
    };
    prepared.values = (p) => {
      try {
        return values.call(prepared, p);
      } finally {
        afterStatement(prepared);
      }
    };
    prepared.all = (p) => {
      try {
        const rows = all.call(prepared, p);
        if (cls && Array.isArray(rows)) for (const row of rows) attachStream(row as object, cls);
        return rows;
      } finally {
        afterStatement(prepared);
      }
    };
    prepared.get = (p) => {
      try {
        const row = get.call(prepared, p);
        if (cls && row && typeof row === "object") attachStream(row, cls);
        return row;
      } finally {
        afterStatement(prepared);
      }
    };
    return prepared;
  };

  session.transaction = function (this: SessionLike, ...args: unknown[]): unknown {
    try {
      return transaction.apply(this, args);
    } finally {
      // committed or rolled back: either way the feed may look (a rollback leaves nothing to find)
      if (!client?.inTransaction) options.onWrite();
    }
  };

  let restored = false;
  return {
    restore() {
      if (restored) return;
      restored = true;
      instrumented.delete(session);
      if (ownPrepare) session.prepareQuery = prepareQuery;
      else delete (session as Partial<SessionLike>).prepareQuery;
      if (ownTransaction) session.transaction = transaction;
      else delete (session as Partial<SessionLike>).transaction;
    },
  };
}

/**
 * The table whose every column, and nothing else, a builder select or
 * returning() yields; else undefined (partial selects, joins, SQL
 * expressions). Shared by both dialects' instrumentation.
 */
export function wholeRowTable(fields: SelectedField[] | undefined): SQLiteTable | undefined {
  if (!fields || fields.length === 0) return undefined;
  let table: SQLiteTable | undefined;
  for (const { path, field } of fields) {
    if (path.length !== 1 || !is(field, Column)) return undefined;
    const owner = (field as Column).table as SQLiteTable;
    if (table === undefined) table = owner;
    else if (owner !== table) return undefined;
    if ((getTableColumns(table) as Record<string, Column>)[path[0]!] !== field) return undefined;
  }
  return table && Object.keys(getTableColumns(table)).length === fields.length ? table : undefined;
}

/**
 * The prototype that defines `_prepare` for this db's relational queries
 * (`db.query.<table>.findMany()`), reached through the db itself so that it
 * is the app's drizzle-orm even when turbocast resolved another copy. Making
 * the query object runs nothing. Undefined when the db has no relational
 * schema (then there are no relational queries to hook).
 */
export function relationalPrototypeOf(db: unknown): object | undefined {
  const query = (db as { query?: Record<string, { findMany?: () => unknown }> }).query;
  const builder = query ? Object.values(query).find((b) => typeof b?.findMany === "function") : undefined;
  if (!builder) return undefined;
  let proto: object | null = Object.getPrototypeOf(builder.findMany!()) as object | null;
  while (proto && !Object.hasOwn(proto, "_prepare")) proto = Object.getPrototypeOf(proto) as object | null;
  return proto ?? undefined;
}

function installRelationalHook(target: object): void {
  if (hookedPrototypes.has(target)) return;
  const proto = target as {
    _prepare?: (this: RelationalQueryLike, isOneTimeQuery?: boolean) => PreparedLike;
  };
  const original = proto._prepare;
  if (typeof original !== "function") {
    throw new ConfigError(
      "this drizzle-orm version has no SQLiteRelationalQuery._prepare; turbocast needs to be updated for it",
    );
  }
  hookedPrototypes.add(target);
  proto._prepare = function (this: RelationalQueryLike, isOneTimeQuery?: boolean): PreparedLike {
    const prepared = original.call(this, isOneTimeQuery);
    const options = instrumented.get(this.session);
    const mapper = prepared.customResultMapper;
    if (!options || !mapper) return prepared;
    const rootTable = this.table;
    const fullSchema = this.fullSchema;
    const selection = (this._toSQL?.().query as { selection?: RelationalSelectionItem[] } | undefined)?.selection ?? [];
    prepared.customResultMapper = (rows, mapColumnValue) => {
      const result = mapper(rows, mapColumnValue);
      attachRelational(result, rootTable, selection, fullSchema, options.classFor);
      return result;
    };
    return prepared;
  };
}

interface RelationalQueryLike {
  session: object;
  table: SQLiteTable;
  fullSchema: Record<string, unknown>;
  _toSQL?: () => { query: unknown };
}
