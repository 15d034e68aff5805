import { randomBytes } from "node:crypto";
import { isDataChannel } from "../data/channel.js";
import { ClosedError } from "../errors.js";
import {
  type Broker,
  type BrokerEvents,
  type ControlMessage,
  type FrameText,
  type HistoryOptions,
  type Published,
  formatPosition,
  parsePosition,
  resolveHistory,
} from "./broker.js";

interface StreamHistory {
  /** Frames in seq order from `head` on (before it: evicted, not yet cut off the array). */
  frames: Published[];
  times: number[];
  /**
   * The oldest frame kept. Eviction moves it; the evicted prefix is cut off
   * once it is as long as what is kept, so a stream at its cap (every
   * publish evicting one frame) costs no copy of the whole window per publish.
   */
  head: number;
  /** seq of the newest frame evicted from this stream (0: none yet). */
  floor: number;
  /** When a watch of this data channel last ended (0: never): an idle channel is forgotten idleMs after its last frame or watch. */
  watchedAt: number;
}

/**
 * The default broker: one process, history in memory. A restart starts a
 * new epoch, so cursors from before it get a refresh.
 *
 * Data channels (data/channel.ts) are kept for replay only from when this
 * process first watches them (a data subscription or a dataHandler cache of
 * that stream, see `watch`), and from then on as any stream: every change
 * publishes data events to its row's own channel and the table-wide one,
 * and keeping the events of channels nobody subscribed to — the row
 * channels of most rows — cost more than the rest of their dispatch (the
 * garbage collector copies what a broker keeps for minutes). Nothing is
 * lost by it: only this process's subscribers can resume from this broker,
 * and a subscriber of a channel has watched it. A cursor from before a
 * channel was watched, when events of unwatched channels went unkept after
 * it, gets a gap (a refresh: the data subscriber syncs again), never silence.
 */
export class MemoryBroker implements Broker {
  readonly kind = "memory";
  readonly epoch = randomBytes(6).toString("base64url");
  #seq = 0;
  #state: "new" | "open" | "closed" = "new";
  #deliver: ((frame: Published) => void) | null = null;
  #events: BrokerEvents | null = null;
  #streams = new Map<string, StreamHistory>();
  #history: Required<HistoryOptions>;
  #idleMs: number;
  /** seq of the newest frame of any stream forgotten for being idle: older cursors get a refresh. */
  #forgottenFloor = 0;
  /** Data channels watched now, by number of watchers: kept, and never forgotten while watched. */
  #watchers = new Map<string, number>();
  /** seq of the newest data event not kept (its channel never watched): a channel watched later starts after it. */
  #unkeptFloor = 0;
  #sweep: NodeJS.Timeout | null = null;

  constructor(options: MemoryBrokerOptions = {}) {
    this.#history = resolveHistory(options.history);
    this.#idleMs = Math.max(options.idleMs ?? DEFAULT_IDLE_MS, this.#history.ageMs);
  }

