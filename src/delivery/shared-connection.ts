import type { Request } from "express";
import type { RawData } from "ws";
import { parsePosition, type Published } from "../brokers/broker.js";
import { dataChannel } from "../data/channel.js";
import type { DataStart } from "../data/subscription.js";
import { SubscriptionRefusedError, SyncError } from "../errors.js";
import { type Connection, ConnectionLifecycle } from "./connection.js";
import { exceptOf } from "./hub.js";
import { pageDigest, readPageId } from "./request-context.js";
import { MAX_TOKEN_LENGTH } from "./stream-source.js";
import { type Authorized, EXPIRED_STATUS, type SubscriptionSteps } from "./subscription.js";
import { CloseCode, type WebSocketConnection } from "./websocket-connection.js";

/**
 * The WebSocket subprotocol of a shared connection (the client script's one
 * connection per page). Offered in `Sec-WebSocket-Protocol`, it opens a
 * connection with no subscription, on which the client subscribes and
 * unsubscribes with JSON text messages (DCRF's shape):
 *
 *   → {"type":"subscribe","id":1,"streams":["<signed>",…],"after":"<position>"|null,"page":"<p= of the source>"}
 *   ← {"type":"subscribed","id":1}                 live; what it replayed came before
 *   ← {"type":"refused","id":1,"status":403}        403 no / 410 signature expired / 500, 503 try again later
 *   → {"type":"unsubscribe","id":1}
 *   ← {"type":"unsubscribed","id":1}
 *   ← {"type":"error","id":1|null,"status":400,"reason":"…"}   400 bad request / 404 no such id / 429 too many subscriptions
 *
 * A data subscription (data/subscription.ts) adds `"data":true`, and
 * `"sync":true` for the set first, or `"version":<n>` with `after` to
 * resume; its events come as `{"type":"data","for":"<ids>","position":…,"event":{…}}`
 * (data/wire.ts), and a sync that cannot be answered is refused with its
 * status (400 several streams, 404 no sync, 413 too many rows).
 *
 * Frames are the same text messages as on a URL-subscribed socket, with two
 * more attributes on the opening tag: `data-turbocast-for` (the ids of the
 * subscriptions the frame is for, space-separated) and
 * `data-turbocast-stream`. A frame published while several subscriptions of
 * the connection hold its stream is sent once, for all of them; a
 * subscription's replay (after its own `after`) is its own.
 */
export const SHARED_PROTOCOL = "turbocast.v1";

/** Subscription ids: a string of up to 64 of `[A-Za-z0-9_.:-]`, or a non-negative integer. */
const ID = /^[A-Za-z0-9_.:-]{1,64}$/;

type Id = string | number;

export type Answer =
  | { type: "subscribed"; id: Id }
  | { type: "unsubscribed"; id: Id }
  | { type: "refused"; id: Id; status: number }
  | { type: "error"; id: Id | null; status: 400 | 404 | 429; reason: string };

export interface SharedConnectionInit {
  connection: WebSocketConnection;
  /** The upgrade request: each subscribe is authorized with it, as a new connection would be. */
  request: Request;
  steps: SubscriptionSteps;
}

/**
 * One subscription of a shared connection. It is a Connection of its own to
 * the rest of delivery — registered with its streams, replayed into and
 * attached by the same steps as a URL subscription — whose frames go out on
 * the shared socket, marked with its id.
 */
class SharedSubscription implements Connection {
  readonly transport = "websocket" as const;
  readonly id: Id;
  readonly key: string;
  streams: readonly string[] = [];
  /** The digest of the page that rendered its source (`{ toOthers: true }` frames of that page skip it). */
  page: string | null = null;
  /** authorizing → replaying → live; closed once it ended, however. */
  phase: "authorizing" | "replaying" | "live" | "closed" = "authorizing";
  readonly #owner: SharedConnection;
  readonly #life = new ConnectionLifecycle();

  constructor(owner: SharedConnection, id: Id) {
    this.#owner = owner;
    this.id = id;
    this.key = String(id);
  }

