import { BrokerError } from "../errors.js";
import type { BrokerEvents } from "./broker.js";

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

/**
 * Where a new epoch's seqs start. Hubs in running processes compare seqs
 * only, so a broker whose server lost its data (a Redis restart without
 * persistence) must not count from 1 again: subscribers would drop every
 * frame up to the old count. Time is the one counter all processes share, so
 * a new epoch starts at 10 × the server's Unix time in milliseconds (room for
 * 10 frames per millisecond on average over an epoch's lifetime, and below
 * 1e14, where Lua's number formatting would start rounding) — and above the
 * newest seq the creating process has seen, plus this margin for frames other
 * processes saw and it did not.
 */
export const EPOCH_SEQ_MARGIN = 100_000;

/** The lowest seq a new epoch may start at, given the newest seq this process has seen (0: none, no floor). */
export function newEpochMinSeq(maxSeen: number): number {
  return maxSeen > 0 ? maxSeen + EPOCH_SEQ_MARGIN : 0;
}

/** What head() and publish() throw before start(). */
export function notStartedError(kind: string): BrokerError {
  return new BrokerError(`${kind} broker is not started: await broker.start() first`);
}

/**
 * One broker's view of its connection health, so that an outage is logged
 * once when it starts and once when it ends — never once per frame — and the
 * broker knows whether publishes were refused while it lasted.
 */
export class OutageLog {
  #kind: string;
  #target: string;
  #events: BrokerEvents;
  #since: number | null = null;
  #refused = 0;
  /** Wall-clock ms of the newest publish refused since the last recovery (0: none). */
  lastRefusedAt = 0;

  constructor(kind: string, target: string, events: BrokerEvents) {
    this.#kind = kind;
    this.#target = target;
    this.#events = events;
  }

  get down(): boolean {
    return this.#since !== null;
  }

  /** Marks the start of an outage; logs only for the first call of an outage. */
  begin(what: string, error?: unknown): void {
    if (this.#since !== null) return;
    this.#since = Date.now();
    const detail = error instanceof Error ? `: ${error.message}` : "";
    this.#events.log(
      "warn",
      `${this.#kind} broker lost ${what} to ${this.#target}${detail}; ` +
        `publishing fails with TURBOCAST_BROKER until it is back; reconnecting with backoff`,
      error,
    );
  }

  /** A publish was refused during the outage (counted, never logged one by one). */
  refused(): void {
    this.#refused++;
    this.lastRefusedAt = Date.now();
  }

  /** Marks the end of the outage; logs once (with `note` appended). Returns how many publishes were refused during it. */
  end(note?: string): number {
    if (this.#since === null) return 0;
    const seconds = ((Date.now() - this.#since) / 1000).toFixed(1);
    const refused = this.#refused;
    this.#events.log(
      "info",
      `${this.#kind} broker reconnected to ${this.#target} after ${seconds}s` +
        (refused > 0 ? ` (${refused} publish${refused === 1 ? "" : "es"} refused meanwhile)` : "") +
        (note ? `; ${note}` : ""),
    );
    this.#since = null;
    this.#refused = 0;
    return refused;
  }
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
