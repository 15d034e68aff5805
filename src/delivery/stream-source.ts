import { createHmac, timingSafeEqual } from "node:crypto";
import type { Request } from "express";
import { parsePosition } from "../brokers/broker.js";
import { BadSignatureError, ConfigError, InvalidStreamableError, SubscriptionRefusedError } from "../errors.js";
import { escapeHtml } from "../frames/escape.js";
import { MAX_STREAM_NAME_LENGTH } from "../streams/names.js";
import { type StreamRegistry, isModelStreamClass, isStreamClass } from "../streams/registry.js";
import { Stream } from "../streams/stream.js";
import type { ResolvedDeliveryOptions, Transport } from "./options.js";
import { pageDigest, readPageId } from "./request-context.js";

// What a page's `<turbo-stream-source>` carries, in one place for both ends:
// the view helper builds the tag and its URL from signed stream names, the
// subscription endpoints parse that URL and verify those names.

/**
 * Signed stream names: what a page carries in its `<turbo-stream-source src>`
 * so the server knows it rendered the tag. A token is
 *
 *   base64url(name) "." expiry "." base64url(HMAC-SHA256(key, expiry "\n" name))
 *
 * where `expiry` is empty (no expiry) or the expiry time in unix seconds
 * (base 36). The MAC covers the whole name and the expiry, so a signature for
 * one stream never opens another, and an expiry cannot be stretched. The key
 * is derived from the app secret for this one purpose, so the secret can be
 * shared with other uses (cookies) without a token of one being valid in the
 * other. Tokens use only `[A-Za-z0-9_.-]`: they go into URLs as they are.
 */
const KEY_PURPOSE = "turbocast/signed-stream-name/v1";
const MAC_LENGTH = 32;
const MAC_CHARS = 43; // base64url of 32 bytes, unpadded
const EXPIRY = /^[0-9a-z]{1,10}$/;

/** Longest token a valid name can produce: base64url(name) + 2 dots + expiry + MAC. */
export const MAX_TOKEN_LENGTH = Math.ceil((MAX_STREAM_NAME_LENGTH * 4) / 3) + 2 + 10 + MAC_CHARS;

export interface SignerOptions {
  /** The app secret (at least 32 characters). */
  secret: string;
  /** Tokens expire this many ms after signing; `undefined`: never. */
  ttlMs?: number | undefined;
  /** Clock, for tests. Default `Date.now`. */
  now?: () => number;
}

/** Signs and verifies stream names with one app secret. */
export class StreamSigner {
  #key: Buffer;
  #ttlMs: number | undefined;
  #now: () => number;

  constructor(options: SignerOptions) {
    this.#key = createHmac("sha256", options.secret).update(KEY_PURPOSE).digest();
    this.#ttlMs = options.ttlMs;
    this.#now = options.now ?? Date.now;
  }

  /** The signed token for a stream name. */
  sign(name: string): string {
    const expiry = this.#ttlMs === undefined ? "" : Math.ceil((this.#now() + this.#ttlMs) / 1000).toString(36);
    return `${Buffer.from(name, "utf8").toString("base64url")}.${expiry}.${this.#mac(expiry, name).toString("base64url")}`;
  }

  /**
   * The stream name a token was signed for. Throws BadSignatureError
   * (TURBOCAST_BAD_SIGNATURE) for anything else: malformed, truncated,
   * tampered, signed with another secret, or expired. The MAC is compared in
   * constant time, and only after the token's shape is checked — the shape
   * is public, so checking it first leaks nothing.
   */
  verify(token: string): string {
    return this.open(token).name;
  }

