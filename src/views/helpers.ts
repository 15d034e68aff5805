import type { Request, Response } from "express";
import type nunjucks from "nunjucks";
import { ConfigError, InvalidStreamableError } from "../errors.js";
import { escapeHtml } from "../frames/escape.js";
import type { Transport } from "../delivery/options.js";
import type { StreamSigner } from "../delivery/signing.js";
import { AFTER_PARAM, STREAM_PARAM } from "../delivery/subscription.js";
import { type StreamRegistry, isModelStreamClass, isStreamClass } from "../streams/registry.js";
import { Stream } from "../streams/stream.js";

/**
 * What `turbo_stream_from` accepts: a row of a bound table (it carries
 * `.stream`), a Stream instance, a ModelStream class (its table-wide
 * `.all()` stream), a plain Stream class (its one stream), a plain name
 * served by a registered Stream class ("lobby"), or an array of these.
 */
export type Streamable = object | string | readonly Streamable[];

export interface StreamSourceOptions {
  /** Default: the app's `transport` option. */
  transport?: Transport;
}

/** What `turbo.middleware()` leaves in `res.locals.turbocast` for the view helper. */
export interface TurboLocals {
  /** The broker position when the request started (before the route read its data); `null` if the broker could not say. */
  readonly position: string | null;
  /** The request's X-Turbo-Request-Id, when Turbo sent one. */
  readonly requestId: string | undefined;
  /** Renders a `<turbo-stream-source>` for this request. */
  streamSource(streamables: readonly Streamable[], options?: StreamSourceOptions): string;
}

export interface StreamSourceRendererOptions {
  registry: StreamRegistry;
  signer: StreamSigner;
  path: string;
  transport: Transport;
  maxStreams: number;
  /** The newest position this process has seen: the cursor when a template renders outside a request (in a hook). */
  latestPosition: () => string | null;
}

/** Builds `<turbo-stream-source>` tags: one tag, one connection, for all the streams named. */
export class StreamSourceRenderer {
  #options: StreamSourceRendererOptions;

  constructor(options: StreamSourceRendererOptions) {
    this.#options = options;
  }

