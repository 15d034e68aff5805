import type { Published } from "../brokers/broker.js";
import { FrameOptionsError, TemplateRenderError } from "../errors.js";
import { type FrameSpec, buildFrame } from "../frames/frame.js";
import { defaultStreamPrefix, namedStreamName } from "./names.js";
import type { RegisteredDb } from "../register.js";
import { type BroadcastOptions, runtimeOf, streamDbOf } from "./runtime.js";

export type { BroadcastOptions } from "./runtime.js";

/** Where an action applies: an element id (`target`) or a CSS selector (`targets`), never both. */
export type TargetOptions = { target: string; targets?: never } | { targets: string; target?: never };

/** Options of append, prepend, before and after (`toOthers`: see BroadcastOptions). */
export type InsertOptions = TargetOptions & BroadcastOptions;

/** Options of replace and update: a target plus `method: "morph"` for Turbo 8 morphing. */
export type ReplaceOptions = TargetOptions & BroadcastOptions & { method?: "morph" };

/** Options of remove. */
export type RemoveOptions = TargetOptions & BroadcastOptions;

/** A custom action: any lowercase name, a target, optional template and extra attributes. */
export type CustomActionOptions = Partial<TargetOptions> &
  BroadcastOptions & {
    template?: string;
    context?: object;
    attributes?: Record<string, string | number | boolean>;
  };

export type StreamPart = string | number | bigint;

/** Constructor shape shared by Stream subclasses (users call `.for()`, not `new`). */
export type StreamClass<T extends Stream = Stream> = (abstract new (init: StreamInit) => T) & typeof Stream;

export interface StreamInit {
  name: string;
  parts?: readonly string[];
  pk?: unknown;
  entity?: Record<string, unknown>;
  all?: boolean;
}

/**
 * A named stream that is not a row: a lobby, a user's notifications.
 * Subclass it, put the class in the streams folder, and gate it with
 * `userPassesTest`. Its name is `static streamName` (default: the class
 * name without "Stream", kebab-cased) plus the parts given to `.for()`.
 *
 * @example
 * export class NotificationsStream extends Stream {
 *   userPassesTest(user: User | null) { return user?.id === Number(this.parts[0]); }
 * }
 * await NotificationsStream.for(user.id).append("notes/_note.njk", { note }, { target: "notes" });
 */
export class Stream {
  /** Overrides the name derived from the class name. */
  static streamName?: string;

  /**
   * The rows of this stream's set, for data subscribers that ask for a sync
   * and for `turbo.dataHandler`: rows read through turbocast's db (whole
   * rows, so each says its class and goes out through its `static fields`).
   * On SQLite, return them synchronously (Drizzle's `.all()`) and they are
   * read in one transaction with the change log's position; on PostgreSQL,
   * read through `stream.db` (the sync's REPEATABLE READ transaction). A
   * row's own stream syncs its row without it; at most `maxSyncRows` rows
   * (default 10,000).
   *
   * @example
   * static override sync = (room: RoomStream) =>
   *   room.db.select().from(messages).where(eq(messages.roomId, room.pk)).all();
   */
  static sync?: (stream: never) => readonly object[] | Promise<readonly object[]>;

  /** The stream's full, namespaced name (what subscriptions sign). */
  readonly name: string;
  /** The parts after the stream's base name, as strings (`NotificationsStream.for(7)` -> `["7"]`). */
  readonly parts: readonly string[];

  /** @internal Use `.for()`. */
  constructor(init: StreamInit) {
    this.name = init.name;
    this.parts = init.parts ?? [];
  }

  /**
   * The Drizzle database given to createTurbo, for hooks, `userPassesTest`
   * and helpers that must not import the app's own db module. Typed through
   * `Register` (register.ts); throws NotBoundError when the class is not
   * registered with a running turbocast instance. Inside a `sync` on
   * PostgreSQL it is the sync's read transaction (the same Drizzle API).
   */
  get db(): RegisteredDb {
    return streamDbOf(this.constructor) as RegisteredDb;
  }

  /** The base name of a plain Stream class. */
  static baseName(): string {
    return this.streamName ?? defaultStreamPrefix(this.name);
  }

  /** The stream of this class for the given parts (none: the class's one stream). */
  static for<T extends Stream>(this: abstract new (init: StreamInit) => T, ...parts: StreamPart[]): T {
    const cls = this as unknown as typeof Stream;
    const strings = parts.map((p) => {
      if (p === null || p === undefined || (typeof p === "number" && !Number.isFinite(p))) {
        throw new FrameOptionsError(`${cls.name}.for(): a stream part must be a string or number, got ${String(p)}`);
      }
      return String(p);
    });
    const Ctor = this as unknown as new (init: StreamInit) => T;
    return new Ctor({ name: namedStreamName(cls.baseName(), strings), parts: strings });
  }

