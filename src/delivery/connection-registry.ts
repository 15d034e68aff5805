import type { Connection } from "./connection.js";

/** What the registry knows of a live connection besides the connection itself. */
export interface ConnectionInfo {
  /** The distinct stream names it is subscribed to. */
  readonly streams: readonly string[];
  /** `userKey(user)` as a string (keys cross processes as JSON); undefined for an anonymous subscriber. */
  readonly userKey?: string | undefined;
  /** The user `authenticate` returned when it subscribed: what a re-check passes to `userPassesTest`. */
  readonly user?: unknown;
  /** When its earliest signature expires (ms since the epoch); undefined: never. */
  readonly expiresAt?: number | undefined;
}

/** Which connections a disconnect or a re-check is about: both given means both must match. */
export interface ConnectionSelector {
  readonly userKey?: string | undefined;
  /** Connections holding any of these streams. */
  readonly streams?: readonly string[] | undefined;
}

interface Entry {
  readonly info: ConnectionInfo;
  /** Its slot in the re-check round (see `slot()`). */
  readonly slot: number;
  /** Its expiry bucket (whole seconds), if its signatures expire. */
  readonly expirySecond: number | undefined;
}

const addTo = <K>(index: Map<K, Set<Connection>>, key: K, connection: Connection): void => {
  let set = index.get(key);
  if (!set) index.set(key, (set = new Set()));
  set.add(connection);
};

const removeFrom = <K>(index: Map<K, Set<Connection>>, key: K, connection: Connection): void => {
  const set = index.get(key);
  set?.delete(connection);
  if (set?.size === 0) index.delete(key);
};

/**
 * The live connections of one turbocast instance, on both transports: who
 * gets a heartbeat, who is ended by close(), and who a revocation is about.
 * Indexed by stream, by user key, by re-check slot and by expiry second, so
 * that closing one user's or one stream's subscriptions, one slice of the
 * periodic re-check and one second's expiries never scan every connection.
 * A connection is added once it is authorized and removed when it closes,
 * whoever closed it.
 */
export class ConnectionRegistry {
  readonly #entries = new Map<Connection, Entry>();
  readonly #byStream = new Map<string, Set<Connection>>();
  readonly #byUser = new Map<string, Set<Connection>>();
  readonly #bySlot: Set<Connection>[];
  readonly #byExpiry = new Map<number, Set<Connection>>();
  #nextSlot = 0;

  /** `slots`: how many slices the periodic re-check cuts the connections into (round-robin, so a burst of connects spreads evenly). */
  constructor({ slots = 1 }: { slots?: number } = {}) {
    this.#bySlot = Array.from({ length: Math.max(1, slots) }, () => new Set<Connection>());
  }

  /** Open connections. */
  get size(): number {
    return this.#entries.size;
  }

  /** How many slots the re-check round has. */
  get slots(): number {
    return this.#bySlot.length;
  }

  add(connection: Connection, info: ConnectionInfo): void {
    if (this.#entries.has(connection)) return;
    const slot = this.#nextSlot;
    this.#nextSlot = (slot + 1) % this.#bySlot.length;
    const expirySecond = info.expiresAt === undefined ? undefined : Math.ceil(info.expiresAt / 1000);
    this.#entries.set(connection, { info, slot, expirySecond });
    for (const stream of info.streams) addTo(this.#byStream, stream, connection);
    if (info.userKey !== undefined) addTo(this.#byUser, info.userKey, connection);
    this.#bySlot[slot]!.add(connection);
    if (expirySecond !== undefined) addTo(this.#byExpiry, expirySecond, connection);
  }

  /** Forgets a connection; safe to call for one never added or already removed. */
  remove(connection: Connection): void {
    const entry = this.#entries.get(connection);
    if (!entry) return;
    this.#entries.delete(connection);
    for (const stream of entry.info.streams) removeFrom(this.#byStream, stream, connection);
    if (entry.info.userKey !== undefined) removeFrom(this.#byUser, entry.info.userKey, connection);
    this.#bySlot[entry.slot]!.delete(connection);
    if (entry.expirySecond !== undefined) removeFrom(this.#byExpiry, entry.expirySecond, connection);
  }

  /** What was registered with `connection`, while it is live. */
  info(connection: Connection): ConnectionInfo | undefined {
    return this.#entries.get(connection)?.info;
  }

  /** Every live connection (a snapshot: closing one while iterating is safe). */
  all(): Connection[] {
    return [...this.#entries.keys()];
  }

  /** The live connections subscribed to `stream` (a snapshot). */
  withStream(stream: string): Connection[] {
    return [...(this.#byStream.get(stream) ?? [])];
  }

  /** The live connections of the user with key `userKey` (a snapshot). */
  withUser(userKey: string): Connection[] {
    return [...(this.#byUser.get(userKey) ?? [])];
  }

  /**
   * The live connections `selector` names (a snapshot), found through the
   * smaller index; no selector at all selects every connection.
   */
  matching(selector: ConnectionSelector): Connection[] {
    const { userKey, streams } = selector;
    if (userKey === undefined && streams === undefined) return this.all();
    const byUser = userKey === undefined ? undefined : (this.#byUser.get(userKey) ?? new Set<Connection>());
    if (streams === undefined) return [...byUser!];
    const byStreams = new Set<Connection>();
    for (const stream of streams) for (const c of this.#byStream.get(stream) ?? []) byStreams.add(c);
    if (byUser === undefined) return [...byStreams];
    const [small, large] = byUser.size <= byStreams.size ? [byUser, byStreams] : [byStreams, byUser];
    return [...small].filter((c) => large.has(c));
  }

  /** The live connections in re-check slot `slot` (a snapshot). */
  inSlot(slot: number): Connection[] {
    return [...(this.#bySlot[slot] ?? [])];
  }

  /** The live connections whose signatures expire within second `second` (ms / 1000, rounded up; a snapshot). */
  expiringIn(second: number): Connection[] {
    return [...(this.#byExpiry.get(second) ?? [])];
  }

  /** The live connections whose info passes `test` (a snapshot). */
  select(test: (info: ConnectionInfo, connection: Connection) => boolean): Connection[] {
    const selected: Connection[] = [];
    for (const [connection, entry] of this.#entries) if (test(entry.info, connection)) selected.push(connection);
    return selected;
  }

  /**
   * Closes every live connection cleanly, waits up to `graceMs` for them to
   * finish (WebSocket clients answering the close handshake), then cuts off
   * the rest.
   */
  async closeAll(graceMs: number): Promise<void> {
    const open = this.all();
    for (const connection of open) connection.close();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(open.map((c) => c.closed)),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs))),
    ]);
    clearTimeout(timer);
    for (const connection of open) if (connection.state !== "closed") connection.terminate();
  }
}
