import type { Published } from "../brokers/broker.js";
import type { Sink } from "./hub.js";
import type { Transport } from "./options.js";

/**
 * One subscriber's transport connection (one adapter per transport). The
 * endpoint keeps every open one, to beat its heartbeat and to end it on
 * close(). A connection unsubscribes itself from the hub when it closes,
 * whoever closed it.
 */
export interface Connection extends Sink {
  readonly transport: Transport;
  readonly state: "open" | "closing" | "closed";
  /** Resolves once the connection is closed. */
  readonly closed: Promise<void>;
  /** The hub is about to replay history into this connection: its backlog is not a sign of slowness. */
  beginReplay(): void;
  /** The replay is done; from now on the connection must keep up. */
  endReplay(): void;
  /** Hands over the hub's unsubscribe; called at once when the connection closed already. */
  attach(unsubscribe: () => void): void;
  /** Keeps intermediaries from timing out an idle connection, and finds dead peers. */
  heartbeat(): void;
  /** Ends the connection cleanly (server shutting down). Safe to call twice. */
  close(): void;
  /**
   * Access ended (a disconnect, a failed re-check, a deleted row, an
   * expired signature): sends this connection alone `refresh` (a refresh
   * frame, so the page reloads into what the server now shows it), then
   * ends it for good — SSE ends the response, WebSocket closes with
   * CloseCode.ACCESS_ENDED. Nothing is sent after it. Safe to call twice.
   */
  revoke(refresh: Published): void;
  /** Ends it at once, without a goodbye. */
  terminate(): void;
}

/** Shared bookkeeping: the closed promise and handing the unsubscribe over exactly once. */
export class ConnectionLifecycle {
  state: "open" | "closing" | "closed" = "open";
  readonly closed: Promise<void>;
  #resolve!: () => void;
  #unsubscribe: (() => void) | null = null;

  constructor() {
    this.closed = new Promise((resolve) => (this.#resolve = resolve));
  }

  attach(unsubscribe: () => void): void {
    if (this.state === "closed") unsubscribe();
    else this.#unsubscribe = unsubscribe;
  }

  /** Marks the connection closed, unsubscribes it; safe to call twice. */
  finish(): void {
    if (this.state === "closed") return;
    this.state = "closed";
    const unsubscribe = this.#unsubscribe;
    this.#unsubscribe = null;
    unsubscribe?.();
    this.#resolve();
  }
}

/**
 * The slow-consumer rule: a connection whose unsent bytes pass `max` is
 * dropped. A replay writes a whole backlog at once, which says nothing about
 * the client's speed, so it is exempt while it runs; what it left unsent is
 * then allowed on top of `max` until the connection has drained down to
 * `max` once. Memory per connection stays bounded by the backlog (itself
 * bounded by the broker's history) plus `max`.
 */
export class BufferBound {
  #max: number;
  #replaying = false;
  #allowance = 0;

  constructor(max: number) {
    this.#max = max;
  }

  beginReplay(): void {
    this.#replaying = true;
  }

  endReplay(buffered: number): void {
    this.#replaying = false;
    this.#allowance = buffered > this.#max ? buffered : 0;
  }

  /** Whether `buffered` unsent bytes mean the subscriber cannot keep up. */
  exceeded(buffered: number): boolean {
    if (this.#replaying) return false;
    if (this.#allowance > 0 && buffered <= this.#max) this.#allowance = 0;
    return buffered > this.#max + this.#allowance;
  }
}
