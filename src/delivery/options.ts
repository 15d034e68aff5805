import type { Request } from "express";
import { ConfigError } from "../errors.js";

/** How a `<turbo-stream-source>` connects: Server-Sent Events or WebSocket. */
export type Transport = "sse" | "websocket";

/**
 * Who is subscribing. Receives the subscription request: for SSE the Express
 * request (after every middleware mounted before `turbo.middleware()`); for
 * WebSocket the upgrade request, which Express middleware never sees — it has
 * Express's request methods (`req.get`, `req.host`, `req.ip`) but no
 * `req.session` or `req.cookies`: read cookies from `req.headers.cookie`.
 */
export type Authenticate = (req: Request) => unknown;

/** The delivery options of createTurbo. Every default is listed here and applied in `resolveDeliveryOptions`. */
export interface DeliveryOptions {
  /**
   * Signs stream names (HMAC-SHA256); at least 32 characters. Required when
   * NODE_ENV=production (ConfigError otherwise). Elsewhere, when absent, a
   * secret is generated once and kept in `secretFile`.
   */
  secret?: string;
  /** Where the development secret is kept. Default `".turbocast-secret"` in the current directory. */
  secretFile?: string;
  /** Signed stream names expire this many ms after the page was rendered. Default: never (as turbo-rails). */
  signatureTtlMs?: number;
  /** Gives the user of a subscription, passed to every stream's `userPassesTest`. May be async. Default `() => null`. */
  authenticate?: Authenticate;
  /** The one path serving SSE (GET), WebSocket upgrades and `client.js`. Default `"/turbo-streams"`. */
  path?: string;
  /** Transport of `turbo_stream_from` when a call does not choose. Default `"sse"`. */
  transport?: Transport;
  /**
   * Origins (`"https://app.example.com"`) allowed to open WebSockets besides the
   * app's own (an Origin whose host is the request's Host, or X-Forwarded-Host
   * under Express's trust proxy). Default `[]`.
   */
  allowedOrigins?: readonly string[];
  /** SSE comment lines and WebSocket pings this often; a WebSocket that missed the last ping's pong is terminated. Default 15,000. */
  heartbeatMs?: number;
  /** The SSE `retry:` sent to EventSource (its reconnect delay), ms. Default 1,000. */
  retryMs?: number;
  /** A subscriber whose unsent bytes pass this bound is disconnected (it resumes when it reconnects). Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Most streams in one subscription (one `turbo_stream_from`). Default 20. */
  maxStreamsPerSubscription?: number;
  /** Longest subscription URL (path and query) accepted; longer gets 414. Default 8,192. */
  maxUrlLength?: number;
  /**
   * The key a live subscription is found by in `turbo.disconnect({ user })`,
   * from the user `authenticate` returned. Keys are compared as strings (they
   * cross processes). Default: `user.id` when it is a string or number, else
   * the user itself when it is one; otherwise the subscription has no key.
   */
  userKey?: (user: unknown) => string | number | null | undefined;
  /**
   * Every open subscription's `userPassesTest` is run again this often, each
   * at its own moment within the interval; one that fails gets a refresh and
   * is closed. `false` turns the periodic re-check off (`turbo.disconnect` and
   * `turbo.reauthorize` still work). Default 60,000.
   */
  reauthorizeMs?: number | false;
  /**
   * Most subscriptions one shared connection holds (the sources of a page,
   * or of a browser's tabs with sharing on): past it a WebSocket `subscribe`
   * is answered with an error (429), and a union SSE URL may name at most
   * this many times `maxStreamsPerSubscription` streams. Default 32.
   */
  maxSubscriptionsPerConnection?: number;
  /** Largest WebSocket message a client may send (a control message); larger closes the socket with 1009. Default 16,384 bytes. */
  maxMessageBytes?: number;
  /**
   * WebSocket control messages a client may send per second, on average
   * (bursts of twice as many pass); faster closes the socket with 1008.
   * Default 20.
   */
  maxMessagesPerSecond?: number;
}

export type ResolvedDeliveryOptions = Required<
  Omit<DeliveryOptions, "secret" | "secretFile" | "signatureTtlMs" | "userKey">
> & {
  signatureTtlMs: number | undefined;
  userKey: (user: unknown) => string | undefined;
};

export const DELIVERY_DEFAULTS = {
  path: "/turbo-streams",
  transport: "sse",
  allowedOrigins: [],
  heartbeatMs: 15_000,
  retryMs: 1_000,
  maxBufferedBytes: 1024 * 1024,
  maxStreamsPerSubscription: 20,
  maxUrlLength: 8_192,
  reauthorizeMs: 60_000,
  maxSubscriptionsPerConnection: 32,
  maxMessageBytes: 16_384,
  maxMessagesPerSecond: 20,
} as const;

