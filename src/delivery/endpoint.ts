import { readFileSync } from "node:fs";
import type http from "node:http";
import type https from "node:https";
import type { Duplex } from "node:stream";
import express, { type NextFunction, type Request, type RequestHandler, type Response } from "express";
import { WebSocketServer } from "ws";
import type { Broker } from "../brokers/broker.js";
import { ClosedError, SubscriptionRefusedError } from "../errors.js";
import { buildFrame } from "../frames/frame.js";
import type { Logger } from "../logger.js";
import type { StreamRegistry } from "../streams/registry.js";
import type { TurboLocals } from "../views/helpers.js";
import type { Connection } from "./connection.js";
import type { Hub } from "./hub.js";
import type { ResolvedDeliveryOptions } from "./options.js";
import { readRequestId, runInRequest } from "./request-context.js";
import { type StreamSigner, type StreamSourceRenderer, parseSubscriptionUrl } from "./stream-source.js";
import { SseConnection } from "./sse-connection.js";
import { EXPIRED_STATUS, authorize, sseCursor } from "./subscription.js";
import { WebSocketConnection } from "./websocket-connection.js";

/** How long close() waits for clients to answer the WebSocket close handshake before cutting them off. */
const CLOSE_GRACE_MS = 1_000;
/** Each kind of refused subscription is logged at most this often. */
const REFUSAL_LOG_INTERVAL_MS = 60_000;

/** Answers carry a status and nothing else: a refusal never says why. */
const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  406: "Not Acceptable",
  414: "URI Too Long",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

let clientScript: Buffer | undefined;
/** The optional browser script, read once from the package. */
function readClientScript(): Buffer {
  clientScript ??= readFileSync(new URL("./client/turbocast-client.js", import.meta.url));
  return clientScript;
}

/** Express's request prototype for upgrade requests when no app is known: default settings (no trust proxy). */
let defaultApp: express.Express | undefined;

interface ExpressAppLike {
  (req: http.IncomingMessage, res: http.ServerResponse): void;
  request: object;
  handle: unknown;
}

function isExpressApp(value: unknown): value is ExpressAppLike {
  return (
    typeof value === "function" &&
    typeof (value as { handle?: unknown }).handle === "function" &&
    typeof (value as { request?: unknown }).request === "object"
  );
}

export interface DeliveryInit {
  hub: Hub;
  broker: Broker;
  registry: StreamRegistry;
  signer: StreamSigner;
  renderer: StreamSourceRenderer;
  options: ResolvedDeliveryOptions;
  logger: Logger;
}

/**
 * The subscription endpoint: one path on the app's own http.Server. SSE is
 * served by `middleware()` (a GET on the path), WebSocket upgrades by the
 * server's "upgrade" event once `listen(server)` attached to it; both end in
 * a hub subscription through the same checks. Keeps every open connection
 * for the heartbeat and for close().
 */
export class DeliveryEndpoint {
  #init: DeliveryInit;
  #state: "open" | "closing" | "closed" = "open";
  #connections = new Set<Connection>();
  /** When each kind of refusal was last logged (see #noteRefusal). */
  #refusalsLogged = new Map<string, number>();
  #servers = new Map<http.Server | https.Server, (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void>();
  #wss: WebSocketServer;
  #heartbeat: NodeJS.Timeout;
  /** The app whose `trust proxy` decides req.host / req.protocol of upgrade requests. */
  #app: ExpressAppLike | undefined;
  #closing: Promise<void> | undefined;

