import { FrameOptionsError } from "../errors.js";
import { ModelStream } from "./model-stream.js";

/**
 * Element ids for rows, as turbo-rails' `dom_id`:
 *
 *   domId(message)          "message_12"
 *   domId(message, "edit")  "edit_message_12"
 *   domId(membership)       "membership_3_7"   (composite key: its parts in key order)
 *
 * The name is the class's `static singular`, else the singular of its SQL
 * table name (`singularOf`). Key parts are the ones in the row's stream name
 * (a Date is its milliseconds); in a part every character other than
 * `A-Z a-z 0-9 -` is written `.hh` per UTF-8 byte, so `_` never appears
 * inside a part and the id is stable and unambiguous: key "a_b c" gives
 * `tag_a.5fb.20c`. Turbo finds targets with getElementById, which takes any
 * such id; in a CSS selector, escape it (`CSS.escape`).
 */
export function domId(row: object, prefix?: string): string {
  const stream = streamOf(row);
  const cls = stream.constructor as typeof ModelStream;
  const parts = [singularOf(cls), ...stream.parts.map(escapePart)];
  if (prefix !== undefined && prefix !== null && prefix !== "") parts.unshift(escapeName(String(prefix)));
  return parts.join("_");
}

/**
 * A bound class's singular name: `static singular`, else its table's SQL
 * name made singular by one rule — a trailing "ies" becomes "y", else a
 * trailing "s" (not "ss") is dropped (messages -> message, categories ->
 * category, chat_messages -> chat_message). Set `static singular` where
 * the rule is wrong (people, news, addresses).
 */
export function singularOf(cls: typeof ModelStream): string {
  if (typeof cls.singular === "string" && cls.singular !== "") return escapeName(cls.singular);
  return escapeName(singularize(cls.tableInfo().name));
}

export function singularize(name: string): string {
  if (/ies$/i.test(name) && name.length > 3) return `${name.slice(0, -3)}y`;
  if (/[^s]s$/i.test(name)) return name.slice(0, -1);
  return name;
}

function streamOf(row: object): ModelStream {
  if (row instanceof ModelStream) {
    if (row.isAll) throw new FrameOptionsError(`domId: ${row.constructor.name}.all() is a table, not a row`);
    return row;
  }
  const stream = row !== null && typeof row === "object" ? (row as { stream?: unknown }).stream : undefined;
  if (stream instanceof ModelStream) return stream;
  throw new FrameOptionsError(
    "domId: pass a row read through the app's db (or given to a hook), or a ModelStream of one row",
  );
}

function escapePart(part: string): string {
  return part.replace(/[^A-Za-z0-9-]/gu, hexBytes);
}

/** Names keep `_` (chat_message); the rest is escaped as in parts. */
function escapeName(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/gu, hexBytes);
}

function hexBytes(char: string): string {
  let out = "";
  for (const byte of Buffer.from(char, "utf8")) out += `.${byte.toString(16).padStart(2, "0")}`;
  return out;
}
