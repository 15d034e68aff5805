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
 * Publishes a change's data events: each built once (the projection through
 * `static fields` once per change, the JSON once per action), whatever the
 * number of streams and of subscribers. `mapped`: the streams the
 * declarative broadcasts mapped the row to (null: the class declares none,
 * so one event goes to the row's own stream and the table-wide one — the
 * common case, with no map of targets built).
 */
export function publishDataEvents(
  cls: AnyModelStreamClass,
  change: DecodedChange,
  mapped: MappedStreams | null,
  publish: (channel: string, json: string) => unknown,
): void {
  const fields = dataFields(cls);
  if (mapped === null) {
    const json = eventJson(fields, change, dataAction(change.op));
    publish(dataChannel(rowStreamName(cls, change)), json);
    publish(fields.tableChannel, json);
    return;
  }
  const targets = dataTargets(cls, change, mapped);
  if (targets.size === 0) return;
  const built = new Map<DataAction, string>();
  for (const [stream, action] of targets) {
    let json = built.get(action);
    if (json === undefined) built.set(action, (json = eventJson(fields, change, action)));
    publish(dataChannel(stream), json);
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