  constructor(init: DeliveryInit) {
    this.#init = init;
    // Subscribers never send; a large message is a misbehaving client (ws closes it with 1009).
    this.#wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload: 4096,
      perMessageDeflate: false,
    });
    this.#heartbeat = setInterval(() => {
      for (const connection of this.#connections) connection.heartbeat();
    }, init.options.heartbeatMs);
    this.#heartbeat.unref();
  }

  /** Open subscriptions (both transports). */
  get size(): number {
    return this.#connections.size;
  }

  /**
   * Express middleware. On the subscription path it serves SSE (GET) and
   * `client.js`; on every other request it takes the broker position
   * before the route reads any data, records X-Turbo-Request-Id, and leaves
   * `res.locals.turbocast` for `turbo_stream_from`.
   */
  middleware(): RequestHandler {
    const { path } = this.#init.options;
    return (req: Request, res: Response, next: NextFunction): void => {
      if (req.path === path) {
        this.#app ??= isExpressApp(req.app) ? req.app : undefined;
        this.#serveSubscription(req, res).catch(next);
        return;
      }
      if (req.path === `${path}/client.js` && (req.method === "GET" || req.method === "HEAD")) {
        res.set("Cache-Control", "public, max-age=3600").type("text/javascript").send(readClientScript());
        return;
      }
      const requestId = readRequestId(req.headers["x-turbo-request-id"]);
      const proceed = (position: string | null): void => {
        const renderer = this.#init.renderer;
        const locals: TurboLocals = {
          position,
          requestId,
          streamSource: (streamables, options) => renderer.render(req, position, streamables, options),
        };
        res.locals.turbocast = locals;
        runInRequest({ requestId }, next);
      };
      this.#init.broker
        .head()
        .then(proceed, (error: unknown) => {
          this.#init.logger.warn("broker.head() failed; this page subscribes from the moment it connects", { error });
          proceed(null);
        })
        .catch(next);
    };
  }

  /** Attaches WebSocket upgrades on the path to `server`. Safe to call twice for one server. */
  listen(server: http.Server | https.Server): void {
    if (this.#state !== "open") throw new ClosedError("turbocast instance");
    if (this.#servers.has(server)) return;
    this.#app ??= server.listeners("request").find(isExpressApp);
    const onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
      if (pathnameOf(req.url) !== this.#init.options.path) {
        // not ours; when nobody else listens, answer rather than leave the socket hanging
        if (server.listenerCount("upgrade") === 1) abortHandshake(socket, 404);
        return;
      }
      socket.on("error", () => socket.destroy());
      this.#upgrade(req, socket, head).catch((error: unknown) => {
        this.#init.logger.error("WebSocket subscription failed", { error });
        abortHandshake(socket, 500);
      });
    };
    server.on("upgrade", onUpgrade);
    this.#servers.set(server, onUpgrade);
  }

  /** Ends every subscription (SSE responses ended, WebSockets closed with 1001) and detaches from every server. Safe to call twice. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = "closing";
    clearInterval(this.#heartbeat);
    for (const [server, onUpgrade] of this.#servers) server.off("upgrade", onUpgrade);
    this.#servers.clear();
    const open = [...this.#connections];
    for (const connection of open) connection.close();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(open.map((c) => c.closed)),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_GRACE_MS))),
    ]);
    clearTimeout(timer);
    for (const connection of open) if (connection.state !== "closed") connection.terminate();
    await new Promise<void>((resolve) => this.#wss.close(() => resolve()));
    this.#state = "closed";
  }

  async #serveSubscription(req: Request, res: Response): Promise<void> {
    if (this.#state !== "open") return this.#answerSse(res, 503);
    if (req.method !== "GET") {
      res.set("Allow", "GET");
      return answer(res, 405);
    }
    if (req.headers.upgrade !== undefined) {
      // a WebSocket handshake reached Express: turbo.listen(server) was not called
      this.#init.logger.warn(
        `a WebSocket upgrade on ${this.#init.options.path} reached Express: call turbo.listen(server)`,
      );
      return answer(res, 400);
    }
    const accept = req.headers.accept;
    if (accept !== undefined && !/text\/event-stream|\*\/\*/.test(accept)) return answer(res, 406);
    let names: string[];
    let cursor: { cursor: string | null; refresh: boolean };
    try {
      const parsed = parseSubscriptionUrl(req.originalUrl ?? req.url, this.#init.options);
      names = await authorize(req, parsed, this.#authorizeContext());
      const lastEventId = req.headers["last-event-id"];
      cursor = sseCursor(typeof lastEventId === "string" ? lastEventId : undefined, parsed.after);
    } catch (error) {
      if (error instanceof SubscriptionRefusedError) {
        this.#noteRefusal(error);
        return this.#answerSse(res, error.status);
      }
      throw error;
    }
    if (res.destroyed || res.writableEnded) return;
    if (this.#state !== "open") return this.#answerSse(res, 503);
    const connection = new SseConnection(res, {
      retryMs: this.#init.options.retryMs,
      maxBufferedBytes: this.#init.options.maxBufferedBytes,
      onClose: (c) => this.#connections.delete(c),
    });
    this.#connections.add(connection);
    connection.start();
    await this.#subscribe(connection, names, cursor.cursor, cursor.refresh);
  }

  /**
   * Answers an SSE request that will not be subscribed. EventSource stops
   * reconnecting for good on any non-200 answer, so only definite refusals
   * (400, 403, 414…) get their status; a transient failure (500, 503: closing
   * for a deploy, a throwing authenticate) gets an empty 200 stream with a
   * `retry:` so the page comes back by itself, and a genuine but expired
   * signature gets one refresh frame so the page reloads with fresh ones.
   */
  #answerSse(res: Response, status: number): void {
    if (status !== EXPIRED_STATUS && status !== 500 && status !== 503) {
      answer(res, status);
      return;
    }
    res
      .status(200)
      .set({ "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no" });
    const body = status === EXPIRED_STATUS ? `data: ${REFRESH_FRAME}\n\n` : "";
    res.end(`retry: ${status === EXPIRED_STATUS ? this.#init.options.retryMs : TRANSIENT_RETRY_MS}\n\n${body}`);
  }

  async #upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (this.#state !== "open") return abortHandshake(socket, 503);
    // not a WebSocket handshake at all: answered before authenticate() or the database is bothered
    if (req.method !== "GET" || req.headers.upgrade?.toLowerCase() !== "websocket") return abortHandshake(socket, 400);
    // Give the upgrade request Express's request methods (req.get, req.host,
    // req.protocol honouring trust proxy) as Express does for its own requests.
    const app = this.#app ?? ((defaultApp ??= express()) as unknown as ExpressAppLike);
    Object.setPrototypeOf(req, app.request);
    const request = req as Request;
    let names: string[];
    let after: string | null;
    try {
      const parsed = parseSubscriptionUrl(req.url ?? "", this.#init.options);
      after = parsed.after;
      names = await authorize(request, parsed, {
        ...this.#authorizeContext(),
        checkOrigin: () => originAllowed(request, this.#init.options.allowedOrigins),
      });
    } catch (error) {
      if (error instanceof SubscriptionRefusedError) {
        this.#noteRefusal(error);
        return abortHandshake(socket, error.status === EXPIRED_STATUS ? 403 : error.status);
      }
      throw error;
    }
    if (this.#state !== "open") return abortHandshake(socket, 503);
    if (socket.destroyed) return;
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      if (this.#state !== "open") {
        ws.terminate();
        return;
      }
      const connection = new WebSocketConnection(ws, {
        maxBufferedBytes: this.#init.options.maxBufferedBytes,
        onClose: (c) => this.#connections.delete(c),
      });
      this.#connections.add(connection);
      this.#subscribe(connection, names, after, false).catch((error: unknown) => {
        this.#init.logger.error("WebSocket subscription failed", { error });
      });
    });
  }

  async #subscribe(connection: Connection, names: string[], cursor: string | null, refresh: boolean): Promise<void> {
    connection.beginReplay();
    try {
      const unsubscribe = await this.#init.hub.subscribe(names, connection, { cursor, refresh });
      connection.endReplay();
      connection.attach(unsubscribe);
    } catch (error) {
      // the broker could not replay (it is down): the client reconnects and resumes later
      this.#init.logger.warn("could not replay history for a subscription; closing it so the client retries", {
        error,
      });
      connection.terminate();
    }
  }

  /**
   * Says on the server why subscriptions are refused (the client only ever
   * sees the status): at info level, each kind of refusal at most once a
   * minute, so a page stuck on a stale secret shows up in the log without
   * a flood of hostile requests filling it.
   */
  #noteRefusal(error: SubscriptionRefusedError): void {
    const kind = error.message.replace(/"[^"]*"|\d+/g, "…");
    const now = Date.now();
    if ((this.#refusalsLogged.get(kind) ?? -Infinity) > now - REFUSAL_LOG_INTERVAL_MS) return;
    if (this.#refusalsLogged.size >= 100) this.#refusalsLogged.clear();
    this.#refusalsLogged.set(kind, now);
    this.#init.logger.info(`${error.message} (like refusals are logged at most once a minute)`);
  }

  #authorizeContext() {
    return {
      signer: this.#init.signer,
      registry: this.#init.registry,
      authenticate: this.#init.options.authenticate,
      logger: this.#init.logger,
    };
  }
}

