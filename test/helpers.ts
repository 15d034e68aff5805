import { EventSource } from "eventsource";
import WebSocket from "ws";
import type { Logger } from "../src/logger.js";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";

/** A fresh temporary folder, removed by the returned cleanup. */
export function tempDir(prefix = "turbocast-"): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Polls `check` until it returns a truthy value (returned), or fails after `timeoutMs`. No fixed sleeps. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  options: { timeoutMs?: number; message?: string } = {},
): Promise<NonNullable<T>> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`waitFor timed out after ${timeoutMs} ms${options.message ? `: ${options.message}` : ""}`, {
        cause: lastError,
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Starts an http.Server on 127.0.0.1, port 0. */
export async function listen(server: http.Server): Promise<{ port: number; url: string }> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return { port, url: `http://127.0.0.1:${port}` };
}

/** Closes a server and every connection it still holds. */
export async function closeServer(server: http.Server): Promise<void> {
  server.closeAllConnections?.();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/** A logger that keeps what it is told, for assertions. */
export interface LogEntry {
  level: "info" | "warn" | "error";
  message: string;
  details?: Record<string, unknown>;
}

export function memoryLogger(): Logger & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const at = (level: LogEntry["level"]) => (message: string, details?: Record<string, unknown>) => {
    entries.push({ level, message, details });
  };
  return { entries, info: at("info"), warn: at("warn"), error: at("error") };
}

export function unescapeHtml(value: string): string {
  return value
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");
}

/** An EventSource client that records every message; `headers` are sent on every (re)connect. */
export function openSse(
  url: string,
  options: { headers?: Record<string, string>; beforeFetch?: (attempt: number) => Promise<void> | void } = {},
): {
  source: EventSource;
  messages: Array<{ id: string; data: string }>;
  opened: Promise<void>;
  attempts: () => number;
  lastEventIds: Array<string | undefined>;
} {
  const messages: Array<{ id: string; data: string }> = [];
  const lastEventIds: Array<string | undefined> = [];
  let attempts = 0;
  const source = new EventSource(url, {
    fetch: async (input, init) => {
      attempts++;
      await options.beforeFetch?.(attempts);
      lastEventIds.push(init.headers["Last-Event-ID"] ?? (init.headers as Record<string, string>)["last-event-id"]);
      return fetch(input, { ...init, headers: { ...init.headers, ...options.headers } });
    },
  });
  source.onmessage = (event) => messages.push({ id: event.lastEventId, data: event.data });
  const opened = new Promise<void>((resolve, reject) => {
    source.addEventListener("open", () => resolve(), { once: true });
    source.addEventListener("error", (event) => reject(Object.assign(new Error("EventSource failed"), { event })), {
      once: true,
    });
  });
  // a client nobody awaits the opening of must not fail the run with an unhandled rejection
  opened.catch(() => {});
  return { source, messages, opened, attempts: () => attempts, lastEventIds };
}

/** A `ws` client that records every text message; resolves once open, rejects with the HTTP status of a refused upgrade. */
export async function openWs(
  url: string,
  options: { headers?: Record<string, string>; origin?: string } = {},
): Promise<{ ws: WebSocket; messages: string[]; closed: Promise<{ code: number; reason: string }> }> {
  const ws = new WebSocket(url, { headers: options.headers, origin: options.origin });
  const messages: string[] = [];
  ws.on("message", (data, isBinary) => {
    if (!isBinary) messages.push(data.toString("utf8"));
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("unexpected-response", (_req, res) => {
      reject(Object.assign(new Error(`upgrade refused with ${res.statusCode}`), { status: res.statusCode }));
      res.resume();
      ws.terminate();
    });
    ws.once("error", reject);
  });
  return { ws, messages, closed };
}

/** The HTTP status a WebSocket upgrade to `url` is answered with (101 when it opens). */
export async function upgradeStatus(
  url: string,
  options: { headers?: Record<string, string>; origin?: string } = {},
): Promise<number> {
  try {
    const { ws } = await openWs(url, options);
    ws.terminate();
    return 101;
  } catch (error) {
    const status = (error as { status?: number }).status;
    if (status === undefined) throw error;
    return status;
  }
}

/** `http://…/turbo-streams?…` -> `ws://…/turbo-streams?…` */
export function toWs(url: string): string {
  return url.replace(/^http/, "ws");
}

/** One subscription as the server ended it: what it carried, and how it ended. */
export interface LiveSubscriber {
  /** The frames received, in order (SSE `data`, WebSocket text messages). */
  frames: string[];
  /** Resolves once it is subscribed (SSE: the `retry:` line came; WebSocket: open). */
  ready: Promise<void>;
  /** Resolves when it ended: SSE with no code, WebSocket with its close code. */
  ended: Promise<{ code?: number }>;
  close(): void;
}

/**
 * A raw SSE subscription that never reconnects (EventSource would), so what
 * one response carried is all there is.
 */
export function subscribeSse(url: string, headers: Record<string, string> = {}): LiveSubscriber {
  const frames: string[] = [];
  let buffer = "";
  let resolveReady!: () => void;
  let rejectReady!: (error: Error) => void;
  let resolveEnded!: (end: { code?: number }) => void;
  const ready = new Promise<void>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  const ended = new Promise<{ code?: number }>((resolve) => (resolveEnded = resolve));
  ready.catch(() => {});
  const req = http.get(url, { headers: { Accept: "text/event-stream", ...headers } }, (res) => {
    if (res.statusCode !== 200) rejectReady(new Error(`SSE answered ${res.statusCode}`));
    res.setEncoding("utf8");
    res.on("data", (chunk: string) => {
      buffer += chunk;
      let end = buffer.indexOf("\n\n");
      while (end !== -1) {
        const lines = buffer.slice(0, end).split("\n");
        buffer = buffer.slice(end + 2);
        if (lines.some((line) => line.startsWith("retry:"))) resolveReady();
        const data = lines.filter((line) => line.startsWith("data: ")).map((line) => line.slice(6));
        if (data.length > 0) frames.push(data.join("\n"));
        end = buffer.indexOf("\n\n");
      }
    });
    res.on("close", () => resolveEnded({}));
  });
  req.on("error", rejectReady);
  return { frames, ended, ready, close: () => req.destroy() };
}

/** A WebSocket subscription (`ws` never reconnects by itself); `url` may be http:// or ws://. */
export function subscribeWs(url: string, headers: Record<string, string> = {}): LiveSubscriber {
  const opened = openWs(toWs(url), { headers });
  const subscriber: LiveSubscriber = {
    frames: [],
    ready: opened.then(({ messages }) => {
      // the client's own array: frames arriving later show up here
      subscriber.frames = messages;
    }),
    ended: opened.then(async ({ closed }) => ({ code: (await closed).code })),
    close: () => void opened.then(({ ws }) => ws.terminate()).catch(() => {}),
  };
  subscriber.ready.catch(() => {});
  subscriber.ended.catch(() => {});
  return subscriber;
}

/** A frame without the position attribute WebSocket messages carry. */
export const withoutPosition = (frame: string): string => frame.replace(/ data-turbocast-position="[^"]*"/, "");
