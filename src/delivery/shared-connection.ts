import type { Request } from "express";
import type { RawData } from "ws";
import { parsePosition, type Published } from "../brokers/broker.js";
import { SubscriptionRefusedError } from "../errors.js";
import type { Sink } from "./hub.js";
import { MAX_TOKEN_LENGTH } from "./stream-source.js";
import { EXPIRED_STATUS, type SubscriptionSteps } from "./subscription.js";
import { CloseCode, type WebSocketConnection } from "./websocket-connection.js";

/**
 * The WebSocket subprotocol of a shared connection (the client script's one
 * connection per page). Offered in `Sec-WebSocket-Protocol`, it opens a
 * connection with no subscription, on which the client subscribes and
 * unsubscribes with JSON text messages (DCRF's shape):
 *
 *   → {"type":"subscribe","id":1,"streams":["<signed>",…],"after":"<position>"|null}
 *   ← {"type":"subscribed","id":1}                 live; what it replayed came before
 *   ← {"type":"refused","id":1,"status":403}        403 no / 410 signature expired / 500, 503 try again later
 *   → {"type":"unsubscribe","id":1}
 *   ← {"type":"unsubscribed","id":1}
 *   ← {"type":"error","id":1|null,"status":400,"reason":"…"}   400 bad request / 404 no such id / 429 too many subscriptions
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

interface Subscription {
  readonly id: Id;
  readonly key: string;
  streams: readonly string[];
  state: "authorizing" | "replaying" | "live" | "closed";
  unsubscribe: (() => void) | null;
}

export interface SharedConnectionInit {
  connection: WebSocketConnection;
  /** The upgrade request: each subscribe is authorized with it, as a new connection would be. */
  request: Request;
  steps: SubscriptionSteps;
}

/**
 * The subscriptions of one shared WebSocket. Each is a hub subscription of
 * its own, so each replays after its own position; what goes out live is
 * sent once per frame (tagged with every live subscription that holds its
 * stream), so a stream two sources name arrives once.
 */
export class SharedConnection {
  readonly #connection: WebSocketConnection;
  readonly #request: Request;
  readonly #steps: SubscriptionSteps;
  readonly #subscriptions = new Map<string, Subscription>();
  /** Live subscriptions by stream: who a live frame is for. */
  readonly #live = new Map<string, Set<Subscription>>();
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

  /** The connection closed: every subscription ends. */
  close(): void {
    this.#closed = true;
    for (const subscription of this.#subscriptions.values()) this.#end(subscription);
    this.#subscriptions.clear();
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
    const subscription: Subscription = { id, key, streams: [], state: "authorizing", unsubscribe: null };
    this.#subscriptions.set(key, subscription);
    this.#start(subscription, streams as string[], (after as string | null | undefined) ?? null).catch(
      (error: unknown) => {
        this.#steps.log.log("shared subscribe failed", "error", "a shared-connection subscribe failed", { error });
        this.#refuse(subscription, 500);
      },
    );
  }

  async #start(subscription: Subscription, tokens: string[], after: string | null): Promise<void> {
    const steps = this.#steps;
    let names: string[];
    try {
      names = (await steps.authorize(this.#request, { tokens, after, page: null })).names;
    } catch (error) {
      if (!(error instanceof SubscriptionRefusedError)) throw error;
      steps.refused(error);
      this.#refuse(subscription, error.status === EXPIRED_STATUS ? 410 : error.status);
      return;
    }
    if (isClosed(subscription)) return;
    if (!steps.accepting()) {
      this.#refuse(subscription, 503);
      return;
    }
    subscription.streams = names;
    subscription.state = "replaying";
    this.#updateRegistry();
    if (this.#replays++ === 0) this.#connection.beginReplay();
    try {
      const unsubscribe = await steps.hubSubscribe(names, this.#sinkFor(subscription), { cursor: after });
      if (isClosed(subscription)) unsubscribe();
      else subscription.unsubscribe = unsubscribe;
    } catch (error) {
      // the broker could not replay (it is down): this subscription is tried again later, the others go on
      steps.log.log("replay failed", "warn", "could not replay history for a shared-connection subscription", {
        error,
      });
      this.#refuse(subscription, 503);
    } finally {
      if (--this.#replays === 0) this.#connection.endReplay();
    }
  }

  #sinkFor(subscription: Subscription): Sink {
    return {
      send: (frame) => {
        if (subscription.state === "closed") return;
        // its replay, and what arrived during it: for this subscription alone
        if (subscription.state !== "live") this.#connection.sendTagged(frame, subscription.key);
        else if (frame !== this.#lastLive) {
          this.#lastLive = frame;
          this.#connection.sendTagged(frame, this.#tagsFor(frame.stream));
        }
      },
      live: () => {
        if (subscription.state !== "replaying") return;
        subscription.state = "live";
        for (const stream of subscription.streams) {
          let holders = this.#live.get(stream);
          if (!holders) this.#live.set(stream, (holders = new Set()));
          holders.add(subscription);
        }
        this.#answer({ type: "subscribed", id: subscription.id });
      },
    };
  }

  /** The ids a live frame of `stream` is for ("" is a refresh: every live subscription). */
  #tagsFor(stream: string): string {
    const keys: string[] = [];
    if (stream === "") {
      for (const subscription of this.#subscriptions.values())
        if (subscription.state === "live") keys.push(subscription.key);
    } else for (const subscription of this.#live.get(stream) ?? []) keys.push(subscription.key);
    return keys.join(" ");
  }

  #unsubscribe(id: Id): void {
    const subscription = this.#subscriptions.get(String(id));
    if (!subscription) {
      this.#answer({ type: "error", id, status: 404, reason: "no such subscription" });
      return;
    }
    this.#subscriptions.delete(subscription.key);
    this.#end(subscription);
    this.#updateRegistry();
    this.#answer({ type: "unsubscribed", id });
  }

  #refuse(subscription: Subscription, status: number): void {
    if (subscription.state === "closed") return;
    this.#subscriptions.delete(subscription.key);
    this.#end(subscription);
    this.#updateRegistry();
    this.#answer({ type: "refused", id: subscription.id, status });
  }

  #end(subscription: Subscription): void {
    subscription.state = "closed";
    subscription.unsubscribe?.();
    subscription.unsubscribe = null;
    for (const stream of subscription.streams) {
      const holders = this.#live.get(stream);
      holders?.delete(subscription);
      if (holders?.size === 0) this.#live.delete(stream);
    }
  }

  #updateRegistry(): void {
    if (this.#closed) return;
    const streams = new Set<string>();
    for (const subscription of this.#subscriptions.values())
      for (const stream of subscription.streams) streams.add(stream);
    this.#steps.connections.update(this.#connection, { streams: [...streams] });
  }

  #answer(answer: Answer): void {
    this.#connection.sendText(JSON.stringify(answer));
  }
}

/** Read again after an await: an unsubscribe may have ended it meanwhile. */
function isClosed(subscription: Subscription): boolean {
  return subscription.state === "closed";
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
