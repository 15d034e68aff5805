import type { Connection } from "./connection.js";

/** What the registry knows of a live connection besides the connection itself. */
export interface ConnectionInfo {
  /** The distinct stream names it is subscribed to. */
  readonly streams: readonly string[];
}

/**
 * The live connections of one turbocast instance, on both transports: who
 * gets a heartbeat, who is ended by close(), and — by stream — who holds a
 * given stream. A connection is added once it is authorized and removed
 * when it closes, whoever closed it.
 */
export class ConnectionRegistry {
  readonly #info = new Map<Connection, ConnectionInfo>();
  readonly #byStream = new Map<string, Set<Connection>>();

  /** Open connections. */
  get size(): number {
    return this.#info.size;
  }

  add(connection: Connection, info: ConnectionInfo): void {
    if (this.#info.has(connection)) return;
    this.#info.set(connection, info);
    for (const stream of info.streams) {
      let holders = this.#byStream.get(stream);
      if (!holders) this.#byStream.set(stream, (holders = new Set()));
      holders.add(connection);
    }
  }

  /** Forgets a connection; safe to call for one never added or already removed. */
  remove(connection: Connection): void {
    const info = this.#info.get(connection);
    if (!info) return;
    this.#info.delete(connection);
    for (const stream of info.streams) {
      const holders = this.#byStream.get(stream);
      holders?.delete(connection);
      if (holders?.size === 0) this.#byStream.delete(stream);
    }
  }

  /** What was registered with `connection`, while it is live. */
  info(connection: Connection): ConnectionInfo | undefined {
    return this.#info.get(connection);
  }

  /** Every live connection (a snapshot: closing one while iterating is safe). */
  all(): Connection[] {
    return [...this.#info.keys()];
  }

  /** The live connections subscribed to `stream` (a snapshot). */
  withStream(stream: string): Connection[] {
    return [...(this.#byStream.get(stream) ?? [])];
  }

  /** The live connections whose info passes `test` (a snapshot). */
  select(test: (info: ConnectionInfo, connection: Connection) => boolean): Connection[] {
    const selected: Connection[] = [];
    for (const [connection, info] of this.#info) if (test(info, connection)) selected.push(connection);
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
