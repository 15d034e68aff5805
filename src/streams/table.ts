import { type Column, getTableColumns, getTableName, is } from "drizzle-orm";
import { PgTable, getTableConfig as getPgTableConfig } from "drizzle-orm/pg-core";
import { SQLiteTable, getTableConfig as getSQLiteTableConfig } from "drizzle-orm/sqlite-core";

/** A Drizzle table turbocast can bind: SQLite (better-sqlite3) or PostgreSQL (node-postgres). */
export type BoundTable = SQLiteTable | PgTable;

/** A primary-key column: its property name on rows and its column definition. */
export interface KeyColumn {
  key: string;
  column: Column;
}

/** What turbocast needs to know about a bound Drizzle table, computed once. */
export interface TableInfo {
  table: BoundTable;
  /** SQL name of the table. */
  name: string;
  /** The PostgreSQL schema a `pgSchema` table names; undefined otherwise (found through the search_path). */
  schema?: string;
  /** Row property name -> column, in declaration order. */
  columns: Record<string, Column>;
  /** Primary-key columns in a stable order: a composite key's declared order. Empty when the table has none. */
  keys: KeyColumn[];
}

const cache = new WeakMap<BoundTable, TableInfo>();

export function isSQLiteTable(value: unknown): value is SQLiteTable {
  return typeof value === "object" && value !== null && is(value, SQLiteTable);
}

export function isPgTable(value: unknown): value is PgTable {
  return typeof value === "object" && value !== null && is(value, PgTable);
}

export function isBoundTable(value: unknown): value is BoundTable {
  return isSQLiteTable(value) || isPgTable(value);
}

/** The info of a table `tableInfo` already computed (so a bound table), else undefined: one WeakMap lookup, no type check. */
export function knownTableInfo(value: unknown): TableInfo | undefined {
  return typeof value === "object" && value !== null ? cache.get(value as BoundTable) : undefined;
}

export function tableInfo(table: BoundTable): TableInfo {
  let info = cache.get(table);
  if (info) return info;
  const columns = getTableColumns(table) as Record<string, Column>;
  const keyOf = new Map<Column, string>(Object.entries(columns).map(([k, c]) => [c, k]));
  const config = isPgTable(table) ? getPgTableConfig(table) : getSQLiteTableConfig(table);
  let keyColumns: Column[] = Object.values(columns).filter((c) => c.primary);
  if (keyColumns.length === 0 && config.primaryKeys.length > 0) {
    // pg-core hands the extra-config callback copies of the columns (the `t` of primaryKey({ columns: [t.a, t.b] })),
    // so a composite key's columns are found by SQL name, not identity
    const byName = new Map(Object.values(columns).map((c) => [c.name, c]));
    keyColumns = (config.primaryKeys[0]!.columns as Column[]).map((c) => byName.get(c.name) ?? c);
  }
  const schema = isPgTable(table) ? getPgTableConfig(table).schema : undefined;
  info = {
    table,
    name: getTableName(table),
    ...(schema === undefined ? {} : { schema }),
    columns,
    keys: keyColumns.map((column) => ({ key: keyOf.get(column) ?? column.name, column })),
  };
  cache.set(table, info);
  return info;
}

/** Turns a key part read back from a stream name into the column's JS type; `undefined` if it cannot be one. */
export function parseKeyPart(column: Column, part: string): unknown {
  switch (column.dataType) {
    case "number": {
      if (!/^-?\d+(\.\d+)?$/.test(part)) return undefined;
      const n = Number(part);
      return Number.isFinite(n) ? n : undefined;
    }
    case "bigint":
      return /^-?\d+$/.test(part) ? BigInt(part) : undefined;
    case "string":
      return part;
    default:
      return part;
  }
}
