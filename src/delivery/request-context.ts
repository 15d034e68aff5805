import { AsyncLocalStorage } from "node:async_hooks";
import { createHash } from "node:crypto";

/**
 * The request a piece of server code runs for, as turbocast needs it.
 * `turbo.middleware()` runs the rest of the request inside one, so:
 *
 * - a refresh broadcast while handling a request (directly, or from a hook
 *   of a write it made) carries `request-id`, and the page that made the
 *   request ignores its own refresh (as turbo-rails);
 * - a change the request writes reaches its hooks with `actor`, the user
 *   `authenticate` returns for the request (asked once, and only by a
 *   request that writes to a bound table);
 * - a broadcast `{ toOthers: true }` skips the page that made the request.
 *
 * `turbo.suppressingBroadcasts(fn)` runs `fn` in a scope of its own marked
 * `suppressed`: the changes written there are not dispatched.
 */
export interface RequestScope {
  /** The X-Turbo-Request-Id Turbo sent, if any. */
  readonly requestId: string | undefined;
  /** The page that made the request (the id its client script sends in X-Turbocast-Page), if known. */
  readonly page?: string | undefined;
  /** The request's user, as `authenticate` returns it (called at most once per request). */
  readonly actor?: (() => unknown) | undefined;
  /** Writes made in this scope are not dispatched (`turbo.suppressingBroadcasts`). */
  readonly suppressed?: boolean | undefined;
}

const storage = new AsyncLocalStorage<RequestScope>();

const REQUEST_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

/** The X-Turbo-Request-Id of a request, when it looks like one (Turbo sends a UUID). */
export function readRequestId(header: string | string[] | undefined): string | undefined {
  return typeof header === "string" && REQUEST_ID.test(header) ? header : undefined;
}

/** The header the client script sets on Turbo's fetches: the id of the page making the request. */
export const PAGE_HEADER = "x-turbocast-page";

const PAGE_ID = /^[A-Za-z0-9_-]{16,64}$/;

/** A page id as a page sends it back (the `p=` of its stream source), when it looks like one. */
export function readPageId(value: string | string[] | null | undefined): string | undefined {
  return typeof value === "string" && PAGE_ID.test(value) ? value : undefined;
}

/**
 * What a `{ toOthers: true }` frame carries to name the page it skips: a
 * digest of the page id, not the id itself, since every other subscriber of
 * the stream sees the frame (and could otherwise send that id as its own
 * header to mute the page's broadcasts).
 */
export function pageDigest(page: string): string {
  return createHash("sha256").update(page).digest("base64url").slice(0, 22);
}

export function runInRequest<T>(scope: RequestScope, fn: () => T): T {
  return storage.run(scope, fn);
}

/** The scope of the code running now, if any. */
export function currentScope(): RequestScope | undefined {
  return storage.getStore();
}

/** The X-Turbo-Request-Id of the request being handled, if any. */
export function currentRequestId(): string | undefined {
  return storage.getStore()?.requestId;
}

/**
 * Runs `fn` outside any request scope (timers it schedules carry no request
 * id). As a scope of `undefined`, not `storage.exit`: on Node 20 exit()
 * disables and re-enables the async hook behind the storage, some
 * microseconds a call — and this runs after every write the app makes.
 */
export function outsideRequest<T>(fn: () => T): T {
  return storage.run(undefined as unknown as RequestScope, fn);
}

/** A scope is remembered this long after its last write: the feed dispatches within milliseconds, a stalled one within seconds. */
const KEEP_MS = 5 * 60_000;

interface Remembered {
  scope: RequestScope;
  lastWrite: number;
}

/**
 * Names the scopes that wrote captured changes, so the feed can find them
 * again: the change log notes (RequestNotes) hold a short token per scope,
 * and the dispatcher turns it back into the scope — its request id, page,
 * actor and suppression. Only scopes that wrote are kept, for KEEP_MS after
 * their last write; a change dispatched later than that (a feed stalled for
 * minutes) is dispatched as if written outside any request. A request's
 * user is asked for right after its first captured write, so a kept scope
 * holds the user, not the request.
 */
export class ScopeTokens {
  readonly #tokens = new WeakMap<RequestScope, string>();
  readonly #byToken = new Map<string, Remembered>();
  #next = 0;

  /** The token of the scope running now (registering it), or undefined outside any scope. */
  current(): string | undefined {
    const scope = storage.getStore();
    if (scope === undefined) return undefined;
    const now = Date.now();
    let token = this.#tokens.get(scope);
    const known = token === undefined ? undefined : this.#byToken.get(token);
    if (known) {
      known.lastWrite = now;
      return token;
    }
    token ??= (this.#next++).toString(36);
    this.#tokens.set(scope, token);
    this.#forgetOld(now);
    this.#byToken.set(token, { scope, lastWrite: now });
    // the scope wrote: ask authenticate now (once), after the statement, so what is kept is the user, not the request
    const actor = scope.actor;
    if (actor) queueMicrotask(() => void actor());
    return token;
  }

  /** The scope a token names, if still remembered. */
  scope(token: string): RequestScope | undefined {
    return this.#byToken.get(token)?.scope;
  }

  /** Runs `fn` inside the scope a token names (outside any, if forgotten). */
  run<T>(token: string, fn: () => T): T {
    const scope = this.scope(token);
    return scope === undefined ? outsideRequest(fn) : storage.run(scope, fn);
  }

  /**
   * Drops the scopes at the head of the map (first-write order) whose last
   * write is older than KEEP_MS; stops at the first still in use, so a
   * long-lived writer only delays the pruning of those behind it.
   */
  #forgetOld(now: number): void {
    for (const [token, entry] of this.#byToken) {
      if (now - entry.lastWrite < KEEP_MS) return;
      this.#byToken.delete(token);
    }
  }
}

/**
 * Memoises a possibly async `authenticate(req)`: one call per request, a
 * throw or rejection becomes undefined; the request is let go once asked.
 */
export function onceActor(resolve: () => unknown): () => unknown {
  let done = false;
  let value: unknown;
  let ask: (() => unknown) | null = resolve;
  return () => {
    if (done) return value;
    done = true;
    const call = ask!;
    ask = null;
    try {
      value = call();
    } catch {
      value = undefined;
      return value;
    }
    if (typeof (value as PromiseLike<unknown> | null)?.then === "function") {
      value = Promise.resolve(value).then(
        (user) => {
          value = user;
          return user;
        },
        () => {
          value = undefined;
          return undefined;
        },
      );
    }
    return value;
  };
}
