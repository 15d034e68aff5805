import { getTableColumns, getTableName, is } from "drizzle-orm";
import { type SQLiteColumn, SQLiteTable, getTableConfig } from "drizzle-orm/sqlite-core";

/** A primary-key column: its property name on rows and its column definition. */
export interface KeyColumn {
  key: string;
  column: SQLiteColumn;
}

/** What turbocast needs to know about a bound Drizzle table, computed once. */
export interface TableInfo {
  table: SQLiteTable;
  /** SQL name of the table. */
  name: string;
  /** Row property name -> column, in declaration order. */
  columns: Record<string, SQLiteColumn>;
  /** Primary-key columns in a stable order: a composite key's declared order. Empty when the table has none. */
  keys: KeyColumn[];
}

const cache = new WeakMap<SQLiteTable, TableInfo>();

export function isSQLiteTable(value: unknown): value is SQLiteTable {
  return typeof value === "object" && value !== null && is(value, SQLiteTable);
}

export function tableInfo(table: SQLiteTable): TableInfo {
  let info = cache.get(table);
  if (info) return info;
  const columns = getTableColumns(table) as Record<string, SQLiteColumn>;
  const keyOf = new Map<SQLiteColumn, string>(Object.entries(columns).map(([k, c]) => [c, k]));
  const config = getTableConfig(table);
  let keyColumns: SQLiteColumn[] = Object.values(columns).filter((c) => c.primary);
  if (keyColumns.length === 0 && config.primaryKeys.length > 0) {
    keyColumns = config.primaryKeys[0]!.columns as SQLiteColumn[];
  }
  info = {
    table,
    name: getTableName(table),
    columns,
    keys: keyColumns.map((column) => ({ key: keyOf.get(column) ?? column.name, column })),
  };
  cache.set(table, info);
  return info;
}

/** Turns a key part read back from a stream name into the column's JS type; `undefined` if it cannot be one. */
export function parseKeyPart(column: SQLiteColumn, part: string): unknown {
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
