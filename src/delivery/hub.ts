import type { Broker, Published } from "../brokers/broker.js";
import { parsePosition } from "../brokers/broker.js";
import { buildFrame } from "../frames/frame.js";

/** One transport connection as the hub sees it (one adapter per transport). */
export interface Sink {
  /** Sends one frame. Must not throw; a transport that cannot keep up closes itself. */
  send(frame: Published): void;
  /**
   * The subscription is live: what it replayed and what arrived meanwhile
   * was sent, and from now on `send` carries frames as they are published.
   * Called once, synchronously, before any live frame.
   */
  live?(): void;
}

export interface SubscribeOptions {
  /** Replay every frame after this position first (render-time position, Last-Event-ID, resume parameter). */
  cursor?: string | null;
  /**
   * Start with one refresh frame, whatever the cursor: the client sent a
   * cursor that cannot be trusted (a garbage Last-Event-ID), so what it
   * missed is unknown.
   */
  refresh?: boolean;
  /** The digest of the subscribing page's id: frames broadcast `{ toOthers: true }` by that page's requests skip it. */
  page?: string | null;
  /**
   * A cursor per stream instead of one for all (the union of a page's
   * sources, each rendered at its own position): each stream replays after
   * its own cursor, in one pass in position order, so the position of the
   * last frame sent still resumes every stream. `null`: that stream starts
   * live. Cursors of different epochs get a refresh.
   */
  cursors?: ReadonlyMap<string, string | null>;
}

/**
 * How a `{ toOthers: true }` frame names the page it skips: as its first
 * attribute (added by createTurbo's publish), so telling such a frame apart
 * costs one startsWith per frame. Turbo ignores the attribute.
 */
export const EXCEPT_PREFIX = '<turbo-stream data-turbocast-except="';

/** The page digest a frame skips, or null. */
export function exceptOf(frame: string): string | null {
  if (!frame.startsWith(EXCEPT_PREFIX)) return null;
  const end = frame.indexOf('"', EXCEPT_PREFIX.length);
  return end < 0 ? null : frame.slice(EXCEPT_PREFIX.length, end);
}

/** `frame` marked to skip the page with this digest. */
export function exceptFrame(frame: string, page: string): string {
  return `${EXCEPT_PREFIX}${page}"${frame.slice("<turbo-stream".length)}`;
}

const REFRESH_FRAME = buildFrame({ action: "refresh" });

interface Entry {
  sink: Sink;
  streams: readonly string[];
  /** The subscribing page's digest (SubscribeOptions.page). */
  page: string | null;
  /** Frames that arrived while history was being replayed; `null` once live. */
  pending: Published[] | null;
  /** seq of the newest frame sent; frames at or below it are duplicates. */
  lastSeq: number;
  closed: boolean;
}

/**
 * Process-local fan-out: stream name -> subscribers. The broker calls
 * `deliver` for every frame published anywhere; each frame is encoded once
 * by its transport (memoised on the frame) and written to each subscriber.
 */
export class Hub {
  #byStream = new Map<string, Set<Entry>>();
  #broker: Broker;
  #count = 0;

  constructor(broker: Broker) {
    this.#broker = broker;
  }

  /** Number of live subscriptions in this process. */
  get size(): number {
    return this.#count;
  }

  /**
   * Subscribes a sink to streams. With a cursor, first replays every frame
   * after it in order (or one refresh frame when history no longer reaches
   * back that far), then goes live without gaps or duplicates: frames that
   * arrive during the replay are held and sent after it, skipping any the
   * replay already sent. Resolves with the unsubscribe function.
   */
  async subscribe(streams: readonly string[], sink: Sink, options: SubscribeOptions = {}): Promise<() => void> {
    const cursors = options.cursors;
    const replay =
      options.refresh === true ||
      (cursors ? [...cursors.values()].some((cursor) => cursor !== null) : Boolean(options.cursor));
    const entry: Entry = {
      sink,
      streams,
      page: options.page ?? null,
      pending: replay ? [] : null,
      lastSeq: 0,
      closed: false,
    };
    // a broker that keeps some streams only while watched (data channels) keeps them from here:
    // the in-memory broker at once, a scale-out one once its server registered them
    const watching = this.#broker.watch?.(streams);
    const unwatch = watching instanceof Promise ? await watching : watching;
    for (const name of streams) {
      let set = this.#byStream.get(name);
      if (!set) this.#byStream.set(name, (set = new Set()));
      set.add(entry);
    }
    this.#count++;
    const unsubscribe = (): void => {
      if (entry.closed) return;
      entry.closed = true;
      this.#count--;
      unwatch?.();
      for (const name of streams) {
        const set = this.#byStream.get(name);
        if (!set) continue;
        set.delete(entry);
        if (set.size === 0) this.#byStream.delete(name);
      }
    };
    if (replay) {
      try {
        if (options.refresh !== true && cursors) await this.#replayEach(entry, cursors);
        else await this.#replay(entry, options.refresh === true ? null : (options.cursor ?? null));
      } catch (error) {
        unsubscribe();
        throw error;
      }
    } else sink.live?.();
    return unsubscribe;
  }

