/**
 * Stream names are namespaced by kind so a row's stream, a table-wide stream
 * and a named stream can never collide, whatever the table or key:
 *
 *   row:<prefix>:<key part>[:<key part>…]   one row (composite keys in key order)
 *   all:<prefix>                            every row of a table
 *   named:<name>[:<part>…]                  a plain Stream
 *
 * Every segment is percent-encoded, so a ":" inside a key cannot forge a segment.
 */
export type StreamKind = "row" | "all" | "named";

export interface ParsedStreamName {
  kind: StreamKind;
  prefix: string;
  parts: string[];
}

/** Longest stream name accepted from a client (names we build are far shorter). */
export const MAX_STREAM_NAME_LENGTH = 512;

const enc = (segment: string): string => encodeURIComponent(segment);

/** The last row-name head made: every change dispatched names a row of mostly the same few tables. */
let lastRowPrefix: string | undefined;
let lastRowHead = "";

export function rowStreamName(prefix: string, parts: readonly string[]): string {
  if (prefix !== lastRowPrefix) {
    lastRowHead = `row:${enc(prefix)}:`;
    lastRowPrefix = prefix;
  }
  return lastRowHead + (parts.length === 1 ? enc(parts[0]!) : parts.map(enc).join(":"));
}

export function tableStreamName(prefix: string): string {
  return `all:${enc(prefix)}`;
}

export function namedStreamName(prefix: string, parts: readonly string[] = []): string {
  return parts.length === 0 ? `named:${enc(prefix)}` : `named:${enc(prefix)}:${parts.map(enc).join(":")}`;
}

/** Parses a namespaced name; `null` for anything that is not one. */
export function parseStreamName(name: string): ParsedStreamName | null {
  if (typeof name !== "string" || name.length === 0 || name.length > MAX_STREAM_NAME_LENGTH) return null;
  const segments = name.split(":");
  const kind = segments[0];
  if (kind !== "row" && kind !== "all" && kind !== "named") return null;
  if (segments.length < 2 || segments[1] === "") return null;
  let decoded: string[];
  try {
    decoded = segments.slice(1).map((s) => decodeURIComponent(s));
  } catch {
    return null;
  }
  const [prefix, ...parts] = decoded as [string, ...string[]];
  if (kind === "row" && parts.length === 0) return null;
  if (kind === "all" && parts.length > 0) return null;
  return { kind, prefix, parts };
}

/** "RoomStream" -> "room", "UserNotificationsStream" -> "user-notifications". */
export function defaultStreamPrefix(className: string): string {
  const base = className.replace(/Stream$/, "") || className;
  return base
    .replace(/([a-z0-9])([A-Z])/g, "$1-$2")
    .replace(/([A-Z])([A-Z][a-z])/g, "$1-$2")
    .toLowerCase();
}
