import { AsyncLocalStorage } from "node:async_hooks";
import type { FrameText, Published } from "../brokers/broker.js";
import { NotBoundError } from "../errors.js";
import type { FrameSpec } from "../frames/frame.js";

/** Options every broadcast method takes besides its target. */
export interface BroadcastOptions {
  /**
   * Skip the page that made the request this broadcast runs for (directly,
   * or from the hook of a change the request wrote). Needs the client
   * script: without it the page is unknown and every subscriber gets the frame.
   */
  toOthers?: boolean;
}

/**
 * What a stream class needs from the turbocast instance it is registered
 * with: render a template, publish a frame, reach the database. Kept small
 * so Stream and ModelStream stay free of transport and broker details.
 */
export interface StreamRuntime {
  /** Renders a template through the app's nunjucks environment (autoescape on). */
  render(template: string, context: object): string;
  /**
   * Publishes a frame to a stream; resolves with its position once the
   * broker took it. `toOthers`: the page that made the current request (if
   * known) does not get it.
   */
  publish(stream: string, frame: string, options?: BroadcastOptions): Promise<Published>;
  /** Publishes a data event (JSON) on a data channel (data/events.ts), unawaited; failures are logged like a frame's. Called unbound. */
  readonly publishData: (channel: string, json: string | FrameText) => void;
  /** Publishes one refresh per stream per debounce window (turbo-rails' debounced refresh). */
  refresh(stream: string, spec: Pick<FrameSpec, "requestId">): Promise<Published>;
  /** The app's Drizzle database (`this.db` on streams). */
  readonly db: unknown;
  /** Loads a row by primary key through the app's Drizzle database. */
  loadRow(table: unknown, pk: Record<string, unknown>): Promise<Record<string, unknown> | undefined>;
}

/**
 * Stream classes are module-level singletons (imported once per process),
 * while turbocast instances come and go (tests start many). A class is bound
 * to the instance that registered it last; close() unbinds it.
 */
/** A stream class (or an instance's `constructor`), used only as an identity. */
type StreamClassKey = object & { readonly name: string };

const bindings = new WeakMap<StreamClassKey, StreamRuntime>();

export function bindStreamClass(cls: StreamClassKey, runtime: StreamRuntime): void {
  bindings.set(cls, runtime);
}

export function unbindStreamClass(cls: StreamClassKey, runtime: StreamRuntime): void {
  if (bindings.get(cls) === runtime) bindings.delete(cls);
}

export function runtimeOf(cls: StreamClassKey): StreamRuntime {
  const runtime = bindings.get(cls);
  if (!runtime) throw new NotBoundError(cls.name || "stream class");
  return runtime;
}

/** The transaction a sync reads in, standing in for the app's database it was opened on. */
const readingIn = new AsyncLocalStorage<{ db: unknown; in: unknown }>();

/**
 * Runs `fn` with `this.db` of the streams bound to `db` being `tx` (a
 * transaction on it), for `fn` and everything it awaits: a stream class's
 * `sync` on PostgreSQL reads in the sync's REPEATABLE READ transaction.
 */
export function withStreamDb<T>(db: unknown, tx: unknown, fn: () => T): T {
  return readingIn.run({ db, in: tx }, fn);
}

/** `this.db` of a stream of `cls`: the app's database, or the transaction withStreamDb opened on it. */
export function streamDbOf(cls: StreamClassKey): unknown {
  const db = runtimeOf(cls).db;
  const reading = readingIn.getStore();
  return reading !== undefined && reading.db === db ? reading.in : db;
}
