import pg from "pg";

/**
 * Turns a row captured by the PostgreSQL triggers (`to_jsonb(NEW)`) back into
 * exactly what `db.select()` returns through drizzle-orm/node-postgres.
 *
 * node-postgres reads every value as PostgreSQL's text output and parses it
 * by the column's type OID; Drizzle then maps it with the column's
 * `mapFromDriverValue`. The decoder goes the same way: each JSON value is
 * turned back into the text PostgreSQL would have sent, parsed by the
 * driver's parser for the column's type (with the raw-string overrides
 * Drizzle's node-postgres session makes for dates, timestamps and
 * intervals), then mapped by the Drizzle column. Two places where jsonb's
 * form differs from the text output are put right:
 *
 * - numbers: jsonb keeps a number's exact digits, but JSON.parse would round
 *   a bigint past 2^53 (and a numeric's `12.50` to 12.5), so numbers are read
 *   as their digits (see parseRowJson) — at any depth, so an int8[] keeps
 *   them too; inside json / jsonb columns they become numbers again, as the
 *   driver's JSON.parse makes them;
 * - timestamps: jsonb writes `2024-05-06T07:08:09+00:00`, the text output
 *   `2024-05-06 07:08:09+00`.
 *
 * - time zones: jsonb writes a `timestamptz` in the writer's session time
 *   zone; it is turned to UTC, so a `timestamptz` in `mode: "string"` reads
 *   as an app whose sessions use UTC reads it (a Date is the same instant
 *   whatever the zone).
 */

/** A column's type as the decoder needs it: its OID, and for an array its element type's. */
export interface PgColumnType {
  oid: number;
  /** The element type's OID of an array type, else 0. */
  elem: number;
}

/** A Drizzle column as the decoder uses it. */
export interface DecodableColumn {
  name: string;
  mapFromDriverValue(value: unknown): unknown;
}

/** Turns a change's row JSON (jsonb text output) into the entity Drizzle would have read. */
export type PgRowDecoder = (json: string) => Record<string, unknown>;

const OID = {
  bool: 16,
  json: 114,
  jsonb: 3802,
  date: 1082,
  timestamp: 1114,
  timestamptz: 1184,
  interval: 1186,
  timetz: 1266,
} as const;

/** The types Drizzle's node-postgres session reads as raw strings (node-postgres/session.js). */
const RAW_IN_DRIZZLE = new Set([1184, 1114, 1082, 1186, 1231, 1115, 1185, 1187, 1182]);

/** The driver's parser for a type, as Drizzle's node-postgres session picks it. */
function driverParser(oid: number): (text: string) => unknown {
  if (RAW_IN_DRIZZLE.has(oid)) return (text) => text;
  return pg.types.getTypeParser(oid, "text") as (text: string) => unknown;
}

/**
 * A number token's digits, kept apart from strings. PostgreSQL refuses
 * `\u0000` in jsonb, so no captured string can start with it.
 */
const NUMBER_MARK = "\u0000";
const TOKENS = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/**
 * Types whose values come out of JSON.parse as the driver reads them: no number in them that JSON.parse
 * would round (int8, numeric, and types the decoder does not know, which may hold either), so a row of
 * only these is read with plain JSON.parse, about twice as fast as parseRowJson. A number JSON.parse
 * gives goes through the driver's parser as its JSON text (int2 and int4 exactly; float4 and float8
 * round-trip), and json / jsonb values are what the driver's own JSON.parse makes of them.
 */
const PLAIN_JSON_TYPES = new Set([
  16, // bool
  21, // int2
  23, // int4
  25, // text
  114, // json
  700, // float4
  701, // float8
  1042, // bpchar
  1043, // varchar
  1082, // date
  1083, // time
  1114, // timestamp
  1184, // timestamptz
  1186, // interval
  1266, // timetz
  2950, // uuid
  3802, // jsonb
]);

/** Whether a column's values parse exactly with plain JSON.parse (see PLAIN_JSON_TYPES). */
const plainJsonType = (type: PgColumnType | undefined): boolean =>
  type !== undefined && PLAIN_JSON_TYPES.has(type.elem === 0 ? type.oid : type.elem);

/** JSON.parse, but every number comes back as NUMBER_MARK + its exact digits. */
export function parseRowJson(json: string): unknown {
  const marked = json.replace(TOKENS, (token) => (token.charCodeAt(0) === 34 ? token : `"\\u0000${token}"`));
  return JSON.parse(marked);
}

const isNumber = (value: unknown): value is string => typeof value === "string" && value.startsWith(NUMBER_MARK);

/** A json / jsonb column's value as the driver's JSON.parse gives it. */
function plainJson(value: unknown): unknown {
  if (isNumber(value)) return Number(value.slice(1));
  if (Array.isArray(value)) return value.map(plainJson);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = plainJson(v);
    return out;
  }
  return value;
}

