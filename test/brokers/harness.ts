import { type ChildProcess, fork } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Broker, BrokerEvents, Published } from "../../src/brokers/broker.js";
import { Hub, type Sink } from "../../src/delivery/hub.js";
import type { WorkerEvent, WorkerRequest } from "../fixtures/broker-worker.js";
import { type LogEntry, memoryLogger, waitFor } from "../helpers.js";

const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "broker-worker.ts");

/** What a broker told its app: every log line (a memoryLogger's entries) and every gap. */
export interface RecordedEvents extends BrokerEvents {
  readonly logs: LogEntry[];
  readonly gaps: string[];
}

/**
 * Broker events wired as createTurbo wires them — a gap refreshes every
 * subscriber of the hub, log lines go to a logger (here a memoryLogger) —
 * and recorded.
 */
export function recordEvents(hub?: Hub, onLog?: (level: string, message: string) => void): RecordedEvents {
  const logger = memoryLogger();
  const gaps: string[] = [];
  return {
    logs: logger.entries,
    gaps,
    gap(reason) {
      gaps.push(reason);
      void hub?.refreshAll();
    },
    log(level, message, error) {
      logger[level](message, error === undefined ? undefined : { error });
      onLog?.(level, message);
    },
  };
}

/** A sink that keeps every frame it is sent, and when (performance.now()) it came. */
export function recordingSink(): Sink & { frames: Published[]; times: number[] } {
  const frames: Published[] = [];
  const times: number[] = [];
  return {
    frames,
    times,
    send(frame) {
      frames.push(frame);
      times.push(performance.now());
    },
  };
}

/** A started broker with a real Hub and recorded events, as one process of an app has them. */
export async function startWithHub(
  broker: Broker,
  onLog?: (level: string, message: string) => void,
): Promise<{ broker: Broker; hub: Hub; events: RecordedEvents; delivered: Published[] }> {
  const hub = new Hub(broker);
  const events = recordEvents(hub, onLog);
  const delivered: Published[] = [];
  await broker.start((frame) => {
    delivered.push(frame);
    hub.deliver(frame);
  }, events);
  return { broker, hub, events, delivered };
}

export const isRefresh = (frame: Published): boolean => frame.frame.includes('action="refresh"');

export interface ReceivedFrame {
  stream: string;
  seq: number;
  position: string;
  frame: string;
  /** performance.timeOrigin + performance.now() in the worker when the sink got it. */
  at: number;
}

/**
 * A child process running test/fixtures/broker-worker.ts: one app process
 * with its own broker, Hub and subscribers, driven over IPC.
 */
export class BrokerWorker {
  readonly frames = new Map<string, ReceivedFrame[]>();
  readonly logs: Array<{ level: string; message: string }> = [];
  readonly gaps: string[] = [];
  #child: ChildProcess;
  #pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  #rid = 0;
  #exit: Promise<number | null>;

  private constructor(child: ChildProcess) {
    this.#child = child;
    this.#exit = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    child.on(
      "message",
      (
        message:
          | WorkerEvent
          | { rid: number; ok: boolean; value?: unknown; error?: { message: string; code?: string } },
      ) => {
        if ("rid" in message) {
          const pending = this.#pending.get(message.rid);
          this.#pending.delete(message.rid);
          if (message.ok) pending?.resolve(message.value);
          else
            pending?.reject(
              Object.assign(new Error(message.error?.message ?? "worker request failed"), {
                code: message.error?.code,
              }),
            );
          return;
        }
        if (message.event === "frame") {
          const { id, ...frame } = message;
          let list = this.frames.get(id);
          if (!list) this.frames.set(id, (list = []));
          list.push({
            stream: frame.stream,
            seq: frame.seq,
            position: frame.position,
            frame: frame.frame,
            at: frame.at,
          });
        } else if (message.event === "log") this.logs.push({ level: message.level, message: message.message });
        else if (message.event === "gap") this.gaps.push(message.reason);
      },
    );
    child.once("exit", () => {
      for (const pending of this.#pending.values()) pending.reject(new Error("worker exited"));
      this.#pending.clear();
    });
  }

