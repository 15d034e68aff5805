/**
 * The seam between publishing and delivery. One process publishes a frame to
 * a stream; the broker gives it a position and hands it to the hub of every
 * process (this one included), in position order.
 *
 * Positions are `<epoch>.<seq>`: `seq` increases by one per frame across all
 * streams of a broker, so one cursor covers a subscription to many streams;
 * `epoch` changes when the history behind the positions is lost (a restart
 * of an in-memory broker, a Redis that lost its keys), so old cursors are
 * recognised as gaps and answered with a refresh instead of silence.
 */
export interface Published {
  readonly stream: string;
  readonly position: string;
  readonly seq: number;
  /** The complete `<turbo-stream>` markup. */
  readonly frame: string;
  /**
   * Per-transport encodings, made once per frame, shared by every subscriber
   * (`wsFrame`: the complete WebSocket frame; `sseChunk`: the SSE event framed
   * as one HTTP/1.1 chunk).
   */
  encoded?: {
    ws?: Buffer;
    wsFrame?: Buffer;
    sse?: Buffer;
    sseChunk?: Buffer;
    /** Union SSE (the client script's one EventSource per page): the event with the frame's stream marked. */
    sseUnion?: Buffer;
    sseUnionChunk?: Buffer;
    /** Shared WebSocket connections: the complete frame per set of subscription ids it goes to (a few per frame). */
    wsTagged?: Map<string, Buffer>;
  };
}

/** A frame's markup built when first read (see Broker.publishNow): one data event for several channels, built once or never. */
export interface FrameText {
  readonly text: string;
}

export interface BrokerEvents {
  /** Frames may have been missed (an outage); every live subscriber should refresh. */
  gap(reason: string): void;
  /** A logged-once notice about the broker's connection. */
  log(level: "info" | "warn" | "error", message: string, error?: unknown): void;
  /** A control message sent with `control()` by any process, this one included, in order with the frames. */
  control?(message: ControlMessage): void;
}

/**
 * What one process tells every process's live subscriptions (DESIGN.md,
 * "Live authorization"): close, or check again, those of a user and/or
 * holding one of some streams. Carried as JSON.
 */
export interface ControlMessage {
  readonly type: "disconnect" | "reauthorize";
  /** The turbocast instance that sent it (it acted on its own subscriptions already). */
  readonly origin: string;
  readonly userKey?: string | undefined;
  readonly streams?: readonly string[] | undefined;
}

/** A control message as received from another process, or null when it is not one. */
export function parseControl(value: unknown): ControlMessage | null {
  if (value === null || typeof value !== "object") return null;
  const { type, origin, userKey, streams } = value as Record<string, unknown>;
  if (type !== "disconnect" && type !== "reauthorize") return null;
  if (typeof origin !== "string") return null;
  if (userKey !== undefined && typeof userKey !== "string") return null;
  if (streams !== undefined && !(Array.isArray(streams) && streams.every((s) => typeof s === "string"))) return null;
  return { type, origin, userKey, streams: streams as string[] | undefined };
}