  get state(): "open" | "closing" | "closed" {
    return this.#life.state;
  }

  get closed(): Promise<void> {
    return this.#life.closed;
  }

  beginReplay(): void {
    this.#owner.replayBegins();
  }

  endReplay(): void {
    this.#owner.replayEnds();
  }

  attach(unsubscribe: () => void): void {
    this.#life.attach(unsubscribe);
  }

  send(frame: Published): void {
    if (this.phase !== "closed") this.#owner.send(this, frame);
  }

  live(): void {
    if (this.phase === "replaying") this.#owner.goesLive(this);
  }

  /** The socket's own heartbeat covers it. */
  heartbeat(): void {}

  /** Server shutting down: the socket itself closes with 1001. */
  close(): void {
    this.#owner.end(this, null);
  }

  /** Its replay failed (the broker is down): the client subscribes it again later. */
  terminate(): void {
    this.#owner.end(this, 503);
  }

  /**
   * Access ended (live authorization): this subscription alone is refused
   * with 403 and the socket stays open for the page's other sources; the
   * client script refreshes the page itself (at most once a minute), so no
   * refresh frame is sent on the shared socket.
   */
  revoke(_refresh?: Published): void {
    this.#owner.end(this, 403);
  }

  /** Ends it (unsubscribes it from the hub); safe to call twice. */
  finish(): void {
    this.phase = "closed";
    this.#life.finish();
  }
}

/**
 * The subscriptions of one shared WebSocket. Each is a hub subscription of
 * its own (a SharedSubscription), so each replays after its own position;
 * what goes out live is sent once per frame, marked with every live
 * subscription that holds its stream, so a stream two sources name arrives
 * once.
 */
export class SharedConnection {
  readonly #connection: WebSocketConnection;
  readonly #request: Request;
  readonly #steps: SubscriptionSteps;
  readonly #subscriptions = new Map<string, SharedSubscription>();
  /** Live subscriptions by stream: who a live frame is for. */
  readonly #live = new Map<string, Set<SharedSubscription>>();
  /** The last frame sent live: the hub hands it to each subscription that holds its stream, one after another. */
  #lastLive: Published | null = null;
  #replays = 0;
  #tokens: number;
  #refilledAt = Date.now();
  #closed = false;

  constructor(init: SharedConnectionInit) {
    this.#connection = init.connection;
    this.#request = init.request;
    this.#steps = init.steps;
    this.#tokens = this.#burst;
  }