  /**
   * `verify()`, also giving when the token expires (ms since the epoch;
   * undefined: never): an open subscription is closed when its earliest
   * signature expires.
   */
  open(token: string): { name: string; expiresAt: number | undefined } {
    if (typeof token !== "string" || token.length > MAX_TOKEN_LENGTH) throw new BadSignatureError("malformed token");
    const parts = token.split(".");
    if (parts.length !== 3) throw new BadSignatureError("malformed token");
    const [encodedName, expiry, encodedMac] = parts as [string, string, string];
    if (encodedName === "" || !/^[A-Za-z0-9_-]+$/.test(encodedName)) throw new BadSignatureError("malformed token");
    if (expiry !== "" && !EXPIRY.test(expiry)) throw new BadSignatureError("malformed expiry");
    if (encodedMac.length !== MAC_CHARS || !/^[A-Za-z0-9_-]+$/.test(encodedMac))
      throw new BadSignatureError("malformed signature");
    const name = Buffer.from(encodedName, "base64url").toString("utf8");
    // base64url decoding is lenient: insist the name re-encodes to exactly what was sent
    if (Buffer.from(name, "utf8").toString("base64url") !== encodedName) throw new BadSignatureError("malformed token");
    const given = Buffer.from(encodedMac, "base64url");
    // the last of 43 characters carries 2 unused bits: four spellings decode to one MAC; accept only the canonical one
    if (given.length !== MAC_LENGTH || given.toString("base64url") !== encodedMac)
      throw new BadSignatureError("malformed signature");
    const expected = this.#mac(expiry, name);
    if (!timingSafeEqual(given, expected)) throw new BadSignatureError("signature mismatch");
    if (expiry !== "" && parseInt(expiry, 36) * 1000 <= this.#now())
      throw new BadSignatureError("signature expired", { expired: true });
    return { name, expiresAt: expiry === "" ? undefined : parseInt(expiry, 36) * 1000 };
  }

  #mac(expiry: string, name: string): Buffer {
    return createHmac("sha256", this.#key).update(`${expiry}\n${name}`, "utf8").digest();
  }
}

/**
 * The query of a subscription URL: `?s=<signed name>&s=<signed name>&after=<position>`.
 * `s` carries one signed stream name per occurrence; `after` is the
 * position the page was rendered at (or, on a WebSocket reconnect by the
 * client script, the last position it received). The client script
 * (client/turbocast-client.js) rewrites `after` itself: keep the two in step.
 */
export const STREAM_PARAM = "s";
export const AFTER_PARAM = "after";
/**
 * The id of the page that rendered the source (page-middleware.ts): the
 * client script sends it back with the page's requests (X-Turbocast-Page),
 * and frames broadcast `{ toOthers: true }` for those requests skip this
 * subscription. Unsigned: a page can only name itself, and at worst mute
 * its own toOthers frames.
 */
export const PAGE_PARAM = "p";
/**
 * A union URL (the client script's one EventSource for all the sources of a
 * page) gives each signed name its own position: `s=<token>~<position>`
 * (`s=<token>` alone: live from now), and no `after=`.
 */
export const POSITION_SEPARATOR = "~";

export interface ParsedSubscription {
  tokens: string[];
  after: string | null;
  /** The digest of the page id (`p=`), as toOthers frames carry it; null when absent or malformed. */
  page: string | null;
  /** A union URL's position per token (aligned with `tokens`); absent for an ordinary URL. */
  positions?: (string | null)[];
}

/** The subscription URL of signed stream names `tokens` from `after`: path-absolute, as SSE sources use it. */
export function subscriptionUrl(
  path: string,
  tokens: readonly string[],
  after: string | null,
  page?: string | undefined,
): string {
  const query = new URLSearchParams();
  for (const token of tokens) query.append(STREAM_PARAM, token);
  if (after !== null) query.append(AFTER_PARAM, after);
  if (page !== undefined) query.append(PAGE_PARAM, page);
  return `${path}?${query.toString()}`;
}

/**
 * Reads the signed names and the position from a request URL, checking the
 * bounds before anything else is done with them. Throws
 * SubscriptionRefusedError: 414 for a URL over `maxUrlLength`, 400 for a
 * malformed query (no stream, an empty or over-long token, too many
 * streams, a repeated or malformed `after`).
 */
export function parseSubscriptionUrl(
  rawUrl: string,
  options: Pick<
    ResolvedDeliveryOptions,
    "maxUrlLength" | "maxStreamsPerSubscription" | "maxSubscriptionsPerConnection"
  >,
): ParsedSubscription {
  if (rawUrl.length > options.maxUrlLength)
    throw new SubscriptionRefusedError(414, `URL of ${rawUrl.length} characters`);
  let params: URLSearchParams;
  try {
    params = new URL(rawUrl, "http://turbocast.invalid").searchParams;
  } catch (error) {
    throw new SubscriptionRefusedError(400, "unparseable URL", { cause: error });
  }
  const values = params.getAll(STREAM_PARAM);
  if (values.length === 0) throw new SubscriptionRefusedError(400, `no ${STREAM_PARAM}= parameter`);
  const union = values.some((value) => value.includes(POSITION_SEPARATOR));
  const most = union
    ? options.maxStreamsPerSubscription * options.maxSubscriptionsPerConnection
    : options.maxStreamsPerSubscription;
  if (values.length > most) throw new SubscriptionRefusedError(400, `${values.length} streams; at most ${most}`);
  const tokens: string[] = [];
  const positions: (string | null)[] = [];
  for (const value of values) {
    const at = value.indexOf(POSITION_SEPARATOR);
    const token = at === -1 ? value : value.slice(0, at);
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH)
      throw new SubscriptionRefusedError(400, `a signed stream name of ${token.length} characters`);
    const position = at === -1 ? null : value.slice(at + 1);
    if (position !== null && parsePosition(position) === null)
      throw new SubscriptionRefusedError(400, "malformed position of a signed stream name");
    tokens.push(token);
    positions.push(position);
  }
  const afters = params.getAll(AFTER_PARAM);
  if (afters.length > 1) throw new SubscriptionRefusedError(400, `${AFTER_PARAM}= given ${afters.length} times`);
  if (union && afters.length > 0)
    throw new SubscriptionRefusedError(400, `${AFTER_PARAM}= in a URL whose names carry their own positions`);
  const after = afters[0] ?? null;
  if (after !== null && parsePosition(after) === null)
    throw new SubscriptionRefusedError(400, `malformed ${AFTER_PARAM}= position`);
  const id = readPageId(params.get(PAGE_PARAM));
  const page = id === undefined ? null : pageDigest(id);
  return union ? { tokens, after, page, positions } : { tokens, after, page };
}

