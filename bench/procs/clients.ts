/**
 * The subscriber side of every measurement, run in its own process so the
 * server under test has its own core: opens N connections of one protocol
 * to one URL and reports, for each broadcast id, when the first and the last
 * of the N deliveries arrived (wall clock, see lib/clock.ts).
 *
 * Clients are as cheap as they can be, so that they are not the bottleneck:
 * `ws` with UTF-8 validation off and no compression; Socket.IO spoken as raw
 * Engine.IO packets over `ws` (no socket.io-client per connection); SSE as a
 * plain http GET whose body is split into events by hand.
 */
import http from "node:http";
import net from "node:net";
import WebSocket from "ws";
import { now } from "../lib/clock.js";
import { broadcastId } from "../lib/frame.js";
import { emit, serve } from "../lib/ipc.js";

export type Protocol = "tcp" | "ws" | "sio" | "sse";

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
    const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true, origin, handshakeTimeout: 30_000 });
    let settled = false;
    let closing = false;
    const ready = (): void => {
      if (settled) return;
      settled = true;
      resolve({
        close() {
          closing = true;
          ws.terminate();
        },
      });
    };
    ws.on("message", (data: Buffer) => {
      const t = now();
      if (sio) {
        // Engine.IO packet types: 0 open, 2 ping, 4 message (+ Socket.IO 0 connect, 2 event)
        const type = data[0];
        if (type === 0x32 && data.length === 1) ws.send("3");
        else if (type === 0x30) ws.send("40");
        else if (type === 0x34 && data[1] === 0x30) ready();
        else if (type === 0x34 && data[1] === 0x32) {
          const id = broadcastId(data);
          if (id >= 0) received(id, t);
        }
        return;
      }
      const id = broadcastId(data);
      if (id >= 0) received(id, t);
    });
    ws.once("open", () => {
      if (!sio) ready();
    });
    ws.once("error", (error) => {
      if (!settled) {
        settled = true;
        reject(error);
      }
    });
    ws.once("close", () => {
      if (!settled) {
        settled = true;
        reject(new Error("closed during the handshake"));
      } else if (!closing) unexpectedCloses++;
    });
  });
}

function openSse(url: string): Promise<Connection> {
  return new Promise((resolve, reject) => {
    let closing = false;
    const req = http.get(url, { agent: false, headers: { accept: "text/event-stream" } }, (res) => {
      req.setTimeout(0); // the connect timeout below; an idle stream is fine
      if (res.statusCode !== 200) {
        reject(new Error(`SSE GET answered ${res.statusCode}`));
        res.resume();
        return;
      }
      // events end with a blank line; a chunk may hold part of one, or several
      let carry: Buffer | null = null;
      res.on("data", (chunk: Buffer) => {
        const t = now();
        let data = carry === null ? chunk : Buffer.concat([carry, chunk]);
        let start = 0;
        for (;;) {
          const end = data.indexOf("\n\n", start, "latin1");
          if (end < 0) break;
          const id = broadcastId(data.subarray(start, end));
          if (id >= 0) received(id, t);
          start = end + 2;
        }
        carry = start >= data.length ? null : Buffer.from(data.subarray(start));
        data = chunk; // drop the reference to the concatenation
      });
      res.once("close", () => {
        if (!closing) unexpectedCloses++;
      });
      resolve({
        close() {
          closing = true;
          req.destroy();
        },
      });
    });
    req.once("error", (error) => {
      if (!closing) reject(error);
    });
    req.setTimeout(30_000, () => req.destroy(new Error("SSE connect timed out")));
  });
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
