import type { Published } from "../brokers/broker.js";
import { parsePosition } from "../brokers/broker.js";
import { buildFrame } from "../frames/frame.js";
import type { LogThrottle } from "../log-throttle.js";
import type { StreamRegistry } from "../streams/registry.js";
import type { Connection } from "./connection.js";
import type { ConnectionInfo, ConnectionRegistry, ConnectionSelector } from "./connection-registry.js";

const REFRESH_FRAME = buildFrame({ action: "refresh" });

/** The most slices the periodic re-check is cut into; each tick checks one. */
export const MAX_RECHECK_SLOTS = 60;
/** The shortest tick of the re-check (a short `reauthorizeMs` gets fewer slots, not busier timers). */
const MIN_RECHECK_TICK_MS = 100;
/**
 * How long a disconnect is remembered for subscriptions still being
 * authorized when it happened (their userPassesTest may have read the
 * database before the revocation): one that is registered later and matches
 * is closed at once. An authorization older than this that meets a
 * forgotten disconnect is closed too, to be safe.
 */
const REVOCATION_MEMORY_MS = 60_000;

/** How many slots the re-check round of `reauthorizeMs` has. */
export function recheckSlots(reauthorizeMs: number | false): number {
  if (reauthorizeMs === false) return 1;
  return Math.max(1, Math.min(MAX_RECHECK_SLOTS, Math.floor(reauthorizeMs / MIN_RECHECK_TICK_MS)));
}

export interface LiveAuthorizationInit {
  connections: ConnectionRegistry;
  registry: StreamRegistry;
  log: LogThrottle;
  /** The periodic re-check's interval; false: none. */
  reauthorizeMs: number | false;
  /** Whether signatures expire (`signatureTtlMs`): then open subscriptions are closed when theirs do. */
  expiring: boolean;
  /** The newest position this process has seen: the `id` of the refresh frame a closed subscription gets. */
  position: () => string | null;
}

interface Revocation {
  readonly seq: number;
  readonly at: number;
  readonly selector: ConnectionSelector;
}

/**
 * Keeps every open subscription authorized for as long as it is open
 * (DESIGN.md, "Live authorization"): `disconnect` closes the subscriptions a
 * selector names, `reauthorize` re-runs their `userPassesTest` and closes
 * those that fail, a periodic re-check does that for every subscription once
 * per `reauthorizeMs` (one slot of the registry per tick, so the checks are
 * spread over the interval), and a subscription is closed when its earliest
 * signature expires. A closed subscription gets one refresh frame first.
 * All of it acts on this process's connections; turbo.ts carries
 * disconnects and re-checks to the other processes through the broker.
 */
export class LiveAuthorization {
  readonly #init: LiveAuthorizationInit;
  readonly #checking = new Set<Connection>();
  #recheckTimer: NodeJS.Timeout | null = null;
  #nextSlot = 0;
  #expiryTimer: NodeJS.Timeout | null = null;
  /** The last second whose expiries were handled. */
  #expiredUpTo = Math.floor(Date.now() / 1000);
  #revocations: Revocation[] = [];
  #revocationSeq = 0;
  /** seq of the newest revocation forgotten (older than REVOCATION_MEMORY_MS). */
  #forgottenSeq = 0;

  constructor(init: LiveAuthorizationInit) {
    this.#init = init;
  }

  start(): void {
    const { reauthorizeMs, connections } = this.#init;
    if (reauthorizeMs !== false && this.#recheckTimer === null) {
      this.#recheckTimer = setInterval(() => void this.recheckNextSlot(), reauthorizeMs / connections.slots);
      this.#recheckTimer.unref();
    }
    if (this.#init.expiring && this.#expiryTimer === null) {
      this.#expiryTimer = setInterval(() => this.#expire(), 1000);
      this.#expiryTimer.unref();
    }
  }

