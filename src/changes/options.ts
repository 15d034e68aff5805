import { ConfigError } from "../errors.js";

/** How writes to bound tables reach `onSave` / `onDelete` (createTurbo's `capture` option). */
export interface CaptureOptions {
  /**
   * How often, in ms, to look for changes this process did not write through
   * its Drizzle db: other processes, other connections, the sqlite3 shell, raw
   * `db.$client` statements, and claims left by a crashed process. One cheap
   * indexed read per tick; the timer does not keep the process alive. Writes
   * made through the app's Drizzle db are dispatched right after they commit,
   * whatever this is. Default 100; on PostgreSQL 1,000, a safety net only:
   * NOTIFY wakes the feed at every writer's commit.
   */
  pollIntervalMs?: number;
  /**
   * PostgreSQL only: the schema of the change log and its functions.
   * Default: the first schema of the connection's search_path.
   */
  schema?: string;
  /**
   * Changes claimed (and completed) per write transaction. The feed yields to
   * the event loop between batches, so a 1,000-row UPDATE never blocks it for
   * long. Default 100.
   */
  batchSize?: number;
  /**
   * How long, in ms, a claim on the log stays valid without renewal. A live
   * feed renews it every `leaseMs / 3` while it dispatches; the claim of a
   * process that died between claim and completion is taken over once it
   * runs out (so its changes are dispatched, late rather than never) — or
   * at once when that process ran on this host and is gone (see owner.ts).
   * Default 30,000.
   */
  leaseMs?: number;
  /**
   * Dispatched changes kept in the log (from which delivery can resume). A
   * dispatched change is deleted once it is older than `ageMs` (whole
   * seconds) or no longer among the newest `count` changes; pending changes
   * are never deleted. Pruning runs at most once a second.
   * Default `{ count: 10_000, ageMs: 3_600_000 }`.
   */
  retain?: { count?: number; ageMs?: number };
  /**
   * How long, in ms, the feed waits for an async hook before logging it as
   * failed and going on with the next change (the hook is not cancelled).
   * Changes are dispatched one at a time, in order, so a hook that never
   * settles would otherwise stall dispatch for every process. Default 10,000.
   */
  hookTimeoutMs?: number;
}

/** CaptureOptions with every default filled in (resolveCaptureOptions). */
export interface ResolvedCaptureOptions {
  pollIntervalMs: number;
  batchSize: number;
  leaseMs: number;
  hookTimeoutMs: number;
  retain: { count: number; ageMs: number };
}

/** Every capture default, in one place (the JSDoc of each CaptureOptions field repeats its own). */
export const CAPTURE_DEFAULTS: ResolvedCaptureOptions = Object.freeze({
  pollIntervalMs: 100,
  batchSize: 100,
  leaseMs: 30_000,
  hookTimeoutMs: 10_000,
  retain: Object.freeze({ count: 10_000, ageMs: 60 * 60_000 }),
});

/** Fills in the defaults and checks every value; throws ConfigError naming the offending option. */
export function resolveCaptureOptions(options: CaptureOptions = {}): ResolvedCaptureOptions {
  if (typeof options !== "object" || options === null) throw new ConfigError("capture must be an options object");
  const resolved: ResolvedCaptureOptions = {
    pollIntervalMs: options.pollIntervalMs ?? CAPTURE_DEFAULTS.pollIntervalMs,
    batchSize: options.batchSize ?? CAPTURE_DEFAULTS.batchSize,
    leaseMs: options.leaseMs ?? CAPTURE_DEFAULTS.leaseMs,
    hookTimeoutMs: options.hookTimeoutMs ?? CAPTURE_DEFAULTS.hookTimeoutMs,
    retain: {
      count: options.retain?.count ?? CAPTURE_DEFAULTS.retain.count,
      ageMs: options.retain?.ageMs ?? CAPTURE_DEFAULTS.retain.ageMs,
    },
  };
  const check = (name: string, value: number, min: number): void => {
    if (!Number.isInteger(value) || value < min) {
      throw new ConfigError(`capture.${name} must be an integer of at least ${min}, got ${String(value)}`);
    }
  };
  check("pollIntervalMs", resolved.pollIntervalMs, 1);
  check("batchSize", resolved.batchSize, 1);
  check("leaseMs", resolved.leaseMs, 1);
  check("hookTimeoutMs", resolved.hookTimeoutMs, 1);
  check("retain.count", resolved.retain.count, 0);
  check("retain.ageMs", resolved.retain.ageMs, 0);
  return resolved;
}