  /**
   * The tag for `streamables`, subscribed from `position`. SSE sources get a
   * path-absolute URL; WebSocket sources an absolute ws:// or wss:// URL
   * built from the request (`req.protocol` and `req.host`, so Express's
   * trust proxy setting decides whether X-Forwarded-Proto/Host count),
   * because Turbo's element opens a WebSocket only for ws: and wss: URLs.
   */
  render(
    req: Request | undefined,
    position: string | null,
    streamables: readonly Streamable[],
    options: StreamSourceOptions = {},
  ): string {
    const transport = options.transport ?? this.#options.transport;
    if (transport !== "sse" && transport !== "websocket") {
      throw new InvalidStreamableError(
        `turbo_stream_from: transport must be "sse" or "websocket", got ${JSON.stringify(transport)}`,
      );
    }
    const names = this.streamNames(streamables);
    const query = new URLSearchParams();
    for (const name of names) query.append(STREAM_PARAM, this.#options.signer.sign(name));
    const after = position ?? this.#options.latestPosition();
    if (after !== null) query.append(AFTER_PARAM, after);
    let src = `${this.#options.path}?${query.toString()}`;
    if (transport === "websocket") {
      if (!req) {
        throw new ConfigError(
          'turbo_stream_from(..., transport="websocket") needs the request to build a ws:// URL: render through res.render() after turbo.middleware()',
        );
      }
      src = `${req.protocol === "https" ? "wss" : "ws"}://${req.host}${src}`;
    }
    return `<turbo-stream-source src="${escapeHtml(src)}"></turbo-stream-source>`;
  }

  /** The distinct stream names of `streamables`, in order. Throws on none, on too many, and on anything that is not a streamable. */
  streamNames(streamables: readonly Streamable[]): string[] {
    const names: string[] = [];
    const add = (value: unknown, index: number): void => {
      if (Array.isArray(value)) {
        for (const item of value) add(item, index);
        return;
      }
      const name = this.#toStream(value, index).name;
      if (!names.includes(name)) names.push(name);
    };
    streamables.forEach(add);
    if (names.length === 0) {
      throw new InvalidStreamableError(
        "turbo_stream_from needs at least one streamable: a row, a Stream, a ModelStream class or a stream name",
      );
    }
    if (names.length > this.#options.maxStreams) {
      throw new InvalidStreamableError(
        `turbo_stream_from names ${names.length} streams; at most ${this.#options.maxStreams} (maxStreamsPerSubscription) fit one subscription`,
      );
    }
    return names;
  }

  #toStream(value: unknown, index: number): Stream {
    if (value instanceof Stream) return value;
    if (isModelStreamClass(value)) return value.all();
    if (isStreamClass(value)) return value.for();
    if (typeof value === "string") {
      const cls = this.#options.registry.namedClass(value);
      if (cls) return cls.for();
      // a full namespaced name ("named:notifications:7", "row:rooms:1") of a registered class
      return this.#options.registry.resolve(value);
    }
    if (value !== null && typeof value === "object" && "stream" in value) {
      // a row's `.stream` getter throws MissingPrimaryKeyError for a row without its key
      const stream = (value as { stream: unknown }).stream;
      if (stream instanceof Stream) return stream;
    }
    throw new InvalidStreamableError(
      `turbo_stream_from: argument ${index + 1} (${describe(value)}) is not a streamable: pass a row read through the app's db, ` +
        "a Stream, a ModelStream class or a stream name",
    );
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (typeof value === "function") return `function ${value.name || "(anonymous)"}`;
  if (typeof value === "object") return `object with keys ${JSON.stringify(Object.keys(value).slice(0, 5))}`;
  return `${typeof value} ${JSON.stringify(value)}`;
}

/** Nunjucks passes keyword arguments (`transport="websocket"`) as a last object marked `__keywords`. */
function splitKeywords(args: unknown[]): { streamables: unknown[]; options: StreamSourceOptions } {
  const last = args[args.length - 1];
  if (last !== null && typeof last === "object" && (last as { __keywords?: unknown }).__keywords === true) {
    const { __keywords: _, ...rest } = last as Record<string, unknown>;
    const unknown = Object.keys(rest).filter((key) => key !== "transport");
    if (unknown.length > 0)
      throw new InvalidStreamableError(`turbo_stream_from: unknown keyword argument ${unknown.join(", ")}`);
    return { streamables: args.slice(0, -1), options: rest as StreamSourceOptions };
  }
  return { streamables: args, options: {} };
}

/** Reads `res.locals.turbocast` off a request or response. */
export function localsOf(target: Request | Response | undefined | null): TurboLocals | undefined {
  if (!target) return undefined;
  const res = "locals" in target ? (target as Response) : (target as Request).res;
  return res?.locals?.turbocast as TurboLocals | undefined;
}

/**
 * The nunjucks global `turbo_stream_from(...streamables, transport=...)`.
 * Inside a request rendered with `res.render` after `turbo.middleware()`,
 * the render context holds `turbocast` (from res.locals): the request and its
 * start position. Outside one (a template rendered by a hook), it falls back
 * to `fallback` — the newest position this process has seen, and no request,
 * so only SSE sources can be built there.
 */
export function turboStreamFromGlobal(
  views: nunjucks.Environment,
  fallback: (streamables: readonly Streamable[], options: StreamSourceOptions) => string,
  onMissingMiddleware: () => void,
) {
  // Mark the tag safe with the app's own nunjucks: a SafeString from
  // turbocast's copy of nunjucks is not one to an app that has another copy,
  // which would print the tag as escaped text and subscribe to nothing.
  const markSafe = views.getFilter("safe") as (value: string) => unknown;
  return function turbo_stream_from(this: { ctx?: Record<string, unknown> } | undefined, ...args: unknown[]): unknown {
    const { streamables, options } = splitKeywords(args);
    const ctx = this?.ctx;
    const locals = ctx?.turbocast as TurboLocals | undefined;
    if (locals && typeof locals.streamSource === "function") {
      return markSafe(locals.streamSource(streamables as Streamable[], options));
    }
    // rendered by Express (its settings are in the context) yet without the
    // middleware's locals: the position is a guess and the SSE route is not mounted
    if (ctx && "settings" in ctx && "_locals" in ctx) onMissingMiddleware();
    return markSafe(fallback(streamables as Streamable[], options));
  };
}