  /**
   * Decides whether `user` may subscribe to this stream. Runs for every
   * subscription (sync or async). Default: anyone holding a valid signed
   * name may subscribe — the signature proves the server rendered the tag.
   */
  userPassesTest(_user: unknown): boolean | Promise<boolean> {
    return true;
  }

  /** Inserts the rendered template at the end of the target. */
  append(template: string, context: object, options: InsertOptions): Promise<Published> {
    return this.#rendered("append", template, context, options);
  }

  /** Inserts the rendered template at the start of the target. */
  prepend(template: string, context: object, options: InsertOptions): Promise<Published> {
    return this.#rendered("prepend", template, context, options);
  }

  /** Replaces the target element itself (`method: "morph"` morphs it). */
  replace(template: string, context: object, options: ReplaceOptions): Promise<Published> {
    return this.#rendered("replace", template, context, options);
  }

  /** Replaces the target's content (`method: "morph"` morphs it). */
  update(template: string, context: object, options: ReplaceOptions): Promise<Published> {
    return this.#rendered("update", template, context, options);
  }

  /** Inserts the rendered template before the target. */
  before(template: string, context: object, options: InsertOptions): Promise<Published> {
    return this.#rendered("before", template, context, options);
  }

  /** Inserts the rendered template after the target. */
  after(template: string, context: object, options: InsertOptions): Promise<Published> {
    return this.#rendered("after", template, context, options);
  }

  /** Removes the target element(s). */
  remove(options: RemoveOptions): Promise<Published> {
    return this.#send(() => buildFrame({ action: "remove", ...pickTarget(options) }), options);
  }

  /**
   * Asks every subscribed page to refresh itself (Turbo 8 page refresh).
   * Calls within the debounce window become one frame.
   */
  refresh(options: { requestId?: string } = {}): Promise<Published> {
    // validate now, so misuse throws here rather than in the debounced publish
    buildFrame({ action: "refresh", requestId: options.requestId });
    return runtimeOf(this.constructor).refresh(this.name, { requestId: options.requestId });
  }

  /** A custom Turbo stream action (registered on the client with `StreamActions`). */
  action(name: string, options: CustomActionOptions = {}): Promise<Published> {
    const runtime = runtimeOf(this.constructor);
    return this.#send(() => {
      const html =
        options.template === undefined ? undefined : render(runtime, options.template, options.context ?? {});
      return buildFrame({ action: name, ...pickTarget(options), html, attributes: options.attributes });
    }, options);
  }

  /** Escape hatch: publishes a complete, already built `<turbo-stream>` frame as is. */
  broadcastRaw(frame: string): Promise<Published> {
    if (typeof frame !== "string" || !frame.trimStart().startsWith("<turbo-stream")) {
      throw new FrameOptionsError("broadcastRaw() takes a complete <turbo-stream> element");
    }
    return this.#send(() => frame);
  }

  #rendered(
    action: string,
    template: string,
    context: object,
    options: TargetOptions & BroadcastOptions & { method?: "morph" },
  ): Promise<Published> {
    const runtime = runtimeOf(this.constructor);
    const target = pickTarget(options);
    // check the options before paying for the render
    buildFrame({ action, ...target, html: "", method: options?.method });
    return this.#send(
      () => buildFrame({ action, ...target, method: options.method, html: render(runtime, template, context) }),
      options,
    );
  }

  /** Builds the frame (throwing synchronously on misuse) and publishes it. */
  #send(build: () => string, options?: BroadcastOptions): Promise<Published> {
    const runtime = runtimeOf(this.constructor);
    this.assertBroadcastable();
    const frame = build();
    return options?.toOthers === true
      ? runtime.publish(this.name, frame, { toOthers: true })
      : runtime.publish(this.name, frame);
  }

  /** Hook for subclasses that must refuse to broadcast (a row without a key). */
  protected assertBroadcastable(): void {}
}

function pickTarget(options: Partial<TargetOptions> | undefined): Pick<FrameSpec, "target" | "targets"> {
  if (!options || typeof options !== "object") {
    throw new FrameOptionsError("broadcast options are required: { target } or { targets }");
  }
  return { target: options.target, targets: options.targets };
}

function render(runtime: ReturnType<typeof runtimeOf>, template: string, context: object): string {
  if (typeof template !== "string" || template === "") {
    throw new FrameOptionsError("a template name is required");
  }
  try {
    return runtime.render(template, context);
  } catch (error) {
    if (error instanceof TemplateRenderError) throw error;
    throw new TemplateRenderError(template, error);
  }
}
