import { ClosedError } from "../errors.js";
import { LogThrottle } from "../log-throttle.js";
import type { Logger } from "../logger.js";
import type { StreamRegistry } from "../streams/registry.js";
import { type CaptureAdapter, type CapturePoll, type CaptureSync, type MaybePromise, isPromise } from "./capture.js";
import { Claims } from "./claims.js";
import type { ModelStream } from "../streams/model-stream.js";
import { HookDispatcher } from "./dispatch.js";
import { type CaptureOptions, type ResolvedCaptureOptions, resolveCaptureOptions } from "./options.js";
import { newOwner } from "./owner.js";
import type { RequestScopeAccess } from "./request-notes.js";

/**
 * Drains for the app's own writes start at most this often. A write after a
 * quiet spell is drained on the next turn of the event loop; under a stream
 * of writes (one per request, say) each drain takes every change of the last
 * couple of milliseconds in one claim instead of claiming them one by one —
 * the claim and completion writes would otherwise cost more than the insert.
 */
const DRAIN_SPACING_MS = 2;

/**
 * On an asynchronous database (PostgreSQL) a claim is a round trip that
 * reads, moves the cursor and commits — several times what the write it
 * dispatches cost. Under a stream of writes (the last drain dispatched
 * changes), drains there start at most once per CLAIM_SPACING claim
 * durations (measured, averaged), between DRAIN_SPACING_MS and
 * MAX_DRAIN_SPACING_MS (or when the writes stop, see IDLE_GAP_MS), so each
 * claim takes every change of that span and the claims stay a small share
 * of the database's work however fast or slow its commits are (a claim
 * costs the database about what 3 or 4 inserts do: at 16 durations, about
 * 7 % of an insert stream's cost in claims where 8 gave about 15 %). A write
 * after a quiet spell is drained at once, as on SQLite (whose claims are
 * synchronous and take microseconds: its spacing stays DRAIN_SPACING_MS).
 */
const CLAIM_SPACING = 16;
const MAX_DRAIN_SPACING_MS = 20;

/**
 * The spacing holds a drain back while writes keep coming; when they stop,
 * what they wrote is drained without waiting out the rest of it: once no
 * write came for IDLE_INTERVALS times the stream's recent interval between
 * writes, and IDLE_GAP_MS at least. The last writes of a burst were held for
 * the rest of the spacing (10 ms on average); now for about IDLE_GAP_MS. A
 * steady stream's writes come more often than that, and it is claimed as
 * before (one insert at a time in the write-cost bench: 4 to 6 % more
 * claims). The gap follows the stream's own pace, so that a stream of one
 * write every few milliseconds is not claimed write by write.
 */
const IDLE_GAP_MS = 2;
const IDLE_INTERVALS = 4;

/**
 * A drain that dispatched changes keeps the cursor this long before marking
 * them done: when the app writes again meanwhile (a stream of requests), the
 * next drain marks them done in the same transaction that claims the next
 * changes — one write per drain instead of two. A crash in this window
 * dispatches that last batch again once the lease runs out, as a crash
 * mid-batch does.
 */
const FINISH_DELAY_MS = 10;

export type FeedState = "idle" | "running" | "closing" | "closed";

export interface ChangeFeedInit {
  /** The database dialect's triggers, change log and claims (SqliteCapture). */
  capture: CaptureAdapter;
  registry: StreamRegistry;
  logger: Logger;
  options?: CaptureOptions;
  /**
   * Called whenever the log shows that another feed (another process, or
   * another turbocast instance on the same file) dispatched changes:
   * createTurbo warns, through a LogThrottle, when its broker cannot reach
   * that feed's subscribers (the in-memory one).
   */
  onOtherFeed?: () => void;
  /**
   * The request scope (X-Turbo-Request-Id): a change this process wrote
   * inside a request is dispatched inside that request's id, so a refresh
   * its hook broadcasts carries `request-id` (see RequestNotes).
   */
  requests?: RequestScopeAccess;
  /**
   * Awaited (when it returns a promise) before each claim: the publisher's
   * backlog, so that broadcasts fired by hooks without awaiting them wait
   * for the broker once too many are in flight.
   */
  backpressure?: () => Promise<void> | undefined;
  /** Called with a deleted row's stream once its `onDelete` settled (live authorization closes its subscriptions). */
  afterDelete?: (stream: ModelStream) => void;
}

