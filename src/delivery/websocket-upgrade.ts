import type http from "node:http";
import type https from "node:https";
import type { Duplex } from "node:stream";
import express, { type Request } from "express";
import { WebSocketServer } from "ws";
import { SubscriptionRefusedError } from "../errors.js";
import { abortHandshake } from "./answers.js";
import { SHARED_PROTOCOL, SharedConnection } from "./shared-connection.js";
import { parseSubscriptionUrl } from "./stream-source.js";
import { type Authorized, EXPIRED_STATUS, type SubscriptionSteps } from "./subscription.js";
import { WebSocketConnection } from "./websocket-connection.js";

type Server = http.Server | https.Server;
type UpgradeListener = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void;

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

/**
 * The WebSocket side of the subscription path: `listen(server)` takes the
 * server's upgrade requests on the path, checks the handshake, the Origin
 * and the subscription, and only then completes the handshake (a refused
 * upgrade gets a plain HTTP status, never a WebSocket).
 */
export class WebSocketUpgrade {
  readonly #steps: SubscriptionSteps;
  readonly #servers = new Map<Server, UpgradeListener>();
  readonly #wss: WebSocketServer;
  /** The app whose `trust proxy` decides req.host / req.protocol of upgrade requests. */
  #app: ExpressAppLike | undefined;

  constructor(steps: SubscriptionSteps) {
    this.#steps = steps;
    // A subscriber sends only control messages (on a shared connection); a larger message is a misbehaving client (ws closes it with 1009).
    this.#wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload: steps.options.maxMessageBytes,
      perMessageDeflate: false,
      handleProtocols: (protocols) => (protocols.has(SHARED_PROTOCOL) ? SHARED_PROTOCOL : false),
    });
  }

  /** Remembers the Express app serving the path (its settings apply to upgrade requests too). */
  useApp(app: unknown): void {
    this.#app ??= isExpressApp(app) ? app : undefined;
  }

  /** Whether `listen()` attached to the server that `req` came in on. */
  attachedTo(req: http.IncomingMessage): boolean {
    const server = (req.socket as { server?: unknown } | undefined)?.server;
    return server === undefined ? this.#servers.size > 0 : this.#servers.has(server as Server);
  }

  /** Attaches to `server`'s upgrade requests on the path. Safe to call twice for one server. */
  listen(server: Server): void {
    if (this.#servers.has(server)) return;
    this.#app ??= server.listeners("request").find(isExpressApp);
    const onUpgrade: UpgradeListener = (req, socket, head) => {
      if (pathnameOf(req.url) !== this.#steps.options.path) {
        // not ours; when nobody else listens, answer rather than leave the socket hanging
        if (server.listenerCount("upgrade") === 1) abortHandshake(socket, 404);
        return;
      }
      socket.on("error", () => socket.destroy());
      this.#upgrade(req, socket, head).catch((error: unknown) => {
        this.#steps.log.log("websocket failed", "error", "WebSocket subscription failed", { error });
        abortHandshake(socket, 500);
      });
    };
    server.on("upgrade", onUpgrade);
    this.#servers.set(server, onUpgrade);
  }

  /** Stops taking upgrades: detaches from every server. Safe to call twice. */
  detach(): void {
    for (const [server, onUpgrade] of this.#servers) server.off("upgrade", onUpgrade);
    this.#servers.clear();
  }

  /** Detaches and stops the WebSocket server. Safe to call twice. */
  async close(): Promise<void> {
    this.detach();
    await new Promise<void>((resolve) => this.#wss.close(() => resolve()));
  }

  async #upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const steps = this.#steps;
    if (!steps.accepting()) return abortHandshake(socket, 503);
    // not a WebSocket handshake at all: answered before authenticate() or the database is bothered
    if (req.method !== "GET" || req.headers.upgrade?.toLowerCase() !== "websocket") return abortHandshake(socket, 400);
    // Give the upgrade request Express's request methods (req.get, req.host,
    // req.protocol honouring trust proxy) as Express does for its own requests.
    const app = this.#app ?? ((defaultApp ??= express()) as unknown as ExpressAppLike);
    Object.setPrototypeOf(req, app.request);
    const request = req as Request;
    if (offersSharedProtocol(req)) {
      this.#upgradeShared(request, socket, head);
      return;
    }
    let authorized: Authorized;
    let after: string | null;
    let page: string | null;
    try {
      const parsed = parseSubscriptionUrl(req.url ?? "", steps.options);
      after = parsed.after;
      page = parsed.page;
      authorized = await steps.authorize(request, parsed, () => originAllowed(request, steps.options.allowedOrigins));
    } catch (error) {
      if (error instanceof SubscriptionRefusedError) {
        steps.refused(error);
        return abortHandshake(socket, error.status === EXPIRED_STATUS ? 403 : error.status);
      }
      throw error;
    }
    if (!steps.accepting()) return abortHandshake(socket, 503);
    if (socket.destroyed) return;
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      if (!steps.accepting()) {
        ws.terminate();
        return;
      }
      const connection = new WebSocketConnection(ws, {
        maxBufferedBytes: steps.options.maxBufferedBytes,
        onClose: (c) => steps.connections.remove(c),
      });
      if (!steps.admit(connection, authorized)) return;
      steps.subscribe(connection, authorized.names, { cursor: after, refresh: false, page }).catch((error: unknown) => {
        steps.log.log("websocket failed", "error", "WebSocket subscription failed", { error });
      });
    });
  }

  /**
   * A shared connection (see SharedConnection): only the Origin is checked
   * here; every subscribe on it then goes through the other checks.
   */
  #upgradeShared(request: Request, socket: Duplex, head: Buffer): void {
    const steps = this.#steps;
    if (!originAllowed(request, steps.options.allowedOrigins)) {
      steps.refused(new SubscriptionRefusedError(403, "foreign Origin"));
      abortHandshake(socket, 403);
      return;
    }
    if (socket.destroyed) return;
    this.#wss.handleUpgrade(request, socket, head, (ws) => {
      if (!steps.accepting()) {
        ws.terminate();
        return;
      }
      let shared: SharedConnection | undefined;
      const connection = new WebSocketConnection(ws, {
        maxBufferedBytes: steps.options.maxBufferedBytes,
        onClose: (c) => steps.connections.remove(c),
        onMessage: (data, isBinary) => shared?.message(data, isBinary),
      });
      shared = new SharedConnection({ connection, request, steps });
      connection.attach(() => shared.close());
      steps.connections.add(connection, { streams: [] });
    });
  }
}

function offersSharedProtocol(req: http.IncomingMessage): boolean {
  const header = req.headers["sec-websocket-protocol"];
  return typeof header === "string" && header.split(",").some((p) => p.trim() === SHARED_PROTOCOL);
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
