import { isDataChannel } from "../data/channel.js";
import type { PublishBatcher, WatchFilter } from "./publish-batcher.js";

/** How long a registered watch lasts unless renewed (every quarter of it). Default of the brokers' `watchTtlMs`. */
export const WATCH_TTL_MS = 120_000;

/** Channels per registration call: one script or statement stays short. */
const CHUNK = 500;

/** What one registration call answers (see WatchServer.register). */
export interface Registration {
  epoch: string;
  /** The watch generation before and after the call (after > before when a channel was new). */
  before: number;
  after: number;
  /** The channels that were absent or expired, whose history now starts at a fresh seq. */
  fresh: readonly string[];
  /** Each channel's (in the order given) seq its watch started at: another means it expired meanwhile. */
  since: readonly number[];
}

/** A scale-out broker's side of watches: its script or statements. */
export interface WatchServer {
  /**
   * Atomically, serialized with publishes: sets each channel's expiry to at
   * least now + `ttlMs`; a channel absent or expired is new: one seq is
   * reserved, its history restarted with that seq as its floor and its watch
   * `since` it, and the generation goes up by one.
   */
  register(channels: readonly string[], ttlMs: number): Promise<Registration>;
  /** The unexpired watched channels with the epoch and generation, in one atomic read; null when there is no epoch yet. */
  load(): Promise<WatchFilter | null>;
}

/**
 * A moment by both clocks: the monotonic one does not run while the machine
 * sleeps (the server's does), the wall clock may be set back. Time since it
 * counts only when both say so.
 */
interface Instant {
  monotonic: number;
  wall: number;
}

function now(): Instant {
  return { monotonic: performance.now(), wall: Date.now() };
}

/** Whether `at` is after `since` by both clocks (the wall clock counts whole ms: the same ms will do). */
function isAfter(at: Instant, since: Instant): boolean {
  return at.monotonic > since.monotonic && at.wall >= since.wall;
}

interface Held {
  /** Watches of this process holding the channel now. */
  count: number;
  /**
   * The seq its watch started at, as the last registration of it here found
   * (null: none completed yet). Another later means the watch expired in
   * between, whoever registered it again: a subscriber here may have missed events.
   */
  since: number | null;
  /** When the last registration of it here that completed was sent (null: none). */
  registeredAt: Instant | null;
}

/**
 * Which data channels some process watches, for a Redis or PostgreSQL
 * broker: this process's watches (counted, registered on the server and
 * renewed every quarter of their time to live; one no longer held is simply
 * not renewed), and the filter its batcher skips data events by (read with
 * its generation at start, after a refused batch and at each renewal).
 *
 * A renewal or registration that finds a channel held here started again
 * since the last one (it expired: a stall or an outage longer than its time
 * to live, and this process or another registered it anew) means its events
 * may have been skipped while this process's subscribers held it: `gap`
 * gives them a refresh, never silence.
 */
export class Watches {
  #server: WatchServer;
  #batcher: PublishBatcher;
  #gap: (reason: string) => void;
  #ttlMs: number;
  /** Whether the batcher skips by a filter at all (see the brokers' `skipUnwatched`). */
  #skip: boolean;
  #held = new Map<string, Held>();
  #renewal: NodeJS.Timeout | null = null;
  /** The read under way, and the one queued after it (a reason to read came meanwhile). */
  #loading: Promise<void> | null = null;
  #queued: Promise<void> | null = null;
  #closed = false;
  /** When the server was last found to have lost the watches (see `renew`). */
  #lostAt: Instant = { monotonic: Number.NEGATIVE_INFINITY, wall: Number.NEGATIVE_INFINITY };

  constructor(init: {
    server: WatchServer;
    batcher: PublishBatcher;
    gap: (reason: string) => void;
    ttlMs: number;
    skip: boolean;
  }) {
    this.#server = init.server;
    this.#batcher = init.batcher;
    this.#gap = init.gap;
    this.#ttlMs = init.ttlMs;
    this.#skip = init.skip;
  }

