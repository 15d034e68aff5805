import type { Logger } from "./logger.js";

type Level = "info" | "warn" | "error";

export interface LogThrottleOptions {
  /**
   * How long a kind of line stays quiet after it was logged: repeats within
   * this window are only counted. `Infinity` keeps it quiet until
   * `recovered(kind)` is called (an outage: logged when it starts, counted
   * until it ends). Default 60,000 ms.
   */
  intervalMs?: number;
  /** Most kinds remembered at once; past it the oldest are forgotten. Default 100. */
  maxKinds?: number;
}

interface Entry {
  loggedAt: number;
  suppressed: number;
}

/**
 * The one throttle for log lines that an outsider or an outage can trigger
 * (a refused subscription, a failing hook during an outage, a broker that
 * is down): the first line of a kind is logged in full, repeats are counted,
 * and the count is reported with the next line of that kind or on recovery.
 * Never one line, or one stack, per request or per frame.
 *
 * @example
 * const throttle = new LogThrottle(logger);
 * throttle.log("refused:bad signature", "info", "subscription refused (403): bad signature");
 */
export class LogThrottle {
  readonly #logger: Logger;
  readonly #intervalMs: number;
  readonly #maxKinds: number;
  readonly #kinds = new Map<string, Entry>();

  constructor(logger: Logger, { intervalMs = 60_000, maxKinds = 100 }: LogThrottleOptions = {}) {
    this.#logger = logger;
    this.#intervalMs = intervalMs;
    this.#maxKinds = maxKinds;
  }

  /**
   * Logs `message` unless a line of the same `kind` was logged within the
   * interval (then it is counted). Returns whether it was logged.
   */
  log(kind: string, level: Level, message: string, details?: Record<string, unknown>): boolean {
    const now = Date.now();
    const entry = this.#kinds.get(kind);
    if (entry && now - entry.loggedAt < this.#intervalMs) {
      entry.suppressed++;
      return false;
    }
    const repeats = entry?.suppressed ?? 0;
    this.#kinds.delete(kind); // re-inserted last, so the map's order is oldest first
    if (this.#kinds.size >= this.#maxKinds) {
      const oldest = this.#kinds.keys().next().value;
      if (oldest !== undefined) this.#kinds.delete(oldest);
    }
    this.#kinds.set(kind, { loggedAt: now, suppressed: 0 });
    const suffix = repeats > 0 ? ` (${repeats} more like it since the last report)` : "";
    this.#logger[level](message + suffix, details);
    return true;
  }

  /** How many lines of `kind` were counted instead of logged since the last one logged. */
  suppressed(kind: string): number {
    return this.#kinds.get(kind)?.suppressed ?? 0;
  }

  /**
   * Ends a kind's quiet period (the outage is over): returns how many lines
   * were counted and not logged, and logs `message` (if given) with that
   * count when there were any or when `always` is set.
   */
  recovered(kind: string, message?: string, level: Level = "info"): number {
    const entry = this.#kinds.get(kind);
    if (!entry) return 0;
    this.#kinds.delete(kind);
    if (message !== undefined) {
      const suffix = entry.suppressed > 0 ? ` (${entry.suppressed} more like it were not logged)` : "";
      this.#logger[level](message + suffix);
    }
    return entry.suppressed;
  }

  /** Whether `kind` is in its quiet period. */
  quiet(kind: string): boolean {
    const entry = this.#kinds.get(kind);
    return entry !== undefined && Date.now() - entry.loggedAt < this.#intervalMs;
  }
}
