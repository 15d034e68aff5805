import pg from "pg";
import { backoffMs, errorMessage } from "../../brokers/connection.js";
import { LogThrottle } from "../../log-throttle.js";
import type { Logger } from "../../logger.js";
import { quoteIdent } from "../sql.js";

export interface PgChangeListenerInit {
  /** How to connect: the app pool's own options (same server, user, search_path). */
  config: pg.ClientConfig;
  /** The channel the capture triggers notify (channelFor(logSchema)). */
  channel: string;
  /** A transaction that wrote changes committed, or the connection came back (changes may have been missed meanwhile). */
  onWake: () => void;
  logger: Logger;
  /** Reconnect delays double from 50 ms up to this. Default 2,000. */
  maxBackoffMs?: number;
  /** How often, in ms, an idle connection is checked (a dead link shows no error until something is sent). Default 10,000. */
  heartbeatMs?: number;
}

const LOST = "listen";

/**
 * The change feed's LISTEN connection: wakes the feed at every commit that
 * wrote changes, in any process on any machine (the triggers' pg_notify is
 * delivered at commit). When the connection is lost — the server restarted,
 * `pg_terminate_backend`, a network cut — it reconnects with backoff, logs
 * the outage once (LogThrottle), and wakes the feed once it is back, so
 * everything committed meanwhile is dispatched; the feed's safety poll covers
 * the rest. `start()` throws when the first connection fails (the caller
 * reports it as a startup error); `close()` is safe to call twice.
 */
export class PgChangeListener {
  readonly #config: pg.ClientConfig;
  readonly #channel: string;
  readonly #onWake: () => void;
  readonly #throttle: LogThrottle;
  readonly #maxBackoffMs: number;
  readonly #heartbeatMs: number;
  #state: "idle" | "open" | "closed" = "idle";
  #client: pg.Client | null = null;
  #attempt = 0;
  #reconnect: NodeJS.Timeout | null = null;
  #heartbeat: NodeJS.Timeout | null = null;

  constructor(init: PgChangeListenerInit) {
    this.#config = init.config;
    this.#channel = init.channel;
    this.#onWake = init.onWake;
    this.#throttle = new LogThrottle(init.logger, { intervalMs: Number.POSITIVE_INFINITY });
    this.#maxBackoffMs = init.maxBackoffMs ?? 2_000;
    this.#heartbeatMs = init.heartbeatMs ?? 10_000;
  }

  /** Whether the LISTEN connection is up now. */
  get connected(): boolean {
    return this.#client !== null;
  }

  async start(): Promise<void> {
    if (this.#state !== "idle") return;
    await this.#connect();
    this.#state = "open";
    this.#heartbeat = setInterval(() => void this.#check(), this.#heartbeatMs);
    this.#heartbeat.unref();
  }

  async close(): Promise<void> {
    if (this.#state === "closed") return;
    this.#state = "closed";
    if (this.#reconnect) clearTimeout(this.#reconnect);
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#reconnect = null;
    this.#heartbeat = null;
    const client = this.#client;
    this.#client = null;
    await client?.end().catch(() => {});
  }

  async #connect(): Promise<void> {
    // timeouts: on a cut link (no RST) a connect or heartbeat would otherwise wait forever
    const client = new pg.Client({
      connectionTimeoutMillis: this.#heartbeatMs,
      ...this.#config,
      query_timeout: this.#heartbeatMs,
      keepAlive: true,
    });
    // before connect: a refused connection emits "error" too, and an unheard one crashes the process
    client.on("error", (error) => this.#lost(client, error));
    client.on("end", () => this.#lost(client, undefined));
    client.on("notification", (message) => {
      if (client === this.#client && message.channel === this.#channel) this.#onWake();
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${quoteIdent(this.#channel)}`);
    } catch (error) {
      client.removeAllListeners("end");
      await client.end().catch(() => {});
      throw error;
    }
    this.#client = client;
  }

  #lost(client: pg.Client, error: unknown): void {
    if (client !== this.#client || this.#state !== "open") return;
    this.#client = null;
    client.end().catch(() => {});
    this.#throttle.log(
      LOST,
      "warn",
      `change feed lost its PostgreSQL LISTEN connection${error ? ` (${errorMessage(error)})` : ""}; reconnecting with backoff, changes committed meanwhile are dispatched when it is back`,
      error === undefined ? undefined : { error },
    );
    this.#schedule();
  }

  #schedule(): void {
    if (this.#state !== "open" || this.#reconnect) return;
    this.#attempt++;
    this.#reconnect = setTimeout(
      () => {
        this.#reconnect = null;
        void this.#retry();
      },
      backoffMs(this.#attempt, this.#maxBackoffMs),
    );
    this.#reconnect.unref();
  }

  async #retry(): Promise<void> {
    if (this.#state !== "open") return;
    try {
      await this.#connect();
    } catch {
      this.#schedule();
      return;
    }
    if (this.#state !== "open") {
      // closed while connecting
      const client = this.#client;
      this.#client = null;
      await client?.end().catch(() => {});
      return;
    }
    this.#attempt = 0;
    this.#throttle.recovered(
      LOST,
      "change feed's PostgreSQL LISTEN connection is back; dispatching what was committed meanwhile",
    );
    this.#onWake();
  }

  async #check(): Promise<void> {
    const client = this.#client;
    if (this.#state !== "open" || !client) return;
    try {
      await client.query("SELECT 1");
    } catch (error) {
      this.#lost(client, error);
    }
  }
}
