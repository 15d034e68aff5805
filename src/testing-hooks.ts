/**
 * What `turbocast/testing` reaches on a Turbo instance, under a symbol the
 * app's own code never sees (Symbol.for: the same key whichever copy of the
 * module loads it).
 */
export const TESTING = Symbol.for("turbocast.testing");

export interface TestingHooks {
  /** Calls `listener` with every frame published from now on (before the broker takes it); returns the untap. */
  tap(listener: (stream: string, frame: string) => void): () => void;
  /** Publishes the pending debounced refreshes now; resolves once they are published. */
  flushRefreshes(): Promise<void>;
}
