import type { Broker, Published } from "../brokers/broker.js";
import { ClosedError } from "../errors.js";
import type { Logger } from "../logger.js";

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
  #state: "open" | "closed" = "open";
  /** Consecutive failed publishes: the first is logged, the rest are counted, so an outage is not one line per frame. */
  #failedPublishes = 0;

  constructor(broker: Broker, logger: Logger) {
    this.#broker = broker;
    this.#logger = logger;
  }

  /** Publishes an already built frame to a stream name; rejects with ClosedError once closed. */
  publish = (stream: string, frame: string): Promise<Published> => {
    const published =
      this.#state !== "open"
        ? Promise.reject(new ClosedError("turbocast instance"))
        : this.#broker.publish(stream, frame);
    published.then(
      () => {
        if (this.#failedPublishes > 1) this.#logger.info(`broadcasts work again after ${this.#failedPublishes} failed`);
        this.#failedPublishes = 0;
      },
      (error: unknown) => {
        if (this.#failedPublishes++ === 0)
          this.#logger.warn(`broadcast to ${stream} failed; further failures are counted until one succeeds`, {
            error,
          });
      },
    );
    return published;
  };

  /** From now on every publish rejects with ClosedError. Safe to call twice. */
  close(): void {
    this.#state = "closed";
  }
}