  /**
   * The broker is connected: registers the channels held here again, reads
   * the filter (resolves once done, or not) and renews from now on. Safe to
   * call again: on a reconnect the server may have lost the watches or let
   * them expire meanwhile (see `renew`).
   */
  start(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#renewal === null) {
      this.#renewal = setInterval(() => void this.#renew(), Math.max(10, Math.floor(this.#ttlMs / 4)));
      this.#renewal.unref();
    }
    return this.renew();
  }

  /**
   * The server lost its watches (a new epoch: keys lost, a restart, the
   * namespace recreated): registers every channel held here again at once,
   * then reads the filter. Until then other processes skip these channels'
   * events by the new epoch's empty watch set; the registration finds each
   * watch started anew and gives this process's subscribers a gap, so what
   * was skipped meanwhile is never lost silently — and no renewal tick (up
   * to a quarter of the time to live) is waited for.
   */
  renew(): Promise<void> {
    // registrations sent before count no more: a watch() goes to the server again
    this.#lostAt = now();
    return this.#renew();
  }

  close(): void {
    this.#closed = true;
    if (this.#renewal !== null) clearInterval(this.#renewal);
    this.#renewal = null;
  }

  /** Whether this process holds a watch of `channel` (its events are never skipped). */
  has(channel: string): boolean {
    return this.#held.has(channel);
  }

  /**
   * See Broker.watch: resolves once the data channels among `streams` are
   * registered (rejects when the server is unreachable); returns at once
   * when each is held here and was registered less than half its time to
   * live ago (its renewals go on as they would).
   */
  watch(streams: readonly string[]): (() => void) | Promise<() => void> {
    const channels = [...new Set(streams.filter(isDataChannel))];
    if (channels.length === 0) return () => {};
    // registered here less than half their time to live ago: their watches cannot have expired
    const { monotonic, wall } = now();
    const half = this.#ttlMs / 2;
    const recent = { monotonic: monotonic - half, wall: wall - half };
    let registered = true;
    // held from now: their events are not skipped here while the registration is on its way
    for (const channel of channels) {
      const held = this.#held.get(channel);
      if (held) held.count++;
      else this.#held.set(channel, { count: 1, since: null, registeredAt: null });
      const at = held?.registeredAt ?? null;
      if (at === null || !isAfter(at, recent) || !isAfter(at, this.#lostAt)) registered = false;
    }
    let ended = false;
    const unwatch = (): void => {
      if (ended) return;
      ended = true;
      for (const channel of channels) {
        const held = this.#held.get(channel)!;
        if (--held.count === 0) this.#held.delete(channel);
      }
    };
    // a subscribe storm on channels held here costs no round trip each (nor, on PostgreSQL, a lock)
    if (registered) return unwatch;
    return this.#register(channels).then(
      () => unwatch,
      (error: unknown) => {
        unwatch();
        throw error;
      },
    );
  }

  /** Reads the filter again, once at a time (a call meanwhile reads once more after it); resolves once read, or not. */
  reload(): Promise<void> {
    if (this.#loading === null) {
      this.#loading = this.#load().finally(() => {
        this.#loading = null;
      });
      return this.#loading;
    }
    this.#queued ??= this.#loading.then(() => {
      this.#queued = null;
      return this.reload();
    });
    return this.#queued;
  }

  async #load(): Promise<void> {
    if (this.#closed || !this.#skip) return;
    let filter: WatchFilter | null;
    try {
      filter = await this.#server.load();
    } catch {
      // the server is unreachable: the batcher skips nothing until a later read succeeds
      return;
    }
    const current = this.#batcher.filter;
    // a registration may have moved the filter on meanwhile (see #registered): keep the newer
    if (current && filter && current.epoch === filter.epoch && current.generation > filter.generation) return;
    this.#batcher.filter = filter;
  }

  async #register(channels: readonly string[]): Promise<void> {
    for (let from = 0; from < channels.length; from += CHUNK) {
      const chunk = channels.slice(from, from + CHUNK);
      const sentAt = now();
      this.#registered(chunk, sentAt, await this.#server.register(chunk, this.#ttlMs));
    }
  }

  /**
   * A registration's answer: a channel held here whose watch started again
   * since the last registration here had expired (gap); and when the
   * generation moved only by this registration, the filter moves with it
   * (its new channels added: a filter's channels may only grow), instead of
   * a refused batch and a read.
   */
  #registered(
    registered: readonly string[],
    sentAt: Instant,
    { epoch, before, after, fresh, since }: Registration,
  ): void {
    let expired = false;
    for (let i = 0; i < registered.length; i++) {
      const held = this.#held.get(registered[i]!);
      if (!held) continue;
      if (held.since !== null && held.since !== since[i]) expired = true;
      held.since = since[i]!;
      // the server set its expiry at least its time to live after this
      if (held.registeredAt === null || isAfter(sentAt, held.registeredAt)) held.registeredAt = sentAt;
    }
    if (expired) this.#gap("the watch of a data channel expired while it was held: its events may have been skipped");
    const filter = this.#batcher.filter;
    if (after === before || !filter || filter.epoch !== epoch || filter.generation !== before) return;
    const channels = filter.channels as Set<string>;
    for (const channel of fresh) channels.add(channel);
    this.#batcher.filter = { epoch, generation: after, channels };
  }

  async #renew(): Promise<void> {
    if (this.#closed) return;
    try {
      await this.#register([...this.#held.keys()]);
    } catch {
      // unreachable: the next renewal tries again; one that finds a channel expired meanwhile gives a gap
    }
    await this.reload();
  }
}