/** JSON text of a value, numbers with their own digits (for json elements of arrays). */
function jsonText(value: unknown): string {
  if (isNumber(value)) return value.slice(1);
  if (Array.isArray(value)) return `[${value.map(jsonText).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${jsonText(v)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(value);
}

const ZONED = /^(\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?([+-])(\d\d):(\d\d)(?::(\d\d))?$/;

/** jsonb's `2024-05-06T09:08:09.5+02:00` as the text output of a UTC session: `2024-05-06 07:08:09.5+00`. */
function zonedText(value: string): string {
  // written in a UTC session (the common case): only the separator and the offset's form change
  if (value.length >= 25 && value.endsWith("+00:00") && value.charCodeAt(4) === 45 && value.charCodeAt(10) === 84) {
    return `${value.slice(0, 10)} ${value.slice(11, -6)}+00`;
  }
  const m = ZONED.exec(value);
  if (!m) return value.replace("T", " "); // infinity, BC dates: as they are
  const [, y, mo, d, h, mi, sec, fraction = "", sign, oh, om, os = "0"] = m;
  const offsetMs = (sign === "-" ? -1 : 1) * ((Number(oh) * 60 + Number(om)) * 60 + Number(os)) * 1000;
  const local = new Date(0);
  // not Date.UTC: it reads years 0-99 as 1900-1999
  local.setUTCFullYear(Number(y), Number(mo) - 1, Number(d));
  local.setUTCHours(Number(h), Number(mi), Number(sec), 0);
  const utc = new Date(local.getTime() - offsetMs);
  const year = utc.getUTCFullYear();
  if (year < 1 || year > 9999) return value.replace("T", " ");
  const pad = (n: number) => String(n).padStart(2, "0");
  return (
    `${String(year).padStart(4, "0")}-${pad(utc.getUTCMonth() + 1)}-${pad(utc.getUTCDate())} ` +
    `${pad(utc.getUTCHours())}:${pad(utc.getUTCMinutes())}:${pad(utc.getUTCSeconds())}${fraction}+00`
  );
}

/** jsonb's `T` back to the text output's ` `, and a zoned value in UTC. */
function timestampText(value: string, withZone: boolean): string {
  return withZone ? zonedText(value) : value.replace("T", " ");
}

/** A scalar as PostgreSQL's text output would have written it. */
function scalarText(value: unknown, oid: number): string {
  if (isNumber(value)) return value.slice(1);
  if (typeof value === "boolean") return value ? "t" : "f";
  if (typeof value === "string") {
    if (oid === OID.timestamp) return timestampText(value, false);
    if (oid === OID.timestamptz) return timestampText(value, true);
    return value;
  }
  // a json element of an array, or a composite value
  return jsonText(value);
}

/** An array as PostgreSQL's text output would have written it: `{1,2}`, `{"a b",NULL}`, nested for more dimensions. */
function arrayText(value: unknown[], elem: number): string {
  const items = value.map((item) => {
    if (item === null) return "NULL";
    if (Array.isArray(item) && elem !== OID.json && elem !== OID.jsonb) return arrayText(item, elem);
    const text = scalarText(item, elem);
    return `"${text.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
  });
  return `{${items.join(",")}}`;
}

/** One value of a captured row, as the driver would have handed it to Drizzle. */
export function driverValue(value: unknown, type: PgColumnType | undefined): unknown {
  if (value === null || value === undefined) return value;
  if (type === undefined) {
    // a column whose type is not known yet (added since the last sync): the JSON value itself
    return plainJson(value);
  }
  if (type.oid === OID.json || type.oid === OID.jsonb) return plainJson(value);
  if (type.oid === OID.bool && typeof value === "boolean") return value;
  const text = Array.isArray(value) && type.elem !== 0 ? arrayText(value, type.elem) : scalarText(value, type.oid);
  return driverParser(type.oid)(text);
}

/**
 * The decoder of a bound table's captured rows: keys are the Drizzle
 * property names; a column the row lacks (not in the table when the change
 * was captured) is `undefined`; columns Drizzle does not declare are left
 * out. `types` gives each column's type by SQL name (read from pg_attribute
 * when the triggers were synced); it is read at every call, so a sync after
 * a migration updates it in place.
 */
export function pgRowDecoder(
  columns: Record<string, DecodableColumn>,
  types: ReadonlyMap<string, PgColumnType>,
): PgRowDecoder {
  const fields = Object.entries(columns).map(([key, column]) => ({ key, name: column.name, column }));
  return (json) => {
    let plain = true;
    for (const { name } of fields) if (!plainJsonType(types.get(name))) plain = false;
    const raw = (plain ? JSON.parse(json) : parseRowJson(json)) as Record<string, unknown>;
    const entity: Record<string, unknown> = {};
    for (const { key, name, column } of fields) {
      const value = driverValue(raw[name], types.get(name));
      entity[key] = value === null || value === undefined ? value : column.mapFromDriverValue(value);
    }
    return entity;
  };
}
