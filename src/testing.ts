import { AssertionError } from "node:assert";
import type { Streamable } from "./delivery/stream-source.js";
import { isModelStreamClass, isStreamClass } from "./streams/registry.js";
import { Stream } from "./streams/stream.js";
import { TESTING, type TestingHooks } from "./testing-hooks.js";
import type { Turbo } from "./turbo.js";

/**
 * Test helpers (turbo-rails' capture_turbo_stream_broadcasts,
 * assert_turbo_stream_broadcasts, assert_no_turbo_stream_broadcasts), for
 * any test runner: they need the app's own createTurbo instance and no
 * server. Each runs `fn`, then dispatches every change committed so far
 * (`turbo.feed.drain()`) and publishes the pending debounced refreshes, and
 * collects every frame published meanwhile — by `fn` itself, by the hooks
 * and declarative broadcasts of its writes (and of any other writes
 * dispatched in that time).
 *
 * @example
 * import { assertBroadcasts } from "turbocast/testing";
 * const [frame] = await assertBroadcasts(turbo, () => db.insert(messages).values(row).run(), {
 *   stream: RoomStream.for(row.roomId),
 *   frames: [{ action: "append", target: "messages", html: "hello" }],
 * });
 */

/** One published frame, parsed. */
export interface CapturedBroadcast {
  /** The stream name it was published to. */
  stream: string;
  action: string;
  target: string | undefined;
  targets: string | undefined;
  /** The content of its `<template>` ("" when it has none). */
  html: string;
  /** The frame as published. */
  frame: string;
}

export interface CaptureOptions {
  /** Only frames published to this stream (a Stream, a row, a stream class, a name). Default: every stream. */
  stream?: Streamable;
}

/** What a captured frame must look like: every field given must match (`html`: contained, or matching the RegExp). */
export interface ExpectedBroadcast {
  stream?: Streamable;
  action?: string;
  target?: string;
  targets?: string;
  html?: string | RegExp;
}

export interface AssertBroadcastsOptions extends CaptureOptions {
  /** How many frames. Default: `frames.length` when frames are given, else at least one. */
  count?: number;
  /** The frames, in publish order. */
  frames?: readonly ExpectedBroadcast[];
}

/** The frames published while `fn` runs and its changes are dispatched. */
export async function captureBroadcasts(
  turbo: Turbo,
  fn: () => unknown,
  options: CaptureOptions = {},
): Promise<CapturedBroadcast[]> {
  const hooks = hooksOf(turbo);
  const only = options.stream === undefined ? undefined : streamName(turbo, options.stream);
  const captured: CapturedBroadcast[] = [];
  const untap = hooks.tap((stream, frame) => {
    if (only === undefined || stream === only) captured.push(parseFrame(stream, frame));
  });
  try {
    await fn();
    await turbo.feed.drain();
    await hooks.flushRefreshes();
  } finally {
    untap();
  }
  return captured;
}

/** Like captureBroadcasts, and throws an AssertionError unless the frames match `options`. Returns them. */
export async function assertBroadcasts(
  turbo: Turbo,
  fn: () => unknown,
  options: AssertBroadcastsOptions = {},
): Promise<CapturedBroadcast[]> {
  const captured = await captureBroadcasts(turbo, fn, options);
  const expectedCount = options.count ?? options.frames?.length;
  if (expectedCount === undefined ? captured.length === 0 : captured.length !== expectedCount) {
    throw new AssertionError({
      message: `expected ${expectedCount ?? "at least 1"} broadcast(s)${where(options)}, got ${captured.length}:\n${list(captured)}`,
      actual: captured.length,
      expected: expectedCount ?? 1,
      operator: "assertBroadcasts",
    });
  }
  options.frames?.forEach((expected, i) => {
    const frame = captured[i];
    const mismatch = frame === undefined ? "missing" : mismatchOf(turbo, frame, expected);
    if (mismatch !== null) {
      throw new AssertionError({
        message: `broadcast ${i + 1}${where(options)}: ${mismatch}\n${list(captured)}`,
        actual: frame,
        expected,
        operator: "assertBroadcasts",
      });
    }
  });
  return captured;
}

