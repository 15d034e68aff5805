import type http from "node:http";
import type https from "node:https";
import type { NextFunction, Request, RequestHandler, Response } from "express";
import type { Broker } from "../brokers/broker.js";
import { ClosedError, type SubscriptionRefusedError, SyncError } from "../errors.js";
import { LogThrottle } from "../log-throttle.js";
import type { Logger } from "../logger.js";
import type { StreamRegistry } from "../streams/registry.js";
import type { Connection } from "./connection.js";
import { ConnectionRegistry } from "./connection-registry.js";
import { type DataStart, subscribeData } from "../data/subscription.js";
import { SyncReader } from "../data/sync.js";
import type { Hub } from "./hub.js";
import type { ResolvedDeliveryOptions } from "./options.js";
import { pageMiddleware, serveClientScript } from "./page-middleware.js";
import { SseEndpoint } from "./sse-endpoint.js";
import type { ParsedSubscription, StreamSigner, StreamSourceRenderer } from "./stream-source.js";
import { type Authorized, type Cursor, type SubscriptionSteps, authorize } from "./subscription.js";
import { LiveAuthorization, recheckSlots } from "./live-authorization.js";
import { WebSocketUpgrade } from "./websocket-upgrade.js";

/** How long close() waits for clients to answer the WebSocket close handshake before cutting them off. */
const CLOSE_GRACE_MS = 1_000;

export interface DeliveryInit {
  hub: Hub;
  broker: Broker;
  registry: StreamRegistry;
  signer: StreamSigner;
  renderer: StreamSourceRenderer;
  options: ResolvedDeliveryOptions;
  logger: Logger;
  /** The newest position this process has seen (the id of the refresh frame a revoked subscription gets). */
  position: () => string | null;
  /** Reads the set a data subscription syncs to. */
  syncReader: SyncReader;
}

/**
 * The subscription endpoint: one path on the app's own http.Server. It wires
 * the steps of delivery together: `middleware()` serves pages
 * (page-middleware.ts), `client.js`, and SSE on the path (sse-endpoint.ts);
 * `listen(server)` takes WebSocket upgrades (websocket-upgrade.ts); both end
 * in a hub subscription through the same checks (subscription.ts) and are
 * kept in one ConnectionRegistry for the heartbeat and for close().
 */
export class DeliveryEndpoint {
  #init: DeliveryInit;
  #state: "open" | "closing" | "closed" = "open";
  #connections: ConnectionRegistry;
  #access: LiveAuthorization;
  /** Lines that a client or an outage can trigger: each kind at most once a minute, repeats counted. */
  #log: LogThrottle;
  #sse: SseEndpoint;
  #websocket: WebSocketUpgrade;
  #pages: RequestHandler;
  #heartbeat: NodeJS.Timeout;
  #closing: Promise<void> | undefined;