  /** Called by the broker for every frame, in position order. The hot path. */
  deliver(frame: Published): void {
    const set = this.#byStream.get(frame.stream);
    if (set === undefined) return;
    const except = exceptOf(frame.frame);
    for (const entry of set) {
      if (entry.pending !== null) entry.pending.push(frame);
      else if (frame.seq > entry.lastSeq) {
        entry.lastSeq = frame.seq;
        if (except === null || except !== entry.page) entry.sink.send(frame);
      }
    }
  }

  /** Frames may have been lost (broker outage): every subscriber gets one refresh. */
  async refreshAll(): Promise<void> {
    const refresh = await this.#refreshFrame();
    const seen = new Set<Entry>();
    for (const set of this.#byStream.values()) {
      for (const entry of set) {
        if (seen.has(entry)) continue;
        seen.add(entry);
        if (entry.pending !== null) entry.pending.push(refresh);
        else entry.sink.send(refresh);
      }
    }
  }

  async #refreshFrame(): Promise<Published> {
    const position = await this.#broker.head();
    const seq = parsePosition(position)?.seq ?? 0;
    return { stream: "", position, seq, frame: REFRESH_FRAME };
  }

  /** Replays after `cursor`; a `null` cursor (or one past history) gets a refresh. */
  async #replay(entry: Entry, cursor: string | null): Promise<void> {
    const missed = cursor === null ? null : await this.#broker.history(entry.streams, cursor);
    if (entry.closed) return;
    if (missed === null) {
      if (!(await this.#sendRefresh(entry))) return;
    } else {
      entry.lastSeq = cursor === null ? 0 : (parsePosition(cursor)?.seq ?? 0);
      for (const frame of missed) {
        if (frame.seq <= entry.lastSeq) continue;
        entry.lastSeq = frame.seq;
        this.#sendReplayed(entry, frame);
      }
    }
    this.#goLive(entry, null);
  }

  /** Replays each stream after its own cursor: one history read from the oldest, filtered per stream. */
  async #replayEach(entry: Entry, cursors: ReadonlyMap<string, string | null>): Promise<void> {
    const after = new Map<string, number>();
    let oldest: string | null = null;
    let oldestSeq = Number.POSITIVE_INFINITY;
    let newestSeq = 0;
    let epoch: string | undefined;
    let mixedEpochs = false;
    for (const [stream, cursor] of cursors) {
      const parsed = cursor === null ? null : parsePosition(cursor);
      if (parsed === null) {
        // live from now: nothing of its history
        after.set(stream, Number.POSITIVE_INFINITY);
        continue;
      }
      if (epoch !== undefined && parsed.epoch !== epoch) mixedEpochs = true;
      epoch = parsed.epoch;
      after.set(stream, parsed.seq);
      newestSeq = Math.max(newestSeq, parsed.seq);
      if (parsed.seq < oldestSeq) {
        oldestSeq = parsed.seq;
        oldest = cursor;
      }
    }
    const missed = oldest === null || mixedEpochs ? null : await this.#broker.history(entry.streams, oldest);
    if (entry.closed) return;
    if (missed === null) {
      if (!(await this.#sendRefresh(entry))) return;
    } else {
      entry.lastSeq = newestSeq;
      for (const frame of missed) {
        if (frame.seq > (after.get(frame.stream) ?? Number.POSITIVE_INFINITY)) this.#sendReplayed(entry, frame);
        entry.lastSeq = Math.max(entry.lastSeq, frame.seq);
      }
    }
    // a stream without a cursor skipped its history; what was published since it subscribed is all pending
    this.#goLive(entry, (stream) => after.get(stream) === Number.POSITIVE_INFINITY);
  }

  /** A cursor outside the history gets one refresh; false when the entry closed meanwhile. */
  async #sendRefresh(entry: Entry): Promise<boolean> {
    const refresh = await this.#refreshFrame();
    if (entry.closed) return false;
    entry.sink.send(refresh);
    entry.lastSeq = refresh.seq;
    return true;
  }

  /** A replayed or queued frame, unless it is a toOthers frame of this entry's own page. */
  #sendReplayed(entry: Entry, frame: Published): void {
    if (entry.page === null || exceptOf(frame.frame) !== entry.page) entry.sink.send(frame);
  }

  /** Sends what arrived during the replay and not in it, then lets frames through as they come. */
  #goLive(entry: Entry, startsLive: ((stream: string) => boolean) | null): void {
    const pending = entry.pending ?? [];
    entry.pending = null;
    for (const frame of pending) {
      // a refresh queued by refreshAll() has stream "" and always goes out
      if (frame.stream === "" || frame.seq > entry.lastSeq || startsLive?.(frame.stream)) {
        entry.lastSeq = Math.max(entry.lastSeq, frame.seq);
        this.#sendReplayed(entry, frame);
      }
    }
    entry.sink.live?.();
  }
}
