/**
 * The subscriber side of every measurement, run in its own process so the
 * server under test has its own core: opens N connections of one protocol
 * to one URL and reports, for each broadcast id, when the first and the last
 * of the N deliveries arrived (wall clock, see lib/clock.ts).
 *
 * Clients are as cheap as they can be, so that they are not the bottleneck:
 * WebSocket and SSE spoken over plain `net` sockets by the small parsers of
 * lib/wire.ts (not `ws` or `http`, whose per-message stream machinery made
 * the subscriber process, not the server, the slower half); Socket.IO as raw
 * Engine.IO packets over that WebSocket (no socket.io-client per
 * connection). Every server's subscribers run the same code.
 */
import net from "node:net";
import { now } from "../lib/clock.js";
import { broadcastId } from "../lib/frame.js";
import { emit, serve } from "../lib/ipc.js";
import { type WireConnection, openEventStream, openWebSocket } from "../lib/wire.js";

/** `mux1` / `mux5`: turbocast's shared WebSocket (the client script's), a page holding 1 or 5 subscriptions on it. */
export type Protocol = "tcp" | "ws" | "sio" | "sse" | "mux1" | "mux5";

export interface ClientsConfig {
  protocol: Protocol;
  url: string;
  /** Origin header for WebSocket upgrades (turbocast checks it). */
  origin?: string;
}

export interface Delivery {
  id: number;
  count: number;
  first: number;
  last: number;
}

interface Connection {
  close(): void;
}

let config: ClientsConfig | null = null;
const connections: Connection[] = [];
let expected = 1;
let unexpectedCloses = 0;
let messages = 0;
const inFlight = new Map<number, Delivery>();

function received(id: number, t: number): void {
  messages++;
  let d = inFlight.get(id);
  if (d === undefined) {
    d = { id, count: 0, first: t, last: t };
    inFlight.set(id, d);
  }
  d.count++;
  d.last = t;
  if (d.count === expected) {
    inFlight.delete(id);
    emit("delivered", d);
  }
}

function openWs(url: string, origin: string | undefined, sio: boolean): Promise<Connection> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let closing = false;
    const ready = (connection: WireConnection): void => {
      if (settled) return;
      settled = true;
      resolve({
        close() {
          closing = true;
          connection.destroy();
        },
      });
    };
    openWebSocket(url, origin, {
      message(data, connection) {
        const t = now();
        if (sio) {
          // Engine.IO packet types: 0 open, 2 ping, 4 message (+ Socket.IO 0 connect, 2 event)
          const type = data[0];
          if (type === 0x32 && data.length === 1) connection.send("3");
          else if (type === 0x30) connection.send("40");
          else if (type === 0x34 && data[1] === 0x30) ready(connection);
          else if (type === 0x34 && data[1] === 0x32) {
            const id = broadcastId(data);
            if (id >= 0) received(id, t);
          }
          return;
        }
        const id = broadcastId(data);
        if (id >= 0) received(id, t);
      },
      closed() {
        if (!settled) {
          settled = true;
          reject(new Error("closed during the handshake"));
        } else if (!closing) unexpectedCloses++;
      },
    }).then(
      (connection) => {
        if (!sio) ready(connection);
      },
      (error: unknown) => {
        if (settled) return;
        settled = true;
        reject(error);
      },
    );
  });
}

/**
 * A page's shared connection: the `turbocast.v1` subprotocol, then one
 * `subscribe` per subscription the URL's fragment lists (arrays of signed
 * names); open once every one is answered `subscribed`.
 */