  constructor(init: DeliveryInit) {
    this.#init = init;
    this.#log = new LogThrottle(init.logger);
    this.#connections = new ConnectionRegistry({ slots: recheckSlots(init.options.reauthorizeMs) });
    this.#access = new LiveAuthorization({
      connections: this.#connections,
      registry: init.registry,
      log: this.#log,
      reauthorizeMs: init.options.reauthorizeMs,
      expiring: init.options.signatureTtlMs !== undefined,
      position: init.position,
    });
    this.#access.start();
    const steps: SubscriptionSteps = {
      options: init.options,
      connections: this.#connections,
      log: this.#log,
      accepting: () => this.#state === "open",
      authorize: (req, parsed, checkOrigin) => this.#authorize(req, parsed, checkOrigin),
      admit: (connection, authorized) =>
        this.#access.admit(
          connection,
          {
            streams: authorized.names,
            user: authorized.user,
            userKey: authorized.userKey,
            expiresAt: authorized.expiresAt,
          },
          authorized.mark,
        ),
      refused: (error) => this.#noteRefusal(error),
      subscribe: (connection, names, cursor) => this.#subscribe(connection, names, cursor),
      subscribeData: (connection, names, start) => this.#subscribeData(connection, names, start),
      dataRefusal: (names, sync) => {
        if (!sync) return null;
        if (names.length !== 1) return 400;
        return SyncReader.canSync(this.#init.registry.resolve(names[0]!)) ? null : 404;
      },
    };
    this.#websocket = new WebSocketUpgrade(steps);
    this.#sse = new SseEndpoint(steps, (req) => this.#websocket.attachedTo(req));
    this.#pages = pageMiddleware({
      broker: init.broker,
      renderer: init.renderer,
      log: this.#log,
      authenticate: init.options.authenticate,
    });
    this.#heartbeat = setInterval(() => {
      for (const connection of this.#connections.all()) connection.heartbeat();
    }, init.options.heartbeatMs);
    this.#heartbeat.unref();
  }

  /** Open subscriptions (both transports). */
  get size(): number {
    return this.#connections.size;
  }

  /** The live connections, by stream and by user. */
  get connections(): ConnectionRegistry {
    return this.#connections;
  }

  /** Disconnects and re-checks this process's subscriptions (Revocations carries them to the other processes). */
  get access(): LiveAuthorization {
    return this.#access;
  }

  /**
   * Express middleware. On the subscription path it serves SSE (GET) and
   * `client.js`; every other request is a page (see pageMiddleware).
   */
  middleware(): RequestHandler {
    const { path } = this.#init.options;
    return (req: Request, res: Response, next: NextFunction): void => {
      if (req.path === path) {
        this.#websocket.useApp(req.app);
        this.#sse.serve(req, res).catch(next);
        return;
      }
      if (req.path === `${path}/client.js` && (req.method === "GET" || req.method === "HEAD")) {
        serveClientScript(res);
        return;
      }
      this.#pages(req, res, next);
    };
  }

  /** Attaches WebSocket upgrades on the path to `server`. Safe to call twice for one server. */
  listen(server: http.Server | https.Server): void {
    if (this.#state !== "open") throw new ClosedError("turbocast instance");
    this.#websocket.listen(server);
  }

  /** Ends every subscription (SSE responses ended, WebSockets closed with 1001) and detaches from every server. Safe to call twice. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = "closing";
    clearInterval(this.#heartbeat);
    this.#access.stop();
    this.#websocket.detach();
    await this.#connections.closeAll(CLOSE_GRACE_MS);
    await this.#websocket.close();
    this.#state = "closed";
  }

  #authorize(req: Request, parsed: ParsedSubscription, checkOrigin?: () => boolean): Promise<Authorized> {
    return authorize(req, parsed, {
      signer: this.#init.signer,
      registry: this.#init.registry,
      authenticate: this.#init.options.authenticate,
      userKey: this.#init.options.userKey,
      mark: () => this.#access.mark(),
      log: this.#log,
      ...(checkOrigin ? { checkOrigin } : {}),
    });
  }

  async #subscribe(connection: Connection, names: string[], cursor: Cursor): Promise<void> {
    connection.beginReplay();
    try {
      const unsubscribe = await this.#init.hub.subscribe(names, connection, cursor);
      connection.endReplay();
      connection.attach(unsubscribe);
    } catch (error) {
      // the broker could not replay (it is down): the client reconnects and resumes later
      this.#log.log(
        "replay failed",
        "warn",
        "could not replay history for a subscription; closing it so the client retries",
        { error },
      );
      connection.terminate();
    }
  }

  /**
   * A data subscription (data/subscription.ts): its sync, or its replay
   * after `after`, then live. Throws SyncError for a sync that cannot be
   * answered (the caller refuses with its status); a replay that fails ends
   * it so the client retries, as for frames.
   */
  async #subscribeData(connection: Connection, names: string[], start: DataStart): Promise<void> {
    const { hub, broker, registry, syncReader } = this.#init;
    connection.beginReplay();
    try {
      const unsubscribe = await subscribeData({ hub, broker, registry, reader: syncReader }, names, connection, start);
      connection.endReplay();
      connection.attach(unsubscribe);
    } catch (error) {
      connection.endReplay();
      if (error instanceof SyncError) throw error;
      this.#log.log(
        "data replay failed",
        "warn",
        "could not sync or replay a data subscription; closing it so the client retries",
        { error },
      );
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
    const kind = `refused:${error.message.replace(/"[^"]*"|\d+/g, "…")}`;
    this.#log.log(kind, "info", `${error.message} (like refusals are logged at most once a minute)`);
  }
}
