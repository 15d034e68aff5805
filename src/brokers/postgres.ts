// The PostgreSQL broker: its public methods and its connection state machine
// (connect, outage, recovery, heartbeat), which share the state they switch
// on. Everything else has its own file: SQL (postgres-sql.ts), options
// (postgres-options.ts), connections (postgres-connection.ts), the notice
// pump (postgres-pump.ts), retention (postgres-sweeper.ts), pg error
// classification (postgres-errors.ts), and what it shares with the Redis
// broker — epochs, gaps, refresh requests, outage log (continuity.ts).
import type pg from "pg";
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
import { TimerSet, backoffMs, errorMessage, notStartedError } from "./connection.js";
import { OPENING_LENGTH, OWN_OPENING, messageHead } from "./batch-wire.js";
import { Continuity, decodeChannelMessage, encodeControl } from "./continuity.js";
import {
  type ConnectionConfig,
  createListener,
  createPool,
  createPublisher,
  ensureSchema,
} from "./postgres-connection.js";
import { isConnectionError, isMissingTable, isTimeout } from "./postgres-errors.js";
import { NoticePump } from "./postgres-pump.js";
import { type PostgresBrokerOptions, resolvePostgresOptions } from "./postgres-options.js";
import { MARK_TAIL, type Statements, encodeBatch, intArray, statements } from "./postgres-sql.js";
import {
  type OutgoingFrame,
  POSTGRES_BATCH_LIMITS,
  POSTGRES_IN_FLIGHT,
  PublishBatcher,
  type WatchFilter,
} from "./publish-batcher.js";
import { Sweeper } from "./postgres-sweeper.js";
import { type Registration, Watches } from "./watches.js";

export { withDefaultUser } from "./postgres-connection.js";
export type { PostgresBrokerOptions } from "./postgres-options.js";

type State = "new" | "connecting" | "open" | "down" | "closed";

/**
 * A broker on PostgreSQL LISTEN/NOTIFY: frames are stored in a table and
 * announced on a channel, so every process's subscribers get every frame in
 * order — frames over NOTIFY's 8000-byte limit too (the notice then carries
 * the seq and the listener reads the frame) — and a subscriber that
 * reconnects to another process resumes from the table.
 *
 * Connections: a pool for history, head and control messages, one client
 * that LISTENs, and one (pipelined, made at the first publish) that
 * publishes go through. While PostgreSQL is unreachable publishes fail at once with a
 * BrokerError (nothing is queued), the outage is logged once, the broker
 * reconnects with backoff, and then every subscriber gets a refresh.
 */
export class PostgresBroker implements Broker {
  readonly kind = "postgres";
  #config: ConnectionConfig;
  #target: string;
  #prefix: string;
  #channel: string;
  #sql: Statements;
  #history: Required<HistoryOptions>;
  #idleMs: number;
  #connectTimeoutMs: number;
  #maxBackoffMs: number;
  #sweepIntervalMs: number;

