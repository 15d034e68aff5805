import type { Protocol } from "../procs/clients.js";

/** What procs/server.ts needs from each server under test. */
export interface BenchServer {
  /** Listens on 127.0.0.1, port 0; says where each protocol subscribes. */
  start(): Promise<{ port: number; origin: string; urls: Partial<Record<Protocol, string>> }>;
  /** Subscribers the server has registered (what clients must reach before a broadcast). */
  subscribers(): number;
  /**
   * Sends `frame` to every subscriber. Whatever it does synchronously is
   * timed as the server's own loop; a returned promise is awaited after.
   */
  broadcast(id: number, frame: string): unknown;
  /** Server-specific commands (turbocast: template renders, inserts). */
  commands?: Record<string, (args: never) => unknown>;
  close(): Promise<void>;
}
