import { ConfigError } from "../errors.js";

/** Options of data subscribers (createTurbo's `data`). */
export interface DataOptions {
  /** Most rows one sync (a data subscription's, or a `dataHandler` answer) may carry; more is refused (TURBOCAST_SYNC, 413). Default 10,000. */
  maxSyncRows?: number;
  /** Most streams whose set `dataHandler` keeps in memory per process (least recently used dropped first). Default 1,000. */
  cachedSets?: number;
  /**
   * PostgreSQL: how long (ms) a sync waits for the write transactions in
   * flight at its snapshot to end, to learn the version it read at; one
   * still open after that makes the sync's version 0 (every later event is
   * sent, none lost). Default 1,000.
   */
  syncWaitMs?: number;
}

export const DATA_DEFAULTS: Required<DataOptions> = Object.freeze({
  maxSyncRows: 10_000,
  cachedSets: 1_000,
  syncWaitMs: 1_000,
});

export function resolveDataOptions(options: DataOptions = {}): Required<DataOptions> {
  const resolved = { ...DATA_DEFAULTS, ...options };
  for (const name of ["maxSyncRows", "cachedSets"] as const) {
    const value = resolved[name];
    if (!Number.isSafeInteger(value) || value < 1) throw new ConfigError(`data.${name} must be a positive integer`);
  }
  if (!Number.isSafeInteger(resolved.syncWaitMs) || resolved.syncWaitMs < 0)
    throw new ConfigError("data.syncWaitMs must be a non-negative integer");
  return resolved;
}
