import { ConfigError } from "../errors.js";
import { type HistoryOptions, resolveHistory } from "./broker.js";
import { redactUrl } from "./connection.js";
import { type ConnectionConfig, withDefaultUser } from "./postgres-connection.js";
import { IDENTIFIER } from "./postgres-sql.js";
import { WATCH_TTL_MS } from "./watches.js";

/** Options of postgresBroker. Every default is listed here. */
export interface PostgresBrokerOptions {
  /** `postgres://user:password@host:port/database`. Required. */
  connectionString: string;
  /**
   * Prefix of the broker's tables, created when missing: `<prefix>_frames`,
   * `<prefix>_meta`, `<prefix>_floors`, `<prefix>_watches`. Brokers that share it share frames.
   * Lowercase letters, digits and `_`. Default `"turbocast"`.
   */
  prefix?: string;
  /** LISTEN/NOTIFY channel. Same rules as `prefix`. Default: the prefix. */
  channel?: string;
  /** Replay window per stream. Default: at least 1,000 frames and 5 minutes, at most 10,000 frames. */
  history?: HistoryOptions;
  /**
   * A stream with no new frame for this long is dropped whole, so streams of
   * rows nobody touches stop costing rows; a cursor from before a dropped
   * stream's last frame gets a refresh. Default 24 hours, never less than `history.ageMs`.
   */
  idleMs?: number;
  /**
   * A data channel's watch (a data subscription, see Broker.watch) is kept
   * in `<prefix>_watches` this long and renewed every quarter of it while
   * held; other processes skip the data events of channels nobody watches.
   * Default 2 minutes.
   */
  watchTtlMs?: number;
  /**
   * Skip the data events of channels no process watches. Set false while
   * processes of a turbocast from before watches (which do not register
   * their data subscriptions) share the namespace: watches are still
   * registered, nothing is skipped. Default true.
   */
  skipUnwatched?: boolean;
  /** `application_name` of the broker's connections (shown by `pg_stat_activity`). Default `"turbocast"`. */
  applicationName?: string;
  /** Pooled connections for publish, history and head (plus one for LISTEN). Default 4. */
  poolSize?: number;
  /** A query that takes longer fails (a stuck connection counts as an outage). Default 2,000 ms. */
  commandTimeoutMs?: number;
  /** `start()` fails with TURBOCAST_BROKER when PostgreSQL cannot be reached for this long. Default 10,000 ms. */
  connectTimeoutMs?: number;
  /** Reconnect delays double from 50 ms up to this. Default 2,000 ms. */
  maxBackoffMs?: number;
  /** How often old frames are pruned. Default: half of `history.ageMs`, between 1 and 30 seconds. */
  sweepIntervalMs?: number;
}

export const DEFAULTS = {
  prefix: "turbocast",
  idleMs: 24 * 60 * 60_000,
  watchTtlMs: WATCH_TTL_MS,
  skipUnwatched: true,
  applicationName: "turbocast",
  poolSize: 4,
  commandTimeoutMs: 2_000,
  connectTimeoutMs: 10_000,
  maxBackoffMs: 2_000,
} as const;

/** Checks a postgresBroker's options and fills in every default. */
export function resolvePostgresOptions(options: PostgresBrokerOptions | string) {
  if (typeof options === "string") options = { connectionString: options };
  if (!options || typeof options.connectionString !== "string" || options.connectionString === "") {
    throw new ConfigError(
      'postgresBroker needs { connectionString }, for example postgresBroker({ connectionString: "postgres://127.0.0.1:5432/app" })',
    );
  }
  const prefix = options.prefix ?? DEFAULTS.prefix;
  const channel = options.channel ?? prefix;
  for (const [name, value] of [
    ["prefix", prefix],
    ["channel", channel],
  ] as const) {
    if (!IDENTIFIER.test(value)) {
      throw new ConfigError(
        `postgresBroker ${name} "${value}" must be lowercase letters, digits and _ (at most 41 characters)`,
      );
    }
  }
  const history = resolveHistory(options.history);
  const connection: ConnectionConfig = {
    connectionString: withDefaultUser(options.connectionString),
    applicationName: options.applicationName ?? DEFAULTS.applicationName,
    poolSize: options.poolSize ?? DEFAULTS.poolSize,
    commandTimeoutMs: options.commandTimeoutMs ?? DEFAULTS.commandTimeoutMs,
  };
  return {
    target: redactUrl(options.connectionString),
    prefix,
    channel,
    history,
    idleMs: Math.max(options.idleMs ?? DEFAULTS.idleMs, history.ageMs),
    connection,
    watchTtlMs: options.watchTtlMs ?? DEFAULTS.watchTtlMs,
    skipUnwatched: options.skipUnwatched ?? DEFAULTS.skipUnwatched,
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
    maxBackoffMs: options.maxBackoffMs ?? DEFAULTS.maxBackoffMs,
    sweepIntervalMs: options.sweepIntervalMs ?? Math.min(30_000, Math.max(1_000, Math.floor(history.ageMs / 2))),
  };
}
