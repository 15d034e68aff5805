import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { Broker } from "../brokers/broker.js";
import type { LogThrottle } from "../log-throttle.js";
import type { Authenticate } from "./options.js";
import { PAGE_HEADER, onceActor, readPageId, readRequestId, runInRequest } from "./request-context.js";
import type { StreamSourceOptions, StreamSourceRenderer, Streamable } from "./stream-source.js";

/** What `turbo.middleware()` leaves in `res.locals.turbocast` for the view helper. */
export interface TurboLocals {
  /** The broker position when the request started (before the route read its data); `null` if the broker could not say. */
  readonly position: string | null;
  /** The request's X-Turbo-Request-Id, when Turbo sent one. */
  readonly requestId: string | undefined;
  /**
   * The id of the page this response renders, carried in its stream
   * sources' URL (`p=`) and sent back by the client script with the page's
   * requests, so `{ toOthers: true }` broadcasts skip it. Made on first use.
   */
  readonly pageId: string;
  /** Renders a `<turbo-stream-source>` for this request: streams an earlier tag of the request named are left out (nothing at all when none is new). */
  streamSource(streamables: readonly Streamable[], options?: StreamSourceOptions): string;
}

/** Reads `res.locals.turbocast` off a request or response. */
export function localsOf(target: Request | Response | undefined | null): TurboLocals | undefined {
  if (!target) return undefined;
  const res = "locals" in target ? (target as Response) : (target as Request).res;
  return res?.locals?.turbocast as TurboLocals | undefined;
}

const HEAD_FAILED = "broker.head failed";

export interface PageMiddlewareInit {
  broker: Broker;
  renderer: StreamSourceRenderer;
  /** A broker outage fails every page's head(): logged once when it starts and once when it ends. */
  log: LogThrottle;
  /** The request's user, for `actor` in the change context of its writes (asked once, only by a request that writes). Default: none. */
  authenticate?: Authenticate;
}

/**
 * The part of `turbo.middleware()` every page request goes through: it
 * takes the broker position before the route reads any data (so a change
 * committed between the read and the render is replayed, not lost), records
 * X-Turbo-Request-Id for the rest of the request, and leaves
 * `res.locals.turbocast` for `turbo_stream_from`.
 */
export function pageMiddleware(init: PageMiddlewareInit): RequestHandler {
  return (req: Request, res: Response, next: NextFunction): void => {
    const requestId = readRequestId(req.headers["x-turbo-request-id"]);
    const page = readPageId(req.headers[PAGE_HEADER]);
    const authenticate = init.authenticate;
    const actor = authenticate ? onceActor(() => authenticate(req)) : undefined;
    const proceed = (position: string | null): void => {
      let pageId: string | undefined;
      const rendered = new Set<string>();
      const locals: TurboLocals = {
        position,
        requestId,
        get pageId() {
          pageId ??= randomBytes(16).toString("base64url");
          return pageId;
        },
        streamSource: (streamables, options) =>
          init.renderer.render(req, position, streamables, options, locals.pageId, rendered),
      };
      res.locals.turbocast = locals;
      runInRequest({ requestId, page, actor }, next);
    };
    init.broker
      .head()
      .then(
        (position) => {
          init.log.recovered(
            HEAD_FAILED,
            "broker.head() answers again; pages subscribe from their render-time position",
          );
          proceed(position);
        },
        (error: unknown) => {
          init.log.log(HEAD_FAILED, "warn", "broker.head() failed; this page subscribes from the moment it connects", {
            error,
          });
          proceed(null);
        },
      )
      .catch(next);
  };
}

let clientScript: Buffer | undefined;

/** Serves the optional browser script (`<path>/client.js`), read once from the package. */
export function serveClientScript(res: Response): void {
  clientScript ??= readFileSync(new URL("./client/turbocast-client.js", import.meta.url));
  res.set("Cache-Control", "public, max-age=3600").type("text/javascript").send(clientScript);
}
