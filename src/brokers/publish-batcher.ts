import { isDataChannel } from "../data/channel.js";
import type { Published } from "./broker.js";

/** A frame on its way to the broker's server. */
export interface OutgoingFrame {
  readonly stream: string;
  readonly frame: string;
}

/** Bounds of one batch: both hold. */
export interface BatchLimits {
  /** Frames per batch at most. */
  frames: number;
  /** Bytes of frame markup per batch at most (UTF-16 length, a bound good enough; a single larger frame goes alone). */
  bytes: number;
}

/**
 * Redis: a script call costs a few calls per stream of its batch besides one
 * member per frame, so bigger batches are cheaper per frame (1,000 went
 * 10–30% faster than 500 on a 10,000-row update over 100 streams); bounded
 * so one script keeps Redis from its other clients for ~10 ms at most.
 * Below Lua's 8,000-value stack for one stream's ZADD too.
 */
export const REDIS_BATCH_LIMITS: BatchLimits = Object.freeze({ frames: 1000, bytes: 1 << 20 });

/**
 * Redis script calls in flight at once on the command connection: while
 * Redis runs one, the next is already on its way, so the server never waits
 * for this process between two batches.
 */
export const REDIS_IN_FLIGHT = 2;

/**
 * PostgreSQL statements in flight at once on the pipelined publish
 * connection: the next batch waits at the server while one runs (and while
 * its commit is flushed), instead of the server waiting for this process.
 */
export const POSTGRES_IN_FLIGHT = 2;

/**
 * PostgreSQL: a batch costs a commit and a round trip whatever its size, so
 * batches are larger: measured on a 10,000-row update, 2,000 frames per
 * statement went nearly twice as fast as 500. Bounded so a statement stays
 * well inside commandTimeoutMs.
 */
export const POSTGRES_BATCH_LIMITS: BatchLimits = Object.freeze({ frames: 2000, bytes: 2 << 20 });

/**
 * The data channels some process watches, as this process last read them
 * together with the watch generation: a batch that skips the data events of
 * other channels by it is checked against that generation by the server
 * (see PublishBatcher).
 */
export interface WatchFilter {
  readonly epoch: string;
  readonly generation: number;
  readonly channels: ReadonlySet<string>;
}

interface Waiting extends OutgoingFrame {
  /** null: a publish nobody awaits (see `publishUnawaited`). */
  resolve: ((published: Published) => void) | null;
  /** A data event nobody awaits: skipped when its channel is watched nowhere. */
  skippable: boolean;
  /** The promise's reject, or (a publish nobody awaits) the function told about its failure. */
  reject(error: unknown, stream: string): void;
}

export interface PublishBatcherInit {
  /**
   * Sends frames to the server in one round trip, atomically: resolves with
   * their positions in the same order, or throws and none of them was
   * published (or none is reported as published: the whole batch fails).
   * With a `check`, the server first compares its watch epoch and
   * generation with the check's and, when they differ, writes nothing and
   * resolves with null (refused).
   */
  send(frames: readonly OutgoingFrame[], check: WatchFilter | null): Promise<Published[] | null>;
  /** A batch was refused: the watch filter is stale (and dropped); read it again. */
  refused?(): void;
  /** Whether this process watches a data channel itself (its events are never skipped). */
  watchedHere?(channel: string): boolean;
  /** The error one publish of a failed batch rejects with (a BrokerError naming its stream). */
  failure(stream: string, error: unknown): unknown;
  limits: BatchLimits;
  /**
   * Batches sent and not answered yet, at most. Default 1. More only where
   * the server runs what it receives in the order it was sent, whatever
   * happens to the batches before (one Redis connection does): then position
   * order is still call order, and the server never waits for the client
   * between two batches.
   */
  inFlight?: number;
}

/**
 * Group commit for a scale-out broker's publishes. A publish joins a queue;
 * the queue goes to the server as one batch as soon as the current turn's
 * synchronous code is done (a microtask) and fewer than `inFlight` batches
 * are in flight — otherwise every publish made meanwhile waits for one to be
 * answered and then goes in the next batch. So frames published close
 * together (a feed batch's hooks, concurrent requests) share one round trip,
 * a lone publish goes out at once, and batches grow by themselves when the
 * server is the bottleneck.
 *
 * Batches go in call order, one after the other on a server that runs them
 * in that order (see `inFlight`), which keeps position order equal to call
 * order within this process (the server serializes processes); each publish
 * settles with its own position, and a failed batch rejects each of its
 * publishes (with `failure`) and none resolves.
 *
 * Watches (Redis and PostgreSQL): with a `filter` set, a batch leaves out the
 * data events (`publishUnawaited` on a data channel) of channels that
 * neither the filter nor this process watches, and carries the filter as its
 * check. A refused batch goes again at once, whole and unchecked (it cannot
 * be refused twice), and batches go unchecked until the broker sets a new
 * filter. A checked batch in flight is refused only together with every
 * later one of the same check (the generation never goes back), so a batch
 * with another check, or none, waits until none is in flight: the resends
 * then go in the original order, before anything published after them.
 */