/** Throws an AssertionError if any frame (to `options.stream`, or to any stream) is published while `fn` runs. */
export async function assertNoBroadcasts(turbo: Turbo, fn: () => unknown, options: CaptureOptions = {}): Promise<void> {
  const captured = await captureBroadcasts(turbo, fn, options);
  if (captured.length > 0) {
    throw new AssertionError({
      message: `expected no broadcasts${where(options)}, got ${captured.length}:\n${list(captured)}`,
      actual: captured.length,
      expected: 0,
      operator: "assertNoBroadcasts",
    });
  }
}

/** Parses a published `<turbo-stream>` frame. */
export function parseFrame(stream: string, frame: string): CapturedBroadcast {
  const open = /^\s*<turbo-stream\b([^>]*)>/.exec(frame);
  const attributes = new Map<string, string>();
  for (const [, name, value] of (open?.[1] ?? "").matchAll(/\s([a-zA-Z_:][-a-zA-Z0-9_:.]*)="([^"]*)"/g)) {
    attributes.set(name!, unescapeHtml(value!));
  }
  const start = frame.indexOf("<template>");
  const end = frame.lastIndexOf("</template>");
  return {
    stream,
    action: attributes.get("action") ?? "",
    target: attributes.get("target"),
    targets: attributes.get("targets"),
    html: start >= 0 && end > start ? frame.slice(start + "<template>".length, end) : "",
    frame,
  };
}

function hooksOf(turbo: Turbo): TestingHooks {
  const hooks = (turbo as unknown as { [TESTING]?: TestingHooks })[TESTING];
  if (!hooks) throw new TypeError("turbocast/testing: pass the instance createTurbo() returned");
  return hooks;
}

function streamName(turbo: Turbo, streamable: Streamable): string {
  if (streamable instanceof Stream) return streamable.name;
  if (isModelStreamClass(streamable)) return streamable.all().name;
  if (isStreamClass(streamable)) return streamable.for().name;
  if (typeof streamable === "string") return turbo.registry.namedClass(streamable)?.for().name ?? streamable;
  const stream = (streamable as { stream?: unknown }).stream;
  if (stream instanceof Stream) return stream.name;
  throw new TypeError("turbocast/testing: stream must be a Stream, a row read through db, a stream class or a name");
}

function mismatchOf(turbo: Turbo, frame: CapturedBroadcast, expected: ExpectedBroadcast): string | null {
  if (expected.stream !== undefined && frame.stream !== streamName(turbo, expected.stream)) {
    return `stream ${frame.stream}, expected ${streamName(turbo, expected.stream)}`;
  }
  for (const field of ["action", "target", "targets"] as const) {
    if (expected[field] !== undefined && frame[field] !== expected[field]) {
      return `${field} ${JSON.stringify(frame[field])}, expected ${JSON.stringify(expected[field])}`;
    }
  }
  const html = expected.html;
  if (html !== undefined && !(typeof html === "string" ? frame.html.includes(html) : html.test(frame.html))) {
    return `html does not ${typeof html === "string" ? "contain" : "match"} ${String(html)}`;
  }
  return null;
}

function where(options: CaptureOptions): string {
  return options.stream === undefined ? "" : " to the stream";
}

function list(captured: readonly CapturedBroadcast[]): string {
  return captured.map((c) => `  ${c.stream}: ${c.action} ${c.target ?? c.targets ?? ""}`).join("\n");
}

function unescapeHtml(value: string): string {
  return value
    .replaceAll("&lt;", "<")
    .replaceAll("&gt;", ">")
    .replaceAll("&quot;", '"')
    .replaceAll("&#39;", "'")
    .replaceAll("&amp;", "&");
}