/**
 * The stream name inside a token, unverified: only for a token `authorize`
 * has already verified (it maps a union URL's positions onto its streams).
 */
export function tokenStreamName(token: string): string {
  return Buffer.from(token.slice(0, token.indexOf(".")), "base64url").toString("utf8");
}

/**
 * What `turbo_stream_from` accepts: a row of a bound table (it carries
 * `.stream`), a Stream instance, a ModelStream class (its table-wide
 * `.all()` stream), a plain Stream class (its one stream), a plain name
 * served by a registered Stream class ("lobby"), or an array of these.
 */
export type Streamable = object | string | readonly Streamable[];

export interface StreamSourceOptions {
  /** Default: the app's `transport` option. */
  transport?: Transport;
}

export interface StreamSourceRendererOptions {
  registry: StreamRegistry;
  signer: StreamSigner;
  path: string;
  transport: Transport;
  maxStreams: number;
  /** The newest position this process has seen: the cursor when a template renders outside a request (in a hook). */
  latestPosition: () => string | null;
}

/** Builds `<turbo-stream-source>` tags: one tag, one connection, for all the streams named. */
export class StreamSourceRenderer {
  #options: StreamSourceRendererOptions;

  constructor(options: StreamSourceRendererOptions) {
    this.#options = options;
  }