function pathnameOf(url: string | undefined): string {
  const q = (url ?? "").indexOf("?");
  return q === -1 ? (url ?? "") : (url ?? "").slice(0, q);
}

/**
 * Whether a WebSocket upgrade comes from the app's own pages or an allowed
 * origin: the Origin's host must be the request's host (`req.host`, which
 * under Express's trust proxy is X-Forwarded-Host). No Origin at all is not a
 * browser, and cannot be a cross-site hijack: allowed.
 */
export function originAllowed(req: Request, allowedOrigins: readonly string[]): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false;
  }
  if (url.origin === "null") return false;
  if (allowedOrigins.includes(url.origin)) return true;
  const own = [req.headers.host, safeHost(req)]
    .filter((h): h is string => typeof h === "string")
    .map((h) => h.toLowerCase());
  return own.includes(url.host);
}

function safeHost(req: Request): string | undefined {
  try {
    return req.host;
  } catch {
    return undefined;
  }
}

const REFRESH_FRAME = buildFrame({ action: "refresh" });

/** Retry delay an SSE client is told after a transient failure (closing, a throwing authenticate or userPassesTest). */
const TRANSIENT_RETRY_MS = 5000;

function answer(res: Response, status: number): void {
  res
    .status(status)
    .set("Cache-Control", "no-store")
    .type("text/plain")
    .send(STATUS_TEXT[status] ?? "Error");
}

/** Answers an upgrade request with a plain HTTP response before any handshake, then closes the socket. */
function abortHandshake(socket: Duplex, status: number): void {
  if (socket.destroyed) return;
  const body = STATUS_TEXT[status] ?? "Error";
  socket.end(
    `HTTP/1.1 ${status} ${body}\r\nConnection: close\r\nCache-Control: no-store\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  socket.once("finish", () => socket.destroy());
}