export interface Broker {
  /** A short name for logs and errors: "memory", "redis", "postgres". */
  readonly kind: string;
  /** Begin delivering every frame published through this broker, by any process, to `deliver`. */
  start(deliver: (frame: Published) => void, events: BrokerEvents): Promise<void>;
  /** Publish a frame; resolves once the broker has accepted it, with its position. */
  publish(stream: string, frame: string): Promise<Published>;
  /**
   * Optional: publishes as `publish` does, for a frame whose promise nobody
   * would await (a data event), without making one: a failure goes to
   * `failed` with the error `publish` would reject with. One `failed` serves
   * every call (it is told the frame's stream), so a publish costs no closure.
   */
  publishUnawaited?(stream: string, frame: string, failed: (error: unknown, stream: string) => void): void;
  /**
   * Optional, for a broker that queues frames on their way to its server:
   * resolves once at most `limit` of them wait there (awaited or not);
   * `undefined` when that is already so. The change feed waits on it (and on
   * the publishes it awaits) before claiming more changes.
   */
  backlog?(limit: number): Promise<void> | undefined;
  /**
   * Optional, for a broker that takes a frame synchronously (in-process):
   * publishes as `publish` does, delivering to this process before it
   * returns, and throws where `publish` would reject. The frame may be a
   * FrameText built on first read: a broker reads it only for a frame it
   * keeps or delivers (the in-memory broker keeps no event of a data channel
   * nobody here watched, and nobody here can receive one). Data events,
   * whose promises nobody awaits, go through it when a broker has it.
   */
  publishNow?(stream: string, frame: string | FrameText): void;
  /**
   * Optional: this process begins subscriptions of `streams` (before it
   * reads their position or history); the returned function says they
   * ended. A broker that keeps the history of some streams only from when
   * someone may resume them — data channels — starts keeping them here: the
   * in-memory broker at once (it returns the function), the Redis and
   * PostgreSQL brokers once the server has registered them for every process
   * (a promise; it rejects with a BrokerError when the server is
   * unreachable; the function at once when this process registered them
   * lately). A cursor read before that gets a gap for them, one read
   * after resumes. The hub and data subscriptions await it before reading
   * the head or history.
   */
  watch?(streams: readonly string[]): (() => void) | Promise<() => void>;
  /**
   * Frames of `streams` after the position `after`, oldest first; `null` when
   * the retained history no longer reaches back to `after` (or `after` comes
   * from another epoch): the caller must send a refresh.
   */
  history(streams: readonly string[], after: string): Promise<Published[] | null>;
  /** The position of the newest frame (or the epoch's start): what a page rendered now has seen. */
  head(): Promise<string>;
  /**
   * Sends a control message to every process's `events.control`, this one
   * included, on the path frames take and in order with them: a frame
   * published after `control()` resolved reaches no process before the
   * message does. Rejects (BrokerUnavailableError) when the broker is down.
   */
  control(message: ControlMessage): Promise<void>;
  /** Stop delivering and release connections. Safe to call twice. */
  close(): Promise<void>;
}

/** How long a broker keeps frames to replay. Both bounds hold: a frame goes when it is neither among the newest `frames` nor younger than `ageMs` (with a hard cap of `maxFrames`). */
export interface HistoryOptions {
  /** Frames kept per stream at least. Default 1,000. */
  frames?: number;
  /** Milliseconds every frame is kept at least. Default 5 minutes. */
  ageMs?: number;
  /** Hard cap per stream, whatever the age. Default 10 × `frames`. */
  maxFrames?: number;
}

export const HISTORY_DEFAULTS = { frames: 1000, ageMs: 5 * 60_000, maxFrames: 10_000 } as const;

export function resolveHistory(options: HistoryOptions = {}): Required<HistoryOptions> {
  const frames = options.frames ?? HISTORY_DEFAULTS.frames;
  return {
    frames,
    ageMs: options.ageMs ?? HISTORY_DEFAULTS.ageMs,
    maxFrames: options.maxFrames ?? Math.max(frames, frames * 10),
  };
}

export function formatPosition(epoch: string, seq: number): string {
  return `${epoch}.${seq}`;
}

/** Parses a position; `null` for anything malformed (a garbage Last-Event-ID, say). */
export function parsePosition(position: string): { epoch: string; seq: number } | null {
  if (typeof position !== "string" || position.length > 64) return null;
  const dot = position.lastIndexOf(".");
  if (dot <= 0) return null;
  const epoch = position.slice(0, dot);
  const digits = position.slice(dot + 1);
  if (!/^[A-Za-z0-9_-]+$/.test(epoch) || !/^\d{1,15}$/.test(digits)) return null;
  return { epoch, seq: Number(digits) };
}