  get #burst(): number {
    return this.#steps.options.maxMessagesPerSecond * 2;
  }

  /** The socket closed: every subscription ends. */
  close(): void {
    this.#closed = true;
    for (const subscription of [...this.#subscriptions.values()]) this.end(subscription, null);
  }

  message(data: RawData, isBinary: boolean): void {
    if (this.#closed) return;
    if (isBinary) {
      this.#connection.closeWith(CloseCode.UNSUPPORTED_DATA, "binary messages are not part of the protocol");
      return;
    }
    if (!this.#take()) {
      this.#connection.closeWith(CloseCode.POLICY_VIOLATION, "too many messages");
      return;
    }
    let message: unknown;
    try {
      message = JSON.parse(rawText(data));
    } catch {
      this.#answer({ type: "error", id: null, status: 400, reason: "malformed JSON" });
      return;
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      this.#answer({ type: "error", id: null, status: 400, reason: "a message is a JSON object" });
      return;
    }
    const { type, id } = message as { type?: unknown; id?: unknown };
    const validId = isId(id) ? id : null;
    if (type === "subscribe" || type === "unsubscribe") {
      if (validId === null) {
        this.#answer({ type: "error", id: null, status: 400, reason: "id must be a short string or an integer" });
        return;
      }
      if (type === "subscribe") this.#subscribe(validId, message as Record<string, unknown>);
      else this.#unsubscribe(validId);
      return;
    }
    this.#answer({ type: "error", id: validId, status: 400, reason: `unknown type ${JSON.stringify(type)}` });
  }

  /** Token bucket: `maxMessagesPerSecond` on average, bursts of twice that. */
  #take(): boolean {
    const now = Date.now();
    const rate = this.#steps.options.maxMessagesPerSecond;
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#refilledAt) / 1000) * rate);
    this.#refilledAt = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  #subscribe(id: Id, message: Record<string, unknown>): void {
    const options = this.#steps.options;
    const key = String(id);
    const { streams, after } = message;
    const problem = invalidSubscribe(streams, after, options.maxStreamsPerSubscription);
    if (problem !== null) {
      this.#answer({ type: "error", id, status: 400, reason: problem });
      return;
    }
    if (this.#subscriptions.has(key)) {
      this.#answer({ type: "error", id, status: 400, reason: "id already in use" });
      return;
    }
    if (this.#subscriptions.size >= options.maxSubscriptionsPerConnection) {
      this.#answer({
        type: "error",
        id,
        status: 429,
        reason: `at most ${options.maxSubscriptionsPerConnection} subscriptions per connection`,
      });
      return;
    }
    const data = dataStartOf(message, (after as string | null | undefined) ?? null);
    if (typeof data === "string") {
      this.#answer({ type: "error", id, status: 400, reason: data });
      return;
    }
    const subscription = new SharedSubscription(this, id);
    this.#subscriptions.set(key, subscription);
    // the page id (`p=` of the source's URL) is not checked: a page can only name itself (see PAGE_PARAM)
    const pageId = readPageId(typeof message.page === "string" ? message.page : undefined);
    const page = pageId === undefined ? null : pageDigest(pageId);
    this.#start(subscription, streams as string[], (after as string | null | undefined) ?? null, page, data).catch(
      (error: unknown) => {
        this.#steps.log.log("shared subscribe failed", "error", "a shared-connection subscribe failed", { error });
        this.end(subscription, 500);
      },
    );
  }

  /** The checks of a new connection, then registration, replay and live, as for a URL subscription. */
  async #start(
    subscription: SharedSubscription,
    tokens: string[],
    after: string | null,
    page: string | null,
    data: DataStart | null,
  ): Promise<void> {
    const steps = this.#steps;
    let authorized: Authorized;
    try {
      authorized = await steps.authorize(this.#request, { tokens, after, page });
    } catch (error) {
      if (!(error instanceof SubscriptionRefusedError)) throw error;
      steps.refused(error);
      this.end(subscription, error.status === EXPIRED_STATUS ? 410 : error.status);
      return;
    }
    if (isClosed(subscription)) return;
    if (!steps.accepting()) {
      this.end(subscription, 503);
      return;
    }
    // a data subscription's frames come on its streams' data channels: who a live frame is for goes by those
    subscription.streams = data === null ? authorized.names : authorized.names.map(dataChannel);
    subscription.page = page;
    subscription.phase = "replaying";
    // registered for live authorization with its own user and expiry; a disconnect during its checks revoked it
    if (!steps.admit(subscription, authorized)) return;
    if (data !== null) {
      try {
        await steps.subscribeData(subscription, authorized.names, data);
      } catch (error) {
        if (!(error instanceof SyncError)) throw error;
        steps.log.log(`sync refused ${error.status}`, "info", error.message);
        this.end(subscription, error.status);
      }
      return;
    }
    await steps.subscribe(subscription, authorized.names, { cursor: after, refresh: false, page });
  }

  replayBegins(): void {
    if (this.#replays++ === 0) this.#connection.beginReplay();
  }

  replayEnds(): void {
    if (--this.#replays === 0) this.#connection.endReplay();
  }

  send(subscription: SharedSubscription, frame: Published): void {
    // its replay, and what arrived during it: for this subscription alone
    if (subscription.phase !== "live") this.#connection.sendTagged(frame, subscription.key);
    else if (frame !== this.#lastLive) {
      this.#lastLive = frame;
      this.#connection.sendTagged(frame, this.#tagsFor(frame));
    }
  }

  goesLive(subscription: SharedSubscription): void {
    subscription.phase = "live";
    for (const stream of subscription.streams) {
      let holders = this.#live.get(stream);
      if (!holders) this.#live.set(stream, (holders = new Set()));
      holders.add(subscription);
    }
    this.#answer({ type: "subscribed", id: subscription.id });
  }

  /**
   * The ids a live frame is for: the live subscriptions holding its stream
   * (a refresh, stream "": every live one), less those of the page a
   * `{ toOthers: true }` frame skips — with tabs sharing the connection,
   * that page may be another tab's.
   */
  #tagsFor(frame: Published): string {
    const except = exceptOf(frame.frame);
    const keys: string[] = [];
    const holders =
      frame.stream === ""
        ? [...this.#subscriptions.values()].filter((subscription) => subscription.phase === "live")
        : (this.#live.get(frame.stream) ?? []);
    for (const subscription of holders)
      if (except === null || subscription.page !== except) keys.push(subscription.key);
    return keys.join(" ");
  }

  #unsubscribe(id: Id): void {
    const subscription = this.#subscriptions.get(String(id));
    if (!subscription) {
      this.#answer({ type: "error", id, status: 404, reason: "no such subscription" });
      return;
    }
    this.end(subscription, null);
    this.#answer({ type: "unsubscribed", id });
  }

  /** Ends a subscription; with a status, the client is told it was refused. Safe to call twice. */
  end(subscription: SharedSubscription, status: number | null): void {
    if (subscription.phase === "closed") return;
    if (this.#subscriptions.get(subscription.key) === subscription) this.#subscriptions.delete(subscription.key);
    for (const stream of subscription.streams) {
      const holders = this.#live.get(stream);
      holders?.delete(subscription);
      if (holders?.size === 0) this.#live.delete(stream);
    }
    subscription.finish();
    this.#steps.connections.remove(subscription);
    if (status !== null) this.#answer({ type: "refused", id: subscription.id, status });
  }

  #answer(answer: Answer): void {
    this.#connection.sendText(JSON.stringify(answer));
  }
}

/** Read again after an await: an unsubscribe may have ended it meanwhile. */
function isClosed(subscription: SharedSubscription): boolean {
  return subscription.phase === "closed";
}

/** Why a subscribe's `streams` and `after` are malformed, or `null`. */
function invalidSubscribe(streams: unknown, after: unknown, maxStreams: number): string | null {
  if (!Array.isArray(streams) || streams.length === 0) return "streams must be a non-empty array";
  if (streams.length > maxStreams) return `${streams.length} streams; at most ${maxStreams}`;
  for (const token of streams) {
    if (typeof token !== "string" || token.length === 0 || token.length > MAX_TOKEN_LENGTH)
      return "streams must be signed stream names";
  }
  if (after !== undefined && after !== null && (typeof after !== "string" || parsePosition(after) === null))
    return "after must be a position or null";
  return null;
}

function isId(value: unknown): value is Id {
  if (typeof value === "string") return ID.test(value);
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function rawText(data: RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString("utf8");
  return data.toString("utf8");
}

/**
 * A data subscription's start (`"data": true`, with `"sync": true` or a
 * `"version"` to resume after), null for frames, or why it is malformed.
 */
function dataStartOf(message: Record<string, unknown>, after: string | null): DataStart | null | string {
  const { data, sync, version } = message;
  if (data === undefined || data === false) {
    return sync === undefined && version === undefined ? null : "sync and version are for data subscriptions";
  }
  if (data !== true) return "data must be true or false";
  if (sync !== undefined && typeof sync !== "boolean") return "sync must be true or false";
  if (version !== undefined && version !== null && !(Number.isSafeInteger(version) && (version as number) >= 0))
    return "version must be a non-negative integer or null";
  return { sync: sync === true, after, version: (version as number | null | undefined) ?? null };
}