/** userKey's default: `user.id`, else the user itself, when it is a string or a number. */
export function defaultUserKey(user: unknown): string | number | undefined {
  const id = user !== null && typeof user === "object" ? (user as { id?: unknown }).id : user;
  return typeof id === "string" || typeof id === "number" ? id : undefined;
}

/** Applies the defaults and refuses what cannot work, naming the option. */
export function resolveDeliveryOptions(options: DeliveryOptions): ResolvedDeliveryOptions {
  const path = options.path ?? DELIVERY_DEFAULTS.path;
  if (
    typeof path !== "string" ||
    !/^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$/.test(path) ||
    (path.length > 1 && path.endsWith("/"))
  ) {
    throw new ConfigError(
      `path must be an absolute URL path without query or trailing slash, got ${JSON.stringify(path)}`,
    );
  }
  const transport = options.transport ?? DELIVERY_DEFAULTS.transport;
  if (transport !== "sse" && transport !== "websocket") {
    throw new ConfigError(`transport must be "sse" or "websocket", got ${JSON.stringify(transport)}`);
  }
  const authenticate = options.authenticate ?? (() => null);
  if (typeof authenticate !== "function") throw new ConfigError("authenticate must be a function (req) => user | null");
  const allowedOrigins = (options.allowedOrigins ?? DELIVERY_DEFAULTS.allowedOrigins).map((origin) => {
    let url: URL;
    try {
      url = new URL(origin);
    } catch (error) {
      throw new ConfigError(
        `allowedOrigins: ${JSON.stringify(origin)} is not an origin like "https://app.example.com"`,
        { cause: error },
      );
    }
    return url.origin;
  });
  const positive = (name: keyof DeliveryOptions, value: number | undefined, fallback: number): number => {
    const n = value ?? fallback;
    if (typeof n !== "number" || !Number.isFinite(n) || n <= 0)
      throw new ConfigError(`${name} must be a positive number, got ${String(n)}`);
    return n;
  };
  const signatureTtlMs =
    options.signatureTtlMs === undefined ? undefined : positive("signatureTtlMs", options.signatureTtlMs, 0);
  const maxStreamsPerSubscription = positive(
    "maxStreamsPerSubscription",
    options.maxStreamsPerSubscription,
    DELIVERY_DEFAULTS.maxStreamsPerSubscription,
  );
  if (!Number.isInteger(maxStreamsPerSubscription))
    throw new ConfigError("maxStreamsPerSubscription must be an integer");
  const userKey = options.userKey ?? defaultUserKey;
  if (typeof userKey !== "function") throw new ConfigError("userKey must be a function (user) => string | number");
  const reauthorizeMs =
    options.reauthorizeMs === false
      ? false
      : positive("reauthorizeMs", options.reauthorizeMs, DELIVERY_DEFAULTS.reauthorizeMs);
  const maxSubscriptionsPerConnection = positive(
    "maxSubscriptionsPerConnection",
    options.maxSubscriptionsPerConnection,
    DELIVERY_DEFAULTS.maxSubscriptionsPerConnection,
  );
  if (!Number.isInteger(maxSubscriptionsPerConnection))
    throw new ConfigError("maxSubscriptionsPerConnection must be an integer");
  return {
    path,
    transport,
    userKey: (user) => {
      if (user === null || user === undefined) return undefined;
      const key = userKey(user);
      return key === null || key === undefined ? undefined : String(key);
    },
    reauthorizeMs,
    authenticate,
    allowedOrigins,
    signatureTtlMs,
    heartbeatMs: positive("heartbeatMs", options.heartbeatMs, DELIVERY_DEFAULTS.heartbeatMs),
    retryMs: positive("retryMs", options.retryMs, DELIVERY_DEFAULTS.retryMs),
    maxBufferedBytes: positive("maxBufferedBytes", options.maxBufferedBytes, DELIVERY_DEFAULTS.maxBufferedBytes),
    maxStreamsPerSubscription,
    maxUrlLength: positive("maxUrlLength", options.maxUrlLength, DELIVERY_DEFAULTS.maxUrlLength),
    maxSubscriptionsPerConnection,
    maxMessageBytes: positive("maxMessageBytes", options.maxMessageBytes, DELIVERY_DEFAULTS.maxMessageBytes),
    maxMessagesPerSecond: positive(
      "maxMessagesPerSecond",
      options.maxMessagesPerSecond,
      DELIVERY_DEFAULTS.maxMessagesPerSecond,
    ),
  };
}
