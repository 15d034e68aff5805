import { DataFieldsError } from "../errors.js";
import type { AnyModelStreamClass } from "../streams/registry.js";
import { dataChannel } from "./channel.js";

/** What `static fields` may hold: column (row property) names, or "*" for every column. */
export type FieldsOption = "*" | readonly string[];

/** A class's data projection: the row properties a data event carries (its key columns always, first). */
export interface DataFields {
  /** Row property names, key columns first, each once. */
  readonly names: readonly string[];
  /** The key's row property names. */
  readonly keys: readonly string[];
  /** The data channel of the class's table-wide stream (`cls.all()`), which every change of a class without declared broadcasts goes to. */
  readonly tableChannel: string;
}

const resolved = new WeakMap<AnyModelStreamClass, DataFields>();

/**
 * The columns a class's data events carry (and its table-wide data channel): its key columns, then what
 * `static fields` lists (default none: the key alone, so a column added
 * later — a password hash, a private note — never leaks by default; "*"
 * every column). Throws DataFieldsError naming a column the table does not
 * have, or a value that is neither "*" nor a list of names.
 */
export function dataFields(cls: AnyModelStreamClass): DataFields {
  const cached = resolved.get(cls);
  if (cached) return cached;
  const info = cls.tableInfo();
  const keys = info.keys.map((k) => k.key);
  const option = (cls as { fields?: unknown }).fields;
  let listed: string[];
  if (option === undefined) listed = [];
  else if (option === "*") listed = Object.keys(info.columns);
  else if (Array.isArray(option) && option.every((name) => typeof name === "string")) {
    const unknown = option.filter((name) => !Object.hasOwn(info.columns, name));
    if (unknown.length > 0) {
      throw new DataFieldsError(
        cls.name,
        `${unknown.map((name) => JSON.stringify(name)).join(", ")} ${unknown.length === 1 ? "is not a column" : "are not columns"} of table "${info.name}" (its columns: ${Object.keys(info.columns).join(", ")})`,
      );
    }
    listed = option as string[];
  } else {
    throw new DataFieldsError(cls.name, `must be "*" or an array of column names, got ${String(option)}`);
  }
  const fields: DataFields = {
    names: [...new Set([...keys, ...listed])],
    keys,
    tableChannel: dataChannel(cls.all().name),
  };
  resolved.set(cls, fields);
  return fields;
}

/** createTurbo's start-up check: read the static afresh (a class outlives the instances that register it). */
export function checkDataFields(cls: AnyModelStreamClass): void {
  resolved.delete(cls);
  dataFields(cls);
}

/**
 * The row as a data event carries it: the whitelisted properties only, as
 * JSON-safe values (a bigint as its decimal string, bytes as base64; dates
 * become ISO strings when stringified).
 */
export function projectRow(fields: DataFields, row: Record<string, unknown>): Record<string, unknown> {
  const data: Record<string, unknown> = {};
  for (const name of fields.names) data[name] = jsonSafe(row[name]);
  return data;
}

/** The event's `key`: the bare value of a one-column key, `{ column: value }` for a composite one. */
export function keyOfRow(fields: DataFields, row: Record<string, unknown>): unknown {
  if (fields.keys.length === 1) return jsonSafe(row[fields.keys[0]!]);
  const key: Record<string, unknown> = {};
  for (const name of fields.keys) key[name] = jsonSafe(row[name]);
  return key;
}

function jsonSafe(value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Uint8Array)
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64");
  return value === undefined ? null : value;
}