  /**
   * The tag for `streamables`, subscribed from `position`. With `rendered`
   * (the names already subscribed by earlier tags of the same request), a
   * name in it is left out and the others are added to it: a later tag
   * carries only what is new, or is the empty string, so a page never
   * receives a frame twice because two templates named one stream. SSE sources get a
   * path-absolute URL; WebSocket sources an absolute ws:// or wss:// URL
   * built from the request (`req.protocol` and `req.host`, so Express's
   * trust proxy setting decides whether X-Forwarded-Proto/Host count),
   * because Turbo's element opens a WebSocket only for ws: and wss: URLs.
   */
  render(
    req: Request | undefined,
    position: string | null,
    streamables: readonly Streamable[],
    options: StreamSourceOptions = {},
    page?: string,
    rendered?: Set<string>,
  ): string {
    const transport = options.transport ?? this.#options.transport;
    if (transport !== "sse" && transport !== "websocket") {
      throw new InvalidStreamableError(
        `turbo_stream_from: transport must be "sse" or "websocket", got ${JSON.stringify(transport)}`,
      );
    }
    let names = this.streamNames(streamables);
    if (rendered) {
      names = names.filter((name) => !rendered.has(name));
      for (const name of names) rendered.add(name);
      if (names.length === 0) return "";
    }
    const tokens = names.map((name) => this.#options.signer.sign(name));
    let src = subscriptionUrl(this.#options.path, tokens, position ?? this.#options.latestPosition(), page);
    if (transport === "websocket") {
      if (!req) {
        throw new ConfigError(
          'turbo_stream_from(..., transport="websocket") needs the request to build a ws:// URL: render through res.render() after turbo.middleware()',
        );
      }
      src = `${req.protocol === "https" ? "wss" : "ws"}://${req.host}${src}`;
    }
    return `<turbo-stream-source src="${escapeHtml(src)}"></turbo-stream-source>`;
  }

  /** The distinct stream names of `streamables`, in order. Throws on none, on too many, and on anything that is not a streamable. */
  streamNames(streamables: readonly Streamable[]): string[] {
    const names = this.namesOf(streamables);
    if (names.length === 0) {
      throw new InvalidStreamableError(
        "turbo_stream_from needs at least one streamable: a row, a Stream, a ModelStream class or a stream name",
      );
    }
    if (names.length > this.#options.maxStreams) {
      throw new InvalidStreamableError(
        `turbo_stream_from names ${names.length} streams; at most ${this.#options.maxStreams} (maxStreamsPerSubscription) fit one subscription`,
      );
    }
    return names;
  }

  /**
   * The distinct stream names of `streamables`, in order, read as
   * `turbo_stream_from` reads them (a ModelStream class is its table-wide
   * stream), with no bound on their number. Throws InvalidStreamableError
   * for anything that is not a streamable.
   */
  namesOf(streamables: readonly Streamable[]): string[] {
    const names: string[] = [];
    const add = (value: unknown, index: number): void => {
      if (Array.isArray(value)) {
        for (const item of value) add(item, index);
        return;
      }
      const name = this.#toStream(value, index).name;
      if (!names.includes(name)) names.push(name);
    };
    streamables.forEach(add);
    return names;
  }

  #toStream(value: unknown, index: number): Stream {
    if (value instanceof Stream) return value;
    if (isModelStreamClass(value)) return value.all();
    if (isStreamClass(value)) return value.for();
    if (typeof value === "string") {
      const cls = this.#options.registry.namedClass(value);
      if (cls) return cls.for();
      // a full namespaced name ("named:notifications:7", "row:rooms:1") of a registered class
      return this.#options.registry.resolve(value);
    }
    if (value !== null && typeof value === "object" && "stream" in value) {
      // a row's `.stream` getter throws MissingPrimaryKeyError for a row without its key
      const stream = (value as { stream: unknown }).stream;
      if (stream instanceof Stream) return stream;
    }
    throw new InvalidStreamableError(
      `turbo_stream_from: argument ${index + 1} (${describe(value)}) is not a streamable: pass a row read through the app's db, ` +
        "a Stream, a ModelStream class or a stream name",
    );
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (typeof value === "function") return `function ${value.name || "(anonymous)"}`;
  if (typeof value === "object") return `object with keys ${JSON.stringify(Object.keys(value).slice(0, 5))}`;
  return `${typeof value} ${JSON.stringify(value)}`;
}