  async start(deliver: (frame: Published) => void, events: BrokerEvents): Promise<void> {
    if (this.#state === "closed") throw new ClosedError("memory broker");
    this.#deliver = deliver;
    this.#events = events;
    this.#state = "open";
    this.#sweep ??= setInterval(() => this.#evictAll(Date.now()), Math.max(10, Math.min(this.#history.ageMs, 30_000)));
    this.#sweep.unref();
  }

  async publish(stream: string, frame: string): Promise<Published> {
    return this.#publish(stream, frame, false)!;
  }

  /** Publishes and delivers before returning (see Broker.publishNow); a data event nobody watched is neither built nor delivered. */
  publishNow(stream: string, frame: string | FrameText): void {
    this.#publish(stream, frame, true);
  }

  /**
   * The published frame. An event of a data channel never watched is not
   * kept; `publishNow` does not even deliver it (null): every subscription
   * here watches its streams first, so nobody here could receive it.
   */
  #publish(stream: string, text: string | FrameText, skipUnwatched: boolean): Published | null {
    if (this.#state === "closed") throw new ClosedError("memory broker");
    const seq = ++this.#seq;
    let history = this.#streams.get(stream);
    if (!history && isDataChannel(stream)) {
      // never watched (or forgotten since): nobody here can resume it
      this.#unkeptFloor = seq;
      if (skipUnwatched) return null;
      const published: Published = { stream, seq, position: formatPosition(this.epoch, seq), frame: frameText(text) };
      this.#deliver?.(published);
      return published;
    }
    if (!history) {
      history = { frames: [], times: [], head: 0, floor: 0, watchedAt: 0 };
      this.#streams.set(stream, history);
    }
    const published: Published = { stream, seq, position: formatPosition(this.epoch, seq), frame: frameText(text) };
    const now = Date.now();
    history.frames.push(published);
    history.times.push(now);
    this.#evict(history, now);
    this.#deliver?.(published);
    return published;
  }

  /**
   * Starts keeping the data channels among `streams` (see the class
   * comment): a channel not kept yet gets a history whose floor is the
   * newest data event not kept, so a cursor older than that gets a gap.
   * The returned function ends this watch; a channel stays kept after its
   * last watch ends (a subscriber that reconnects resumes from it), until it
   * is idle for `idleMs` like any stream.
   */
  watch(streams: readonly string[]): () => void {
    const channels = streams.filter(isDataChannel);
    if (channels.length === 0 || this.#state === "closed") return () => {};
    for (const channel of channels) {
      this.#watchers.set(channel, (this.#watchers.get(channel) ?? 0) + 1);
      if (!this.#streams.has(channel)) {
        this.#streams.set(channel, { frames: [], times: [], head: 0, floor: this.#unkeptFloor, watchedAt: 0 });
      }
    }
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      const now = Date.now();
      for (const channel of channels) {
        const count = (this.#watchers.get(channel) ?? 1) - 1;
        if (count > 0) this.#watchers.set(channel, count);
        else this.#watchers.delete(channel);
        const history = this.#streams.get(channel);
        if (history) history.watchedAt = now;
      }
    };
  }

  async history(streams: readonly string[], after: string): Promise<Published[] | null> {
    const cursor = parsePosition(after);
    if (!cursor || cursor.epoch !== this.epoch || cursor.seq > this.#seq) return null;
    if (cursor.seq < this.#forgottenFloor) return null;
    const out: Published[] = [];
    for (const name of streams) {
      const history = this.#streams.get(name);
      if (!history) {
        // a data channel not kept: its events after the cursor may not have been
        if (isDataChannel(name) && cursor.seq < this.#unkeptFloor) return null;
        continue;
      }
      this.#evict(history, Date.now());
      if (cursor.seq < history.floor) return null;
      // frames are in seq order: binary-search the first one after the cursor
      let lo = history.head;
      let hi = history.frames.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (history.frames[mid]!.seq <= cursor.seq) lo = mid + 1;
        else hi = mid;
      }
      for (let i = lo; i < history.frames.length; i++) out.push(history.frames[i]!);
    }
    if (streams.length > 1) out.sort((a, b) => a.seq - b.seq);
    return out;
  }

  async head(): Promise<string> {
    return formatPosition(this.epoch, this.#seq);
  }

  async control(message: ControlMessage): Promise<void> {
    if (this.#state === "closed") throw new ClosedError("memory broker");
    // frames are delivered synchronously by publish(): whatever came before is out already
    this.#events?.control?.(message);
  }

  async close(): Promise<void> {
    this.#state = "closed";
    this.#deliver = null;
    this.#events = null;
    if (this.#sweep) clearInterval(this.#sweep);
    this.#sweep = null;
    this.#streams.clear();
    this.#watchers.clear();
  }

  #evict(history: StreamHistory, now: number): void {
    const { frames: keep, ageMs, maxFrames } = this.#history;
    const { frames, times } = history;
    const n = frames.length;
    let head = history.head;
    while (n - head > keep && (n - head > maxFrames || now - times[head]! > ageMs)) head++;
    if (head === history.head) return;
    history.floor = frames[head - 1]!.seq;
    if (head * 2 >= n) {
      frames.splice(0, head);
      times.splice(0, head);
      head = 0;
    }
    history.head = head;
  }

  #evictAll(now: number): void {
    for (const [name, history] of this.#streams) {
      this.#evict(history, now);
      // A stream silent for idleMs is forgotten whole, so streams nobody
      // writes to any more stop costing memory. Its newest seq becomes a
      // broker-wide floor: a cursor older than it may have missed that
      // stream's frames, so it gets a refresh — never a silent gap.
      if (this.#watchers.has(name)) continue;
      const kept = history.head < history.frames.length;
      const newest = kept ? history.times[history.times.length - 1]! : 0;
      if (Math.max(newest, history.watchedAt) === 0 || now - Math.max(newest, history.watchedAt) > this.#idleMs) {
        const last = kept ? history.frames.at(-1)!.seq : history.floor;
        // a data channel not kept answers a gap below #unkeptFloor (see history): other streams are not concerned
        if (isDataChannel(name)) this.#unkeptFloor = Math.max(this.#unkeptFloor, last);
        else this.#forgottenFloor = Math.max(this.#forgottenFloor, last);
        this.#streams.delete(name);
      }
    }
  }
}

function frameText(text: string | FrameText): string {
  return typeof text === "string" ? text : text.text;
}

export interface MemoryBrokerOptions {
  /** Replay window per stream. Default: at least 1,000 frames and 5 minutes. */
  history?: HistoryOptions;
  /** A stream with no frame for this long is forgotten whole (cursors older than its last frame get a refresh). Default 1 hour, never less than `history.ageMs`. */
  idleMs?: number;
}

const DEFAULT_IDLE_MS = 60 * 60_000;

/** The in-memory broker: one process. */
export function memoryBroker(options: MemoryBrokerOptions = {}): Broker {
  return new MemoryBroker(options);
}