const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Drains the change log into the hooks of the bound stream classes, in seq
 * order, each change exactly once across every process sharing the file:
 *
 * 1. claim a batch in one write transaction (marking the previous batch done
 *    in the same one) by moving the log's cursor — one feed holds it at a
 *    time, so processes take turns and order holds across them (Claims,
 *    over the dialect's CaptureAdapter);
 * 2. decode each row through its Drizzle columns, give it `.stream`, and
 *    await `onSave(entity, { created })` / `onDelete(entity)`; a failure is
 *    logged as a HookError and the feed goes on (HookDispatcher);
 * 3. yield to the event loop, and go on until nothing is left.
 *
 * This class is the lifecycle and the scheduler: when a drain starts, when
 * the poll looks, when the triggers follow a migration.
 *
 * A drain starts right after the app's own writes commit (`notify()`), and
 * when the poll sees work written by anyone else. The last batch of a drain
 * is marked done by the next drain's claim, or FINISH_DELAY_MS later (then
 * the cursor is given back), or by `drain()` / `close()`. A crash between
 * claim and completion loses nothing: a live feed (or the restarted app)
 * takes the claim over — at once when the dead process ran on this machine
 * (owner.ts), else when its lease expires — and dispatches that batch
 * (again, for the changes whose hooks ran). Hooks run outside any request,
 * except a change this process wrote inside one (RequestNotes).
 * `start()` and `close()` are safe to call twice.
 */
export class ChangeFeed {
  /** Who holds a claim, as recorded in the log: host, boot, pid namespace, pid and a per-feed nonce (see owner.ts). */
  readonly owner = newOwner();
  readonly #capture: CaptureAdapter;
  readonly #registry: StreamRegistry;
  readonly #logger: Logger;
  readonly #options: ResolvedCaptureOptions;
  readonly #onOtherFeed: (() => void) | undefined;
  readonly #requests: RequestScopeAccess | undefined;
  readonly #backpressure: (() => Promise<void> | undefined) | undefined;
  readonly #dispatcher: HookDispatcher;
  /** done_seq as this feed last saw it, its own completions included (-1: not read yet); a higher one is another feed's work. */
  #seenDone = -1;
  #state: FeedState = "idle";
  #timer: NodeJS.Timeout | null = null;
  #immediate: NodeJS.Immediate | null = null;
  #delayed: NodeJS.Timeout | null = null;
  #lastPassStart = -Infinity;
  /** Asynchronous claims' duration, ms, averaged (0: none measured — a synchronous database). */
  #claimMs = 0;
  /** Whether the last drain dispatched changes (writes are streaming in). */
  #streaming = false;
  /** When the app last wrote (or the database's NOTIFY said another writer committed), performance.now(). */
  #lastWrite = Number.NEGATIVE_INFINITY;
  /** The recent interval between those, ms, averaged (0: none measured); pauses longer than the spacing are not counted. */
  #writeIntervalMs = 0;
  #pass: Promise<void> | null = null;
  #again = false;
  /** start() waiting for an asynchronous database (sync, open). */
  #starting: Promise<void> | null = null;
  /** A poll of an asynchronous database in flight (ticks do not pile up behind a slow one). */
  #polling = false;
  /** A sync after a schema change in flight. */
  #resyncing: Promise<void> | null = null;
  #closed: Promise<void> | null = null;
  /** Marks dispatched changes done and gives the cursor back when no drain did so within FINISH_DELAY_MS. */
  #finishTimer: NodeJS.Timeout | null = null;
  readonly #claims: Claims;
  /**
   * Failures of the feed's own reads and writes (a locked or unreachable
   * database), and tables that do not exist yet: logged when they start,
   * counted until that kind works again — no log flood from a 100 ms poll.
   */
  readonly #outages: LogThrottle;

