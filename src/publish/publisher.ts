import type { Broker, FrameText, Published } from "../brokers/broker.js";
import { isDataChannel } from "../data/channel.js";
import { ClosedError } from "../errors.js";
import { LogThrottle } from "../log-throttle.js";
import type { Logger } from "../logger.js";

/** The LogThrottle kind of a failed publish: one outage is one kind, whichever stream it hit. */
const FAILED = "publish failed";

/**
 * The "publish" step of the data flow: every broadcast ends here, on its
 * way to the broker. A hook may fire a broadcast without awaiting it, so a
 * failed publish (a broker outage) is logged here and never becomes an
 * unhandled rejection that takes the process down; callers who await still
 * see the error.
 */
export class Publisher {
  readonly #broker: Broker;
  readonly #logger: Logger;
  /** An outage is logged when it starts and counted until a publish succeeds: not one line per frame. */
  readonly #throttle: LogThrottle;
  #state: "open" | "closed" = "open";
  /** Test listeners (turbocast/testing): every frame published, as published. */
  readonly #taps = new Set<(stream: string, frame: string) => void>();
  /** Publishes handed to the broker and not settled yet. */
  #pending = 0;
  /** Waiting for the pending count to fall to a limit (see `backlog`). */
  #waiters: Array<{ limit: number; resolve: () => void }> = [];

  constructor(broker: Broker, logger: Logger) {
    this.#broker = broker;
    this.#logger = logger;
    this.#throttle = new LogThrottle(logger, { intervalMs: Number.POSITIVE_INFINITY });
  }

  /** Publishes an already built frame to a stream name; rejects with ClosedError once closed. */
  publish = (stream: string, frame: string): Promise<Published> => {
    // taps record what pages get: data events travel on data channels (data/events.ts) beside them
    if (this.#taps.size > 0 && !isDataChannel(stream)) for (const tap of this.#taps) tap(stream, frame);
    const published =
      this.#state !== "open"
        ? Promise.reject(new ClosedError("turbocast instance"))
        : this.#broker.publish(stream, frame);
    this.#pending++;
    // one closure per publish (the failure's log line names the stream); a success shares #published
    published.then(this.#published, (error: unknown) => this.#failed(stream, error));
    return published;
  };

  /**
   * Publishes a data event (data/events.ts), whose promise nobody awaits:
   * through the broker's synchronous `publishNow` when it has one (the
   * in-memory broker: no promise, never pending, and a FrameText is built
   * only if the broker keeps or delivers it), else its `publishUnawaited`
   * (a queued broker: no promise, counted by its `backlog`), else as
   * `publish`. A failure is logged as a publish's is.
   */
  publishData = (channel: string, json: string | FrameText): void => {
    const broker = this.#broker;
    if (this.#state === "open" && broker.publishNow !== undefined) {
      try {
        broker.publishNow(channel, json);
      } catch (error) {
        this.#logFailure(channel, error);
        return;
      }
      this.#recovered();
      return;
    }
    const text = typeof json === "string" ? json : json.text;
    if (this.#state === "open" && broker.publishUnawaited !== undefined) {
      broker.publishUnawaited(channel, text, this.#unawaitedFailed);
      return;
    }
    void this.publish(channel, text);
  };

  readonly #unawaitedFailed = (error: unknown, stream: string): void => this.#logFailure(stream, error);

  readonly #published = (): void => {
    this.#settled();
    this.#recovered();
  };

  #recovered(): void {
    // 0 as well when nothing failed: one map lookup per publish
    const counted = this.#throttle.recovered(FAILED);
    if (counted > 0) this.#logger.info(`broadcasts work again after ${counted + 1} failed`);
  }

  #failed(stream: string, error: unknown): void {
    this.#settled();
    this.#logFailure(stream, error);
  }

  #logFailure(stream: string, error: unknown): void {
    this.#throttle.log(
      FAILED,
      "warn",
      `broadcast to ${stream} failed; further failures are counted until one succeeds`,
      {
        error,
      },
    );
  }

  /** Calls `listener` with every frame published from now on; returns the function that stops it. */
  tap(listener: (stream: string, frame: string) => void): () => void {
    this.#taps.add(listener);
    return () => this.#taps.delete(listener);
  }

  /**
   * Resolves once at most `limit` publishes are waiting for the broker;
   * `undefined` when that is already so (no microtask). The change feed
   * waits on it before claiming more changes, so hooks that fire broadcasts
   * faster than the broker takes them (a bulk update, a slow broker) cannot
   * pile frames up in memory without bound.
   */
  backlog(limit: number): Promise<void> | undefined {
    // the broker's queue holds the publishes nobody awaits too (publishData)
    const queued = this.#broker.backlog?.(limit);
    if (this.#pending <= limit) return queued;
    const pending = new Promise<void>((resolve) => this.#waiters.push({ limit, resolve }));
    return queued === undefined ? pending : Promise.all([pending, queued]).then(() => {});
  }

  #settled(): void {
    this.#pending--;
    if (this.#waiters.length === 0) return;
    const ready = this.#waiters.filter((w) => this.#pending <= w.limit);
    if (ready.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => this.#pending > w.limit);
    for (const waiter of ready) waiter.resolve();
  }

  /** From now on every publish rejects with ClosedError. Safe to call twice. */
  close(): void {
    this.#state = "closed";
  }
}
