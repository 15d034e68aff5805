import type { Request, Response } from "express";
import { SubscriptionRefusedError } from "../errors.js";
import { buildFrame } from "../frames/frame.js";
import { answer } from "./answers.js";
import { SSE_CONTENT_TYPE, SseConnection } from "./sse-connection.js";
import { parseSubscriptionUrl } from "./stream-source.js";
import {
  type Authorized,
  type Cursor,
  EXPIRED_STATUS,
  type SubscriptionSteps,
  sseCursor,
  unionCursors,
} from "./subscription.js";

const REFRESH_FRAME = buildFrame({ action: "refresh" });

/** Retry delay an SSE client is told after a transient failure (closing, a throwing authenticate or userPassesTest). */
const TRANSIENT_RETRY_MS = 5000;

/**
 * The SSE side of the subscription path: a GET on it (routed here by
 * `turbo.middleware()`) is checked, authorized, and answered with an
 * event stream that replays from the cursor and then stays live.
 */
export class SseEndpoint {
  readonly #steps: SubscriptionSteps;
  readonly #upgradesAttached: (req: Request) => boolean;

  /** `upgradesAttached(req)`: whether `turbo.listen()` attached to the server `req` came in on. */
  constructor(steps: SubscriptionSteps, upgradesAttached: (req: Request) => boolean) {
    this.#steps = steps;
    this.#upgradesAttached = upgradesAttached;
  }

  async serve(req: Request, res: Response): Promise<void> {
    const steps = this.#steps;
    if (!steps.accepting()) return this.#answer(res, 503);
    if (req.method === "HEAD") return this.#probe(req, res);
    if (req.method !== "GET") {
      res.set("Allow", "GET, HEAD");
      return answer(res, 405);
    }
    if (req.headers.upgrade !== undefined) {
      // Node hands a request to the upgrade listeners only with `Connection: Upgrade`; a WebSocket
      // upgrade reaches Express either without it (a broken client: just a bad request) or because
      // turbo.listen(server) was not called (the app's mistake, the one worth a warning)
      if (req.headers.upgrade.toLowerCase() === "websocket" && !this.#upgradesAttached(req)) {
        steps.log.log(
          "listen not called",
          "warn",
          `a WebSocket upgrade on ${steps.options.path} reached Express: call turbo.listen(server)`,
        );
      }
      return answer(res, 400);
    }
    // Express's negotiator parses media ranges (type/subtype case-insensitively,
    // wildcards, parameters, q=0 as "not acceptable"); no Accept header accepts anything
    if (req.accepts(SSE_CONTENT_TYPE) === false) return answer(res, 406);
    let authorized: Authorized;
    let cursor: Cursor;
    let union = false;
    try {
      const parsed = parseSubscriptionUrl(req.originalUrl ?? req.url, steps.options);
      authorized = await steps.authorize(req, parsed);
      const header = req.headers["last-event-id"];
      const lastEventId = typeof header === "string" ? header : undefined;
      const { positions } = parsed;
      union = positions !== undefined;
      cursor = {
        ...(positions ? unionCursors({ ...parsed, positions }, lastEventId) : sseCursor(lastEventId, parsed.after)),
        page: parsed.page,
      };
    } catch (error) {
      if (error instanceof SubscriptionRefusedError) {
        steps.refused(error);
        return this.#answer(res, error.status);
      }
      throw error;
    }
    const data = dataParams(req.originalUrl ?? req.url);
    if (data !== null) {
      const refusal = typeof data === "string" || union ? 400 : steps.dataRefusal(authorized.names, data.sync);
      if (refusal !== null) return answer(res, refusal);
    }
    if (res.destroyed || res.writableEnded) return;
    if (!steps.accepting()) return this.#answer(res, 503);
    const connection = new SseConnection(res, {
      retryMs: steps.options.retryMs,
      maxBufferedBytes: steps.options.maxBufferedBytes,
      onClose: (c) => steps.connections.remove(c),
      union,
    });
    connection.start();
    if (!steps.admit(connection, authorized)) return;
    if (data !== null && typeof data !== "string") {
      // sync=1: every (re)connect starts from a fresh set; otherwise Last-Event-ID (or after=) resumes exactly
      const after = data.sync || !("cursor" in cursor) ? null : cursor.cursor;
      await steps
        .subscribeData(connection, authorized.names, { sync: data.sync, after, version: data.version })
        .catch((error) => {
          // a set over maxSyncRows: known only once read; the stream ends and the server says why
          steps.log.log("sse sync failed", "warn", error instanceof Error ? error.message : String(error), { error });
          connection.close();
        });
      return;
    }
    await steps.subscribe(connection, authorized.names, cursor);
  }

  /**
   * HEAD runs every check of a subscription and answers with the status
   * alone, subscribing nothing: 200 when it would be served; 400, 403 (an
   * expired signature included) or 414 when it is refused for good; 500 or
   * 503 when it failed for now. A browser cannot read the status of a
   * refused WebSocket handshake (it sees close 1006, like a network
   * failure): the client script asks this before it reconnects.
   */
  async #probe(req: Request, res: Response): Promise<void> {
    const steps = this.#steps;
    if (!steps.accepting()) return answer(res, 503);
    try {
      const parsed = parseSubscriptionUrl(req.originalUrl ?? req.url, steps.options);
      await steps.authorize(req, parsed);
    } catch (error) {
      if (!(error instanceof SubscriptionRefusedError)) throw error;
      steps.refused(error);
      return answer(res, error.status === EXPIRED_STATUS ? 403 : error.status);
    }
    res.status(200).set("Cache-Control", "no-store").end();
  }

  /**
   * Answers an SSE request that will not be subscribed. EventSource stops
   * reconnecting for good on any non-200 answer, so only definite refusals
   * (400, 403, 414…) get their status; a transient failure (500, 503: closing
   * for a deploy, a throwing authenticate) gets an empty 200 stream with a
   * `retry:` so the page comes back by itself, and a genuine but expired
   * signature gets one refresh frame so the page reloads with fresh ones.
   */
  #answer(res: Response, status: number): void {
    if (status !== EXPIRED_STATUS && status !== 500 && status !== 503) {
      answer(res, status);
      return;
    }
    res
      .status(200)
      .set({ "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no" });
    const body = status === EXPIRED_STATUS ? `data: ${REFRESH_FRAME}\n\n` : "";
    res.end(`retry: ${status === EXPIRED_STATUS ? this.#steps.options.retryMs : TRANSIENT_RETRY_MS}\n\n${body}`);
  }
}

/**
 * A data subscription over SSE (`data=1`, with `sync=1` or `version=<n>`):
 * its events come as named `turbocast-data` events, which Turbo ignores.
 * null for frames; a string says why the parameters are malformed.
 */
function dataParams(rawUrl: string): { sync: boolean; version: number | null } | string | null {
  let params: URLSearchParams;
  try {
    params = new URL(rawUrl, "http://turbocast.invalid").searchParams;
  } catch {
    return null;
  }
  const data = params.get("data");
  if (data === null) return null;
  if (data !== "1") return "data= must be 1";
  const sync = params.get("sync");
  if (sync !== null && sync !== "1") return "sync= must be 1";
  const version = params.get("version");
  if (version !== null && !/^\d{1,15}$/.test(version)) return "version= must be a non-negative integer";
  return { sync: sync === "1", version: version === null ? null : Number(version) };
}
