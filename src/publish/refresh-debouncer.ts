import type { Published } from "../brokers/broker.js";
import { ClosedError } from "../errors.js";
import { buildFrame } from "../frames/frame.js";

export interface RefreshDebouncerInit {
  /** Where the one frame of a burst goes (Publisher.publish). */
  publish: (stream: string, frame: string) => Promise<Published>;
  /** Refresh calls on one stream within this many ms become one frame (createTurbo's refreshDebounceMs). */
  debounceMs: number;
}

/**
 * Turns a burst of `refresh` broadcasts on one stream into one frame, as
 * turbo-rails does. Debounced by stream and request id (turbo-rails' key):
 * a refresh never carries another request's id, so the page that made a
 * request still recognises its own refresh.
 */
export class RefreshDebouncer {
  readonly #publish: RefreshDebouncerInit["publish"];
  readonly #debounceMs: number;
  readonly #pending = new Map<
    string,
    {
      promise: Promise<Published>;
      timer: NodeJS.Timeout;
      reject: (error: unknown) => void;
      fire: () => Promise<unknown>;
    }
  >();

  constructor(init: RefreshDebouncerInit) {
    this.#publish = init.publish;
    this.#debounceMs = init.debounceMs;
  }

  /** The refresh frame of `stream` for `requestId`: the one already pending, or a new one published after debounceMs. */
  refresh(stream: string, requestId: string | undefined): Promise<Published> {
    const key = `${stream}\u0000${requestId ?? ""}`;
    const pending = this.#pending.get(key);
    if (pending) return pending.promise;
    let resolve!: (published: Published) => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<Published>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {}); // logged by the publisher; an un-awaited refresh must not crash the process
    const fire = (): Promise<unknown> => {
      clearTimeout(timer);
      this.#pending.delete(key);
      const published = this.#publish(stream, buildFrame({ action: "refresh", requestId }));
      published.then(resolve, reject);
      return published.catch(() => {});
    };
    const timer = setTimeout(fire, this.#debounceMs);
    this.#pending.set(key, { promise, timer, reject, fire });
    return promise;
  }

  /** Publishes every pending refresh now (turbocast/testing); resolves once they are published or failed. */
  async flush(): Promise<void> {
    await Promise.all([...this.#pending.values()].map((pending) => pending.fire()));
  }

  /** Drops every pending refresh; their promises reject with ClosedError. Safe to call twice. */
  close(): void {
    for (const pending of this.#pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(new ClosedError("turbocast instance"));
    }
    this.#pending.clear();
  }
}