function openMux(url: string, origin: string | undefined): Promise<Connection> {
  const subscriptions = JSON.parse(decodeURIComponent(new URL(url).hash.slice(1))) as string[][];
  return new Promise((resolve, reject) => {
    let closing = false;
    let settled = false;
    let answered = 0;
    let wire: WireConnection | null = null;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      reject(error);
    };
    openWebSocket(
      url,
      origin,
      {
        message(data, connection) {
          const t = now();
          if (data[0] === 0x7b) {
            const answer = JSON.parse(data.toString("utf8")) as { type: string };
            if (answer.type !== "subscribed") return fail(new Error(`subscribe answered ${data.toString("utf8")}`));
            if (++answered === subscriptions.length && !settled) {
              settled = true;
              resolve({
                close() {
                  closing = true;
                  connection.destroy();
                },
              });
            }
            return;
          }
          const id = broadcastId(data);
          if (id >= 0) received(id, t);
        },
        closed() {
          if (!settled) fail(new Error("closed during the handshake"));
          else if (!closing) unexpectedCloses++;
        },
      },
      30_000,
      "turbocast.v1",
    ).then((connection) => {
      wire = connection;
      subscriptions.forEach((streams, i) => {
        wire!.send(JSON.stringify({ type: "subscribe", id: i + 1, streams, after: null }));
      });
    }, fail);
  });
}

async function openSse(url: string): Promise<Connection> {
  let closing = false;
  const connection = await openEventStream(url, {
    message(event) {
      const id = broadcastId(event);
      if (id >= 0) received(id, now());
    },
    closed() {
      if (!closing) unexpectedCloses++;
    },
  });
  return {
    close() {
      closing = true;
      connection.destroy();
    },
  };
}

/** The raw TCP floor's wire format: a 4-byte length, then the frame. */
function openTcp(url: string): Promise<Connection> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    let closing = false;
    let carry: Buffer | null = null;
    const socket = net.connect(Number(port), hostname, () => {
      resolve({
        close() {
          closing = true;
          socket.destroy();
        },
      });
    });
    socket.on("data", (chunk: Buffer) => {
      const t = now();
      const data = carry === null ? chunk : Buffer.concat([carry, chunk]);
      let start = 0;
      while (data.length - start >= 4) {
        const length = data.readUInt32BE(start);
        if (data.length - start - 4 < length) break;
        const id = broadcastId(data.subarray(start + 4, start + 4 + length));
        if (id >= 0) received(id, t);
        start += 4 + length;
      }
      carry = start >= data.length ? null : Buffer.from(data.subarray(start));
    });
    socket.once("error", (error) => {
      if (!closing) reject(error);
    });
    socket.once("close", () => {
      if (!closing) unexpectedCloses++;
    });
  });
}

function open(): Promise<Connection> {
  if (!config) throw new Error("configure first");
  if (config.protocol === "tcp") return openTcp(config.url);
  if (config.protocol === "sse") return openSse(config.url);
  if (config.protocol === "mux1" || config.protocol === "mux5") return openMux(config.url, config.origin);
  return openWs(config.url, config.origin, config.protocol === "sio");
}

serve({
  configure(args: ClientsConfig) {
    config = args;
    return true;
  },
  /** Opens or closes connections until `n` are open. */
  async resize(args: { n: number; concurrency?: number }) {
    const started = now();
    while (connections.length > args.n) connections.pop()!.close();
    const missing = args.n - connections.length;
    const errors: string[] = [];
    let failed = 0;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < missing) {
        next++;
        try {
          const connection = await open();
          connections.push(connection);
        } catch (error) {
          failed++;
          if (errors.length < 3) errors.push(error instanceof Error ? error.message : String(error));
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(args.concurrency ?? 200, Math.max(missing, 0)) }, worker));
    return { open: connections.length, failed, errors, ms: now() - started };
  },
  /** Deliveries per broadcast before it counts as delivered. */
  expect(args: { n: number }) {
    expected = args.n;
    inFlight.clear();
    return true;
  },
  /** Broadcasts not (yet) delivered to every connection. */
  pending() {
    return [...inFlight.values()];
  },
  forget() {
    inFlight.clear();
    return true;
  },
  stats() {
    return { open: connections.length, unexpectedCloses, messages };
  },
});
