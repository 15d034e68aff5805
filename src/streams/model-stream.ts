import type { InferSelectModel } from "drizzle-orm";
import { FrameOptionsError, InvalidStreamClassError, MissingPrimaryKeyError } from "../errors.js";
import type { RegisteredActor } from "../register.js";
import type { BroadcastMapping } from "./declarative.js";
import { rowStreamName, tableStreamName } from "./names.js";
import { runtimeOf } from "./runtime.js";
import { Stream, type StreamInit } from "./stream.js";
import { type BoundTable, type TableInfo, isBoundTable, knownTableInfo, tableInfo } from "./table.js";

/** A single primary-key value, or `{ column: value }` for composite keys. */
export type PrimaryKeyInput = string | number | bigint | Record<string, unknown>;

/** Carries a ModelStream's table in its instance type, so `.for()` can type its argument and `pk`. */
declare const TABLE: unique symbol;

type Columns<T extends BoundTable> = T["_"]["columns"];

/** The columns declared with `.primaryKey()`; none when the key is the table's `primaryKey({ columns })`. */
type KeyColumnNames<T extends BoundTable> = {
  [K in keyof Columns<T>]: Columns<T>[K]["_"]["isPrimaryKey"] extends true ? K : never;
}[keyof Columns<T>];

/**
 * A row's key as `pk` holds it: the column's value for a `.primaryKey()`
 * column; for a key declared on the table (composite), `{ column: value }`
 * over the row's columns (which ones are keys is known only at run time).
 * `unknown` for a ModelStream whose table is not known to TypeScript.
 */
export type PrimaryKeyOf<T extends BoundTable> = string extends T["_"]["name"]
  ? unknown
  : [KeyColumnNames<T>] extends [never]
    ? Partial<InferSelectModel<T>>
    : InferSelectModel<T>[KeyColumnNames<T> & keyof InferSelectModel<T>];

/** What `XStream.for()` takes: a row of the class's table, or its key. */
export type StreamKeyInput<T extends BoundTable> = string extends T["_"]["name"]
  ? unknown
  : InferSelectModel<T> | PrimaryKeyOf<T>;

/** What `onSave` gets besides the row: the change context. */
export interface SaveContext<TTable extends BoundTable = BoundTable> {
  /** True for an insert, false for an update. */
  created: boolean;
  /** The row before an update, decoded like the row; undefined for an insert. */
  previous: InferSelectModel<TTable> | undefined;
  /** The keys whose value changed: every key for an insert. */
  changed: Array<keyof InferSelectModel<TTable> & string>;
  /** The change's position in the change log: increasing per database, the same in every process. */
  version: number;
  /**
   * The user `authenticate` returned for the request that wrote the change,
   * when this process wrote it inside a request that went through
   * `turbo.middleware()`; undefined for every other writer (another
   * process, the sqlite3 shell, a script, a timer).
   */
  actor: RegisteredActor | undefined;
}

/** What `onDelete` gets besides the row. */
export interface DeleteContext {
  /** See SaveContext.version. */
  version: number;
  /** See SaveContext.actor. */
  actor: RegisteredActor | undefined;
}

/** The table a ModelStream class (or instance type) is bound to. */
export type TableOf<S> = S extends { readonly [TABLE]?: infer T extends BoundTable } ? T : BoundTable;

/**
 * The stream of one row of a Drizzle table, or (`.all()`) of the whole table.
 * One ModelStream per table: it receives every insert, update and delete of
 * the table — made by any writer — through `onSave` and `onDelete`, after commit.
 *
 * Inside hooks and `userPassesTest`, `this` is the row's stream: `this.pk` is
 * its key (a scalar, or an object for composite keys; `undefined` on the
 * table-wide stream) and `this.entity` the row when known (`load()` fetches it).
 *
 * @example
 * export class MessageStream extends ModelStream<typeof messages> {
 *   static model = messages;
 *   async onSave(message: Message, { created }: { created: boolean }) {
 *     const room = RoomStream.for(message.roomId);
 *     if (created) await room.append("messages/_message.njk", { message }, { target: "messages" });
 *     else await room.replace("messages/_message.njk", { message }, { target: `message_${message.id}` });
 *   }
 * }
 */
