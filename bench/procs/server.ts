/**
 * One server under test, in its own process (started with --expose-gc so
 * memory is measured after a full collection). The kind is the first
 * argument: raw-tcp, bare-ws, socketio, turbocast, turbocast-pg (the same app on
 * PostgreSQL).
 */
import { now, sleep } from "../lib/clock.js";
import { benchFrame } from "../lib/frame.js";
import { serve } from "../lib/ipc.js";
import type { BenchServer } from "../servers/types.js";

const kind = process.argv[2];

async function load(): Promise<BenchServer> {
  switch (kind) {
    case "bare-ws":
      return (await import("../servers/bare-ws.js")).bareWsServer();
    case "socketio":
      return (await import("../servers/socketio.js")).socketIoServer();
    case "raw-tcp":
      return (await import("../servers/raw-tcp.js")).rawTcpServer();
    case "turbocast":
      return (await import("../servers/turbocast.js")).turbocastServer();
    case "turbocast-pg":
      return (await import("../servers/turbocast-pg.js")).turbocastPgServer();
    default:
      throw new Error(`unknown server kind ${kind}`);
  }
}

export interface BroadcastTiming {
  /** Wall clock just before the broadcast call. */
  tPub: number;
  /** When the broadcast call returned (the synchronous fan-out loop). */
  tSync: number;
}

export interface MemorySample {
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

const gc = (globalThis as { gc?: () => void }).gc;

async function collect(): Promise<void> {
  if (!gc) throw new Error("start the server with --expose-gc");
  for (let i = 0; i < 3; i++) {
    gc();
    await sleep(20);
  }
}

const server = await load();

serve({
  ...server.commands,
  start: () => server.start(),
  subscribers: () => server.subscribers(),
  async broadcast(args: { id: number }): Promise<BroadcastTiming> {
    const frame = benchFrame(args.id);
    const tPub = now();
    const result = server.broadcast(args.id, frame);
    const tSync = now();
    await result;
    return { tPub, tSync };
  },
  /**
   * Publishes `count` broadcasts at `rate` per second, starting with id
   * `firstId`; returns when each was scheduled. A server that cannot keep
   * up publishes late, and the lag shows against the schedule.
   */
  async burst(args: { firstId: number; count: number; rate: number }): Promise<number[]> {
    const interval = 1000 / args.rate;
    const start = now() + 2;
    const scheduled: number[] = [];
    const frames = Array.from({ length: args.count }, (_, k) => benchFrame(args.firstId + k));
    let k = 0;
    await new Promise<void>((resolve) => {
      const tick = (): void => {
        const t = now();
        while (k < args.count && start + k * interval <= t) {
          scheduled.push(start + k * interval);
          const result = server.broadcast(args.firstId + k, frames[k]!);
          if (result instanceof Promise) result.catch((error: unknown) => console.error("broadcast failed", error));
          k++;
        }
        if (k >= args.count) resolve();
        else setTimeout(tick, Math.max(0, start + k * interval - now() - 0.5));
      };
      setTimeout(tick, 1);
    });
    return scheduled;
  },
  async memory(): Promise<MemorySample> {
    await collect();
    const { rss, heapUsed, external, arrayBuffers } = process.memoryUsage();
    return { rss, heapUsed, external, arrayBuffers };
  },
  async close() {
    await server.close();
    return true;
  },
  /** Closes the server first (the PostgreSQL app drops its schema), for at most 3 s, then exits. */
  async exit() {
    await Promise.race([server.close().catch((error: unknown) => console.error("close failed", error)), sleep(3000)]);
    setImmediate(() => process.exit(0));
    return true;
  },
});
