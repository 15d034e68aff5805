import type pg from "pg";
import { type ControlMessage, type Published, formatPosition } from "./broker.js";
import { errorMessage } from "./connection.js";

/**
 * Frames announced on the channel, `c` of them at consecutive seqs from `s`:
 * carried inline or known to this process (`frames`), or only named
 * (`frames` null: another process's batch too large for a notice) and read
 * from the table.
 */
export type FrameNotice = {
  e: string;
  s: number;
  c: number;
  frames: readonly Published[] | null;
};

/** A control message's notice: handed over in its place among the frames. */
export type ControlNotice = { control: ControlMessage };

/** What the pump needs from its broker. */
export interface PumpHost {
  /** Frames are delivered only while the broker is open. */
  isOpen(): boolean;
  epoch(): string | null;
  /** A notice of another epoch than `epoch()` is reported here first (it may call `newEpoch()`). */
  seen(epoch: string, seq: number): void;
  pool(): pg.Pool | null;
  deliver(frame: Published): void;
  control(message: ControlMessage): void;
  gap(reason: string): void;
  queryFailed(error: unknown): void;
}

/**
 * Delivers the PostgreSQL broker's notices strictly in seq order. NOTIFY
 * arrives in commit order, which is seq order; a notice without its frame
 * (too large to inline), or one that skips seqs, makes the pump read the
 * missing frames from the table first. Frames the table no longer has mean a gap.
 * A control message waits its turn like a frame.
 */
export class NoticePump {
  #host: PumpHost;
  #fetchRange: string;
  #inbox: Array<FrameNotice | ControlNotice> = [];
  /** The inbox's head: notices before it were taken (shift() would make a big batch's notices quadratic). */
  #head = 0;
  #pumping = false;
  /**
   * seq of the newest frame delivered: notices are delivered one by one
   * from here. `null` right after a new epoch began, until its first notice.
   */
  delivered: number | null = 0;

  constructor(host: PumpHost, fetchRange: string) {
    this.#host = host;
    this.#fetchRange = fetchRange;
  }

  push(notice: FrameNotice | ControlNotice): void {
    this.#inbox.push(notice);
    if (this.#host.isOpen()) void this.run();
  }

  /**
   * The head read on (re)connecting: frames after it arrive as notices, those
   * at or below it are dropped (frames between the last one delivered and
   * this head were missed; the refresh that follows a reconnect covers them).
   */
  resetTo(seq: number): void {
    this.delivered = seq;
    this.#inbox = this.#inbox
      .slice(this.#head)
      .filter((notice) => "control" in notice || notice.s + notice.c - 1 > seq);
    this.#head = 0;
  }

  /** A new epoch does not continue the old one's seqs: it starts at its first notice. */
  newEpoch(): void {
    this.delivered = null;
  }

  clear(): void {
    this.#inbox = [];
    this.#head = 0;
  }

  async run(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    const host = this.#host;
    try {
      while (this.#head < this.#inbox.length && host.isOpen()) {
        const notice = this.#take();
        if ("control" in notice) {
          host.control(notice.control);
          continue;
        }
        const last = notice.s + notice.c - 1;
        if (notice.e !== host.epoch()) host.seen(notice.e, last);
        if (this.delivered !== null && last <= this.delivered) continue;
        const from = this.delivered ?? notice.s - 1;
        if (notice.s <= from + 1 && notice.frames !== null) {
          // inline and nothing missing before it: hand over what is new
          for (let i = from + 1 - notice.s; i < notice.c; i++) this.#hand(notice.frames[i]!);
          continue;
        }
        const pool = host.pool();
        if (!pool) return;
        let rows: Array<{ seq: string; stream: string; frame: string }>;
        try {
          rows = (await pool.query<{ seq: string; stream: string; frame: string }>(this.#fetchRange, [from, last]))
            .rows;
        } catch (error) {
          // frames that could not be read: this process's subscribers refresh
          // (after the recovery, when the connection broke)
          host.queryFailed(error);
          if (host.isOpen()) {
            this.delivered = last;
            host.gap(`frames up to seq ${last} could not be read: ${errorMessage(error)}`);
            continue;
          }
          return;
        }
        if (!host.isOpen()) return;
        let missing = false;
        let expected = from + 1;
        for (const row of rows) {
          const seq = Number(row.seq);
          if (seq < expected) continue;
          if (seq !== expected) missing = true;
          this.#hand({ stream: row.stream, seq, position: formatPosition(notice.e, seq), frame: row.frame });
          expected = seq + 1;
        }
        if (expected <= last) missing = true;
        this.delivered = last;
        if (missing) host.gap("frames were pruned before this process could read them");
      }
    } finally {
      this.#pumping = false;
    }
  }

  #take(): FrameNotice | ControlNotice {
    const notice = this.#inbox[this.#head++]!;
    if (this.#head === this.#inbox.length) {
      this.#inbox = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#inbox.length) {
      this.#inbox = this.#inbox.slice(this.#head);
      this.#head = 0;
    }
    return notice;
  }

  #hand(frame: Published): void {
    this.delivered = frame.seq;
    this.#host.deliver(frame);
  }
}