export class ModelStream<TTable extends BoundTable = BoundTable> extends Stream {
  /** The Drizzle table this class is bound to. Required. */
  static model: BoundTable;
  /** Overrides the table name in this class's stream names (`row:<prefix>:<key>`, `all:<prefix>`). */
  static streamPrefix?: string;
  /**
   * The columns (row property names) a data event, a sync and
   * `turbo.dataHandler` may carry besides the key. Default: none — the key
   * and version only, so a column nobody listed never leaves the server;
   * `"*"` every column. A name that is not a column is refused at start
   * (TURBOCAST_DATA_FIELDS).
   *
   * @example
   * static override fields = ["body", "roomId", "createdAt"];
   */
  static fields?: "*" | readonly string[];

  /**
   * Declarative broadcasts: the streams whose lists show a row (nothing: in
   * no list). Created rows are inserted there, updated ones replaced where
   * they stay, removed from streams they left and inserted into streams
   * they entered; deleted ones removed. Defaults of `partial`, `target`,
   * `insertsBy`, `toOthers`: see BROADCAST_DEFAULTS (declarative.ts).
   * It may return a promise (an app on PostgreSQL queries asynchronously):
   * the change's frames go out once it settles, still before the next
   * change's.
   *
   * @example
   * static override broadcastsTo = (card: Card) => (card.archived ? [] : BoardStream.for(card.boardId));
   */
  static broadcastsTo?: (row: never) => BroadcastMapping;
  /** Instead of partial updates: a debounced `refresh` to these streams on every change (Turbo 8 morphing); may return a promise. */
  static broadcastsRefreshesTo?: (row: never) => BroadcastMapping;
  /** The template of one row for broadcastsTo. Default `"<table>/_<singular>.njk"`, rendered with `{ <singular>: row }`. */
  static partial?: string;
  /**
   * More variables for the partial, beside the row (turbo-rails' `locals:`):
   * what the row does not carry, such as its author. May return a promise
   * (a query); not called for a delete, which renders nothing.
   *
   * @example
   * static override locals = async (message: Message) => ({ author: await authorOf(message) });
   */
  static locals?: (row: never) => object | Promise<object>;
  /** The element id rows are inserted into (or a function of the row). Default: the table name. */
  static target?: string | ((row: never) => string);
  /**
   * Where new rows go in the target: `"append"` (default) or `"prepend"`.
   * Typed loosely so `static override insertsBy = "prepend"` compiles
   * without `as const`; anything else is refused at start
   * (TURBOCAST_BROADCAST_CONFIG).
   */
  static insertsBy?: "append" | "prepend" | (string & {});
  /** Declarative broadcasts skip the page whose request wrote the row. Default false. */
  static toOthers?: boolean;
  /** The singular name in `domId` and the default partial. Default: the table name singularised (see singularOf). */
  static singular?: string;

  declare readonly [TABLE]?: TTable;

  /**
   * The row's primary key: the column's value for a one-column key,
   * `{ column: value }` for a composite one; `undefined` on `.all()`.
   * `XStream.for(...)` is typed with it defined.
   */
  readonly pk: PrimaryKeyOf<TTable> | undefined;
  /** The row, when the stream was made from one (`.for(row)`, hooks); see `load()`. */
  entity: InferSelectModel<TTable> | undefined;
  /** True for the table-wide stream from `.all()`. */
  readonly isAll: boolean;

  /** @internal Use `.for()` or `.all()`. */
  constructor(init: StreamInit) {
    super(init);
    this.pk = init.pk as PrimaryKeyOf<TTable> | undefined;
    this.entity = init.entity as InferSelectModel<TTable> | undefined;
    this.isAll = init.all === true;
  }

  /** @internal */
  static tableInfo(): TableInfo {
    const model = (this as typeof ModelStream).model;
    const known = knownTableInfo(model);
    if (known) return known;
    if (!isBoundTable(model)) {
      throw new InvalidStreamClassError(
        `${this.name} extends ModelStream but its static model is not a Drizzle SQLite or PostgreSQL table`,
      );
    }
    return tableInfo(model);
  }

  /** The base of this class's stream names: `streamPrefix`, else the table's name. */
  static override baseName(): string {
    return this.streamPrefix ?? this.tableInfo().name;
  }

