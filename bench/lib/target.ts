import type { Delivery, Protocol } from "../procs/clients.js";
import type { BroadcastTiming, MemorySample } from "../procs/server.js";
import { now, sleep } from "./clock.js";
import { Child } from "./ipc.js";

/** One thing measured: a server process, the protocol its subscribers speak, and their client process. */
export interface TargetSpec {
  key: string;
  label: string;
  /** procs/server.ts kind. */
  server: string;
  protocol: Protocol;
  /** Subscriber counts this target is measured at. */
  ns: readonly number[];
  /** Server-side subscriptions each subscriber holds (a page with several sources on one shared connection). Default 1. */
  subscriptionsPerConnection?: number;
}

export interface BroadcastSample {
  id: number;
  /** Publish to the last delivery, ms. */
  last: number;
  /** Publish to the first delivery, ms. */
  first: number;
  /** The server's synchronous broadcast call, ms. */
  loop: number;
  /** Deliveries that arrived (N when complete). */
  count: number;
}

/**
 * A server under test plus the process holding its subscribers. Times the
 * children report are corrected by each one's measured clock offset.
 */
export class Target {
  readonly spec: TargetSpec;
  server!: Child;
  clients!: Child;
  origin = "";
  url = "";
  baseline: MemorySample | null = null;
  #waiters = new Map<number, (d: Delivery) => void>();
  /** Deliveries nobody waited for (bursts), by id. */
  #arrived = new Map<number, Delivery>();
  #size = 0;

  constructor(spec: TargetSpec) {
    this.spec = spec;
  }

  get size(): number {
    return this.#size;
  }

  async start(): Promise<void> {
    // one after the other, so a failed start leaves nothing running that stop() cannot reach
    this.server = await Child.spawn("procs/server.ts", {
      name: `${this.spec.key} server`,
      nodeFlags: ["--expose-gc"],
      args: [this.spec.server],
    });
    this.clients = await Child.spawn("procs/clients.ts", { name: `${this.spec.key} clients` });
    const info = await this.server.request<{ port: number; origin: string; urls: Partial<Record<Protocol, string>> }>(
      "start",
    );
    const url = info.urls[this.spec.protocol];
    if (!url) throw new Error(`${this.spec.key}: the ${this.spec.server} server has no ${this.spec.protocol} URL`);
    this.url = url;
    this.origin = info.origin;
    await this.clients.request("configure", { protocol: this.spec.protocol, url, origin: info.origin });
    this.clients.on("delivered", (data) => {
      const d = data as Delivery;
      const waiter = this.#waiters.get(d.id);
      if (waiter) {
        this.#waiters.delete(d.id);
        waiter(d);
      } else this.#arrived.set(d.id, d);
    });
    await Promise.all([this.server.calibrate(), this.clients.calibrate()]);
    this.baseline = await this.server.request<MemorySample>("memory");
  }

  /** Opens or closes subscriptions until the server has registered exactly `n`. */
  async resize(n: number): Promise<{ ms: number; failed: number; errors: string[] }> {
    const started = now();
    const result = await this.clients.request<{ open: number; failed: number; errors: string[] }>(
      "resize",
      { n },
      300_000,
    );
    this.#size = result.open;
    const deadline = Date.now() + 60_000;
    for (;;) {
      const registered = await this.server.request<number>("subscribers");
      if (registered === result.open * (this.spec.subscriptionsPerConnection ?? 1)) break;
      if (Date.now() > deadline)
        throw new Error(`${this.spec.key}: server has ${registered} subscribers, clients hold ${result.open}`);
      await sleep(50);
    }
    await this.clients.request("expect", { n: result.open });
    return { ms: now() - started, failed: result.failed, errors: result.errors };
  }

  /** Publish-side clock -> client-side clock. */
  #latency(delivered: number, published: number): number {
    return delivered - this.clients.clockOffset - (published - this.server.clockOffset);
  }

  /** One broadcast, waiting until every subscriber has it (or `timeoutMs`). */
  async broadcast(id: number, timeoutMs = 15_000, command = "broadcast", args: object = {}): Promise<BroadcastSample> {
    const delivered = new Promise<Delivery | null>((resolve) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(id);
        resolve(null);
      }, timeoutMs);
      this.#waiters.set(id, (d) => {
        clearTimeout(timer);
        resolve(d);
      });
    });
    const timing = await this.server.request<BroadcastTiming>(command, { id, ...args });
    let d = await delivered;
    if (d === null) {
      const partial = await this.clients.request<Delivery[]>("pending");
      d = partial.find((p) => p.id === id) ?? { id, count: 0, first: Number.NaN, last: Number.NaN };
    }
    return {
      id,
      last: this.#latency(d.last, timing.tPub),
      first: this.#latency(d.first, timing.tPub),
      loop: timing.tSync - timing.tPub,
      count: d.count,
    };
  }

  /**
   * Publishes `count` broadcasts at `rate`/s and waits for them to drain
   * (at most `drainMs` after the last is scheduled). Returns, per broadcast,
   * the lag from its scheduled time to its last delivery (NaN: incomplete).
   */
  async burst(
    firstId: number,
    count: number,
    rate: number,
    drainMs: number,
  ): Promise<{ lags: number[]; serverCpu: number; clientCpu: number; wallMs: number }> {
    for (let id = firstId; id < firstId + count; id++) this.#arrived.delete(id);
    const [serverCpu0, clientCpu0] = await Promise.all([
      this.server.request<number>("cpu"),
      this.clients.request<number>("cpu"),
    ]);
    const started = now();
    const scheduled = await this.server.request<number[]>("burst", { firstId, count, rate }, 120_000);
    const deadline = Date.now() + drainMs;
    while (Date.now() < deadline) {
      let complete = true;
      for (let id = firstId; id < firstId + count && complete; id++) complete = this.#arrived.has(id);
      if (complete) break;
      await sleep(10);
    }
    const wallMs = Math.max(now() - started, 1);
    const [serverCpu1, clientCpu1] = await Promise.all([
      this.server.request<number>("cpu"),
      this.clients.request<number>("cpu"),
    ]);
    const lags = scheduled.map((t, k) => {
      const d = this.#arrived.get(firstId + k);
      return d ? this.#latency(d.last, t) : Number.NaN;
    });
    await this.clients.request("forget");
    for (let id = firstId; id < firstId + count; id++) this.#arrived.delete(id);
    return {
      lags,
      serverCpu: (serverCpu1 - serverCpu0) / wallMs,
      clientCpu: (clientCpu1 - clientCpu0) / wallMs,
      wallMs,
    };
  }

  async memory(): Promise<MemorySample> {
    return this.server.request<MemorySample>("memory");
  }

  async cpu(): Promise<number> {
    return this.server.request<number>("cpu");
  }

  async stop(): Promise<void> {
    await Promise.all([this.clients?.stop(), this.server?.stop()]);
  }
}
