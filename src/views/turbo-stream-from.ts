import type nunjucks from "nunjucks";
import type { TurboLocals } from "../delivery/page-middleware.js";
import type { StreamSourceOptions, Streamable } from "../delivery/stream-source.js";
import { InvalidStreamableError } from "../errors.js";

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
