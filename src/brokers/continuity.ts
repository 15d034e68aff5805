import { randomBytes } from "node:crypto";
import { LogThrottle } from "../log-throttle.js";
import type { Logger } from "../logger.js";
import { type BrokerEvents, type ControlMessage, type Published, formatPosition, parseControl } from "./broker.js";
import { framesOfBody } from "./batch-wire.js";
import { type TimerSet, notStartedError } from "./connection.js";

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

/**
 * A request, sent on the broker's channel, that every process refresh its
 * subscribers: frames were lost for everyone (publishes refused during an
 * outage, a publish that timed out).
 */
export interface RefreshRequest {
  /** Why (becomes the gap's reason). */
  g: string;
  /** The id of the broker that sent it. */
  o: string;
  /** Sender's wall-clock ms of the newest loss it covers. */
  at: number;
  /**
   * Epoch and seq such that every loss it covers happened before any frame
   * above `s` was published (the head read on recovery). A process that
   * refreshed after seeing a later frame of that epoch already covered them.
   */
  e?: string;
  s?: number;
}

/**
 * What a scale-out broker's channel carries. Each broker encodes frames its
 * own way; this is the decoded form. `frame` is one frame, or (without
 * `stream`/`frame`) a notice that frames up to `seq` were published —
 * `count` of them, the last at `seq`, when it says — to be read from the
 * server; `frames` is a batch published together, at consecutive seqs from
 * `seq`.
 */
export type ChannelMessage =
  | { kind: "frame"; epoch: string; seq: number; stream?: string; frame?: string; count?: number }
  | { kind: "frames"; epoch: string; seq: number; frames: Array<{ stream: string; frame: string }> }
  | { kind: "refresh"; request: RefreshRequest }
  | { kind: "control"; message: ControlMessage };

/** A control message's payload on a broker's channel (decoded by decodeChannelMessage). */
export function encodeControl(message: ControlMessage): string {
  return JSON.stringify({ ctl: message });
}

/**
 * Decodes a channel payload — `{e,s,k,x,l}` and a newline, then the frames,
 * for a batch (see batch-wire.ts), `{e,s,n?,f?,c?}` for a frame or frames to
 * read from the server, `{e,s,b}` for a batch (`b`: `[stream, frame]` pairs;
 * as published before batch-wire), `{g,o,at,…}` for a refresh request,
 * `{ctl}` for a control message; `null` for anything else.
 */
export function decodeChannelMessage(text: string): ChannelMessage | null {
  // JSON text has no raw newline: one ends a batch's header, and its frames follow
  const newline = text.indexOf("\n");
  let message: unknown;
  try {
    message = JSON.parse(newline < 0 ? text : text.slice(0, newline));
  } catch {
    return null;
  }
  if (newline >= 0) {
    const m = message as Record<string, unknown> | null;
    if (typeof m !== "object" || m === null || typeof m.e !== "string" || typeof m.s !== "number") return null;
    const frames = framesOfBody(m, text.slice(newline + 1));
    return frames === null ? null : { kind: "frames", epoch: m.e, seq: m.s, frames };
  }
  if (typeof message !== "object" || message === null) return null;
  const m = message as Record<string, unknown>;
  if (m.ctl !== undefined) {
    const control = parseControl(m.ctl);
    return control === null ? null : { kind: "control", message: control };
  }
  if (typeof m.g === "string" && typeof m.o === "string" && typeof m.at === "number") {
    return { kind: "refresh", request: m as unknown as RefreshRequest };
  }
  if (typeof m.e !== "string" || typeof m.s !== "number") return null;
  if (Array.isArray(m.b)) {
    const frames: Array<{ stream: string; frame: string }> = [];
    for (const pair of m.b as unknown[]) {
      if (!Array.isArray(pair) || typeof pair[0] !== "string" || typeof pair[1] !== "string") return null;
      frames.push({ stream: pair[0], frame: pair[1] });
    }
    return { kind: "frames", epoch: m.e, seq: m.s, frames };
  }
  return {
    kind: "frame",
    epoch: m.e,
    seq: m.s,
    stream: typeof m.n === "string" ? m.n : undefined,
    frame: typeof m.f === "string" ? m.f : undefined,
    count: typeof m.c === "number" && m.c >= 1 ? m.c : undefined,
  };
}

