import type { Request } from "express";
import { parsePosition } from "../brokers/broker.js";
import { BadSignatureError, SubscriptionRefusedError } from "../errors.js";
import type { LogThrottle } from "../log-throttle.js";
import type { StreamRegistry } from "../streams/registry.js";
import type { Stream } from "../streams/stream.js";
import type { DataStart } from "../data/subscription.js";
import type { Connection } from "./connection.js";
import type { ConnectionRegistry } from "./connection-registry.js";
import type { ResolvedDeliveryOptions } from "./options.js";
import { type ParsedSubscription, type StreamSigner, tokenStreamName } from "./stream-source.js";

/**
 * Internal status of a subscription whose signatures are genuine but expired
 * (`signatureTtlMs`). SSE answers it with one refresh frame — the reloaded
 * page carries fresh signatures — because EventSource gives up for good on
 * any non-200 answer; a WebSocket upgrade gets 403.
 */
export const EXPIRED_STATUS = 410;

const refuse = (status: number, reason: string, cause?: unknown): SubscriptionRefusedError =>
  new SubscriptionRefusedError(status, reason, cause === undefined ? undefined : { cause });

/**
 * What the SSE endpoint and the WebSocket upgrade share, from a request to a
 * live hub subscription (given them by DeliveryEndpoint).
 */
export interface SubscriptionSteps {
  readonly options: ResolvedDeliveryOptions;
  readonly connections: ConnectionRegistry;
  /** Every line a request can make the server log goes through it. */
  readonly log: LogThrottle;
  /** Whether new subscriptions are taken (false once close() began). */
  accepting(): boolean;
  /** `authorize()` with this instance's signer, registry and authenticate. */
  authorize(req: Request, parsed: ParsedSubscription, checkOrigin?: () => boolean): Promise<Authorized>;
  /**
   * Registers an authorized connection (started, not yet subscribed) for the
   * heartbeat, close() and live authorization; false when a disconnect
   * naming it came in while it was being authorized (it was revoked).
   */
  admit(connection: Connection, authorized: Authorized): boolean;
  /** Says on the server why a subscription was refused (the client only ever sees the status). */
  refused(error: SubscriptionRefusedError): void;
  /**
   * Replays from `cursor` (or from each stream's own, see SubscribeOptions.cursors) into a registered
   * connection, then goes live; a failed replay ends it so the client retries.
   */
  subscribe(connection: Connection, names: string[], cursor: Cursor): Promise<void>;
  /**
   * Subscribes a registered connection to the data channels of `names`
   * (data/subscription.ts); throws SyncError when its sync cannot be answered.
   */
  subscribeData(connection: Connection, names: string[], start: DataStart): Promise<void>;
  /** Why a data subscription of `names` would be refused before it starts (400 a sync of several streams, 404 no sync), or null. */
  dataRefusal(names: readonly string[], sync: boolean): number | null;
}

/** What a granted subscription is: what live authorization needs to check it again, or to find it. */
export interface Authorized {
  /** The distinct stream names. */
  readonly names: string[];
  readonly user: unknown;
  /** userKey(user); undefined for no user. */
  readonly userKey: string | undefined;
  /** When the earliest signature expires; undefined: never. */
  readonly expiresAt: number | undefined;
  /** LiveAuthorization.mark() before the checks began. */
  readonly mark: number;
}
/**
 * Where a subscription starts: one cursor for every stream, or one per
 * stream (a union URL); and the page it is for (`{ toOthers: true }` frames
 * of that page's requests skip it).
 */
export type Cursor = (
  | { cursor: string | null; refresh: boolean }
  | { cursors: ReadonlyMap<string, string | null>; refresh: boolean }
) & { page?: string | null };

export interface AuthorizeContext {
  signer: StreamSigner;
  registry: StreamRegistry;
  authenticate: (req: Request) => unknown;
  userKey: (user: unknown) => string | undefined;
  /** LiveAuthorization.mark(): taken before the checks, so a disconnect during them is not missed. */
  mark: () => number;
  log: LogThrottle;
  /** WebSocket upgrades: whether the Origin may subscribe (checked after the signatures). */
  checkOrigin?: () => boolean;
}

/**
 * Decides a subscription, in the order of DESIGN.md "Subscribing": every
 * signature is verified before any stream is looked up; then the Origin of
 * a WebSocket upgrade is checked; then the names are
 * resolved to streams; then the user is authenticated and every stream's
 * `userPassesTest` must pass. Every refusal is the same 403, so a client
 * learns nothing about which stream exists or which check failed. A name
 * that verifies but that no class serves (a class removed since the page
 * was rendered) is refused with that same 403 rather than a 404.
 * Resolves with the distinct stream names, the user and the earliest expiry.
 */
