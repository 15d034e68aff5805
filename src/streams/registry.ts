import {
  DuplicateBindingError,
  DuplicateStreamNameError,
  InvalidStreamClassError,
  NoPrimaryKeyTableError,
  UnknownStreamError,
} from "../errors.js";
import { ModelStream } from "./model-stream.js";
import { parseStreamName } from "./names.js";
import { Stream } from "./stream.js";
import { type BoundTable, parseKeyPart } from "./table.js";

export type AnyStreamClass = typeof Stream;
export type AnyModelStreamClass = typeof ModelStream;

export function isStreamClass(value: unknown): value is AnyStreamClass {
  return typeof value === "function" && value.prototype instanceof Stream && value !== ModelStream;
}

export function isModelStreamClass(value: unknown): value is AnyModelStreamClass {
  return typeof value === "function" && value.prototype instanceof ModelStream;
}

/**
 * Which class serves which table and which stream name. Built once by
 * createTurbo from the scanned streams folder (and any classes passed in).
 */
export class StreamRegistry {
  #byTable = new Map<BoundTable, AnyModelStreamClass>();
  #byTableName = new Map<string, AnyModelStreamClass>();
  #byModelPrefix = new Map<string, AnyModelStreamClass>();
  #byNamedPrefix = new Map<string, AnyStreamClass>();
  #classes = new Set<AnyStreamClass>();

  /** Registers a class; throws on a duplicate table binding, a table without a key, or a name clash. */
  register(cls: AnyStreamClass): void {
    if (this.#classes.has(cls)) return;
    if (isModelStreamClass(cls)) {
      const info = cls.tableInfo();
      const existing = this.#byTable.get(info.table) ?? this.#byTableName.get(info.name);
      if (existing) throw new DuplicateBindingError(info.name, existing.name, cls.name);
      if (info.keys.length === 0) throw new NoPrimaryKeyTableError(info.name, cls.name);
      const prefix = cls.baseName();
      const clash = this.#byModelPrefix.get(prefix);
      if (clash) throw new DuplicateStreamNameError(prefix, clash.name, cls.name);
      this.#byTable.set(info.table, cls);
      this.#byTableName.set(info.name, cls);
      this.#byModelPrefix.set(prefix, cls);
    } else if (isStreamClass(cls)) {
      const prefix = cls.baseName();
      const clash = this.#byNamedPrefix.get(prefix);
      if (clash) throw new DuplicateStreamNameError(prefix, clash.name, cls.name);
      this.#byNamedPrefix.set(prefix, cls);
    } else {
      throw new InvalidStreamClassError(
        `${String((cls as { name?: string }).name)} is not a Stream or ModelStream subclass`,
      );
    }
    this.#classes.add(cls);
  }

  get classes(): ReadonlySet<AnyStreamClass> {
    return this.#classes;
  }

  get modelClasses(): AnyModelStreamClass[] {
    return [...this.#byTable.values()];
  }

  forTable(table: BoundTable): AnyModelStreamClass | undefined {
    return this.#byTable.get(table);
  }

  /** By SQL table name (what the change log records). */
  forTableName(name: string): AnyModelStreamClass | undefined {
    return this.#byTableName.get(name);
  }

  /** The class serving a plain stream name, e.g. "lobby" (for `turbo_stream_from("lobby")`). */
  namedClass(prefix: string): AnyStreamClass | undefined {
    return this.#byNamedPrefix.get(prefix);
  }

  /**
   * Turns a namespaced stream name back into a stream instance (with its pk
   * typed by its column). Throws UnknownStreamError for a name no class serves.
   */
  resolve(name: string): Stream {
    const parsed = parseStreamName(name);
    if (!parsed) throw new UnknownStreamError(name);
    if (parsed.kind === "named") {
      const cls = this.#byNamedPrefix.get(parsed.prefix);
      if (!cls) throw new UnknownStreamError(name);
      return cls.for(...parsed.parts);
    }
    const cls = this.#byModelPrefix.get(parsed.prefix);
    if (!cls) throw new UnknownStreamError(name);
    if (parsed.kind === "all") return cls.all();
    const keys = cls.tableInfo().keys;
    if (parsed.parts.length !== keys.length) throw new UnknownStreamError(name);
    const values = keys.map((k, i) => parseKeyPart(k.column, parsed.parts[i]!));
    if (values.some((v) => v === undefined)) throw new UnknownStreamError(name);
    const pk = keys.length === 1 ? values[0] : Object.fromEntries(keys.map((k, i) => [k.key, values[i]]));
    const stream = cls.for(pk);
    // a name that round-trips to a different one (e.g. "007" for an integer key) is not ours
    if (stream.name !== name) throw new UnknownStreamError(name);
    return stream;
  }
}

/** `.stream`'s property descriptor, one per class (see attachStream). */
const streamProperties = new WeakMap<AnyModelStreamClass, PropertyDescriptor>();

/**
 * Gives a row of a bound table its non-enumerable `.stream` (invisible to
 * JSON.stringify, spreading and templates). The getter builds the stream on
 * first use, so a row without a key throws MissingPrimaryKeyError there.
 *
 * One getter per class, reading the row as `this`: a getter made per row
 * gets an accessor pair of its own, which V8 allocates in the old
 * generation, so every row read through the app's db (and every update's
 * previous row) outlived the next scavenges and was copied and promoted —
 * about ten times the cost of reading the row, in collections.
 */
export function attachStream<T extends object>(row: T, cls: AnyModelStreamClass): T {
  if (Object.hasOwn(row, "stream")) return row;
  let property = streamProperties.get(cls);
  if (property === undefined) {
    property = {
      configurable: true,
      enumerable: false,
      get(this: object) {
        return cls.for(this as never);
      },
    };
    streamProperties.set(cls, property);
  }
  Object.defineProperty(row, "stream", property);
  return row;
}