/** How one broker names what it lost and what it lost it to, in its log lines. */
export interface ContinuityOptions {
  /** "redis", "postgres". */
  kind: string;
  /** The server, password masked. */
  target: string;
  /** What a new epoch means on this server, as a clause: "Redis lost the broker's keys". */
  historyLost: string;
  /**
   * How long the refresh of an outage waits for the other processes' refresh
   * requests of the same outage, so that it covers them too: processes that
   * lost the same server reconnect up to one backoff step apart.
   */
  settleMs: number;
}

const OUTAGE = "outage";

/**
 * What the Redis and PostgreSQL brokers share about whether their
 * subscribers saw every frame: the epoch and the newest seq seen, the
 * outage (logged when it starts and when it ends, refused publishes counted
 * in between), the refreshes (gaps) given to this process's subscribers, and
 * the refresh requests sent to and answered from other processes.
 *
 * One outage gives each subscriber one refresh. The broker's refresh waits
 * until it is whole again (`recovered`: publishes refused until then are
 * covered), and then `settleMs` more, so that the refresh requests of the
 * other processes that lost the same server, which arrive meanwhile, are
 * covered by the same refresh (it is sent after the losses they report).
 * A request that arrives later is answered only when this process's last
 * refresh cannot have covered it.
 */
export class Continuity {
  /** Identifies this broker's own refresh requests on the channel. */
  readonly id = randomBytes(6).toString("base64url");
  #options: ContinuityOptions;
  #events: BrokerEvents;
  /** The one throttle for outage lines: logged when it starts, quiet until `recovered`. */
  #throttle: LogThrottle;
  #epoch: string | null = null;
  /** The newest seq this broker has seen in any way: head() falls back to it while the server is unreachable. */
  #maxSeen = 0;
  /** The epoch changed during the current outage: said in the line that ends it. */
  #epochLost = false;
  #outageSince: number | null = null;
  #refused = 0;
  /** Wall-clock ms of the newest publish refused since the last refresh request went out (0: none). */
  #lastRefusedAt = 0;
  /** When, and after which seq, this process's subscribers were last refreshed. */
  #lastGap = { at: 0, epoch: null as string | null, seq: 0 };
  /** A refresh waiting for `settleMs` (its reason, its timer). */
  #pending: { reason: string; timer: NodeJS.Timeout } | null = null;
  #timers: TimerSet;

  /** `timers`: the broker's, so that close() cancels a pending refresh. */
  constructor(options: ContinuityOptions, events: BrokerEvents, timers: TimerSet) {
    this.#options = options;
    this.#events = events;
    this.#timers = timers;
    const logger: Logger = {
      info: (message, details) => events.log("info", message, details?.error),
      warn: (message, details) => events.log("warn", message, details?.error),
      error: (message, details) => events.log("error", message, details?.error),
    };
    this.#throttle = new LogThrottle(logger, { intervalMs: Number.POSITIVE_INFINITY });
  }

  get epoch(): string | null {
    return this.#epoch;
  }

  get maxSeen(): number {
    return this.#maxSeen;
  }

