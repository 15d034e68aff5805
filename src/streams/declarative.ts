import { BroadcastConfigError, FrameOptionsError, TemplateRenderError } from "../errors.js";
import { buildFrame } from "../frames/frame.js";
import { domId, singularOf } from "./dom-id.js";
import type { ModelStream } from "./model-stream.js";
import { type BroadcastOptions, type StreamRuntime, runtimeOf } from "./runtime.js";
import { Stream } from "./stream.js";

/** What `broadcastsTo` / `broadcastsRefreshesTo` return for a row: a stream, several, or nothing (the row is in no list). */
export type BroadcastTarget = Stream | null | undefined | false | readonly BroadcastTarget[];

/**
 * A mapping's result: the targets, or a promise of them — an app on
 * PostgreSQL has only asynchronous queries (a room's members, a card's board).
 */
export type BroadcastMapping = BroadcastTarget | Promise<BroadcastTarget>;

/**
 * The defaults of the declarative form, in one place (turbo-rails'
 * conventions, with `<table>` the table's SQL name and `<singular>` its
 * singular, see singularOf):
 *
 *   partial    "<table>/_<singular>.njk"   rendered with { <singular>: row }
 *   target     "<table>"                   the list's element id, where rows are inserted
 *   insertsBy  "append"                    or "prepend"
 *   toOthers   false                       true: skip the page whose request wrote the row
 *   locals     none                        (row) => more variables for the partial, or a promise of them
 *
 * A row's own element id is `domId(row)` ("<singular>_<key>"): replace and
 * remove aim at it, so the partial's root element must carry it
 * (`id="{{ dom_id(message) }}"`).
 */
export const BROADCAST_DEFAULTS = {
  partial: (table: string, singular: string): string => `${table}/_${singular}.njk`,
  target: (table: string): string => table,
  insertsBy: "append",
  toOthers: false,
} as const;

/** A class's declarative broadcasts, resolved against the defaults. */
export interface DeclaredBroadcasts {
  /** "partials": insert / replace / remove with the partial; "refreshes": a debounced refresh. */
  kind: "partials" | "refreshes";
  mapping: (row: never) => BroadcastMapping;
  partial: string;
  /** The template's variable holding the row (the singular name). */
  local: string;
  target: string | ((row: never) => string);
  /** More variables for the partial, beside the row; may return a promise. */
  locals: ((row: never) => object | Promise<object>) | undefined;
  insertsBy: "append" | "prepend";
  toOthers: boolean;
}

const resolved = new WeakMap<typeof ModelStream, DeclaredBroadcasts | null>();

/**
 * The declarative broadcasts of a class (null: none). Throws
 * BroadcastConfigError for a class that sets both forms, or a static of the
 * wrong type.
 */
export function declaredBroadcasts(cls: typeof ModelStream): DeclaredBroadcasts | null {
  const cached = resolved.get(cls);
  if (cached !== undefined) return cached;
  const to = cls.broadcastsTo;
  const refreshes = cls.broadcastsRefreshesTo;
  let declared: DeclaredBroadcasts | null = null;
  if (to !== undefined && refreshes !== undefined) {
    throw new BroadcastConfigError(
      cls.name,
      "set broadcastsTo (partial updates) or broadcastsRefreshesTo (page refreshes), not both",
    );
  }
  const mapping = to ?? refreshes;
  if (mapping !== undefined) {
    if (typeof mapping !== "function") {
      throw new BroadcastConfigError(
        cls.name,
        `${to !== undefined ? "broadcastsTo" : "broadcastsRefreshesTo"} must be a function (row) => stream | stream[] | Promise<stream | stream[]>`,
      );
    }
    const table = cls.tableInfo().name;
    const singular = singularOf(cls);
    const insertsBy: string = cls.insertsBy ?? BROADCAST_DEFAULTS.insertsBy;
    if (insertsBy !== "append" && insertsBy !== "prepend") {
      throw new BroadcastConfigError(cls.name, `insertsBy must be "append" or "prepend", got ${String(insertsBy)}`);
    }
    const target = cls.target ?? BROADCAST_DEFAULTS.target(table);
    if ((typeof target !== "string" || target === "") && typeof target !== "function") {
      throw new BroadcastConfigError(cls.name, "target must be an element id or a function (row) => element id");
    }
    if (cls.locals !== undefined && typeof cls.locals !== "function") {
      throw new BroadcastConfigError(cls.name, "locals must be a function (row) => object | Promise<object>");
    }
    const partial = cls.partial ?? BROADCAST_DEFAULTS.partial(table, singular);
    if (typeof partial !== "string" || partial === "") {
      throw new BroadcastConfigError(cls.name, "partial must be a template name");
    }
    declared = {
      kind: to !== undefined ? "partials" : "refreshes",
      mapping: mapping as DeclaredBroadcasts["mapping"],
      partial,
      local: singular,
      target: target as DeclaredBroadcasts["target"],
      locals: cls.locals as DeclaredBroadcasts["locals"],
      insertsBy,
      toOthers: (cls.toOthers ?? BROADCAST_DEFAULTS.toOthers) === true,
    };
  }
  resolved.set(cls, declared);
  return declared;
}

