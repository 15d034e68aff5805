import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { CaptureAdapter, ChangeRecord, Claim } from "../src/changes/capture.js";
import { ChangeFeed } from "../src/changes/feed.js";
import { silentLogger } from "../src/logger.js";
import { StreamRegistry } from "../src/streams/registry.js";

/** Lets `ms` of fake time pass. */
const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * An asynchronous database as the feed sees it (PostgreSQL's shape): every
 * read and write takes CLAIM_MS of (fake) time; it records when each claim
 * started and how many changes it took. Its changes are of a table nothing
 * binds, so dispatching them runs no hook.
 */
const CLAIM_MS = 1;
class SlowCapture implements CaptureAdapter {
  readonly busy = false;
  readonly claims: Array<{ at: number; changes: number }> = [];
  #pending: ChangeRecord[] = [];
  #seq = 0;

  write(): void {
    this.#pending.push({ seq: ++this.#seq, table: "unbound", op: "insert", row: "{}", previous: null });
  }

  sync() {
    return Promise.resolve({ created: [], dropped: [], missingTables: [], missingColumns: [], captured: [] });
  }
  open() {
    return Promise.resolve();
  }
  close() {
    return Promise.resolve();
  }
  async poll() {
    await delay(CLAIM_MS);
    return { claimable: this.#pending.length > 0, doneSeq: 0, schemaChanged: false };
  }
  async claim(_owner: string, _doneUpTo: number, _now: number, _leaseMs: number, limit: number): Promise<Claim> {
    const at = performance.now();
    await delay(CLAIM_MS);
    const changes = this.#pending.splice(0, limit);
    this.claims.push({ at, changes: changes.length });
    return { changes, doneSeq: 0, lostClaim: false, tookOver: null, schemaChanged: false };
  }
  async complete() {
    await delay(CLAIM_MS);
    return true;
  }
  renew() {
    return Promise.resolve();
  }
  prune() {
    return Promise.resolve(0);
  }
  requestIds() {
    return null;
  }
  forgetRequests() {}
  decoderFor() {
    return () => ({});
  }
}

describe("the change feed's spacing on an asynchronous database", () => {
  let capture: SlowCapture;
  let feed: ChangeFeed;

  beforeEach(async () => {
    vi.useFakeTimers({
      toFake: [
        "setTimeout",
        "clearTimeout",
        "setImmediate",
        "clearImmediate",
        "setInterval",
        "clearInterval",
        "performance",
        "Date",
      ],
    });
    capture = new SlowCapture();
    feed = new ChangeFeed({
      capture,
      registry: new StreamRegistry(),
      logger: silentLogger,
      options: { pollIntervalMs: 60_000 },
    });
    const started = feed.start();
    await vi.advanceTimersByTimeAsync(10);
    await started;
  });

  afterEach(async () => {
    const closed = feed.close();
    await vi.advanceTimersByTimeAsync(100);
    await closed;
    vi.useRealTimers();
  });

  let writes = 0;
  /** The app writes once (the write commits, its feed is told). */
  const write = () => {
    writes++;
    capture.write();
    feed.notify();
  };

  it("claims at most once per spacing while writes keep coming, and drains the last ones soon after they stop", async () => {
    // a stream of writes, one a millisecond, for 100 ms
    for (let t = 0; t < 100; t++) {
      write();
      await vi.advanceTimersByTimeAsync(1);
    }
    // right after a claim started: the next one is a whole spacing (16 claim durations) away
    const seen = capture.claims.length;
    while (capture.claims.length === seen) {
      write();
      await vi.advanceTimersByTimeAsync(1);
    }
    write();
    const last = performance.now();
    await vi.advanceTimersByTimeAsync(50);

    const during = capture.claims.filter((c) => c.at < last && c.changes > 0);
    const gaps = during.slice(1).map((c, i) => c.at - during[i]!.at);
    expect(Math.min(...gaps.slice(1))).toBeGreaterThanOrEqual(15);
    const after = capture.claims.find((c) => c.at >= last && c.changes > 0);
    expect(after).toBeDefined();
    // 4 intervals between writes (IDLE_INTERVALS) after the last one, not the rest of the 16 ms spacing
    expect(after!.at - last).toBeLessThanOrEqual(6);
    // every write claimed once
    expect(capture.claims.reduce((n, c) => n + c.changes, 0)).toBe(writes);
  });

  it("keeps spacing a stream whose writes come further apart than the idle gap", async () => {
    // one write every 3 ms: 2 ms without a write is no pause in it
    for (let t = 0; t < 50; t++) {
      write();
      await vi.advanceTimersByTimeAsync(3);
    }
    await vi.advanceTimersByTimeAsync(50);
    const taking = capture.claims.filter((c) => c.changes > 0);
    expect(taking.reduce((n, c) => n + c.changes, 0)).toBe(50);
    // 150 ms at one claim per 16 ms spacing, not one per write
    expect(taking.length).toBeLessThanOrEqual(12);
  });
});
