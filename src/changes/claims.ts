import { LogThrottle } from "../log-throttle.js";
import type { Logger } from "../logger.js";
import { type CaptureAdapter, type Claim, type MaybePromise, isPromise } from "./capture.js";
import type { ResolvedCaptureOptions } from "./options.js";

/** At most one prune per this many ms: it scans the retained log. */
const PRUNE_INTERVAL_MS = 1000;

export interface ClaimsInit {
  capture: CaptureAdapter;
  /** The feed's identity in the log (owner.ts). */
  owner: string;
  options: Pick<ResolvedCaptureOptions, "leaseMs" | "retain">;
  logger: Logger;
  /** Logs a failure of one of the log's writes (throttled by the feed until that kind works again). */
  failed: (kind: "complete" | "renew" | "prune", message: string, error: unknown) => void;
  /** The log's done_seq was `observed` after this feed marked changes up to `own` done (0: none). */
  sawDone: (observed: number, own: number) => void;
}

/**
 * One feed's hold on the change log's cursor: claiming the next batch (and
 * completing the previous one in the same write), remembering how far it
 * dispatched, renewing the lease while hooks run, giving the cursor back,
 * and pruning what was dispatched. The feed decides when; this does the
 * bookkeeping against the capture adapter.
 */
export class Claims {
  readonly #capture: CaptureAdapter;
  readonly #owner: string;
  readonly #options: ClaimsInit["options"];
  readonly #failed: ClaimsInit["failed"];
  readonly #sawDone: ClaimsInit["sawDone"];
  /** Claims lost or taken over: each kind at most once a minute, the rest counted. */
  readonly #events: LogThrottle;
  #renewTimer: NodeJS.Timeout | null = null;
  /** Highest seq dispatched by this feed and not yet marked done (0: none). */
  #doneUpTo = 0;
  /** Whether this feed holds the log's cursor (claimed changes not yet completed). */
  #holding = false;
  #prunePending = false;
  #lastPrune = 0;
  /**
   * A completion an asynchronous database has not confirmed yet: the next
   * claim waits for it, or it would find the cursor still this feed's and
   * take the same changes again.
   */
  #releasing: Promise<void> | null = null;

  constructor(init: ClaimsInit) {
    this.#capture = init.capture;
    this.#owner = init.owner;
    this.#options = init.options;
    this.#failed = init.failed;
    this.#sawDone = init.sawDone;
    this.#events = new LogThrottle(init.logger);
  }

  /** Whether this feed holds the cursor (claimed changes not yet marked done). */
  get holding(): boolean {
    return this.#holding;
  }

  /**
   * Marks what was dispatched done and claims the next `limit` changes, in
   * one write; renews the lease from here on while the batch is held.
   * Reached only with the previous batch fully dispatched.
   */
  claim(now: number, limit: number): MaybePromise<Claim> {
    if (this.#releasing) return this.#releasing.then(() => this.claim(now, limit));
    const claim = this.#capture.claim(this.#owner, this.#doneUpTo, now, this.#options.leaseMs, limit);
    return isPromise(claim) ? claim.then((c) => this.#claimed(c)) : this.#claimed(claim);
  }

  #claimed(claim: Claim): Claim {
    this.#sawDone(claim.doneSeq, this.#doneUpTo);
    if (claim.lostClaim) this.#warnLostClaim();
    if (claim.tookOver) {
      const { from, why, after } = claim.tookOver;
      const reason = why === "gone" ? "its process on this host is gone" : "its lease ran out";
      this.#events.log(
        `took over:${from}`,
        "warn",
        `change feed took over changes claimed by ${from} (${reason}); changes after seq ${after} it may have dispatched are dispatched again`,
        { from, reason: why, after },
      );
    }
    if (this.#doneUpTo > 0) this.#prunePending = true;
    this.#doneUpTo = 0;
    this.#holding = claim.changes.length > 0;
    if (this.#holding) this.#renewWhileHeld();
    return claim;
  }

  /** The change `seq` of the held batch was dispatched. */
  dispatched(seq: number): void {
    this.#doneUpTo = seq;
  }

  /**
   * Marks what was dispatched done and gives the cursor back — with the
   * changes not dispatched yet when a drain stopped mid-batch (close, an
   * error), for any feed to take at once. Stops renewing.
   */
  release(): MaybePromise<void> {
    if (this.#renewTimer) clearInterval(this.#renewTimer);
    this.#renewTimer = null;
    if (this.#releasing) return this.#releasing;
    // inside a transaction the app holds open, our writes would share its fate: do them later
    if (this.#capture.busy || !this.#holding) return;
    const upTo = this.#doneUpTo;
    try {
      const done = this.#capture.complete(this.#owner, upTo);
      if (!isPromise(done)) return this.#released(done, upTo);
      this.#releasing = done.then(
        (ok) => this.#released(ok, upTo),
        (error: unknown) =>
          this.#failed("complete", "change feed could not mark dispatched changes done; retrying", error),
      );
      void this.#releasing.finally(() => {
        this.#releasing = null;
      });
      return this.#releasing;
    } catch (error) {
      // still holding: the next drain completes them (or the lease runs out)
      this.#failed("complete", "change feed could not mark dispatched changes done; retrying", error);
    }
  }

  #released(ok: boolean, upTo: number): void {
    if (!ok) this.#warnLostClaim();
    this.#sawDone(upTo, upTo);
    if (upTo > 0) this.#prunePending = true;
    // what was dispatched meanwhile (nothing: the feed claims again only after this) stays to complete
    if (this.#doneUpTo === upTo) this.#doneUpTo = 0;
    this.#holding = false;
    this.maybePrune(Date.now());
  }

  /** Prunes the log when changes were marked done since the last prune, at most once per PRUNE_INTERVAL_MS. */
  maybePrune(now: number): void {
    if (!this.#prunePending || now - this.#lastPrune < PRUNE_INTERVAL_MS || this.#capture.busy) return;
    this.#prunePending = false;
    this.#lastPrune = now;
    const failed = (error: unknown) => this.#failed("prune", "change feed could not prune the change log", error);
    try {
      const pruned = this.#capture.prune(now, this.#options.retain);
      if (isPromise(pruned)) pruned.catch(failed);
    } catch (error) {
      failed(error);
    }
  }

  /** Renews this feed's claims every leaseMs / 3 while it dispatches, so a slow hook is not taken for a dead process. */
  #renewWhileHeld(): void {
    if (this.#renewTimer) return;
    this.#renewTimer = setInterval(
      () => {
        if (this.#capture.busy) return;
        const failed = (error: unknown) => this.#failed("renew", "change feed could not renew its claims", error);
        try {
          const renewed = this.#capture.renew(this.#owner, Date.now() + this.#options.leaseMs);
          if (isPromise(renewed)) renewed.catch(failed);
        } catch (error) {
          failed(error);
        }
      },
      Math.max(1, Math.floor(this.#options.leaseMs / 3)),
    );
    this.#renewTimer.unref();
  }

  #warnLostClaim(): void {
    this.#events.log(
      "lost claim",
      "warn",
      "change feed lost its claim (lease ran out while dispatching): another feed dispatches those changes again; raise capture.leaseMs",
    );
  }
}