  /** The lowest seq a new epoch created now may start at. */
  newEpochMinSeq(): number {
    return newEpochMinSeq(this.#maxSeen);
  }

  /**
   * Records a seq read from the server or the channel. Returns "first" on
   * first contact, "new" when the epoch changed (the server lost the
   * history: logged now, or said when the outage ends), else "same".
   */
  seen(epoch: string, seq: number): "first" | "new" | "same" {
    let change: "first" | "new" | "same" = "same";
    if (epoch !== this.#epoch) {
      change = this.#epoch === null ? "first" : "new";
      if (change === "new") {
        if (this.down) this.#epochLost = true;
        else this.#events.log("warn", `${this.#epochLostClause(epoch)}: older cursors get a refresh`);
      }
      this.#epoch = epoch;
    }
    this.#maxSeen = Math.max(this.#maxSeen, seq);
    return change;
  }

  /** The position to hand out while the server is unreachable: at or below the true head, which is safe (a cursor too low replays more). */
  headWhileDown(): string {
    if (this.#epoch === null) throw notStartedError(this.#options.kind);
    return formatPosition(this.#epoch, this.#maxSeen);
  }

  // --- outages -------------------------------------------------------------

  get down(): boolean {
    return this.#outageSince !== null;
  }

  /** Marks the start of an outage; logged only for the first call of an outage. */
  lost(what: string, error?: unknown): void {
    if (this.#outageSince !== null) return;
    this.#outageSince = Date.now();
    const { kind, target } = this.#options;
    const detail = error instanceof Error ? `: ${error.message}` : "";
    this.#throttle.log(
      OUTAGE,
      "warn",
      `${kind} broker lost ${what} to ${target}${detail}; ` +
        "publishing fails with TURBOCAST_BROKER until it is back; reconnecting with backoff",
      error === undefined ? undefined : { error },
    );
  }

  /** A publish was refused, or lost to a broken connection: counted (never logged one by one), and every process is asked to refresh once the broker is back. */
  refused(): void {
    this.#refused++;
    this.#lastRefusedAt = Date.now();
  }

  /** Whether publishes were refused since the last refresh request went out. */
  get refusedSinceRequest(): boolean {
    return this.#lastRefusedAt > 0;
  }

  /**
   * The broker is whole again (every connection back, the head read): logs
   * the end of the outage once and, when this process's subscribers may have
   * missed frames (`missed`, or publishes refused here), gives them their one
   * refresh. Returns the refresh request to send to the other processes when
   * publishes were refused (they were lost for everyone), else `null`; call
   * `requestSent` once it went out.
   */
  recovered(missed: string | null): RefreshRequest | null {
    if (this.#outageSince !== null) {
      const seconds = ((Date.now() - this.#outageSince) / 1000).toFixed(1);
      const refused = this.#refused;
      const { kind, target } = this.#options;
      this.#throttle.recovered(
        OUTAGE,
        `${kind} broker reconnected to ${target} after ${seconds}s` +
          (refused > 0 ? ` (${refused} publish${refused === 1 ? "" : "es"} refused meanwhile)` : "") +
          (this.#epochLost ? `; ${this.#epochLostClause(this.#epoch!)}: older cursors get a refresh` : ""),
      );
      this.#outageSince = null;
      this.#refused = 0;
      this.#epochLost = false;
    }
    if (this.#lastRefusedAt === 0) {
      if (missed !== null) this.#settle(missed);
      return null;
    }
    const reason = `${this.#options.kind} publishes were refused during an outage`;
    this.#settle(missed ?? reason);
    return this.request(reason, this.#lastRefusedAt);
  }

  /** The refresh request for the refused publishes went out: later refusals need a new one. */
  requestSent(request: RefreshRequest): void {
    if (this.#lastRefusedAt <= request.at) this.#lastRefusedAt = 0;
  }

  // --- gaps and refresh requests -------------------------------------------

  /** This process's subscribers may have missed frames: they get one refresh, now (it covers a pending one too). */
  gap(reason: string): void {
    if (this.#pending) this.#timers.clear(this.#pending.timer);
    this.#pending = null;
    this.#lastGap = { at: Date.now(), epoch: this.#epoch, seq: this.#maxSeen };
    this.#events.gap(reason);
  }

  /** A refresh in `settleMs`, or the pending one (which will be sent after whatever asked for this). */
  #settle(reason: string): void {
    if (this.#pending) return;
    const timer = this.#timers.set(this.#options.settleMs, () => {
      this.#pending = null;
      this.gap(reason);
    });
    this.#pending = { reason, timer };
  }

  /** A request that every process refresh, for losses up to now (or `at`), to send on the channel. */
  request(reason: string, at = Date.now(), { afterHead = true } = {}): RefreshRequest {
    const request: RefreshRequest = { g: reason, o: this.id, at };
    if (afterHead && this.#epoch !== null) {
      request.e = this.#epoch;
      request.s = this.#maxSeen;
    }
    return request;
  }

  /** A refresh request arrived on the channel: refresh, unless a refresh given (or pending) here covers it. */
  answer(request: RefreshRequest): void {
    if (this.#pending) return;
    const last = this.#lastGap;
    // our own request: our subscribers were refreshed after the loss it reports
    if (request.o === this.id && last.at > request.at) return;
    // another process's: our refresh came after a frame published after its losses
    if (request.o !== this.id && request.s !== undefined && request.e === last.epoch && last.seq > request.s) return;
    this.#settle(request.g);
  }

  // --- delivery ------------------------------------------------------------

  /** Hands a frame to the app; a throwing `deliver` is logged and never stops the broker. */
  deliver(deliver: ((frame: Published) => void) | null, frame: Published): void {
    this.#maxSeen = Math.max(this.#maxSeen, frame.seq);
    try {
      deliver?.(frame);
    } catch (error) {
      this.#events.log("error", `delivering a frame of "${frame.stream}" failed`, error);
    }
  }

  #epochLostClause(epoch: string): string {
    return `${this.#options.historyLost} (new epoch ${epoch})`;
  }
}