export async function authorize(
  req: Request,
  parsed: ParsedSubscription,
  context: AuthorizeContext,
): Promise<Authorized> {
  const mark = context.mark();
  const names: string[] = [];
  let expiresAt: number | undefined;
  for (const token of parsed.tokens) {
    try {
      const opened = context.signer.open(token);
      names.push(opened.name);
      if (opened.expiresAt !== undefined) expiresAt = Math.min(expiresAt ?? Infinity, opened.expiresAt);
    } catch (error) {
      // a genuine token past its expiry: the page is stale, not hostile (see EXPIRED_STATUS)
      if (error instanceof BadSignatureError && error.expired) throw refuse(EXPIRED_STATUS, "signature expired", error);
      throw refuse(403, "bad signature", error);
    }
  }
  if (context.checkOrigin && !context.checkOrigin()) throw refuse(403, "foreign Origin");
  const unique = [...new Set(names)];
  const streams: Stream[] = [];
  for (const name of unique) {
    try {
      streams.push(context.registry.resolve(name));
    } catch (error) {
      throw refuse(403, `unknown stream ${JSON.stringify(name)}`, error);
    }
  }
  let user: unknown;
  try {
    user = await context.authenticate(req);
  } catch (error) {
    context.log.log("authenticate threw", "error", "authenticate(req) threw; the subscription is refused with 500", {
      error,
    });
    throw refuse(500, "authenticate failed", error);
  }
  const verdicts = await Promise.all(
    streams.map(async (stream) => {
      try {
        return (await stream.userPassesTest(user ?? null)) === true;
      } catch (error) {
        // a throw is not a "no" (a busy database, a bug): answered as a transient failure the client retries
        context.log.log(
          `userPassesTest threw:${stream.constructor.name}`,
          "warn",
          `userPassesTest of ${stream.name} threw; the subscription is answered as a server error`,
          {
            error,
          },
        );
        throw refuse(500, "userPassesTest threw", error);
      }
    }),
  );
  const failed = verdicts.indexOf(false);
  if (failed !== -1) throw refuse(403, `userPassesTest refused ${JSON.stringify(unique[failed])}`);
  return { names: unique, user: user ?? null, userKey: context.userKey(user), expiresAt, mark };
}

/**
 * The cursor an SSE reconnect asks for: Last-Event-ID wins over the URL
 * position. A Last-Event-ID that is not a position we could have sent
 * (garbage, a proxy's, an over-long one) cannot say what the client missed,
 * so it gets one refresh frame — never a 400, which would stop EventSource
 * from ever reconnecting.
 */
export function sseCursor(
  lastEventId: string | undefined,
  after: string | null,
): { cursor: string | null; refresh: boolean } {
  if (lastEventId !== undefined && lastEventId !== "") {
    return parsePosition(lastEventId) === null
      ? { cursor: null, refresh: true }
      : { cursor: lastEventId, refresh: false };
  }
  return { cursor: after, refresh: false };
}

/**
 * The cursor of each stream of a union URL: the oldest position any of its
 * tokens gives (a stream two sources name replays for the older one, never
 * leaving a gap in the other), moved up to a Last-Event-ID from this same
 * union — its events go out in position order, so that id says every stream
 * has everything up to it. A Last-Event-ID we could not have sent gets a
 * refresh, as for an ordinary URL.
 */
export function unionCursors(
  parsed: ParsedSubscription & { positions: (string | null)[] },
  lastEventId: string | undefined,
): Cursor {
  const last = lastEventId === undefined || lastEventId === "" ? undefined : parsePosition(lastEventId);
  if (last === null) return { cursor: null, refresh: true };
  const cursors = new Map<string, string | null>();
  parsed.tokens.forEach((token, i) => {
    const name = tokenStreamName(token);
    const position = parsed.positions[i] ?? null;
    const known = cursors.get(name);
    if (known === undefined || (position !== null && (known === null || earlier(position, known))))
      cursors.set(name, position);
  });
  if (last !== undefined) {
    for (const [name, cursor] of cursors) {
      if (cursor === null || !earlier(lastEventId!, cursor)) cursors.set(name, lastEventId!);
    }
  }
  return { cursors, refresh: false };
}

/** Whether position `a` comes before `b` (another epoch counts as before: the newer id wins). */
function earlier(a: string, b: string): boolean {
  const pa = parsePosition(a);
  const pb = parsePosition(b);
  if (!pa || !pb || pa.epoch !== pb.epoch) return false;
  return pa.seq < pb.seq;
}