  #state: State = "new";
  #pool: pg.Pool | null = null;
  #listener: pg.Client | null = null;
  #deliver: ((frame: Published) => void) | null = null;
  #events: BrokerEvents | null = null;
  #continuity: Continuity;
  #lastError: unknown = undefined;
  #pump: NoticePump;
  #sweeper: Sweeper | null = null;
  #attempt = 0;
  #recovering = false;
  #refreshRequested = false;
  #timers = new TimerSet();
  #intervals: NodeJS.Timeout[] = [];
  #batcher = new PublishBatcher({
    send: (frames, check) => this.#publishBatch(frames, check),
    limits: POSTGRES_BATCH_LIMITS,
    // one pipelined connection (#publisher): PostgreSQL runs the statements in the order sent
    inFlight: POSTGRES_IN_FLIGHT,
    failure: (stream, error) =>
      new BrokerError(`postgres broker could not publish to "${stream}": ${errorMessage(error)}`, { cause: error }),
    refused: () => this.#watches.reload(),
    watchedHere: (channel) => this.#watches.has(channel),
  });
  #watches: Watches;
  #closing: Promise<void> | null = null;
  /**
   * The connection publishes go through (createPublisher), made at the first
   * publish and again after it is lost: a process that never publishes holds
   * only its pool and its LISTEN connection.
   */
  #publisher: Promise<pg.Client> | null = null;
  /** Batches this broker published (numbered in their notices), until their last notice comes back. */
  #own = new Map<number, OwnBatch>();
  #batches = 0;

  constructor(options: PostgresBrokerOptions | string) {
    const resolved = resolvePostgresOptions(options);
    this.#target = resolved.target;
    this.#prefix = resolved.prefix;
    this.#channel = resolved.channel;
    this.#history = resolved.history;
    this.#idleMs = resolved.idleMs;
    this.#config = resolved.connection;
    this.#connectTimeoutMs = resolved.connectTimeoutMs;
    this.#maxBackoffMs = resolved.maxBackoffMs;
    this.#sweepIntervalMs = resolved.sweepIntervalMs;
    this.#sql = statements(this.#prefix);
    this.#pump = new NoticePump(
      {
        isOpen: () => this.#state === "open",
        epoch: () => this.#continuity.epoch,
        seen: (epoch, seq) => this.#seen(epoch, seq),
        pool: () => this.#pool,
        deliver: (frame) => this.#continuity.deliver(this.#deliver, frame),
        control: (message) => this.#events?.control?.(message),
        gap: (reason) => this.#continuity.gap(reason),
        queryFailed: (error) => this.#queryFailed(error),
      },
      this.#sql.fetchRange,
    );
    this.#continuity = new Continuity(
      {
        kind: "postgres",
        target: this.#target,
        historyLost: "the postgres broker's tables lost their history",
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
    if (this.#state === "closed") throw new ClosedError("postgres broker");
    if (this.#state !== "new") throw new BrokerError("postgres broker was already started");
    this.#state = "connecting";
    this.#deliver = deliver;
    this.#events = events;
    this.#sweeper = new Sweeper({
      sql: this.#sql,
      prefix: this.#prefix,
      history: this.#history,
      idleMs: this.#idleMs,
      events,
    });
    this.#pool = createPool(this.#config, (error) => {
      this.#lastError = error;
    });

    const deadline = Date.now() + this.#connectTimeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#connect();
        break;
      } catch (error) {
        this.#lastError = error;
        this.#dropListener();
        if (this.#isClosed()) throw new ClosedError("postgres broker");
        if (!isConnectionError(error) || Date.now() >= deadline) {
          await this.close();
          throw new BrokerError(`postgres broker could not start on ${this.#target}: ${errorMessage(error)}`, {
            cause: error,
          });
        }
        await this.#sleep(Math.min(backoffMs(attempt, this.#maxBackoffMs), Math.max(0, deadline - Date.now())));
        if (this.#isClosed()) throw new ClosedError("postgres broker");
      }
    }
    this.#state = "open";
    void this.#pump.run();
    this.#every(this.#sweepIntervalMs, () => void this.#sweep());
    // a LISTEN connection that silently died (a cut network) would never say so: ask it now and then
    this.#every(Math.max(1_000, this.#config.commandTimeoutMs * 2), () => void this.#heartbeat());
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

  /** See Broker.watch: registers the data channels among `streams` in PostgreSQL (see watches.ts). */
  watch(streams: readonly string[]): (() => void) | Promise<() => void> {
    return this.#watches.watch(streams);
  }

  async #register(channels: readonly string[], ttlMs: number): Promise<Registration> {
    const client = await this.#openPool("watch data channels").connect();
    let failure: unknown;
    try {
      await client.query("begin");
      // the publish statement's row lock: registrations and publishes take turns
      await client.query(this.#sql.lockMeta);
      const row = (
        await client.query<{
          epoch: string;
          before: string;
          after: string;
          fresh: string[];
          since: Record<string, number>;
        }>(this.#sql.register, [channels, ttlMs, this.#channel, MARK_TAIL])
      ).rows[0];
      await client.query("commit");
      if (!row) throw new Error("its meta row is missing");
      return {
        epoch: row.epoch,
        before: Number(row.before),
        after: Number(row.after),
        fresh: row.fresh,
        since: channels.map((channel) => row.since[channel]!),
      };
    } catch (error) {
      failure = error;
      await client.query("rollback").catch(() => {});
      this.#queryFailed(error);
      throw new BrokerError(`postgres broker could not watch data channels: ${errorMessage(error)}`, { cause: error });
    } finally {
      client.release(failure !== undefined && isConnectionError(failure) ? (failure as Error) : undefined);
    }
  }

  async #loadWatches(): Promise<WatchFilter | null> {
    const pool = this.#openPool("read the watched data channels");
    try {
      const row = (await pool.query<{ epoch: string; generation: string; channels: string[] }>(this.#sql.watched))
        .rows[0];
      return row ? { epoch: row.epoch, generation: Number(row.generation), channels: new Set(row.channels) } : null;
    } catch (error) {
      this.#queryFailed(error);
      throw error;
    }
  }

  /** The pool while the broker is open; else throws a BrokerError saying what could not be done. */
  #openPool(what: string): pg.Pool {
    if (this.#state === "closed") throw new ClosedError("postgres broker");
    const pool = this.#pool;
    if (this.#state === "new" || this.#state === "connecting" || !pool) throw notStartedError("postgres");
    if (this.#state === "down") throw new BrokerError(`postgres broker cannot ${what}: ${this.#target} is unreachable`);
    return pool;
  }

  /** Why a publish is refused before it is queued (the error it rejects with), or null. */
  #refusal(stream: string, frame: string): Error | null {
    if (this.#state === "closed") return new ClosedError("postgres broker");
    if (typeof stream !== "string" || typeof frame !== "string") {
      return new BrokerError("publish(stream, frame) takes two strings");
    }
    if (this.#state === "new" || this.#state === "connecting" || !this.#pool) return notStartedError("postgres");
    if (this.#state === "down") {
      this.#continuity.refused();
      return new BrokerError(`postgres broker cannot publish to "${stream}": ${this.#target} is unreachable`);
    }
    return null;
  }

  /**
   * One statement for a batch of frames (see PublishBatcher): consecutive
   * seqs, one commit, one notice. The batch stays in #own until its notice
   * comes back, so this process delivers its own frames without decoding
   * them (or reading them back from the table).
   */
  async #publishBatch(batch: readonly OutgoingFrame[], check: WatchFilter | null): Promise<Published[] | null> {
    const pool = this.#pool;
    if (!pool || this.#state === "down") {
      // one at least: a batch whose data events were all skipped may have had due ones
      this.#refused(Math.max(1, batch.length));
      throw new Error(`${this.#target} is unreachable`);
    }
    if (batch.length === 0) return this.#checkOnly(check!);
    const encoded = encodeBatch(batch);
    const number = ++this.#batches;
    const own: OwnBatch = { frames: batch, inline: encoded.tail !== null, published: null };
    this.#own.set(number, own);
    try {
      const published = await this.#runPublish(pool, batch, own, check !== null, [
        encoded.streams,
        encoded.body,
        intArray(encoded.lengths),
        batch.length,
        this.#channel,
        messageHead(this.#continuity.id, number),
        encoded.tail,
        check?.epoch ?? null,
        check?.generation ?? null,
      ]);
      // refused: no notice will come
      if (published === null) this.#own.delete(number);
      return published;
    } catch (error) {
      this.#own.delete(number);
      throw error;
    }
  }

  /** A checked batch whose every frame was skipped: its check, in order with the publishes (null: refused). */
  async #checkOnly(check: WatchFilter): Promise<Published[] | null> {
    try {
      const publisher = await this.#publishConnection();
      const result = await publisher.query(this.#sql.watchCheck, [check.epoch, check.generation]);
      return result.rows.length > 0 ? [] : null;
    } catch (error) {
      // its skipped data events may have been due: lost as a failed publish's frames are
      if (isTimeout(error)) this.#requestRefreshSoon("a postgres publish timed out");
      else if (isConnectionError(error)) {
        this.#refused(1);
        this.#lost("its connection", error);
      }
      throw error;
    }
  }

  async #runPublish(
    pool: pg.Pool,
    batch: readonly OutgoingFrame[],
    own: OwnBatch,
    checked: boolean,
    values: unknown[],
  ): Promise<Published[] | null> {
    for (let attempt = 0; ; attempt++) {
      let result: pg.QueryResult<{ epoch: string; first: string }>;
      try {
        // every batch awaits the same connection, so they reach it in the order they were sent
        const publisher = await this.#publishConnection();
        // named: the connection plans the statement once, not once per batch (planning is a good part of its time)
        result = await publisher.query({
          name: `${this.#prefix}_publish`,
          text: this.#sql.publish,
          values,
        });
      } catch (error) {
        if (isTimeout(error)) {
          // slow (a burst, a lock), not necessarily gone: the heartbeat tells
          // an outage. The frames may be lost, so every process refreshes soon.
          this.#requestRefreshSoon("a postgres publish timed out");
        } else if (isConnectionError(error)) {
          this.#refused(batch.length);
          this.#lost("its connection", error);
        } else if (attempt === 0 && isMissingTable(error)) {
          // someone dropped the tables: recreate them (a new epoch) and try once more
          await this.#ensureSchema(pool).catch(() => {});
          continue;
        }
        throw error;
      }
      const row = result.rows[0];
      // the watch generation moved (see PublishBatcher): nothing was written
      if (!row && checked) return null;
      if (!row) {
        // the meta row is gone (history lost): start a new epoch and try once more
        if (attempt === 0) {
          await this.#ensureSchema(pool).catch(() => {});
          continue;
        }
        throw new Error("its meta row is missing");
      }
      const first = Number(row.first);
      this.#seen(row.epoch, first + batch.length - 1);
      // its notices may have come first and made them already
      own.published ??= publishedFrames(batch, row.epoch, first);
      return own.published;
    }
  }

  /** The publish connection, connected (see #publisher); rejects as a query would when it cannot connect. */
  #publishConnection(): Promise<pg.Client> {
    if (this.#publisher) return this.#publisher;
    const client = createPublisher(this.#config);
    const connected = client.connect().then(() => client);
    this.#publisher = connected;
    const drop = (error: unknown): void => {
      this.#lastError = error;
      // the next batch makes a new one; a batch in flight on it fails as a lost connection
      if (this.#publisher === connected) this.#publisher = null;
      client.end().catch(() => {});
    };
    client.on("error", drop);
    client.on("end", () => drop(this.#lastError));
    connected.catch(drop);
    return connected;
  }

  #dropPublisher(): void {
    const publisher = this.#publisher;
    this.#publisher = null;
    publisher?.then((client) => client.end()).catch(() => {});
  }

  #refused(count: number): void {
    for (let i = 0; i < count; i++) this.#continuity.refused();
  }

  async control(message: ControlMessage): Promise<void> {
    const pool = this.#openPool("send a control message");
    // after this process's frames published before it (they may still wait for their batch)
    await this.#batcher.flushed();
    // NOTIFY on the frames' channel, committed when the query returns: notices arrive in commit
    // order, so every frame published after this resolved reaches every process after the message
    try {
      await pool.query("select pg_notify($1, $2)", [this.#channel, encodeControl(message)]);
    } catch (error) {
      this.#queryFailed(error);
      throw new BrokerError(`postgres broker could not send a control message: ${errorMessage(error)}`, {
        cause: error,
      });
    }
  }

  async history(streams: readonly string[], after: string): Promise<Published[] | null> {
    if (this.#state === "closed") throw new ClosedError("postgres broker");
    const cursor = parsePosition(after);
    const pool = this.#pool;
    // while PostgreSQL is unreachable nothing can be replayed: a refresh is the honest answer
    if (!cursor || !pool || this.#state !== "open") return null;
    if (streams.length === 0) return [];
    try {
      const frames = await pool.query<{ seq: string; stream: string; frame: string }>(this.#sql.historyFrames, [
        streams,
        cursor.seq,
      ]);
      const meta = await pool.query<{ epoch: string; seq: string; floor: string }>(this.#sql.historyFloor, [streams]);
      const row = meta.rows[0];
      if (!row || row.epoch !== cursor.epoch || cursor.seq > Number(row.seq) || cursor.seq < Number(row.floor))
        return null;
      return frames.rows.map((f) => {
        const seq = Number(f.seq);
        return { stream: f.stream, seq, position: formatPosition(row.epoch, seq), frame: f.frame };
      });
    } catch (error) {
      this.#queryFailed(error);
      return null;
    }
  }

  async head(): Promise<string> {
    if (this.#state === "closed") throw new ClosedError("postgres broker");
    const pool = this.#pool;
    if (pool && this.#state === "open") {
      try {
        const row = (await pool.query<{ epoch: string; seq: string }>(this.#sql.head)).rows[0];
        if (row) {
          this.#seen(row.epoch, Number(row.seq));
          return formatPosition(row.epoch, Number(row.seq));
        }
      } catch (error) {
        this.#queryFailed(error);
      }
    }
    // PostgreSQL is unreachable: pages still render
    return this.#continuity.headWhileDown();
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const wasOpen = this.#state === "open";
    this.#state = "closed";
    this.#watches.close();
    // frames published before close still go out (or fail) on the publish connection
    if (wasOpen) await this.#batcher.idle();
    this.#timers.clearAll();
    for (const interval of this.#intervals) clearInterval(interval);
    this.#intervals = [];
    this.#deliver = null;
    this.#pump.clear();
    this.#own.clear();
    const listener = this.#listener;
    const pool = this.#pool;
    const publisher = this.#publisher;
    this.#listener = null;
    this.#pool = null;
    this.#publisher = null;
    await Promise.all([
      listener?.end().catch(() => {}),
      pool?.end().catch(() => {}),
      publisher?.then((client) => client.end()).catch(() => {}),
    ]);
  }

  // --- connecting ----------------------------------------------------------

  /** LISTEN first, then read the head: every frame after it arrives as a notice. */
  async #connect(): Promise<void> {
    const pool = this.#pool!;
    const listener = createListener(this.#config);
    this.#listener = listener;
    listener.on("error", (error) => {
      if (this.#listener === listener) this.#lost("its LISTEN connection", error);
    });
    listener.on("end", () => {
      if (this.#listener === listener) this.#lost("its LISTEN connection", this.#lastError);
    });
    listener.on("notification", (message) => {
      if (this.#listener === listener && message.channel === this.#channel) this.#onNotice(message.payload ?? "");
    });
    await listener.connect();
    await listener.query(`listen "${this.#channel}"`);
    const { epoch, seq } = await this.#ensureSchema(pool);
    if (this.#isClosed()) return;
    this.#continuity.seen(epoch, seq);
    this.#pump.resetTo(seq);
  }

  #ensureSchema(pool: pg.Pool): Promise<{ epoch: string; seq: number }> {
    return ensureSchema(pool, this.#sql, this.#prefix, this.#continuity.newEpochMinSeq());
  }

  // --- outages -------------------------------------------------------------

  #lost(what: string, error: unknown): void {
    this.#lastError = error;
    if (this.#state === "open") this.#state = "down";
    if (this.#state !== "down") return;
    this.#continuity.lost(what, error);
    this.#pump.clear();
    // their notices went to the lost LISTEN connection
    this.#own.clear();
    this.#dropListener();
    this.#dropPublisher();
    this.#scheduleRecovery();
  }

  #scheduleRecovery(): void {
    if (this.#recovering || this.#isClosed()) return;
    this.#recovering = true;
    this.#attempt++;
    this.#timer(backoffMs(this.#attempt, this.#maxBackoffMs), () => void this.#recover());
  }

  async #recover(): Promise<void> {
    if (this.#isClosed()) return;
    try {
      await this.#connect();
    } catch (error) {
      this.#lastError = error;
      this.#dropListener();
      this.#recovering = false;
      this.#scheduleRecovery();
      return;
    }
    if (this.#isClosed()) return;
    this.#recovering = false;
    this.#attempt = 0;
    this.#lastError = undefined;
    this.#state = "open";
    // the watches may have expired meanwhile, or been lost: registered again, then read
    void this.#watches.start();
    // the listener was down: this process's subscribers may have missed frames
    const request = this.#continuity.recovered("the postgres connection was interrupted");
    void this.#pump.run();
    if (request) {
      // publishes refused here were lost for every process: ask them all to refresh
      try {
        await this.#pool!.query("select pg_notify($1, $2)", [this.#channel, JSON.stringify(request)]);
        this.#continuity.requestSent(request);
      } catch (error) {
        this.#queryFailed(error);
      }
    }
  }

  /** A query failed: a broken connection starts an outage; a timeout alone does not (the heartbeat decides). */
  #queryFailed(error: unknown): void {
    this.#lastError = error;
    if (isConnectionError(error) && !isTimeout(error)) this.#lost("its connection", error);
  }

  /** Asks every process (this one too) to refresh, once, shortly: a frame may have been lost without an outage. */
  #requestRefreshSoon(reason: string): void {
    if (this.#refreshRequested) return;
    this.#refreshRequested = true;
    const at = Date.now();
    this.#timer(500, () => {
      this.#refreshRequested = false;
      const pool = this.#pool;
      if (this.#state !== "open" || !pool) return; // an outage's recovery asks for its own refresh
      // no head: the loss it reports was not before any later frame this process may not have seen yet
      const request = this.#continuity.request(reason, at, { afterHead: false });
      pool
        .query("select pg_notify($1, $2)", [this.#channel, JSON.stringify(request)])
        .catch((error: unknown) => this.#queryFailed(error));
    });
  }

  #dropListener(): void {
    const listener = this.#listener;
    this.#listener = null;
    listener?.end().catch(() => {});
  }

  async #heartbeat(): Promise<void> {
    const listener = this.#listener;
    if (this.#state !== "open" || !listener) return;
    try {
      await listener.query("select 1");
    } catch (error) {
      if (this.#listener === listener) this.#lost("its LISTEN connection", error);
    }
  }

  // --- delivery ------------------------------------------------------------

  #onNotice(payload: string): void {
    // notices only come from the current LISTEN connection; while it is being
    // (re)established they wait in the inbox, and #connect drops those at or
    // below the head it reads
    if (this.#state === "closed") return;
    if (this.#ownNotice(payload)) return;
    const message = decodeChannelMessage(payload);
    if (message === null) return;
    if (message.kind === "refresh") {
      this.#continuity.answer(message.request);
      return;
    }
    // through the pump: after the frames before it, which it may still be reading from the table
    if (message.kind === "control") {
      this.#pump.push({ control: message.message });
      return;
    }
    if (message.kind === "frames") {
      const { epoch, seq, frames } = message;
      const published: Published[] = new Array(frames.length);
      for (let i = 0; i < frames.length; i++) {
        published[i] = {
          stream: frames[i]!.stream,
          seq: seq + i,
          position: formatPosition(epoch, seq + i),
          frame: frames[i]!.frame,
        };
      }
      this.#pump.push({ e: epoch, s: seq, c: frames.length, frames: published });
    } else if (message.stream !== undefined && message.frame !== undefined) {
      const { epoch, seq, stream, frame } = message;
      this.#pump.push({
        e: epoch,
        s: seq,
        c: 1,
        frames: [{ stream, seq, position: formatPosition(epoch, seq), frame }],
      });
    } else {
      // frames up to seq, `count` of them, to be read from the table
      const count = message.count ?? 1;
      this.#pump.push({ e: message.epoch, s: message.seq - count + 1, c: count, frames: null });
    }
  }

  /**
   * The notice of a batch this broker published (its opening names this
   * broker and the batch) goes to the pump with the frames this process
   * already has: true. Notices come in commit order, so own batches before it
   * that are still held never came (a failed statement): dropped.
   */
  #ownNotice(payload: string): boolean {
    if (this.#own.size === 0) return false;
    const opening = OWN_OPENING.exec(payload.length > OPENING_LENGTH ? payload.slice(0, OPENING_LENGTH) : payload);
    if (opening === null || opening[1] !== this.#continuity.id) return false;
    const number = Number(opening[2]);
    const batch = this.#own.get(number);
    for (const held of this.#own.keys()) {
      if (held > number) break;
      this.#own.delete(held);
    }
    if (batch === undefined) return false;
    const epoch = opening[3]!;
    const { frames } = batch;
    // a notice with the frames names the first one's seq, one that only names the batch its last
    const first = batch.inline ? Number(opening[4]) : Number(opening[4]) - frames.length + 1;
    batch.published ??= publishedFrames(frames, epoch, first);
    this.#pump.push({ e: epoch, s: first, c: frames.length, frames: batch.published });
    return true;
  }

  // --- retention -----------------------------------------------------------

  async #sweep(): Promise<void> {
    const pool = this.#pool;
    if (this.#state !== "open" || !pool) return;
    await this.#sweeper?.sweep(pool);
  }

  // --- helpers -------------------------------------------------------------

  #seen(epoch: string, seq: number): void {
    if (this.#continuity.seen(epoch, seq) !== "new") return;
    this.#pump.newEpoch();
    // the watches went with the meta row: other processes skip this one's channels until registered again
    void this.#watches.renew();
  }

  /** (A method, not a field read, so TypeScript does not narrow it away across awaits.) */
  #isClosed(): boolean {
    return this.#state === "closed";
  }

  #timer(ms: number, fn: () => void): NodeJS.Timeout {
    return this.#timers.set(ms, fn);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.#timer(ms, resolve));
  }

  #every(ms: number, fn: () => void): void {
    const interval = setInterval(fn, ms);
    interval.unref();
    this.#intervals.push(interval);
  }
}

/**
 * A broker on PostgreSQL LISTEN/NOTIFY for several processes (or machines):
 * every process's subscribers get every frame, in order — frames over
 * NOTIFY's 8000-byte limit too — and a subscriber that reconnects to another
 * process resumes from the frames table.
 *
 * Outages never crash the app: publishes fail fast with TURBOCAST_BROKER,
 * the outage is logged once, the broker reconnects with backoff, and
 * subscribers that may have missed frames get a refresh.
 *
 * `postgresBroker(url)` is short for `postgresBroker({ connectionString: url })`.
 *
 * @example
 * const turbo = await createTurbo({ db, views, broker: postgresBroker({ connectionString: process.env.DATABASE_URL! }) });
 */
export function postgresBroker(options: PostgresBrokerOptions | string): Broker {
  return new PostgresBroker(options);
}

/** A batch this broker published: its frames, whether its notice carries them, and the frames as published once numbered. */
interface OwnBatch {
  readonly frames: readonly OutgoingFrame[];
  readonly inline: boolean;
  published: Published[] | null;
}

function publishedFrames(frames: readonly OutgoingFrame[], epoch: string, first: number): Published[] {
  const out: Published[] = new Array(frames.length);
  for (let i = 0; i < frames.length; i++) {
    const seq = first + i;
    out[i] = { stream: frames[i]!.stream, seq, position: formatPosition(epoch, seq), frame: frames[i]!.frame };
  }
  return out;
}
