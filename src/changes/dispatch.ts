import { publishDataEvents } from "../data/events.js";
import { HookError } from "../errors.js";
import { LogThrottle } from "../log-throttle.js";
import type { Logger } from "../logger.js";
import type { ModelStream } from "../streams/model-stream.js";
import {
  type DeclaredBroadcasts,
  type MappedStreams,
  broadcastDeclared,
  declaredBroadcasts,
} from "../streams/declarative.js";
import { type AnyModelStreamClass, type StreamRegistry, attachStream } from "../streams/registry.js";
import { runtimeOf } from "../streams/runtime.js";
import type { TableInfo } from "../streams/table.js";
import type { ChangeOp, ChangeRecord } from "./capture.js";
import type { RowDecoder } from "./decode.js";
import type { RequestScopeAccess } from "./request-notes.js";

/**
 * A captured change as its hooks see it: decoded through the bound class's
 * Drizzle columns, with the change context (`previous`, `changed`,
 * `version` = seq, `actor`) that onSave / onDelete and the declarative
 * broadcasts get.
 */
export interface DecodedChange {
  /** The change's position in the log: monotonic per database, the same in every process. */
  seq: number;
  table: string;
  op: ChangeOp;
  /** The ModelStream class bound to the table. */
  model: AnyModelStreamClass;
  /** The row after the change (before it, for a delete), as `db.select()` would return it. */
  entity: Record<string, unknown>;
  /** The row before an update, decoded like `entity`; undefined otherwise (or when the log did not keep it). */
  previous: Record<string, unknown> | undefined;
  /** The keys whose value changed; every key of an insert, and of an update whose previous row is unknown. */
  changed: string[];
  /** The token of the scope this process wrote the change in (RequestNotes); undefined for every other writer. */
  requestId: string | undefined;
  /** The user of the request that wrote the change (see SaveContext.actor); set between decode and run. */
  actor: unknown;
  /** The row's stream (the entity's `.stream`); set when the dispatcher runs the change. */
  stream: ModelStream | undefined;
}

export type HookStep = "decode" | "dataEvents" | "broadcastsTo" | "broadcastsRefreshesTo" | "onSave" | "onDelete";

export interface HookDispatcherInit {
  registry: StreamRegistry;
  logger: Logger;
  /** How long to wait for an async hook before logging it as failed (capture.hookTimeoutMs). */
  hookTimeoutMs: number;
  /** The decoder of a bound table's captured rows: the capture adapter's (it knows how its dialect encodes them). */
  decoderFor: (info: TableInfo) => RowDecoder;
  /** Runs a hook inside the request its change was written in. */
  requests?: RequestScopeAccess;
  /** Called with a deleted row's stream after its `onDelete` settled, failed or not: the row is gone either way. */
  afterDelete?: ((stream: ModelStream) => void) | undefined;
}

/**
 * The "hook" step of the data flow: decodes a claimed change (and the row
 * before an update), gives the entity `.stream`, runs the class's
 * declarative broadcasts (declarative.ts) and then calls
 * `onSave(entity, { created, previous, changed, version, actor })` or
 * `onDelete(entity, { version, actor })` on the bound class's stream —
 * inside the scope the change was written in, if this process wrote it in
 * one; a change written inside `turbo.suppressingBroadcasts` goes no
 * further than the log. A failure (decoding, a throwing mapping, a
 * throwing or rejecting hook, one that does not settle within
 * hookTimeoutMs) is logged as a HookError and never thrown: the feed goes
 * on with the next change.
 *
 * Failures go through a LogThrottle by class, step and error kind: during a
 * broker outage every hook that broadcasts fails the same way, and the first
 * failure is logged in full, the rest counted — reported with the next line
 * of that kind (at most once a minute) or when the hook next succeeds.
 */
export class HookDispatcher {
  readonly #registry: StreamRegistry;
  readonly #logger: Logger;
  readonly #hookTimeoutMs: number;
  readonly #decoderFor: (info: TableInfo) => RowDecoder;
  readonly #requests: RequestScopeAccess | undefined;
  readonly #afterDelete: ((stream: ModelStream) => void) | undefined;
  readonly #throttle: LogThrottle;
  /** Throttle kinds of the failures being counted, by `table.step`: the step's next success reports them. */
  readonly #failing = new Map<string, Set<string>>();
  /** Each bound class's row decoder (rowDecoder's own cache is keyed by TableInfo, which costs a lookup to get). */
  #decoders = new Map<AnyModelStreamClass, RowDecoder>();

  constructor(init: HookDispatcherInit) {
    this.#registry = init.registry;
    this.#logger = init.logger;
    this.#hookTimeoutMs = init.hookTimeoutMs;
    this.#decoderFor = init.decoderFor;
    this.#requests = init.requests;
    this.#afterDelete = init.afterDelete;
    this.#throttle = new LogThrottle(init.logger);
  }