export class PublishBatcher {
  #send: PublishBatcherInit["send"];
  #failure: PublishBatcherInit["failure"];
  #limits: BatchLimits;
  #maxInFlight: number;
  #queue: Waiting[] = [];
  /** The queue's head: frames before it were taken (shifting a long array one by one is quadratic). */
  #head = 0;
  #scheduled = false;
  #inFlight = 0;
  /** idle() callers, told when nothing waits and nothing is in flight. */
  #idleWaiters: Array<() => void> = [];
  /** Frames taken by publish calls so far, and answered (published or failed) so far: batches go in call order. */
  #taken = 0;
  #answeredFrames = 0;
  /** flushed() callers, each told once the frames taken before its call are answered. */
  #flushWaiters: Array<{ upTo: number; resolve: () => void }> = [];
  /** backlog() callers, each told once at most its limit of frames are unanswered. */
  #backlogWaiters: Array<{ limit: number; resolve: () => void }> = [];
  #refused: () => void;
  #watchedHere: (channel: string) => boolean;
  /** What the next batch skips by and is checked against (null: skips nothing, unchecked). */
  #filter: WatchFilter | null = null;
  /** Checked batches in flight, all with the check #checking (see the class comment). */
  #checkedInFlight = 0;
  #checking: WatchFilter | null = null;

  constructor(init: PublishBatcherInit) {
    this.#send = init.send;
    this.#failure = init.failure;
    this.#limits = init.limits;
    this.#maxInFlight = Math.max(1, init.inFlight ?? 1);
    this.#refused = init.refused ?? (() => {});
    this.#watchedHere = init.watchedHere ?? (() => false);
  }

  /** The watch filter batches skip data events by from now on (null: none skipped, no check). */
  set filter(filter: WatchFilter | null) {
    this.#filter = filter;
    this.#schedule();
  }

  get filter(): WatchFilter | null {
    return this.#filter;
  }

  /** Frames waiting for a batch. */
  get size(): number {
    return this.#queue.length - this.#head;
  }

  /** Frames waiting for a batch or in one not answered yet. */
  get unanswered(): number {
    return this.#taken - this.#answeredFrames;
  }

  publish(stream: string, frame: string): Promise<Published> {
    const published = new Promise<Published>((resolve, reject) => {
      this.#queue.push({ stream, frame, resolve, reject, skippable: false });
    });
    this.#taken++;
    this.#schedule();
    return published;
  }

  /**
   * Publishes like `publish`, for a frame whose promise nobody would await
   * (a data event): no promise is made, and a failure goes to `failed` with
   * the error a publish would reject with (one function for all of them:
   * it is told the frame's stream).
   */
  publishUnawaited(stream: string, frame: string, failed: (error: unknown, stream: string) => void): void {
    this.#queue.push({ stream, frame, resolve: null, reject: failed, skippable: isDataChannel(stream) });
    this.#taken++;
    this.#schedule();
  }