  /** Stops the timers. Safe to call twice. */
  stop(): void {
    if (this.#recheckTimer) clearInterval(this.#recheckTimer);
    if (this.#expiryTimer) clearInterval(this.#expiryTimer);
    this.#recheckTimer = null;
    this.#expiryTimer = null;
  }

  /** Taken before a subscription is authorized; `admit()` compares it with the disconnects since. */
  mark(): number {
    return this.#revocationSeq;
  }

  /**
   * Registers an authorized connection, unless a disconnect that names it
   * happened since `mark` (while it was being authorized): then it is
   * revoked at once. Returns whether it was admitted.
   */
  admit(connection: Connection, info: ConnectionInfo, mark: number): boolean {
    this.#init.connections.add(connection, info);
    if (!this.#revokedSince(mark, info)) return true;
    this.revoke(connection);
    return false;
  }

  /** Closes one connection: one refresh frame, then the end. */
  revoke(connection: Connection): void {
    this.#init.connections.remove(connection);
    connection.revoke(this.#refreshFrame());
  }

  /** Closes, in this process, every open subscription `selector` names. Returns how many. */
  disconnect(selector: ConnectionSelector): number {
    const now = Date.now();
    this.#remember(selector, now);
    let closed = 0;
    for (const connection of this.#init.connections.matching(selector)) {
      if (connection.state !== "open") continue;
      this.revoke(connection);
      closed++;
    }
    return closed;
  }

  /**
   * Re-runs `userPassesTest` for this process's open subscriptions that
   * `selector` names (all of them without one) and closes those that fail.
   * A check that throws keeps its subscription (logged once). Resolves with
   * how many were closed.
   */
  async reauthorize(selector: ConnectionSelector = {}): Promise<number> {
    const results = await Promise.all(this.#init.connections.matching(selector).map((c) => this.#check(c)));
    return results.filter(Boolean).length;
  }

  /**
   * One tick of the periodic re-check: checks the connections of the next
   * slot; resolves with how many were closed once their checks are done.
   */
  async recheckNextSlot(): Promise<number> {
    const slot = this.#nextSlot;
    this.#nextSlot = (slot + 1) % this.#init.connections.slots;
    const results = await Promise.all(this.#init.connections.inSlot(slot).map((c) => this.#check(c)));
    return results.filter(Boolean).length;
  }

  /** Checks one subscription again; resolves with whether it was closed. Never rejects. */
  async #check(connection: Connection): Promise<boolean> {
    const { connections, registry, log } = this.#init;
    const info = connections.info(connection);
    // a check still running (a slow userPassesTest) is not started twice
    if (!info || connection.state !== "open" || this.#checking.has(connection)) return false;
    this.#checking.add(connection);
    try {
      const verdicts = await Promise.all(
        info.streams.map(async (name) => {
          let streamClass = name;
          try {
            const stream = registry.resolve(name);
            streamClass = stream.constructor.name;
            return (await stream.userPassesTest(info.user ?? null)) === true;
          } catch (error) {
            // a database hiccup must not log everyone out: keep it, check again next round
            log.log(
              `re-check threw:${streamClass}`,
              "warn",
              `userPassesTest of ${name} threw during a re-check; the subscription is kept and checked again next round`,
              { error },
            );
            return true;
          }
        }),
      );
      if (verdicts.every(Boolean) || connection.state !== "open") return false;
      this.revoke(connection);
      return true;
    } finally {
      this.#checking.delete(connection);
    }
  }

  /** Closes the subscriptions whose earliest signature expired (a bucket per second). */
  #expire(): void {
    const now = Math.floor(Date.now() / 1000);
    for (let second = this.#expiredUpTo + 1; second <= now; second++) {
      for (const connection of this.#init.connections.expiringIn(second)) this.revoke(connection);
    }
    this.#expiredUpTo = Math.max(this.#expiredUpTo, now);
  }

  /** Whether a disconnect since `mark` names a connection registered with `info`: newest first, since authorizations are short. */
  #revokedSince(mark: number, info: ConnectionInfo): boolean {
    if (mark < this.#forgottenSeq) return true;
    for (let i = this.#revocations.length - 1; i >= 0 && this.#revocations[i]!.seq > mark; i--) {
      if (matches(info, this.#revocations[i]!.selector)) return true;
    }
    return false;
  }

  #remember(selector: ConnectionSelector, now: number): void {
    while (this.#revocations.length > 0 && now - this.#revocations[0]!.at > REVOCATION_MEMORY_MS) {
      this.#forgottenSeq = this.#revocations.shift()!.seq;
    }
    this.#revocations.push({ seq: ++this.#revocationSeq, at: now, selector });
  }

  #refreshFrame(): Published {
    const position = this.#init.position();
    if (position === null) return { stream: "", position: "0.0", seq: 0, frame: REFRESH_FRAME };
    return { stream: "", position, seq: parsePosition(position)?.seq ?? 0, frame: REFRESH_FRAME };
  }
}

/** Whether a connection registered with `info` is one `selector` names. */
function matches(info: ConnectionInfo, selector: ConnectionSelector): boolean {
  if (selector.userKey !== undefined && info.userKey !== selector.userKey) return false;
  if (selector.streams !== undefined && !selector.streams.some((s) => info.streams.includes(s))) return false;
  return true;
}
