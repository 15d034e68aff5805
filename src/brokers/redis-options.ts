import { ConfigError } from "../errors.js";
import { type HistoryOptions, resolveHistory } from "./broker.js";
import { redactUrl } from "./connection.js";
import { WATCH_TTL_MS } from "./watches.js";

/** Options of redisBroker. Every default is listed here. */
export interface RedisBrokerOptions {
  /** `redis://[user:password@]host:port[/db]` or `rediss://…`. Required. */
  url: string;
  /** Prefix of every key and of the pub/sub channel; brokers that share it share frames. Default `"turbocast:"`. */
  keyPrefix?: string;
  /** Replay window per stream. Default: at least 1,000 frames and 5 minutes, at most 10,000 frames. */
  history?: HistoryOptions;
  /**
   * A stream with no new frame for this long is dropped whole (its key
   * expires), so streams of rows nobody touches stop costing memory; a cursor
   * older than this gets a refresh. Default 24 hours, never less than `history.ageMs`.
   */
  idleMs?: number;
  /**
   * A data channel's watch (a data subscription, see Broker.watch) is kept
   * in Redis this long and renewed every quarter of it while held; other
   * processes skip the data events of channels nobody watches. Default 2 minutes.
   */
  watchTtlMs?: number;
  /**
   * Skip the data events of channels no process watches. Set false while
   * processes of a turbocast from before watches (which do not register
   * their data subscriptions) share the namespace: watches are still
   * registered, nothing is skipped. Default true.
   */
  skipUnwatched?: boolean;
  /** A publish, history read or head read that takes longer fails, and the connection is recycled. Default 2,000 ms. */
  commandTimeoutMs?: number;
  /** `start()` fails with TURBOCAST_BROKER when Redis cannot be reached for this long. Default 10,000 ms. */
  connectTimeoutMs?: number;
  /** Reconnect delays double from 50 ms up to this. Default 2,000 ms. */
  maxBackoffMs?: number;
  /** `CLIENT SETNAME` of the broker's two connections (shown by `CLIENT LIST`). Default `"turbocast"`. */
  connectionName?: string;
}

export const DEFAULTS = {
  keyPrefix: "turbocast:",
  idleMs: 24 * 60 * 60_000,
  watchTtlMs: WATCH_TTL_MS,
  skipUnwatched: true,
  commandTimeoutMs: 2_000,
  connectTimeoutMs: 10_000,
  maxBackoffMs: 2_000,
  connectionName: "turbocast",
} as const;

/** Checks a redisBroker's options and fills in every default. */
export function resolveRedisOptions(options: RedisBrokerOptions | string) {
  if (typeof options === "string") options = { url: options };
  if (!options || typeof options.url !== "string" || options.url === "") {
    throw new ConfigError('redisBroker needs { url }, for example redisBroker({ url: "redis://127.0.0.1:6379" })');
  }
  const connectionName = options.connectionName ?? DEFAULTS.connectionName;
  if (!/^[!-~]+$/.test(connectionName)) {
    throw new ConfigError(
      `redisBroker connectionName "${connectionName}" must be printable ASCII without spaces (CLIENT SETNAME)`,
    );
  }
  const history = resolveHistory(options.history);
  return {
    url: options.url,
    target: redactUrl(options.url),
    keyPrefix: options.keyPrefix ?? DEFAULTS.keyPrefix,
    history,
    idleMs: Math.max(options.idleMs ?? DEFAULTS.idleMs, history.ageMs),
    watchTtlMs: options.watchTtlMs ?? DEFAULTS.watchTtlMs,
    skipUnwatched: options.skipUnwatched ?? DEFAULTS.skipUnwatched,
    commandTimeoutMs: options.commandTimeoutMs ?? DEFAULTS.commandTimeoutMs,
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
    maxBackoffMs: options.maxBackoffMs ?? DEFAULTS.maxBackoffMs,
    connectionName,
  };
}