  /** Forks a worker and starts its broker. */
  static async start(kind: "redis" | "postgres", options: Record<string, unknown>): Promise<BrokerWorker> {
    const child = fork(WORKER, [], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const worker = new BrokerWorker(child);
    try {
      await worker.request({ op: "start", kind, options });
    } catch (error) {
      worker.kill();
      throw error;
    }
    return worker;
  }

  request<T = unknown>(request: WorkerRequest): Promise<T> {
    const rid = ++this.#rid;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(rid, { resolve: resolve as (value: unknown) => void, reject });
      this.#child.send({ rid, ...request });
    });
  }

  subscribe(id: string, streams: string[], cursor?: string): Promise<void> {
    return this.request({ op: "subscribe", id, streams, ...(cursor ? { cursor } : {}) });
  }

  received(id: string): ReceivedFrame[] {
    return this.frames.get(id) ?? [];
  }

  /** Waits until subscriber `id` has received `count` frames. */
  async waitForFrames(id: string, count: number, timeoutMs = 10_000): Promise<ReceivedFrame[]> {
    await waitFor(() => this.received(id).length >= count, {
      timeoutMs,
      message: `subscriber ${id} got ${this.received(id).length} of ${count} frames`,
    });
    return this.received(id);
  }

  /** Closes the broker (twice: safe) and resolves with the exit code once the process ended by itself. */
  async close(timeoutMs = 10_000): Promise<number | null> {
    await this.request({ op: "close" });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
    const code = await Promise.race([this.#exit, timeout]);
    clearTimeout(timer);
    if (code === "timeout") {
      this.kill();
      throw new Error("the worker did not exit after its broker closed: something still holds the event loop");
    }
    return code;
  }

  kill(): void {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill("SIGKILL");
  }
}

/** p50, p95 and max of a list of milliseconds, rounded to 0.01 ms. */
export function percentiles(values: number[]): { p50: number; p95: number; max: number; n: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  const round = (n: number) => Math.round(n * 100) / 100;
  return { p50: round(at(0.5)), p95: round(at(0.95)), max: round(sorted[sorted.length - 1] ?? NaN), n: sorted.length };
}

export interface PublishOutcome {
  n: number;
  ok: boolean;
  position?: string;
  frame: string;
  code?: string;
  /** performance.now() when publish was called. */
  startedAt: number;
  /** How long publish took to settle. */
  ms: number;
}

/**
 * Publishes frame after frame to `stream` (one every `intervalMs`, pacing
 * only) until stopped, recording how each publish ended: the "stream of
 * frames" an outage test breaks in the middle.
 */
export function publishLoop(
  broker: Broker,
  stream: string,
  intervalMs = 10,
): { outcomes: PublishOutcome[]; stop: () => Promise<void> } {
  const outcomes: PublishOutcome[] = [];
  let stopped = false;
  const done = (async () => {
    for (let n = 0; !stopped; n++) {
      const frame = `<turbo-stream action="append" target="t"><template>n${n}</template></turbo-stream>`;
      const started = performance.now();
      try {
        const published = await broker.publish(stream, frame);
        outcomes.push({
          n,
          ok: true,
          position: published.position,
          frame,
          startedAt: started,
          ms: performance.now() - started,
        });
      } catch (error) {
        const code = (error as { code?: string }).code;
        outcomes.push({ n, ok: false, frame, code, startedAt: started, ms: performance.now() - started });
      }
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  })();
  return {
    outcomes,
    stop: async () => {
      stopped = true;
      await done;
    },
  };
}

/**
 * What every subscriber of an outage test must see: frames (refreshes aside)
 * in strictly increasing seq order, each one a frame that was published, none
 * twice.
 */
export function expectOrderedSubset(received: Published[], outcomes: PublishOutcome[]): void {
  const frames = received.filter((f) => !isRefresh(f));
  const published = new Map(outcomes.filter((o) => o.ok).map((o) => [o.position!, o.frame]));
  for (let i = 1; i < frames.length; i++) {
    if (!(frames[i]!.seq > frames[i - 1]!.seq))
      throw new Error(`frame ${frames[i]!.position} arrived after ${frames[i - 1]!.position}`);
  }
  for (const f of frames) {
    if (published.get(f.position) !== f.frame)
      throw new Error(`received ${f.position}, which was not published as such`);
  }
}

/**
 * After an outage, a subscriber's refresh covers what it missed before it;
 * every frame published after the refresh reached it must follow, in order.
 * Frames still on their way (a publish resolves as its frame is sent out to
 * every process) get a few seconds to arrive.
 */
export async function expectEverythingAfterRefresh(
  sink: { frames: Published[]; times: number[] },
  outcomes: PublishOutcome[],
): Promise<void> {
  const last = sink.frames.findLastIndex(isRefresh);
  if (last < 0) throw new Error("the subscriber got no refresh");
  const refreshedAt = sink.times[last]!;
  const want = outcomes.filter((o) => o.ok && o.startedAt > refreshedAt).map((o) => o.position!);
  if (want.length === 0) throw new Error("nothing was published after the refresh: the test proves nothing");
  const missing = (): string[] => {
    const got = new Set(sink.frames.slice(last + 1).map((f) => f.position));
    return want.filter((p) => !got.has(p));
  };
  await waitFor(() => missing().length === 0, { timeoutMs: 5_000 }).catch(() => {});
  if (missing().length > 0) throw new Error(`published after the refresh but never received: ${missing().join(", ")}`);
}

/** Records unhandled rejections while `fn` runs (vitest would report them too, but not say which test). */
export async function collectUnhandled(fn: () => Promise<void>): Promise<unknown[]> {
  const seen: unknown[] = [];
  const record = (reason: unknown) => seen.push(reason);
  process.on("unhandledRejection", record);
  try {
    await fn();
    // let rejections from the last turns surface
    await new Promise((resolve) => setImmediate(resolve));
  } finally {
    process.off("unhandledRejection", record);
  }
  return seen;
}

/** How many refresh frames a subscriber got. */
export const refreshCount = (sink: { frames: Published[] }): number => sink.frames.filter(isRefresh).length;

/**
 * Waits until a publish that started `ms` after the newest refresh any of
 * `sinks` got has succeeded: long enough for a second refresh of the same
 * outage (the other connection, a refresh request) to have shown up.
 */
export async function waitPastRefreshes(
  sinks: Array<{ frames: Published[]; times: number[] }>,
  outcomes: PublishOutcome[],
  ms = 1_000,
): Promise<void> {
  const last = Math.max(...sinks.flatMap((sink) => sink.times.filter((_, i) => isRefresh(sink.frames[i]!))));
  await waitFor(() => outcomes.some((o) => o.ok && o.startedAt > last + ms), {
    timeoutMs: ms + 10_000,
    message: `publishes succeed ${ms} ms after the last refresh`,
  });
}
