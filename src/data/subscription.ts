import type { Broker, Published } from "../brokers/broker.js";
import { parsePosition } from "../brokers/broker.js";
import type { Hub, Sink } from "../delivery/hub.js";
import { SyncError } from "../errors.js";
import type { StreamRegistry } from "../streams/registry.js";
import { dataChannel } from "./channel.js";
import { syncEventJson, versionOf } from "./events.js";
import type { SyncReader } from "./sync.js";

/** Where a data subscription starts. */
export interface DataStart {
  /** Send `{ action: "sync", rows, version }` first (one stream only), then every change after that version. */
  sync: boolean;
  /** Resume: replay every event after this position (the last one the client saw, the sync's included). */
  after: string | null;
  /**
   * Resume: the version of the sync the client applied; events at or below it
   * are in the sync and not sent again. (Not the last event's: on PostgreSQL
   * a change with a lower version may be dispatched after a higher one.)
   */
  version: number | null;
}

export interface DataSubscriptionInit {
  hub: Hub;
  broker: Broker;
  registry: StreamRegistry;
  reader: SyncReader;
}

/**
 * The sink between the hub and a data subscriber's connection: holds what
 * arrives while the sync is read, then lets through only events above the
 * version the subscriber already has (the sync's, or the one it resumed
 * with) — so a change is either in the sync or sent after it, even when its
 * event is dispatched after the sync read it. (On PostgreSQL a change above
 * the sync's version may be in the sync too, and still sent: see
 * postgresSyncSource.)
 */
export class DataGate implements Sink {
  readonly #target: Sink;
  /** Events held while the sync is read; null once open. */
  #held: Published[] | null;
  #version: number;
  #liveAsked = false;

  constructor(target: Sink, options: { hold: boolean; version: number | null }) {
    this.#target = target;
    this.#held = options.hold ? [] : null;
    this.#version = options.version ?? -1;
  }

  send(frame: Published): void {
    if (this.#held !== null) this.#held.push(frame);
    else if (this.#passes(frame)) this.#target.send(frame);
  }

  /** The hub says the subscription is live: passed on once the sync went out. */
  live(): void {
    if (this.#held !== null) this.#liveAsked = true;
    else this.#target.live?.();
  }

  /** Sends the sync, then what arrived meanwhile and is not in it; from now on events pass as they come. */
  open(sync: Published, version: number): void {
    const held = this.#held ?? [];
    this.#held = null;
    this.#version = version;
    this.#target.send(sync);
    for (const frame of held) if (this.#passes(frame)) this.#target.send(frame);
    if (this.#liveAsked) this.#target.live?.();
  }

  #passes(frame: Published): boolean {
    // a refresh (stream "", frames lost in an outage) always goes: the subscriber syncs again
    if (frame.stream === "") return true;
    const version = versionOf(frame.frame);
    return version === null || version > this.#version;
  }
}

/**
 * Subscribes `sink` to the data channels of `names` (already authorized:
 * same signatures, same `userPassesTest` as HTML). With `sync`: the
 * broker's position is read first, the channel subscribed live (held), the
 * set read with its version, and the sync sent with that position — every
 * event after it is either in the set or above its version. Without:
 * replays after `after` (dropping what `version` covers), then live.
 * Resolves with the unsubscribe function; throws SyncError for a sync that
 * cannot be answered (more than one stream, no `sync`, too many rows).
 */
export async function subscribeData(
  init: DataSubscriptionInit,
  names: readonly string[],
  sink: Sink,
  start: DataStart,
): Promise<() => void> {
  const channels = names.map(dataChannel);
  if (!start.sync) {
    const gate = new DataGate(sink, { hold: false, version: start.version });
    return init.hub.subscribe(channels, gate, { cursor: start.after, refresh: false });
  }
  if (names.length !== 1) {
    throw new SyncError(names.join(" "), 400, "a sync is for one stream: subscribe each stream to sync on its own");
  }
  const stream = init.registry.resolve(names[0]!);
  // kept for resuming from the sync's position on (a broker that keeps data channels only while watched)
  const watching = init.broker.watch?.(channels);
  const unwatch = watching instanceof Promise ? await watching : watching;
  const gate = new DataGate(sink, { hold: true, version: null });
  let unsubscribe: () => void;
  let position: string;
  try {
    // every event published after this position reaches the gate (it subscribes before the read)
    position = await init.broker.head();
    unsubscribe = await init.hub.subscribe(channels, gate, {});
  } finally {
    unwatch?.();
  }
  try {
    const set = await init.reader.read(stream);
    const seq = parsePosition(position)?.seq ?? 0;
    gate.open({ stream: channels[0]!, position, seq, frame: syncEventJson(set.rows, set.version) }, set.version);
  } catch (error) {
    unsubscribe();
    throw error;
  }
  return unsubscribe;
}