  /**
   * Decodes the change and runs its hook; returns a promise only for an
   * async hook (settled, never rejecting), so the common synchronous hook
   * costs no microtask.
   */
  dispatch(change: ChangeRecord, requestId: string | undefined): Promise<void> | undefined {
    const cls = this.#registry.forTableName(change.table);
    if (!cls) {
      // captured while the table was bound (or by another app version); nobody here handles it
      this.#throttle.log(
        `unbound:${change.table}`,
        "warn",
        `changes of table "${change.table}" are skipped: no ModelStream is bound to it`,
        { table: change.table },
      );
      return undefined;
    }
    // a change written inside turbo.suppressingBroadcasts stays in the log, and goes no further
    const scope = requestId === undefined ? undefined : this.#requests?.scope?.(requestId);
    if (scope?.suppressed === true) return undefined;
    let decoded: Decoded;
    try {
      decoded = this.decode(cls, change, requestId);
    } catch (error) {
      this.#hookFailed(cls, change, "decode", error);
      return undefined;
    }
    this.#succeeded(cls, change, "decode");
    // authenticate runs once per request (ScopeTokens asks right after its first write): a promise only while pending
    const actor = scope?.actor?.();
    if (typeof (actor as PromiseLike<unknown> | undefined)?.then === "function") {
      return (actor as Promise<unknown>).then((user) => {
        decoded.actor = user ?? undefined;
        return this.#runAndClose(decoded);
      });
    }
    decoded.actor = actor ?? undefined;
    return this.#runAndClose(decoded);
  }

  /** Runs the hook; a delete's subscriptions are closed after it, so the frames it published go out first. */
  #runAndClose(decoded: Decoded): Promise<void> | undefined {
    const pending = this.run(decoded);
    if (decoded.op !== "delete" || this.#afterDelete === undefined) return pending;
    if (pending === undefined) return void this.#deleted(decoded);
    return pending.then(() => this.#deleted(decoded));
  }

  #deleted(decoded: Decoded): void {
    const stream = decoded.stream;
    if (stream === undefined) return;
    try {
      this.#afterDelete?.(stream);
    } catch (error) {
      // never into the drain: the next change must still be dispatched
      this.#throttle.log("afterDelete", "error", `closing the subscriptions of deleted ${decoded.table} rows failed`, {
        error,
      });
    }
  }

  /**
   * The change decoded through `cls`'s columns; throws what the column
   * mapping throws. The previous row and `changed` are decoded when first
   * read (by a hook that asks, or a declarative class): a hook that only
   * wants the row pays nothing for them.
   */
  decode(cls: AnyModelStreamClass, change: ChangeRecord, requestId: string | undefined): Decoded {
    let decode = this.#decoders.get(cls);
    if (!decode) this.#decoders.set(cls, (decode = this.#decoderFor(cls.tableInfo())));
    return new Decoded(change, cls, decode(change.row), requestId, decode);
  }

  /** Runs a decoded change's broadcasts and hook (see dispatch). */
  run(decoded: Decoded): Promise<void> | undefined {
    const { model: cls, entity, change } = decoded;
    // a class whose for() throws is logged as a decoding failure, as before the hook runs
    decoded.step = "decode";
    try {
      const stream = cls.for(entity) as ModelStream;
      // the entity's non-enumerable `.stream`, as on rows read through db: here the very stream the hook runs on
      // (a data property holding it: attachStream's getter would make a stream again at every read)
      STREAM_PROPERTY.value = stream;
      Object.defineProperty(entity, "stream", STREAM_PROPERTY);
      STREAM_PROPERTY.value = undefined;
      stream.entity = entity as ModelStream["entity"];
      decoded.stream = stream;
      // passes run outside any request (the feed's #startPass): a change written in one runs inside its scope again
      const result =
        decoded.requestId === undefined
          ? this.#body(decoded)
          : this.#requests!.run(decoded.requestId, () => this.#body(decoded));
      // most hooks and mappings are synchronous (they fire broadcasts and return): no timer for those
      if (typeof (result as PromiseLike<unknown> | undefined)?.then === "function") {
        return this.#settled(Promise.resolve(result)).then(
          () => this.#succeeded(cls, change, decoded.step),
          // `step`: a mapping that never settles is logged as the mapping's failure, not the hook's
          (error: unknown) => this.#hookFailed(cls, change, decoded.step, error),
        );
      }
      this.#succeeded(cls, change, decoded.step);
    } catch (error) {
      this.#hookFailed(cls, change, decoded.step, error);
    }
    return undefined;
  }

  /**
   * The declarative broadcasts (or, without a declaration, the data events of
   * the row's own and the table-wide stream), then the hook. Methods, not
   * closures made per change: the hot path of every write.
   */
  #body(decoded: Decoded): unknown {
    const cls = decoded.model;
    const declared = declaredBroadcasts(cls);
    if (declared === null) {
      // no declaration: the row's own stream and the table-wide one
      this.#publishData(cls, decoded, null);
      return this.#hook(decoded);
    }
    decoded.step = declared.kind === "partials" ? "broadcastsTo" : "broadcastsRefreshesTo";
    const broadcast = this.#broadcast(cls, declared, decoded);
    // an async mapping: the hook runs after the change's declared frames are published, as with a sync one
    return broadcast === undefined ? this.#hook(decoded) : broadcast.then(() => this.#hook(decoded));
  }

  #hook(decoded: Decoded): unknown {
    decoded.step = decoded.op === "delete" ? "onDelete" : "onSave";
    return runHook(decoded.stream!, decoded);
  }

  /**
   * The declarative broadcasts of a change; a failure is logged like a
   * hook's, and the hook still runs. A promise (never rejecting) while an
   * async mapping is pending.
   */
  #broadcast(cls: AnyModelStreamClass, declared: DeclaredBroadcasts, decoded: Decoded): Promise<void> | undefined {
    const change = decoded.change;
    const step: HookStep = declared.kind === "partials" ? "broadcastsTo" : "broadcastsRefreshesTo";
    try {
      // the data events go to the streams the HTML went to, from the same mapping
      const pending = broadcastDeclared(
        cls,
        declared,
        { op: decoded.op, entity: decoded.entity, previous: decoded.previous },
        (mapped) => this.#publishData(cls, decoded, mapped),
      );
      if (pending) {
        return pending.then(
          () => this.#succeeded(cls, change, step),
          (error: unknown) => this.#hookFailed(cls, change, step, error),
        );
      }
      this.#succeeded(cls, change, step);
    } catch (error) {
      this.#hookFailed(cls, change, step, error);
    }
    return undefined;
  }

  /** The change's data events (data/events.ts); a failure is logged like a hook's, and the hook still runs. */
  #publishData(cls: AnyModelStreamClass, decoded: Decoded, mapped: MappedStreams | null): void {
    try {
      // runtime.publishData logs its own failures (Publisher)
      publishDataEvents(cls, decoded, mapped, runtimeOf(cls).publishData);
      this.#succeeded(cls, decoded.change, "dataEvents");
    } catch (error) {
      this.#hookFailed(cls, decoded.change, "dataEvents", error);
    }
  }

  #hookFailed(cls: AnyModelStreamClass, change: ChangeRecord, step: HookStep, error: unknown): void {
    const what = step === "decode" ? `decoding a row of ${cls.name}` : `${cls.name}.${step}`;
    const failure = new HookError(what, { table: change.table, key: keyOf(cls, change.row), seq: change.seq }, error);
    const at = `${change.table}.${step}`;
    const kind = `${at}:${errorKind(error)}`;
    let kinds = this.#failing.get(at);
    if (!kinds) this.#failing.set(at, (kinds = new Set()));
    kinds.add(kind);
    this.#throttle.log(kind, "error", failure.message, {
      code: failure.code,
      table: failure.table,
      key: failure.key,
      seq: failure.seq,
      version: failure.version,
      error,
    });
  }

  /** A hook ran (or a row decoded): failures of that step counted since its last line are reported now. */
  #succeeded(cls: AnyModelStreamClass, change: ChangeRecord, step: HookStep): void {
    if (this.#failing.size === 0) return;
    const at = `${change.table}.${step}`;
    const kinds = this.#failing.get(at);
    if (!kinds) return;
    this.#failing.delete(at);
    const what = step === "decode" ? `decoding rows of ${cls.name}` : `${cls.name}.${step}`;
    for (const kind of kinds) {
      // the throttle adds the count to the line; nothing to say when none was counted
      this.#throttle.recovered(kind, this.#throttle.suppressed(kind) > 0 ? `${what} works again` : undefined);
    }
  }

  /** Waits for an async hook, but no longer than hookTimeoutMs: one hung hook must not stall every process's feed. */
  async #settled(result: Promise<unknown>): Promise<void> {
    const ms = this.#hookTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`did not settle within ${ms} ms (capture.hookTimeoutMs); the feed went on`)),
        ms,
      );
    });
    try {
      await Promise.race([result, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** A decoded change whose previous row and `changed` keys are decoded on first use. */
class Decoded implements DecodedChange {
  readonly seq: number;
  readonly table: string;
  readonly op: ChangeOp;
  actor: unknown = undefined;
  /** The row's stream, once `run` made it (the entity's `.stream`). */
  stream: ModelStream | undefined = undefined;
  /** The step running now: what a failure is logged as. */
  step: HookStep = "decode";
  /** null: not decoded yet. */
  #previous: Record<string, unknown> | undefined | null = null;
  #changed: string[] | undefined;
  readonly #previousJson: string | null;
  readonly #decode: RowDecoder;

  constructor(
    readonly change: ChangeRecord,
    readonly model: AnyModelStreamClass,
    readonly entity: Record<string, unknown>,
    readonly requestId: string | undefined,
    decode: RowDecoder,
  ) {
    this.seq = change.seq;
    this.table = change.table;
    this.op = change.op;
    // an adapter that does not keep previous rows leaves it undefined
    this.#previousJson = change.previous ?? null;
    this.#decode = decode;
  }

  get previous(): Record<string, unknown> | undefined {
    if (this.#previous === null) {
      // with `.stream`, like the row: domId(previous) and broadcastsTo(previous) need it
      this.#previous =
        this.#previousJson === null ? undefined : attachStream(this.#decode(this.#previousJson), this.model);
    }
    return this.#previous;
  }

  get changed(): string[] {
    if (this.#changed === undefined) {
      const previous = this.previous;
      this.#changed = previous === undefined ? Object.keys(this.entity) : changedKeys(previous, this.entity);
    }
    return this.#changed;
  }
}

/** The entity's `.stream` property, filled in per change (one descriptor object for every change). */
const STREAM_PROPERTY: PropertyDescriptor = {
  value: undefined,
  configurable: true,
  enumerable: false,
  writable: false,
};

/**
 * Calls the change's hook on its stream with its context; returns what the
 * hook returned (a promise for an async one). An update's `previous` and
 * `changed` are decoded on first read (UpdateContext); an insert has
 * nothing to decode, and gets plain properties.
 */
function runHook(stream: ModelStream, change: DecodedChange): unknown {
  const { entity, op, seq: version, actor } = change;
  if (op === "delete") return stream.onDelete(entity as never, { version, actor: actor as never });
  if (op === "insert") {
    return stream.onSave(entity as never, {
      created: true,
      previous: undefined,
      changed: change.changed as never,
      version,
      actor: actor as never,
    });
  }
  return stream.onSave(entity as never, new UpdateContext(change) as never);
}

/**
 * An update's SaveContext: `previous` and `changed` are own, enumerable
 * getters (as an object literal's would be: spreading, JSON and toEqual see
 * them) that decode on first read. Not an object literal with getters: V8
 * gives each such literal's getters an accessor pair allocated in the old
 * generation, which points at the young change — so every update's decoded
 * row, stream and log text outlived the next scavenges and was copied and
 * promoted (in the write-cost bench's update workload, twice the scavenge
 * time and several full collections per round). Getters shared by every
 * context stay in the object's hidden class instead; the change sits in a
 * private field.
 */
class UpdateContext {
  static readonly #previous: PropertyDescriptor = {
    configurable: true,
    enumerable: true,
    get(this: UpdateContext) {
      return this.#change.previous;
    },
  };
  static readonly #changed: PropertyDescriptor = {
    configurable: true,
    enumerable: true,
    get(this: UpdateContext) {
      return this.#change.changed;
    },
  };
  readonly #change: DecodedChange;
  // assigned in the constructor, in the key order of the literal this replaces
  declare readonly created: false;
  declare readonly previous: Record<string, unknown> | undefined;
  declare readonly changed: string[];
  declare readonly version: number;
  declare readonly actor: unknown;

  constructor(change: DecodedChange) {
    this.created = false;
    Object.defineProperty(this, "previous", UpdateContext.#previous);
    Object.defineProperty(this, "changed", UpdateContext.#changed);
    this.version = change.seq;
    this.actor = change.actor;
    this.#change = change;
  }
}

/** The keys of `after` whose value differs from `before`'s (decoded values: dates, buffers, JSON compared by value). */
export function changedKeys(before: Record<string, unknown>, after: Record<string, unknown>): string[] {
  const changed: string[] = [];
  for (const key of Object.keys(after)) {
    if (!sameValue(before[key], after[key])) changed.push(key);
  }
  return changed;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (a instanceof Date && b instanceof Date) return Object.is(a.getTime(), b.getTime());
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.compare(a, b) === 0;
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false;
  }
}

/** What makes two failures "the same" for the log: the error's stable code, else its class. */
function errorKind(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string") return code;
  return (error as { name?: unknown } | null)?.constructor?.name ?? typeof error;
}

/** The logged form of a change's key, from its row JSON: the bare value, or `{ key: value }` for composite keys. */
function keyOf(cls: AnyModelStreamClass, rowJson: string): unknown {
  try {
    const row = JSON.parse(rowJson) as Record<string, unknown>;
    const keys = cls.tableInfo().keys;
    return keys.length === 1
      ? row[keys[0]!.column.name]
      : Object.fromEntries(keys.map((k) => [k.key, row[k.column.name]]));
  } catch {
    return undefined;
  }
}
