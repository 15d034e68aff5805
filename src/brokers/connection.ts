import { BrokerError } from "../errors.js";

/**
 * Reconnect delay for the `attempt`-th try (1-based): doubles from 50 ms up to
 * `maxMs`, with jitter so that many processes that lost the same server do not
 * all knock on it in the same millisecond.
 */
export function backoffMs(attempt: number, maxMs: number): number {
  const base = Math.min(maxMs, 50 * 2 ** Math.min(Math.max(attempt - 1, 0), 16));
  return Math.round(base / 2 + (Math.random() * base) / 2);
}

/** A server URL fit for logs: the password is masked. Unparseable strings are withheld whole. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparseable url)";
  }
}

/** What head() and publish() throw before start(). */
export function notStartedError(kind: string): BrokerError {
  return new BrokerError(`${kind} broker is not started: await broker.start() first`);
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * A broker's pending timers (reconnects, heartbeats, refresh requests):
 * unref'd so they never keep a process alive, and all cleared by close().
 */
export class TimerSet {
  #timers = new Set<NodeJS.Timeout>();

  /** Runs `fn` once after `ms`. */
  set(ms: number, fn: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      fn();
    }, ms);
    timer.unref();
    this.#timers.add(timer);
    return timer;
  }

  clear(timer: NodeJS.Timeout): void {
    clearTimeout(timer);
    this.#timers.delete(timer);
  }

  clearAll(): void {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }
}
