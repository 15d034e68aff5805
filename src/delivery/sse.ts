import type { Response } from "express";
import type { Published } from "../brokers/broker.js";
import { BufferBound, type Connection, ConnectionLifecycle } from "./connection.js";
import { sseBytes } from "./encode.js";

const HEARTBEAT = Buffer.from(": heartbeat\n\n", "utf8");

export interface SseConnectionOptions {
  retryMs: number;
  maxBufferedBytes: number;
  /** Called once when the connection closes, however it closed. */
  onClose: (connection: SseConnection) => void;
}

/**
 * A Server-Sent Events subscriber. Frames are written as memoised SSE
 * events (`id:` + `data:` lines); a heartbeat comment line keeps proxies
 * from timing the response out. Each write is checked against
 * `maxBufferedBytes` (what Node holds for this response and its socket, see
 * BufferBound): a subscriber that stopped reading is destroyed, and
 * EventSource reconnects with Last-Event-ID and replays what it missed.
 */
export class SseConnection implements Connection {
  readonly transport = "sse" as const;
  #res: Response;
  #options: SseConnectionOptions;
  #life = new ConnectionLifecycle();
  #bound: BufferBound;

  constructor(res: Response, options: SseConnectionOptions) {
    this.#res = res;
    this.#options = options;
    this.#bound = new BufferBound(options.maxBufferedBytes);
    res.on("close", () => {
      this.#life.finish();
      options.onClose(this);
    });
    res.on("error", () => res.destroy());
  }

  get state(): "open" | "closing" | "closed" {
    return this.#life.state;
  }

  get closed(): Promise<void> {
    return this.#life.closed;
  }

  /** Sends the headers and `retry:`; EventSource fires "open" on them. */
  start(): void {
    const res = this.#res;
    res.writeHead(200, {
      "Content-Type": "text/event-stream; charset=utf-8",
      // no-transform keeps compression middleware (and proxies) from buffering the stream
      "Cache-Control": "no-cache, no-transform",
      Connection: "keep-alive",
      "X-Accel-Buffering": "no",
    });
    res.write(`retry: ${Math.round(this.#options.retryMs)}\n\n`);
    res.socket?.setNoDelay(true);
  }

  beginReplay(): void {
    this.#bound.beginReplay();
  }

  endReplay(): void {
    this.#bound.endReplay(this.#res.writableLength);
  }

  attach(unsubscribe: () => void): void {
    this.#life.attach(unsubscribe);
  }

  send(frame: Published): void {
    if (this.#life.state !== "open") return;
    this.#write(sseBytes(frame));
  }

  heartbeat(): void {
    if (this.#life.state === "open") this.#write(HEARTBEAT);
  }

  close(): void {
    if (this.#life.state !== "open") return;
    this.#life.state = "closing";
    this.#res.end();
  }

  terminate(): void {
    this.#res.destroy();
  }

  #write(bytes: Buffer): void {
    const res = this.#res;
    res.write(bytes);
    if (this.#bound.exceeded(res.writableLength)) {
      this.#life.state = "closing";
      res.destroy();
    }
  }
}