  /**
   * Resolves once every publish made so far has settled, published or not
   * (later ones are not waited for): a control message sent then follows
   * them on the channel (see Broker.control).
   */
  flushed(): Promise<void> {
    if (this.#answeredFrames >= this.#taken) return Promise.resolve();
    return new Promise((resolve) => this.#flushWaiters.push({ upTo: this.#taken, resolve }));
  }

  /**
   * Resolves once at most `limit` frames wait for a batch or an answer;
   * `undefined` when that is already so (see Broker.backlog).
   */
  backlog(limit: number): Promise<void> | undefined {
    if (this.unanswered <= limit) return undefined;
    return new Promise((resolve) => this.#backlogWaiters.push({ limit, resolve }));
  }

  /** Resolves once every publish made so far has settled (and those made meanwhile). */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #isIdle(): boolean {
    return this.#inFlight === 0 && !this.#scheduled && this.#head === this.#queue.length;
  }

  #schedule(): void {
    if (this.#scheduled || this.#inFlight >= this.#maxInFlight) return;
    this.#scheduled = true;
    queueMicrotask(this.#start);
  }

  #start = (): void => {
    this.#scheduled = false;
    while (this.#inFlight < this.#maxInFlight && this.#head < this.#queue.length) {
      // behind a checked batch only one of the same check: if it is refused, they all are
      if (this.#checkedInFlight > 0 && this.#filter !== this.#checking) break;
      const filter = this.#filter;
      // what the filter skips is decided once, here
      const sent: Waiting[] | null = filter === null ? null : [];
      const batch = this.#take(filter, sent);
      this.#sendBatch(batch, filter, sent ?? batch);
    }
    if (this.#isIdle()) this.#wakeIdle();
  };

  /** Sends `frames`, which are `batch` but for the data events `check` skips (a refused batch goes again whole). */
  #sendBatch(batch: Waiting[], check: WatchFilter | null, frames: Waiting[]): void {
    this.#inFlight++;
    if (check !== null) {
      this.#checkedInFlight++;
      this.#checking = check;
    }
    let sent: Promise<Published[] | null>;
    try {
      sent = this.#send(frames, check);
    } catch (error) {
      sent = Promise.reject(error);
    }
    sent.then(
      (published) => {
        if (check !== null) this.#checkedInFlight--;
        if (published === null) {
          this.#resend(batch, check!);
          return;
        }
        for (let i = 0; i < frames.length; i++) frames[i]!.resolve?.(published[i]!);
        this.#answered(batch.length);
      },
      (error: unknown) => {
        if (check !== null) this.#checkedInFlight--;
        for (const waiting of batch) waiting.reject(this.#failure(waiting.stream, error), waiting.stream);
        this.#answered(batch.length);
      },
    );
  }

  /** A data event of a channel watched neither by `check` nor here. */
  #skips(check: WatchFilter, waiting: Waiting): boolean {
    return waiting.skippable && !check.channels.has(waiting.stream) && !this.#watchedHere(waiting.stream);
  }

  /**
   * The server refused a batch (its watch generation is not the check's):
   * the batch goes again at once, in the slot it had (as more than one
   * batch where it is more than one batch's worth), with every frame and no
   * check. Later checked batches in flight are refused too and follow it in
   * order; until the broker reads a new filter nothing is skipped.
   */
  #resend(batch: Waiting[], check: WatchFilter): void {
    this.#inFlight--;
    if (this.#filter === check) {
      this.#filter = null;
      this.#refused();
    }
    // whole, it may be more than one batch's worth: as many as it takes, back to back
    for (let from = 0; from < batch.length; ) {
      const to = this.#end(batch, from, null, null);
      const part = from === 0 && to === batch.length ? batch : batch.slice(from, to);
      this.#sendBatch(part, null, part);
      from = to;
    }
    // a batch held back behind the refused one's check may go now
    this.#schedule();
  }

  #answered(frames: number): void {
    this.#inFlight--;
    this.#answeredFrames += frames;
    if (this.#flushWaiters.length > 0) {
      const done = this.#flushWaiters.filter((w) => w.upTo <= this.#answeredFrames);
      if (done.length > 0) {
        this.#flushWaiters = this.#flushWaiters.filter((w) => w.upTo > this.#answeredFrames);
        for (const waiter of done) waiter.resolve();
      }
    }
    if (this.#backlogWaiters.length > 0) {
      const unanswered = this.unanswered;
      const ready = this.#backlogWaiters.filter((w) => unanswered <= w.limit);
      if (ready.length > 0) {
        this.#backlogWaiters = this.#backlogWaiters.filter((w) => unanswered > w.limit);
        for (const waiter of ready) waiter.resolve();
      }
    }
    // what was published meanwhile goes next, all of it in one batch (up to the limits)
    if (this.#head < this.#queue.length) this.#start();
    else if (this.#isIdle()) this.#wakeIdle();
  }

  #wakeIdle(): void {
    const waiters = this.#idleWaiters;
    if (waiters.length === 0) return;
    this.#idleWaiters = [];
    for (const wake of waiters) wake();
  }

  /** The next batch (see #end). */
  #take(filter: WatchFilter | null, sent: Waiting[] | null): Waiting[] {
    const start = this.#head;
    const end = this.#end(this.#queue, start, filter, sent);
    const batch = this.#queue.slice(start, end);
    if (end === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (end > 4096 && end * 2 > this.#queue.length) {
      // under a steady stream the queue never empties: drop what was taken now and then
      this.#queue = this.#queue.slice(end);
      this.#head = 0;
    } else {
      this.#head = end;
    }
    return batch;
  }

  /**
   * Where a batch of `list` from `start` ends: `frames` of it sent at most,
   * with `bytes` of frame markup in all (a single larger frame goes alone).
   * What `filter` skips counts for neither: its checks are cheap, and a batch
   * of mostly skipped events sends as many frames as one of none. The frames
   * sent go to `sent` (with a filter).
   */
  #end(list: readonly Waiting[], start: number, filter: WatchFilter | null, sent: Waiting[] | null): number {
    const { frames, bytes } = this.#limits;
    let end = start;
    let size = 0;
    let count = 0;
    while (end < list.length && count < frames) {
      const waiting = list[end]!;
      if (filter !== null && this.#skips(filter, waiting)) {
        end++;
        continue;
      }
      size += waiting.frame.length;
      if (size > bytes && count > 0) break;
      sent?.push(waiting);
      count++;
      end++;
    }
    return end;
  }
}
