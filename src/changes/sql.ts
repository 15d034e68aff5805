/** SQL text helpers shared by the change-capture modules. */

/** A quoted SQL identifier: `messages` -> `"messages"`, with `"` doubled. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** A quoted SQL string literal, with `'` doubled. */
export function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** Every object turbocast creates in the app's database starts with this. */
export const NAMESPACE = "_turbocast_";

/** The change log: one row per captured insert, update or delete. */
export const LOG_TABLE = `${NAMESPACE}changes`;

/** How far dispatch got, and which feed is dispatching next. */
export const CURSOR_TABLE = `${NAMESPACE}cursor`;