  /**
   * The stream of one row, from the row itself or its bare primary key,
   * typed as the class's own instance with its `pk`: `RoomStream.for(room)`
   * and `RoomStream.for(7)` are RoomStreams; `RoomStream.for(message)` does
   * not compile. Throws MissingPrimaryKeyError (TURBOCAST_MISSING_PRIMARY_KEY)
   * when the key is undefined or null — nothing is ever sent to
   * `messages:undefined`.
   *
   * @example
   * const room = RoomStream.for(message.roomId);
   * await room.append("messages/_message.njk", { message }, { target: "messages" });
   */
  static override for<T extends Stream>(
    this: abstract new (
      init: StreamInit,
    ) => T,
    entityOrPk: StreamKeyInput<TableOf<T>>,
  ): T & { readonly pk: PrimaryKeyOf<TableOf<T>>; readonly isAll: false } {
    const cls = this as unknown as typeof ModelStream;
    const info = cls.tableInfo();
    const keys = info.keys;
    let values: unknown[];
    let entity: Record<string, unknown> | undefined;
    if (entityOrPk !== null && typeof entityOrPk === "object" && !(entityOrPk instanceof Date)) {
      const record = entityOrPk as Record<string, unknown>;
      values = keys.map((k) => record[k.key]);
      // a full row (more than its key columns) is kept as the stream's entity
      if (hasOtherProperty(record, keys)) entity = record;
    } else {
      if (keys.length > 1 && entityOrPk !== undefined && entityOrPk !== null) {
        throw new FrameOptionsError(
          `${cls.name}.for(): table "${info.name}" has a composite key (${keyNames(keys).join(", ")}); pass a row or { ${keyNames(keys).join(", ")} }`,
        );
      }
      values = [entityOrPk];
    }
    if (values.some((v) => v === undefined || v === null || (typeof v === "number" && Number.isNaN(v)))) {
      throw new MissingPrimaryKeyError(info.name, keyNames(keys));
    }
    const parts = values.map((v) => (v instanceof Date ? String(v.getTime()) : String(v)));
    const pk = keys.length === 1 ? values[0] : Object.fromEntries(keys.map((k, i) => [k.key, values[i]]));
    const Ctor = this as unknown as new (
      init: StreamInit,
    ) => T & { readonly pk: PrimaryKeyOf<TableOf<T>>; readonly isAll: false };
    return new Ctor({ name: rowStreamName(cls.baseName(), parts), parts, pk, entity });
  }

  /** The table-wide stream ("a room was created" goes here); `this.pk` is undefined on it. */
  static all<T extends Stream>(
    this: abstract new (
      init: StreamInit,
    ) => T,
  ): T & { readonly pk: undefined; readonly isAll: true } {
    const cls = this as unknown as typeof ModelStream;
    const Ctor = this as unknown as new (init: StreamInit) => T & { readonly pk: undefined; readonly isAll: true };
    return new Ctor({ name: tableStreamName(cls.baseName()), all: true });
  }

  /** The row behind this stream, loaded through the app's database when not known yet. */
  async load(): Promise<InferSelectModel<TTable> | undefined> {
    if (this.entity !== undefined || this.isAll) return this.entity;
    const cls = this.constructor as typeof ModelStream;
    const info = cls.tableInfo();
    const key = info.keys.length === 1 ? { [info.keys[0]!.key]: this.pk } : (this.pk as Record<string, unknown>);
    const row = await runtimeOf(cls).loadRow(info.table, key);
    this.entity = row as InferSelectModel<TTable> | undefined;
    return this.entity;
  }

  /**
   * Called after commit for every insert (`created: true`) and update of a
   * row of the table, with the change context (SaveContext). Runs after the
   * declarative broadcasts, when the class has them.
   */
  onSave(_entity: InferSelectModel<TTable>, _context: SaveContext<TTable>): void | Promise<void> {}

  /** Called after commit for every deleted row, with the row as it was. */
  onDelete(_entity: InferSelectModel<TTable>, _context: DeleteContext): void | Promise<void> {}
}

function keyNames(keys: TableInfo["keys"]): string[] {
  return keys.map((k) => k.key);
}

/**
 * Whether a row has an own enumerable property that is not one of its key
 * columns (so it is a row, not a bare key object). No array made: every
 * change dispatched asks.
 */
function hasOtherProperty(record: Record<string, unknown>, keys: TableInfo["keys"]): boolean {
  for (const name in record) {
    if (!Object.hasOwn(record, name)) continue;
    let isKey = false;
    for (const key of keys) {
      if (key.key === name) {
        isKey = true;
        break;
      }
    }
    if (!isKey) return true;
  }
  return false;
}