  constructor(init: ChangeFeedInit) {
    this.#capture = init.capture;
    this.#registry = init.registry;
    this.#logger = init.logger;
    this.#options = resolveCaptureOptions(init.options);
    this.#onOtherFeed = init.onOtherFeed;
    this.#outages = new LogThrottle(init.logger, { intervalMs: Number.POSITIVE_INFINITY });
    this.#claims = new Claims({
      capture: init.capture,
      owner: this.owner,
      options: this.#options,
      logger: init.logger,
      failed: (kind, message, error) => this.#failed(kind, message, error),
      sawDone: (observed, own) => this.#sawDone(observed, own),
    });
    this.#requests = init.requests;
    this.#backpressure = init.backpressure;
    this.#dispatcher = new HookDispatcher({
      registry: init.registry,
      logger: init.logger,
      hookTimeoutMs: this.#options.hookTimeoutMs,
      decoderFor: (info) => init.capture.decoderFor(info),
      requests: init.requests,
      afterDelete: init.afterDelete,
    });
  }

  get state(): FeedState {
    return this.#state;
  }

  /**
   * Installs (or updates) the triggers of every bound table in one
   * transaction, then starts polling and dispatches whatever was committed
   * while no feed ran. Throws CaptureInstallError with nothing changed and
   * nothing running when a trigger cannot be installed.
   */
  start(): MaybePromise<void> {
    if (this.#state === "running") return;
    if (this.#starting) return this.#starting;
    if (this.#state !== "idle") throw new ClosedError("change feed");
    const synced = this.#sync();
    if (!isPromise(synced)) return this.#open();
    this.#starting = synced
      .then(() => this.#open())
      .finally(() => {
        this.#starting = null;
      });
    return this.#starting;
  }

  /** After the first sync: opens the log, starts polling, and drains what was committed while no feed ran. */
  #open(): MaybePromise<void> {
    if (this.#state !== "idle") return;
    // the database's own wake-ups (PostgreSQL's NOTIFY) come from outside any request
    const opened = this.#capture.open(() => this.#outsideRequests(() => this.notify()));
    if (isPromise(opened)) return opened.then(() => this.#run());
    this.#run();
  }

  #run(): void {
    if (this.#state !== "idle") return;
    this.#state = "running";
    // started inside a request (lazily), the timer would carry its id into every tick
    this.#timer = this.#outsideRequests(() => setInterval(this.#tick, this.#options.pollIntervalMs));
    this.#timer.unref();
    this.#schedule();
  }

  /** The app's own write committed: drain soon (once per event-loop turn, however many writes). */
  notify(): void {
    const now = performance.now();
    const interval = now - this.#lastWrite;
    if (interval < MAX_DRAIN_SPACING_MS) {
      this.#writeIntervalMs = this.#writeIntervalMs === 0 ? interval : 0.9 * this.#writeIntervalMs + 0.1 * interval;
    }
    this.#lastWrite = now;
    this.#schedule();
  }

  /**
   * Dispatches every change this feed can claim now, and marks them done;
   * resolves when done. Resolves at once when not running.
   */
  async drain(): Promise<void> {
    if (this.#state !== "running") return;
    if (this.#pass) {
      this.#again = true;
    } else {
      this.#unschedule();
      this.#startPass();
    }
    await this.#pass;
    if (this.#state === "running" && !this.#pass) await this.#finishClaims();
  }

  /**
   * Stops polling, waits for the change being dispatched, marks what was
   * dispatched done and gives back claims not dispatched yet (another process
   * or the next start takes them). Triggers stay: changes committed while the
   * app is down are dispatched when it starts again.
   */
  close(): Promise<void> {
    if (this.#closed) return this.#closed;
    if (this.#state === "idle") {
      // a start that failed (or never ran) may have left connections open
      this.#state = "closed";
      this.#closed = (async () => {
        await this.#starting?.catch(() => {});
        await this.#capture.close();
      })();
      return this.#closed;
    }
    this.#state = "closing";
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#unschedule();
    if (this.#finishTimer) clearTimeout(this.#finishTimer);
    this.#finishTimer = null;
    this.#closed = (async () => {
      await this.#pass;
      await this.#resyncing;
      await this.#finishClaims();
      await this.#capture.close();
      this.#state = "closed";
    })();
    return this.#closed;
  }

  #sync(): MaybePromise<CaptureSync> {
    const result = this.#capture.sync(this.#registry.modelClasses.map((cls) => cls.tableInfo()));
    return isPromise(result) ? result.then((r) => this.#synced(r)) : this.#synced(result);
  }

  #synced(result: CaptureSync): CaptureSync {
    for (const table of result.missingTables) {
      this.#outages.log(
        `missing table:${table}`,
        "warn",
        `table "${table}" does not exist yet; its changes are captured once it is created`,
        { table },
      );
    }
    for (const table of result.captured) {
      const kind = `missing table:${table}`;
      if (!this.#outages.quiet(kind)) continue;
      this.#outages.recovered(kind);
      this.#logger.info(`table "${table}" now exists; capturing its changes`, { table });
    }
    for (const { table, columns } of result.missingColumns) {
      this.#logger.warn(
        `table "${table}" has no column ${columns.join(", ")} that its Drizzle schema declares; hooks see undefined`,
        { table, columns },
      );
    }
    return result;
  }

  /** A migration changed the schema: bring the triggers up to date (a no-op if they are). */
  #resync(): MaybePromise<void> {
    if (this.#resyncing) return this.#resyncing;
    const failed = (error: unknown) =>
      // the adapter still sees the schema as changed, so the next tick tries again
      this.#failed("sync", "could not update change capture triggers after a schema change", error, "error");
    const done = (result: CaptureSync) => {
      if (result.created.length > 0 || result.dropped.length > 0) {
        this.#logger.info("change capture triggers updated after a schema change", {
          created: result.created,
          dropped: result.dropped,
        });
      }
      this.#recovered("sync");
    };
    try {
      const result = this.#sync();
      if (!isPromise(result)) return done(result);
      this.#resyncing = result.then(done, failed).finally(() => {
        this.#resyncing = null;
      });
      return this.#resyncing;
    } catch (error) {
      failed(error);
    }
  }

  #tick = (): void => {
    if (this.#state !== "running" || this.#pass || this.#immediate || this.#delayed || this.#polling) return;
    // A transaction the app left open (a raw BEGIN across an await) is not committed: look next tick.
    if (this.#capture.busy) return;
    const failed = (error: unknown) => this.#failed("poll", "change feed could not poll the database; retrying", error);
    try {
      const now = Date.now();
      const poll = this.#capture.poll(this.owner, now);
      if (!isPromise(poll)) {
        this.#polled(poll, now);
        return;
      }
      this.#polling = true;
      poll
        .then((p) => this.#polled(p, now), failed)
        .finally(() => {
          this.#polling = false;
        });
    } catch (error) {
      failed(error);
    }
  };

  #polled(poll: CapturePoll, now: number): void {
    if (this.#state !== "running") return;
    this.#sawDone(poll.doneSeq, 0);
    if (poll.schemaChanged) void this.#resync();
    if (poll.claimable) this.#schedule();
    else this.#claims.maybePrune(now);
    this.#recovered("poll");
  }

  #schedule(): void {
    if (this.#state !== "running") return;
    if (this.#pass) {
      this.#again = true;
      return;
    }
    if (this.#immediate || this.#delayed) return;
    const wait = this.#waitMs();
    if (wait <= 0) this.#immediate = setImmediate(this.#startPass);
    else this.#delayed = setTimeout(this.#startSpaced, wait);
  }

  /** Node's timers count whole milliseconds of the loop's cached clock, so they fire up to 1 ms early: wait out the rest. */
  #startSpaced = (): void => {
    const wait = this.#waitMs();
    if (wait > 0) this.#delayed = setTimeout(this.#startSpaced, wait);
    else this.#startPass();
  };

  #unschedule(): void {
    if (this.#immediate) clearImmediate(this.#immediate);
    if (this.#delayed) clearTimeout(this.#delayed);
    this.#immediate = null;
    this.#delayed = null;
  }

  #startPass = (): void => {
    this.#unschedule();
    if (this.#state !== "running" || this.#pass) return;
    this.#lastPassStart = performance.now();
    // drain() may be called inside a request: no hook may inherit its id (only its own changes' notes give one)
    this.#pass = this.#outsideRequests(() => this.#passes()).finally(() => {
      this.#pass = null;
    });
  };

  async #passes(): Promise<void> {
    do {
      this.#again = false;
      await this.#drainOnce();
      // writes came in meanwhile: on an asynchronous database, drain them once the spacing has passed
      if (this.#again && this.#state === "running" && this.#claimMs > 0) await this.#spaced();
    } while (this.#again && this.#state === "running");
  }

  /** Waits until the next drain may start (see CLAIM_SPACING and IDLE_GAP_MS), and counts it as started. */
  async #spaced(): Promise<void> {
    // writes that come in meanwhile move the idle deadline: look again when it passes
    for (let wait = this.#waitMs(); wait > 0; wait = this.#waitMs()) {
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    this.#lastPassStart = performance.now();
  }

  /** How long until the next drain may start: the spacing's end, or earlier when the writes stopped (IDLE_GAP_MS). */
  #waitMs(): number {
    const now = performance.now();
    const spaced = this.#lastPassStart + this.#spacing() - now;
    if (spaced <= 0 || !this.#streaming || this.#claimMs === 0) return spaced;
    const idle = this.#lastWrite + Math.max(IDLE_GAP_MS, IDLE_INTERVALS * this.#writeIntervalMs) - now;
    return Math.min(spaced, idle);
  }

  /** How long after the last drain's start the next one may start. */
  #spacing(): number {
    if (!this.#streaming || this.#claimMs === 0) return DRAIN_SPACING_MS;
    return Math.min(MAX_DRAIN_SPACING_MS, Math.max(DRAIN_SPACING_MS, CLAIM_SPACING * this.#claimMs));
  }

  async #drainOnce(): Promise<void> {
    const capture = this.#capture;
    const { batchSize } = this.#options;
    let dispatched = false;
    try {
      for (;;) {
        if (this.#state !== "running" || this.#capture.busy) break;
        const now = Date.now();
        // holding the cursor, the claim is due anyway (to mark the last batch done): no poll first
        if (!this.#claims.holding) {
          let poll = capture.poll(this.owner, now);
          if (isPromise(poll)) poll = await poll;
          this.#sawDone(poll.doneSeq, 0);
          if (!poll.claimable) {
            if (poll.schemaChanged) await this.#resync();
            break;
          }
        }
        const backlog = this.#backpressure?.();
        if (backlog) {
          await backlog;
          if (this.#state !== "running" || this.#capture.busy) break;
        }
        // reached only with the previous batch fully dispatched: complete it as the next one is claimed
        const claimed = performance.now();
        let claim = this.#claims.claim(Date.now(), batchSize);
        if (isPromise(claim)) {
          claim = await claim;
          const ms = performance.now() - claimed;
          this.#claimMs = this.#claimMs === 0 ? ms : 0.7 * this.#claimMs + 0.3 * ms;
        }
        const batch = claim.changes;
        // a migration (by this app's own db too): triggers follow before the next change is dispatched
        if (claim.schemaChanged) {
          const resynced = this.#resync();
          if (isPromise(resynced)) await resynced;
        }
        if (batch.length === 0) break;
        dispatched = true;
        const requestIds = capture.requestIds(batch[0]!.seq, batch[batch.length - 1]!.seq);
        for (const change of batch) {
          // most hooks are synchronous (they fire broadcasts and return): no await, no microtask for those,
          // and the frames of the whole batch reach a scale-out broker together (PublishBatcher). An async
          // hook is awaited before the next change's starts — every frame of a change before any of the
          // next one's, whatever the hook awaits — so one that awaits its broadcast costs a broker round
          // trip per change: that order cannot be kept while overlapping them. A broadcastsTo that returns a
          // promise is awaited the same way (HookDispatcher), its frames published before the next change's.
          const pending = this.#dispatcher.dispatch(change, requestIds?.get(change.seq));
          if (pending) await pending;
          this.#claims.dispatched(change.seq);
          if (this.#state !== "running") break;
        }
        // a short batch took everything there was; writes since then notify or show up in the poll
        if (batch.length < batchSize) break;
        await yieldToEventLoop();
      }
      this.#recovered("drain");
    } catch (error) {
      this.#failed("drain", "change feed could not claim changes (is the database locked?); retrying", error);
    } finally {
      this.#streaming = dispatched;
      // a drain that dispatched everything it claimed keeps the cursor a moment (FINISH_DELAY_MS)
      if (this.#claims.holding && this.#state === "running" && !this.#outages.quiet("drain")) this.#finishLater();
      else this.#finishClaims();
    }
  }

  #finishLater(): void {
    if (this.#finishTimer) this.#finishTimer.refresh();
    else this.#finishTimer = setTimeout(this.#finishIdle, FINISH_DELAY_MS);
    // under a steady stream of writes #finishClaims may not run for a long time: prune here too
    this.#claims.maybePrune(Date.now());
  }

  #finishIdle = (): void => {
    this.#finishTimer = null;
    if (this.#state !== "running" || !this.#claims.holding) return;
    // a drain to come marks them done as it claims (or keeps the cursor again)
    if (this.#pass || this.#immediate || this.#delayed) return;
    if (this.#capture.busy) this.#finishLater();
    else this.#finishClaims();
  };

  /** Marks what was dispatched done and gives the cursor back (see Claims.release). */
  #finishClaims(): MaybePromise<void> {
    if (this.#finishTimer) clearTimeout(this.#finishTimer);
    this.#finishTimer = null;
    const released = this.#claims.release();
    if (!isPromise(released)) return released;
    // Another process's feed that woke while this one held the cursor found nothing to claim and
    // went back to sleep; on a database whose writers do not all wake every feed (PostgreSQL's
    // quiet connections), look once more now that the cursor is free.
    return released.then(() => {
      if (this.#state === "running") this.#schedule();
    });
  }

  #outsideRequests<T>(fn: () => T): T {
    return this.#requests ? this.#requests.outside(fn) : fn();
  }

  /** The log's done_seq was `observed` after this feed marked changes up to `own` done (0: none). */
  #sawDone(observed: number, own: number): void {
    if (this.#seenDone >= 0 && observed > Math.max(this.#seenDone, own)) {
      // another feed dispatched up to `observed`: notes of those changes are no use here
      this.#capture.forgetRequests(observed);
      this.#onOtherFeed?.();
    }
    this.#seenDone = Math.max(this.#seenDone, observed, own);
  }

  #failed(kind: string, message: string, error: unknown, level: "warn" | "error" = "warn"): void {
    this.#outages.log(kind, level, message, { error });
  }

  #recovered(kind: string): void {
    this.#outages.recovered(kind, `change feed ${kind} works again`);
  }
}
