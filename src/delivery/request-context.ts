import { AsyncLocalStorage } from "node:async_hooks";

/**
 * The request a piece of server code runs for, as turbocast needs it: the
 * id Turbo sent in `X-Turbo-Request-Id`. `turbo.middleware()` runs the rest
 * of the request inside it, so a refresh broadcast while handling a request
 * (directly, or from a hook of a write it made) carries `request-id`, and
 * the page that made the request ignores its own refresh (as turbo-rails).
 */
export interface RequestScope {
  readonly requestId: string | undefined;
}

const storage = new AsyncLocalStorage<RequestScope>();

const REQUEST_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

/** The X-Turbo-Request-Id of a request, when it looks like one (Turbo sends a UUID). */
export function readRequestId(header: string | string[] | undefined): string | undefined {
  return typeof header === "string" && REQUEST_ID.test(header) ? header : undefined;
}

export function runInRequest<T>(scope: RequestScope, fn: () => T): T {
  return storage.run(scope, fn);
}

/** The X-Turbo-Request-Id of the request being handled, if any. */
export function currentRequestId(): string | undefined {
  return storage.getStore()?.requestId;
}
