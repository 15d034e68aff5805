// The Redis broker: its public methods and the state machine of its two
// connections, which share the state they switch on. Its Lua scripts are in
// redis-scripts.ts, options in redis-options.ts, connection helpers in
// redis-connection.ts, and what it shares with the PostgreSQL broker —
// epochs, gaps, refresh requests, outage log — in continuity.ts.
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { BrokerError, ClosedError } from "../errors.js";
import {
  type Broker,
  type BrokerEvents,
  type ControlMessage,
  type HistoryOptions,
  type Published,
  formatPosition,
  parsePosition,
} from "./broker.js";
import { OPENING_LENGTH, OWN_OPENING, batchTail, encodeFrames, messageHead } from "./batch-wire.js";
import { TimerSet, backoffMs, errorMessage, notStartedError } from "./connection.js";
import { Continuity, type RefreshRequest, decodeChannelMessage, encodeControl } from "./continuity.js";
import { disconnect, isReplyError, runScript } from "./redis-connection.js";
import { type RedisBrokerOptions, resolveRedisOptions } from "./redis-options.js";
import { HEAD_SCRIPT, HISTORY_SCRIPT, PUBLISH_SCRIPT, WATCHED_SCRIPT, WATCH_SCRIPT } from "./redis-scripts.js";
import {
  type OutgoingFrame,
  PublishBatcher,
  REDIS_BATCH_LIMITS,
  REDIS_IN_FLIGHT,
  type WatchFilter,
} from "./publish-batcher.js";
import { type Registration, Watches } from "./watches.js";

export type { RedisBrokerOptions } from "./redis-options.js";

type State = "new" | "connecting" | "open" | "down" | "closed";

/**
 * A broker on Redis: frames go through one pub/sub channel to every process,
 * and each stream's recent frames are kept in Redis, so a subscriber that
 * reconnects to any process resumes from its cursor.
 *
 * Two connections: one for commands (publish, history, head), one subscribed
 * to the channel. Either may drop; while the command connection is down
 * publishes fail at once with a BrokerError (nothing is queued, so memory
 * stays flat), and after the subscription is restored every subscriber of
 * this process gets a refresh (it may have missed frames). If publishes were
 * refused, the broker asks every process to refresh once it is back. One
 * outage, one refresh per subscriber (see Continuity).
 */
export class RedisBroker implements Broker {
  readonly kind = "redis";
  #url: string;
  #target: string;
  #prefix: string;
  #channel: string;
  #history: Required<HistoryOptions>;
  #idleMs: number;
  #clockStepMs: number;
  #commandTimeoutMs: number;
  #connectTimeoutMs: number;
  #maxBackoffMs: number;
  #connectionName: string;

