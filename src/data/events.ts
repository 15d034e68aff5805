import type { FrameText } from "../brokers/broker.js";
import type { DecodedChange } from "../changes/dispatch.js";
import type { MappedStreams } from "../streams/declarative.js";
import type { AnyModelStreamClass } from "../streams/registry.js";
import { dataChannel } from "./channel.js";
import { type DataFields, dataFields, keyOfRow, projectRow } from "./fields.js";

export { DATA_PREFIX, dataChannel, isDataChannel } from "./channel.js";

export type DataAction = "created" | "updated" | "deleted";

/**
 * One data event as JSON. `version` goes first, so a subscriber that drops
 * events a sync already covered reads it without parsing the rest
 * (versionOf).
 */
export function dataEventJson(action: DataAction, table: string, key: unknown, data: object, version: number): string {
  return `{"version":${version},"action":"${action}","table":${JSON.stringify(table)},"key":${JSON.stringify(key)},"data":${JSON.stringify(data)}}`;
}

/** The sync event that opens a data subscription: the set at `version`. */
export function syncEventJson(rows: readonly object[], version: number): string {
  return `{"version":${version},"action":"sync","rows":${JSON.stringify(rows)}}`;
}

const VERSION_AT = '{"version":'.length;

/** The version of a data event's JSON (see dataEventJson); null for anything else. */
export function versionOf(json: string): number | null {
  if (!json.startsWith('{"version":')) return null;
  const end = json.indexOf(",", VERSION_AT);
  const version = Number(json.slice(VERSION_AT, end < 0 ? undefined : end));
  return Number.isSafeInteger(version) ? version : null;
}

/** The data action of a change's operation, where the row stays. */
export function dataAction(op: DecodedChange["op"]): DataAction {
  return op === "insert" ? "created" : op === "delete" ? "deleted" : "updated";
}

/**
 * Which streams get a change's data event, and as what: the streams its HTML
 * goes to. With broadcastsTo / broadcastsRefreshesTo, the row's mapped
 * streams — an updated row is "updated" where it stays, "deleted" from
 * streams it left and "created" in those it entered (as the HTML frames
 * remove and insert it); without, the row's own stream and the table-wide one.
 */
export function dataTargets(
  cls: AnyModelStreamClass,
  change: DecodedChange,
  mapped: MappedStreams | null,
): Map<string, DataAction> {
  const targets = new Map<string, DataAction>();
  const action = dataAction(change.op);
  if (mapped === null) {
    targets.set(rowStreamName(cls, change), action);
    targets.set(cls.all().name, action);
    return targets;
  }
  const { before, after } = mapped;
  if (before === null || action !== "updated") {
    for (const name of after.keys()) targets.set(name, action);
    return targets;
  }
  for (const name of before.keys()) if (!after.has(name)) targets.set(name, "deleted");
  for (const name of after.keys()) targets.set(name, before.has(name) ? "updated" : "created");
  return targets;
}

/**
 * Publishes a change's data events: each built once at most (the JSON once
 * per action, when a broker first reads it: the in-memory broker reads none
 * for channels nobody watched), whatever the number of streams and of
 * subscribers. `mapped`: the streams the
 * declarative broadcasts mapped the row to (null: the class declares none,
 * so one event goes to the row's own stream and the table-wide one — the
 * common case, with no map of targets built).
 */
export function publishDataEvents(
  cls: AnyModelStreamClass,
  change: DecodedChange,
  mapped: MappedStreams | null,
  publish: (channel: string, json: string | FrameText) => unknown,
): void {
  const fields = dataFields(cls);
  if (mapped === null) {
    const event = new EventText(fields, change, dataAction(change.op));
    publish(dataChannel(rowStreamName(cls, change)), event);
    publish(fields.tableChannel, event);
    return;
  }
  const targets = dataTargets(cls, change, mapped);
  if (targets.size === 0) return;
  const built = new Map<DataAction, EventText>();
  for (const [stream, action] of targets) {
    let event = built.get(action);
    if (event === undefined) built.set(action, (event = new EventText(fields, change, action)));
    publish(dataChannel(stream), event);
  }
}

/** A change's data event for one action, built on first read (see FrameText). */
class EventText implements FrameText {
  readonly #fields: DataFields;
  readonly #change: DecodedChange;
  readonly #action: DataAction;
  #text: string | undefined;

  constructor(fields: DataFields, change: DecodedChange, action: DataAction) {
    this.#fields = fields;
    this.#change = change;
    this.#action = action;
  }

  get text(): string {
    this.#text ??= eventJson(this.#fields, this.#change, this.#action);
    return this.#text;
  }
}

function eventJson(fields: DataFields, change: DecodedChange, action: DataAction): string {
  const { entity } = change;
  return dataEventJson(action, change.table, keyOfRow(fields, entity), projectRow(fields, entity), change.seq);
}

/** The row's own stream name: its `.stream` made by the dispatcher, else made here. */
function rowStreamName(cls: AnyModelStreamClass, change: DecodedChange): string {
  return (change.stream ?? cls.for(change.entity as never)).name;
}