/**
 * createTurbo's start-up check of a class's declarative broadcasts: the
 * forms and statics (declaredBroadcasts), and that the partial exists
 * (`loadTemplate` throws when it does not).
 */
export function checkDeclaredBroadcasts(cls: typeof ModelStream, loadTemplate: (name: string) => unknown): void {
  // read the statics afresh at every start: a class outlives the instances that register it
  resolved.delete(cls);
  const declared = declaredBroadcasts(cls);
  if (declared?.kind !== "partials") return;
  try {
    loadTemplate(declared.partial);
  } catch (error) {
    const given = cls.partial !== undefined ? "static partial" : "the default partial, <table>/_<singular>.njk";
    throw new BroadcastConfigError(
      cls.name,
      `partial template "${declared.partial}" (${given}) cannot be loaded: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

/** A change as the declarative form needs it. */
export interface DeclaredChange {
  op: "insert" | "update" | "delete";
  /** The row after the change (before it, for a delete), with `.stream`. */
  entity: Record<string, unknown>;
  /** The row before an update, with `.stream`; undefined for other changes or when the log did not keep it. */
  previous: Record<string, unknown> | undefined;
}

/**
 * Broadcasts one change as the class declares: it renders and publishes
 * (publish failures are logged by the publisher), synchronously when the
 * mapping returns streams, and once its promises settle when it returns
 * promises (the returned promise; the caller awaits it before the next
 * change, so every frame of a change is published before any of the
 * next's). With partials: a created row is inserted into every stream it
 * maps to; an updated row is replaced in the streams it stays in, removed
 * from those it left and inserted into those it entered (from the previous
 * row's mapping and the new one's); a deleted row is removed. With
 * refreshes: every stream of the row before and after gets a debounced
 * refresh. Throws (or rejects with) what the mapping throws, and
 * FrameOptionsError when it returns something that is not a stream.
 */
export function broadcastDeclared(
  cls: typeof ModelStream,
  declared: DeclaredBroadcasts,
  change: DeclaredChange,
  onMapped?: (mapped: MappedStreams) => void,
): Promise<void> | undefined {
  const { op, entity, previous } = change;
  // no closures made per change here: this runs for every change of a declarative class
  const pending: Promise<unknown>[] = [];
  let after: Streams | Promise<Streams>;
  let before: Streams | Promise<Streams> | null;
  let locals: object | Promise<object> | undefined;
  try {
    after = tracked(pending, streamsOf(cls, declared, entity));
    before = previous === undefined ? null : tracked(pending, streamsOf(cls, declared, previous));
    locals =
      declared.kind === "partials" && op !== "delete"
        ? tracked(pending, (declared.locals as LocalsOf | undefined)?.(entity))
        : undefined;
  } catch (error) {
    // the earlier promises are dropped with this change: their rejections are not the one to report
    for (const promise of pending) promise.catch(() => {});
    throw error;
  }
  if (pending.length > 0) {
    return Promise.all([after, before, locals]).then(([after, before, locals]) => {
      publishDeclared(cls, declared, change, after, before, locals);
      onMapped?.({ before, after });
    });
  }
  publishDeclared(cls, declared, change, after as Streams, before as Streams | null, locals as object | undefined);
  onMapped?.({ before: before as Streams | null, after: after as Streams });
  return undefined;
}

/** `value`, noting it in `pending` when it is a promise (an async mapping or locals). */
function tracked<T>(pending: Promise<unknown>[], value: T): T {
  if (isPromise(value)) pending.push(value);
  return value;
}

/** The streams a change's row mapped to, by name, after it and (for an update whose previous row is known) before it. */
export interface MappedStreams {
  before: Map<string, Stream> | null;
  after: Map<string, Stream>;
}

type LocalsOf = (row: object) => object | Promise<object> | undefined;

type Streams = Map<string, Stream>;

/** The frames of one change, from the streams of the row after it and (for an update) before it. */
function publishDeclared(
  cls: typeof ModelStream,
  declared: DeclaredBroadcasts,
  change: DeclaredChange,
  after: Streams,
  before: Streams | null,
  locals: object | undefined,
): void {
  const { op, entity, previous } = change;
  if (declared.kind === "refreshes") {
    for (const stream of before === null ? after.values() : new Map([...before, ...after]).values()) {
      void stream.refresh();
    }
    return;
  }
  const frames = new PartialFrames(runtimeOf(cls), declared, entity, locals);
  if (op === "insert") {
    for (const stream of after.values()) frames.insert(stream);
  } else if (op === "delete") {
    const id = domId(entity);
    for (const stream of after.values()) frames.publish(stream, buildFrame({ action: "remove", target: id }));
  } else if (before === null) {
    // logged before the log kept previous rows: replace where the row is now, as hooks used to
    const id = domId(entity);
    for (const stream of after.values())
      frames.publish(stream, buildFrame({ action: "replace", target: id, html: frames.html() }));
  } else {
    // the element on the page still has the old id when the key itself changed
    const id = domId(previous!);
    for (const [name, stream] of before) {
      if (!after.has(name)) frames.publish(stream, buildFrame({ action: "remove", target: id }));
    }
    for (const [name, stream] of after) {
      if (before.has(name)) frames.publish(stream, buildFrame({ action: "replace", target: id, html: frames.html() }));
      else frames.insert(stream);
    }
  }
}

/** One change's frames for a class with a partial: the row rendered once at most, however many streams get it. */
class PartialFrames {
  readonly #runtime: StreamRuntime;
  readonly #declared: DeclaredBroadcasts;
  readonly #entity: object;
  readonly #locals: object | undefined;
  readonly #options: BroadcastOptions | undefined;
  #html: string | undefined;

  constructor(runtime: StreamRuntime, declared: DeclaredBroadcasts, entity: object, locals: object | undefined) {
    this.#runtime = runtime;
    this.#declared = declared;
    this.#entity = entity;
    this.#locals = locals;
    this.#options = declared.toOthers ? { toOthers: true } : undefined;
  }

  /** The partial rendered with the row (and the class's locals). */
  html(): string {
    if (this.#html === undefined) {
      const { partial, local } = this.#declared;
      try {
        this.#html = this.#runtime.render(partial, { ...this.#locals, [local]: this.#entity });
      } catch (error) {
        throw error instanceof TemplateRenderError ? error : new TemplateRenderError(partial, error);
      }
    }
    return this.#html;
  }

  publish(stream: Stream, frame: string): void {
    void this.#runtime.publish(stream.name, frame, this.#options);
  }

  /** The row inserted into a list it entered (or was created in). */
  insert(stream: Stream): void {
    const { target, insertsBy } = this.#declared;
    const id = typeof target === "function" ? (target as (row: unknown) => string)(this.#entity) : target;
    this.publish(stream, buildFrame({ action: insertsBy, target: id, html: this.html() }));
  }
}

/** The distinct streams a row maps to, by name; a promise of them when the mapping returns one. */
function streamsOf(cls: typeof ModelStream, declared: DeclaredBroadcasts, row: object): Streams | Promise<Streams> {
  const mapped = (declared.mapping as (row: object) => unknown)(row);
  return isPromise(mapped) ? mapped.then((value) => collect(cls, declared, value)) : collect(cls, declared, mapped);
}

function collect(cls: typeof ModelStream, declared: DeclaredBroadcasts, mapped: unknown): Streams {
  const streams: Streams = new Map();
  addStreams(streams, cls, declared, mapped);
  return streams;
}

function addStreams(streams: Streams, cls: typeof ModelStream, declared: DeclaredBroadcasts, value: unknown): void {
  if (value === null || value === undefined || value === false) return;
  if (Array.isArray(value)) {
    for (const item of value) addStreams(streams, cls, declared, item);
    return;
  }
  if (!(value instanceof Stream)) {
    const what = declared.kind === "partials" ? "broadcastsTo" : "broadcastsRefreshesTo";
    throw new FrameOptionsError(
      `${cls.name}.${what} returned ${describe(value)}: return a Stream (XStream.for(...)), an array of them, nothing, or a promise of one of these`,
    );
  }
  if (!streams.has(value.name)) streams.set(value.name, value);
}

function isPromise(value: unknown): value is Promise<unknown> {
  return typeof (value as PromiseLike<unknown> | null | undefined)?.then === "function";
}

function describe(value: unknown): string {
  if (typeof value === "object" && value !== null) return `an object with keys ${JSON.stringify(Object.keys(value))}`;
  return `${typeof value} ${String(value)}`;
}