  #state: State = "new";
  #cmd: Redis | null = null;
  #sub: Redis | null = null;
  #cmdUp = false;
  #subLive = false;
  /** The subscription dropped since the last refresh: this process's subscribers may have missed frames. */
  #subMissed = false;
  #deliver: ((frame: Published) => void) | null = null;
  #events: BrokerEvents | null = null;
  #continuity: Continuity;
  #lastError: unknown = undefined;
  /** seq of the newest frame delivered in the current epoch (frames at or below it are duplicates). */
  #delivered = 0;
  #timers = new TimerSet();
  #opened: { resolve: () => void; reject: (error: unknown) => void } | null = null;
  #batcher = new PublishBatcher({
    send: (frames, check) => this.#publishBatch(frames, check),
    limits: REDIS_BATCH_LIMITS,
    // one connection: Redis runs the script calls in the order they were sent
    inFlight: REDIS_IN_FLIGHT,
    failure: (stream, error) =>
      new BrokerError(`redis broker could not publish to "${stream}": ${errorMessage(error)}`, { cause: error }),
    refused: () => this.#watches.reload(),
    watchedHere: (channel) => this.#watches.has(channel),
  });
  #watches: Watches;
  #closing: Promise<void> | null = null;
  /** Batches this broker published (numbered in its channel messages), until their message comes back. */
  #own = new Map<number, OwnBatch>();
  #batches = 0;

  constructor(options: RedisBrokerOptions | string) {
    const resolved = resolveRedisOptions(options);
    this.#url = resolved.url;
    this.#target = resolved.target;
    this.#prefix = resolved.keyPrefix;
    this.#channel = `${this.#prefix}frames`;
    this.#history = resolved.history;
    this.#idleMs = resolved.idleMs;
    this.#clockStepMs = Math.max(1, Math.floor(this.#idleMs / 8));
    this.#commandTimeoutMs = resolved.commandTimeoutMs;
    this.#connectTimeoutMs = resolved.connectTimeoutMs;
    this.#maxBackoffMs = resolved.maxBackoffMs;
    this.#connectionName = resolved.connectionName;
    this.#continuity = new Continuity(
      {
        kind: "redis",
        target: this.#target,
        historyLost: `Redis at ${this.#target} lost the broker's keys`,
        settleMs: Math.max(500, this.#maxBackoffMs),
      },
      {
        gap: (reason) => this.#events?.gap(reason),
        log: (level, message, error) => this.#events?.log(level, message, error),
      },
      this.#timers,
    );
    this.#watches = new Watches({
      server: { register: (channels, ttlMs) => this.#register(channels, ttlMs), load: () => this.#loadWatches() },
      batcher: this.#batcher,
      gap: (reason) => this.#continuity.gap(reason),
      ttlMs: resolved.watchTtlMs,
      skip: resolved.skipUnwatched,
    });
  }

  /** 'new' → 'connecting' → 'open' ⇄ 'down' → 'closed'. */
  get state(): State {
    return this.#state;
  }

  async start(deliver: (frame: Published) => void, events: BrokerEvents): Promise<void> {
    if (this.#state === "closed") throw new ClosedError("redis broker");
    if (this.#state !== "new") throw new BrokerError("redis broker was already started");
    this.#state = "connecting";
    this.#deliver = deliver;
    this.#events = events;

    const opened = new Promise<void>((resolve, reject) => (this.#opened = { resolve, reject }));
    const timeout = this.#timer(this.#connectTimeoutMs, () => {
      this.#opened?.reject(
        new BrokerError(`redis broker could not reach ${this.#target} within ${this.#connectTimeoutMs} ms`, {
          cause: this.#lastError,
        }),
      );
    });
    this.#cmd = this.#connect("cmd");
    this.#sub = this.#connect("sub");
    try {
      await opened;
    } catch (error) {
      await this.close();
      throw error;
    } finally {
      this.#clearTimer(timeout);
      this.#opened = null;
    }
    await this.#watches.start();
  }

  publish(stream: string, frame: string): Promise<Published> {
    // not async: the batcher's promise is the publish's (one promise per frame, not two)
    const refused = this.#refusal(stream, frame);
    return refused === null ? this.#batcher.publish(stream, frame) : Promise.reject(refused);
  }

  /** See Broker.publishUnawaited: a publish without a promise. */
  publishUnawaited(stream: string, frame: string, failed: (error: unknown, stream: string) => void): void {
    const refused = this.#refusal(stream, frame);
    if (refused === null) this.#batcher.publishUnawaited(stream, frame, failed);
    else failed(refused, stream);
  }

  /** See Broker.backlog. */
  backlog(limit: number): Promise<void> | undefined {
    return this.#batcher.backlog(limit);
  }

  /** See Broker.watch: registers the data channels among `streams` in Redis (see watches.ts). */
  watch(streams: readonly string[]): (() => void) | Promise<() => void> {
    return this.#watches.watch(streams);
  }

  async #register(channels: readonly string[], ttlMs: number): Promise<Registration> {
    const cmd = this.#commandConnection("watch data channels");
    let reply: unknown;
    try {
      reply = await runScript(
        cmd,
        WATCH_SCRIPT,
        [
          `${this.#prefix}meta`,
          `${this.#prefix}clock`,
          `${this.#prefix}watch`,
          `${this.#prefix}since`,
          ...channels.map((c) => this.#streamKey(c)),
        ],
        [this.#newEpoch(), this.#continuity.newEpochMinSeq(), ttlMs, this.#idleMs, this.#clockStepMs, ...channels],
      );
    } catch (error) {
      this.#commandFailed(error);
      throw new BrokerError(`redis broker could not watch data channels: ${errorMessage(error)}`, { cause: error });
    }
    const [epoch, before, after, fresh, since] = reply as [string, number, number, string[], string[]];
    return { epoch, before, after, fresh, since: since.map(Number) };
  }

  async #loadWatches(): Promise<WatchFilter | null> {
    const cmd = this.#commandConnection("read the watched data channels");
    const reply = await runScript(cmd, WATCHED_SCRIPT, [`${this.#prefix}meta`, `${this.#prefix}watch`], []).catch(
      (error: unknown) => {
        this.#commandFailed(error);
        throw error;
      },
    );
    const [epoch, generation, channels] = reply as [string | null, number, string[]];
    return epoch ? { epoch, generation, channels: new Set(channels) } : null;
  }

  /** The command connection when it is up; else throws a BrokerError saying what could not be done. */
  #commandConnection(what: string): Redis {
    if (this.#state === "closed") throw new ClosedError("redis broker");
    const cmd = this.#cmd;
    if (this.#state === "new" || this.#state === "connecting" || !cmd) throw notStartedError("redis");
    if (!this.#cmdUp) throw new BrokerError(`redis broker cannot ${what}: ${this.#target} is unreachable`);
    return cmd;
  }

  /** Why a publish is refused before it is queued (the error it rejects with), or null. */
  #refusal(stream: string, frame: string): Error | null {
    if (this.#state === "closed") return new ClosedError("redis broker");
    if (typeof stream !== "string" || typeof frame !== "string") {
      return new BrokerError("publish(stream, frame) takes two strings");
    }
    if (this.#state === "new" || this.#state === "connecting" || !this.#cmd) return notStartedError("redis");
    if (!this.#cmdUp) {
      this.#continuity.refused();
      return new BrokerError(`redis broker cannot publish to "${stream}": ${this.#target} is unreachable`);
    }
    return null;
  }

  /**
   * One script call for a batch of frames (see PublishBatcher): consecutive
   * seqs, one channel message. The batch stays in #own until its message
   * comes back, so this process delivers its own frames without decoding them.
   */
  async #publishBatch(frames: readonly OutgoingFrame[], check: WatchFilter | null): Promise<Published[] | null> {
    const cmd = this.#cmd;
    if (!cmd || !this.#cmdUp) {
      this.#lostFrames(frames.length);
      throw new Error(`${this.#target} is unreachable`);
    }
    const number = ++this.#batches;
    const encoded = encodeFrames(frames);
    const keys = [`${this.#prefix}meta`, `${this.#prefix}clock`];
    for (const stream of encoded.streams) keys.push(this.#streamKey(stream));
    const indexes = encoded.streamIndexes.join(",");
    const args: Array<string | number | Buffer> = [
      this.#newEpoch(),
      this.#continuity.newEpochMinSeq(),
      this.#history.frames,
      this.#history.ageMs,
      this.#history.maxFrames,
      this.#idleMs,
      this.#channel,
      this.#clockStepMs,
      messageHead(this.#continuity.id, number),
      batchTail(frames, encoded, indexes),
      frames.length,
      indexes,
      encoded.byteLengths.join(","),
      encoded.body,
      check?.epoch ?? "",
      check?.generation ?? "",
    ];
    const own: OwnBatch = { frames, published: null };
    this.#own.set(number, own);
    let reply: unknown;
    try {
      reply = await runScript(cmd, PUBLISH_SCRIPT, keys, args);
    } catch (error) {
      this.#own.delete(number);
      this.#commandFailed(error);
      // publishes lost to the connection are frames nobody gets: counted, so
      // every process is asked to refresh once Redis is back
      if (!isReplyError(error)) this.#lostFrames(frames.length);
      throw error;
    }
    if (reply === 0 || reply === 1) {
      // refused: the watch generation moved (see PublishBatcher), nothing was written; or checked and empty
      this.#own.delete(number);
      return reply === 0 ? null : [];
    }
    const [epoch, first] = reply as [string, number];
    this.#seen(epoch, first + frames.length - 1);
    // the channel message may have come first and made them already; else it takes these
    own.published ??= publishedFrames(own, epoch, first);
    return own.published;
  }

  /** Frames of a batch were lost (one at least: a batch whose data events were all skipped may have had due ones). */
  #lostFrames(count: number): void {
    for (let i = 0; i < Math.max(1, count); i++) this.#continuity.refused();
  }

  async control(message: ControlMessage): Promise<void> {
    const cmd = this.#commandConnection("send a control message");
    // after this process's frames published before it (they may still wait for their batch)
    await this.#batcher.flushed();
    // the channel the frames take: Redis pushes to subscribers in the order it ran the PUBLISHes,
    // so every frame published after this resolved reaches every process after the message
    try {
      await cmd.publish(this.#channel, encodeControl(message));
    } catch (error) {
      this.#commandFailed(error);
      throw new BrokerError(`redis broker could not send a control message: ${errorMessage(error)}`, { cause: error });
    }
  }

  async history(streams: readonly string[], after: string): Promise<Published[] | null> {
    if (this.#state === "closed") throw new ClosedError("redis broker");
    const cursor = parsePosition(after);
    const cmd = this.#cmd;
    // while Redis is unreachable nothing can be replayed: a refresh is the honest answer
    if (!cursor || !cmd || !this.#cmdUp) return null;
    if (streams.length === 0) return [];
    let reply: unknown;
    try {
      reply = await runScript(
        cmd,
        HISTORY_SCRIPT,
        [`${this.#prefix}meta`, `${this.#prefix}clock`, ...streams.map((s) => this.#streamKey(s))],
        [cursor.epoch, String(cursor.seq), this.#idleMs],
      );
    } catch (error) {
      this.#commandFailed(error);
      return null;
    }
    const [status, ...lists] = reply as [string, ...string[][]];
    if (status !== "ok") return null;
    const out: Published[] = [];
    lists.forEach((members, i) => {
      const stream = streams[i]!;
      for (const member of members) {
        const first = member.indexOf(":");
        const second = member.indexOf(":", first + 1);
        const seq = Number(member.slice(0, first));
        out.push({ stream, seq, position: formatPosition(cursor.epoch, seq), frame: member.slice(second + 1) });
      }
    });
    if (streams.length > 1) out.sort((a, b) => a.seq - b.seq);
    return out;
  }

  async head(): Promise<string> {
    if (this.#state === "closed") throw new ClosedError("redis broker");
    const cmd = this.#cmd;
    if (cmd && this.#cmdUp) {
      try {
        const [epoch, seq] = (await runScript(
          cmd,
          HEAD_SCRIPT,
          [`${this.#prefix}meta`],
          [this.#newEpoch(), this.#continuity.newEpochMinSeq()],
        )) as [string, number];
        this.#seen(epoch, seq);
        return formatPosition(epoch, seq);
      } catch (error) {
        this.#commandFailed(error);
      }
    }
    // Redis is unreachable: pages still render
    return this.#continuity.headWhileDown();
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#state = "closed";
    this.#watches.close();
    this.#opened?.reject(new ClosedError("redis broker"));
    // frames published before close still go out (or fail) on the open connection
    await this.#batcher.idle();
    this.#timers.clearAll();
    this.#deliver = null;
    this.#own.clear();
    const connections = [this.#cmd, this.#sub].filter((c): c is Redis => c !== null);
    this.#cmd = null;
    this.#sub = null;
    this.#cmdUp = false;
    this.#subLive = false;
    await Promise.all(connections.map((connection) => disconnect(connection)));
  }

  // --- connections ---------------------------------------------------------

  #connect(role: "cmd" | "sub"): Redis {
    const connection = new Redis(this.#url, {
      lazyConnect: true,
      connectionName: this.#connectionName,
      // nothing waits for a connection: a publish while Redis is away fails
      // at once instead of piling up in memory, and a publish whose reply was
      // lost is not sent twice (it may have gone through: a second send would
      // be a duplicate frame under a new seq)
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      // the subscription is restored by hand, so the refresh goes out only once it is live again
      autoResubscribe: false,
      commandTimeout: role === "cmd" ? this.#commandTimeoutMs : undefined,
      connectTimeout: Math.max(1_000, this.#commandTimeoutMs),
      retryStrategy: (attempt) => backoffMs(attempt, this.#maxBackoffMs),
    });
    connection.on("error", (error: unknown) => {
      this.#lastError = error;
    });
    connection.on("ready", () => {
      if (this.#state === "closed") return;
      if (role === "cmd") void this.#onCommandReady(connection);
      else void this.#onSubscriberReady(connection);
    });
    connection.on("close", () => {
      if (this.#state === "closed") return;
      if (role === "cmd") {
        this.#cmdUp = false;
        this.#lost("its connection", this.#lastError);
      } else {
        if (this.#subLive) this.#subMissed = true;
        this.#subLive = false;
        // their messages went to the lost subscription
        this.#own.clear();
        this.#lost("its subscription", this.#lastError);
      }
    });
    // 'end' means ioredis gave up on this connection (it does on some
    // connector errors); keep trying ourselves
    connection.on("end", () => {
      if (this.#state === "closed") return;
      this.#timer(this.#maxBackoffMs, () => connection.connect().catch(() => {}));
    });
    // as bytes: a batch this process published is recognised by its opening and never decoded whole
    if (role === "sub") connection.on("messageBuffer", (_channel: Buffer, message: Buffer) => this.#onMessage(message));
    connection.connect().catch(() => {
      // failures surface through 'error'/'close' and are retried by retryStrategy
    });
    return connection;
  }

  async #onCommandReady(cmd: Redis): Promise<void> {
    // learn (or create) the epoch before anything is published or delivered;
    // after an outage this is also where a Redis that lost its data shows
    let head: [string, number];
    try {
      head = (await runScript(
        cmd,
        HEAD_SCRIPT,
        [`${this.#prefix}meta`],
        [this.#newEpoch(), this.#continuity.newEpochMinSeq()],
      )) as [string, number];
    } catch (error) {
      this.#lastError = error;
      if (this.#state !== "closed") cmd.disconnect(true);
      return;
    }
    if (this.#state === "closed" || cmd !== this.#cmd || cmd.status !== "ready") return;
    const [epoch, seq] = head;
    this.#seen(epoch, seq);
    this.#cmdUp = true;
    this.#maybeOpen();
  }

  async #onSubscriberReady(sub: Redis): Promise<void> {
    try {
      await sub.subscribe(this.#channel);
    } catch (error) {
      this.#lastError = error;
      if (this.#state !== "closed") sub.disconnect(true);
      return;
    }
    if (this.#state === "closed" || sub !== this.#sub) return;
    this.#subLive = true;
    this.#maybeOpen();
  }

  /**
   * Open once both connections are back and the head is known. The
   * subscription and the command connection come back in either order, a
   * few hundred ms apart: the refresh waits for both, so that one outage
   * gives one refresh (publishes refused until the very end are covered).
   */
  #maybeOpen(): void {
    if (!this.#cmdUp || !this.#subLive || this.#continuity.epoch === null) return;
    // the next outage's log line names its own cause, not this one's
    this.#lastError = undefined;
    if (this.#state === "connecting") {
      this.#state = "open";
      this.#opened?.resolve();
    } else if (this.#state === "down") {
      this.#state = "open";
      const missed = this.#subMissed ? "the redis subscription was interrupted" : null;
      this.#subMissed = false;
      const request = this.#continuity.recovered(missed);
      if (request) void this.#sendRequest(request);
      // the watches may have expired meanwhile, or been lost with the keys: registered again, then read
      void this.#watches.start();
    }
  }

  /** Publishes refused here were lost for every process: ask them all to refresh. */
  async #sendRequest(request: RefreshRequest): Promise<void> {
    const cmd = this.#cmd;
    if (!cmd) return;
    try {
      await cmd.publish(this.#channel, JSON.stringify(request));
      this.#continuity.requestSent(request);
    } catch (error) {
      // the request goes out with the next recovery
      this.#lastError = error;
      if (!this.#isClosed()) cmd.disconnect(true);
    }
  }

  #lost(what: string, error: unknown): void {
    if (this.#state === "open") this.#state = "down";
    if (this.#state === "down") this.#continuity.lost(what, error);
  }

  /** A command failed: if the connection looks stuck (a timeout), recycle it so the outage is noticed and healed. */
  #commandFailed(error: unknown): void {
    this.#lastError = error;
    if (error instanceof Error && /timed out/i.test(error.message)) this.#cmd?.disconnect(true);
  }

  #onMessage(message: Buffer): void {
    if (this.#state === "closed" || !this.#subLive) return;
    const own = this.#ownBatch(message);
    if (own !== null) {
      // until the first head read the epoch is unknown and nobody is subscribed yet
      if (this.#continuity.epoch === null) return;
      const { batch, epoch, first } = own;
      batch.published ??= publishedFrames(batch, epoch, first);
      for (const frame of batch.published) this.#onFrame(epoch, frame);
      return;
    }
    const decoded = decodeChannelMessage(message.toString());
    if (decoded === null) return;
    if (decoded.kind === "refresh") {
      this.#continuity.answer(decoded.request);
      return;
    }
    if (decoded.kind === "control") {
      this.#events?.control?.(decoded.message);
      return;
    }
    if (this.#continuity.epoch === null) return;
    if (decoded.kind === "frames") {
      const { epoch, seq, frames } = decoded;
      for (let i = 0; i < frames.length; i++) {
        const s = seq + i;
        this.#onFrame(epoch, {
          stream: frames[i]!.stream,
          seq: s,
          position: formatPosition(epoch, s),
          frame: frames[i]!.frame,
        });
      }
    } else if (decoded.stream !== undefined && decoded.frame !== undefined) {
      const { epoch, seq, stream, frame } = decoded;
      this.#onFrame(epoch, { stream, seq, position: formatPosition(epoch, seq), frame });
    }
  }

  /**
   * The batch a channel message carries when this broker published it (its
   * opening names this broker and the batch), with the epoch and first seq
   * Redis gave it; else null. Messages come in the order the scripts ran, so
   * own batches before it that are still held never came (a failed call): dropped.
   */
  #ownBatch(message: Buffer): { batch: OwnBatch; epoch: string; first: number } | null {
    if (this.#own.size === 0) return null;
    const opening = OWN_OPENING.exec(message.toString("latin1", 0, Math.min(message.length, OPENING_LENGTH)));
    if (opening === null || opening[1] !== this.#continuity.id) return null;
    const number = Number(opening[2]);
    const batch = this.#own.get(number);
    for (const held of this.#own.keys()) {
      if (held > number) break;
      this.#own.delete(held);
    }
    if (batch === undefined) return null;
    return { batch, epoch: opening[3]!, first: Number(opening[4]) };
  }

  #onFrame(epoch: string, frame: Published): void {
    if (epoch === this.#continuity.epoch && frame.seq <= this.#delivered) return;
    this.#seen(epoch, frame.seq);
    this.#delivered = frame.seq;
    this.#continuity.deliver(this.#deliver, frame);
  }

  // --- helpers -------------------------------------------------------------

  /** Records a seq read from Redis; a new epoch means Redis lost the broker's keys. */
  #seen(epoch: string, seq: number): void {
    const change = this.#continuity.seen(epoch, seq);
    // first contact: every frame up to here was published before this broker started
    if (change === "first") this.#delivered = seq;
    // a new epoch's seqs start above the old ones; this keeps it so even if clocks disagree
    else if (change === "new") {
      this.#delivered = Math.min(this.#delivered, seq - 1);
      // the watches went with the keys: other processes skip this one's channels until registered again
      void this.#watches.renew();
    }
  }

  /** (A method, not a field read, so TypeScript does not narrow it away across awaits.) */
  #isClosed(): boolean {
    return this.#state === "closed";
  }

  #newEpoch(): string {
    return randomBytes(6).toString("base64url");
  }

  #streamKey(stream: string): string {
    return `${this.#prefix}s:${stream}`;
  }

  #timer(ms: number, fn: () => void): NodeJS.Timeout {
    return this.#timers.set(ms, fn);
  }

  #clearTimer(timer: NodeJS.Timeout): void {
    this.#timers.clear(timer);
  }
}

/**
 * A broker on Redis pub/sub for several processes (or machines): every
 * process's subscribers get every frame, in order, and a subscriber that
 * reconnects to another process resumes from its cursor out of the history
 * kept in Redis.
 *
 * Outages never crash the app: publishes fail fast with TURBOCAST_BROKER,
 * the outage is logged once, the broker reconnects with backoff, and
 * subscribers that may have missed frames get a refresh.
 *
 * `redisBroker(url)` is short for `redisBroker({ url })`.
 *
 * @example
 * const turbo = await createTurbo({ db, views, broker: redisBroker({ url: process.env.REDIS_URL! }) });
 */
export function redisBroker(options: RedisBrokerOptions | string): Broker {
  return new RedisBroker(options);
}

/** A batch this broker published, its frames as handed to the script, and as published once Redis numbered them. */
interface OwnBatch {
  readonly frames: readonly OutgoingFrame[];
  published: Published[] | null;
}

function publishedFrames(batch: OwnBatch, epoch: string, first: number): Published[] {
  const { frames } = batch;
  const out: Published[] = new Array(frames.length);
  for (let i = 0; i < frames.length; i++) {
    const seq = first + i;
    out[i] = { stream: frames[i]!.stream, seq, position: formatPosition(epoch, seq), frame: frames[i]!.frame };
  }
  return out;
}
