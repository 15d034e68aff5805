import type { SQLiteColumn } from "drizzle-orm/sqlite-core";
import type { TableInfo } from "../streams/table.js";

/** Turns a row's JSON from the change log into the entity Drizzle would have read. */
export type RowDecoder = (json: string) => Record<string, unknown>;

const decoders = new WeakMap<TableInfo, RowDecoder>();

/**
 * The decoder of a bound table's rows. Each value goes through its Drizzle
 * column's own `mapFromDriverValue`, exactly as a `db.select()` would map it
 * (nulls stay null without calling it), so timestamps come back as Date,
 * boolean-mode integers as booleans, JSON-mode text and blobs parsed, bigint
 * blobs as bigint, custom types through their `fromDriver`.
 *
 * The JSON carries what the driver would have returned, with one encoding:
 * a blob is `["<HEX>"]` (see triggers.ts) and becomes a Buffer again, as
 * better-sqlite3 returns it. Integers beyond 2^53 lose precision, as they do
 * when better-sqlite3 reads them without `safeIntegers`.
 *
 * Keys are the Drizzle property names; a column the log row lacks (added
 * after the change was captured) is `undefined`; columns Drizzle does not
 * declare are left out.
 */
export function rowDecoder(info: TableInfo): RowDecoder {
  let decoder = decoders.get(info);
  if (decoder) return decoder;
  const fields = Object.entries(info.columns).map(([key, column]) => ({
    key,
    name: column.name,
    column: column as SQLiteColumn,
  }));
  decoder = (json) => {
    const raw = JSON.parse(json) as Record<string, unknown>;
    const entity: Record<string, unknown> = {};
    for (const { key, name, column } of fields) {
      entity[key] = decodeValue(raw[name], column);
    }
    return entity;
  };
  decoders.set(info, decoder);
  return decoder;
}

function decodeValue(value: unknown, column: SQLiteColumn): unknown {
  if (value === null || value === undefined) return value;
  if (Array.isArray(value)) value = Buffer.from(value[0] as string, "hex");
  return column.mapFromDriverValue(value);
}
