import { randomBytes } from "node:crypto";
import { ClosedError } from "../errors.js";
import {
  type Broker,
  type BrokerEvents,
  type ControlMessage,
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
}

/**
 * The default broker: one process, history in memory. A restart starts a
 * new epoch, so cursors from before it get a refresh.
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
    return this.publishNow(stream, frame);
  }

  /**
   * Publishes and delivers before returning (see Broker.publishNow): what a
   * data event takes, with no promise made for it.
   */
  publishNow(stream: string, frame: string): Published {
    if (this.#state === "closed") throw new ClosedError("memory broker");
    const seq = ++this.#seq;
    const published: Published = { stream, seq, position: formatPosition(this.epoch, seq), frame };
    const now = Date.now();
    let history = this.#streams.get(stream);
    if (!history) {
      history = { frames: [], times: [], head: 0, floor: 0 };
      this.#streams.set(stream, history);
    }
    history.frames.push(published);
    history.times.push(now);
    this.#evict(history, now);
    this.#deliver?.(published);
    return published;
  }

  async history(streams: readonly string[], after: string): Promise<Published[] | null> {
    const cursor = parsePosition(after);
    if (!cursor || cursor.epoch !== this.epoch || cursor.seq > this.#seq) return null;
    if (cursor.seq < this.#forgottenFloor) return null;
    const out: Published[] = [];
    for (const name of streams) {
      const history = this.#streams.get(name);
      if (!history) continue;
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
      const kept = history.head < history.frames.length;
      const newest = kept ? history.times[history.times.length - 1] : undefined;
      if (newest === undefined || now - newest > this.#idleMs) {
        this.#forgottenFloor = Math.max(this.#forgottenFloor, kept ? history.frames.at(-1)!.seq : history.floor);
        this.#streams.delete(name);
      }
    }
  }
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
