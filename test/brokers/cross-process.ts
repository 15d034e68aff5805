import { afterEach, expect, it } from "vitest";
import { BrokerWorker, type ReceivedFrame, percentiles } from "./harness.js";

export interface Namespace {
  /** Broker options for every worker of one test: the same namespace, so they share frames. */
  options: (worker: number) => Record<string, unknown>;
  /** Removes whatever the namespace left on the server. */
  cleanup: () => Promise<void>;
}

const frame = (label: string, body = label): string =>
  `<turbo-stream action="append" target="${label}"><template><p>${body}</p></template></turbo-stream>`;

/**
 * The tests every scale-out broker must pass with real processes: three
 * child processes, each with its own broker, Hub and subscribers.
 */
export function crossProcessTests(kind: "redis" | "postgres", namespace: () => Namespace): void {
  let workers: BrokerWorker[] = [];
  const cleanups: Array<() => Promise<void>> = [];

  afterEach(async () => {
    for (const worker of workers) worker.kill();
    workers = [];
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });

  async function startWorkers(n: number): Promise<{ ns: Namespace; workers: BrokerWorker[] }> {
    const ns = namespace();
    cleanups.push(ns.cleanup);
    const started = await Promise.all(Array.from({ length: n }, (_, i) => BrokerWorker.start(kind, ns.options(i))));
    workers.push(...started);
    return { ns, workers: started };
  }

  it("delivers every frame published through one of three workers to every subscriber of every worker, once and in order", async () => {
    const {
      workers: [w0, w1, w2],
    } = await startWorkers(3);
    const all = [w0!, w1!, w2!];
    for (const worker of all) {
      await worker.subscribe("room1-a", ["room:1"]);
      await worker.subscribe("room1-b", ["room:1"]);
      await worker.subscribe("room2", ["room:2"]);
      await worker.subscribe("both", ["room:1", "room:2"]);
    }
    const frames = Array.from({ length: 60 }, (_, i) => ({
      stream: i % 3 === 2 ? "room:2" : "room:1",
      frame: frame(`f${i}`),
    }));
    const published = await w0!.request<Array<{ position: string; seq: number; at: number }>>({
      op: "publishMany",
      frames,
    });

    // one seq across streams: strictly increasing in publish order
    for (let i = 1; i < published.length; i++) expect(published[i]!.seq).toBeGreaterThan(published[i - 1]!.seq);

    const expected = (streams: string[]) =>
      frames.map((f, i) => ({ ...f, position: published[i]!.position })).filter((f) => streams.includes(f.stream));
    const latencies: number[] = [];
    for (const worker of all) {
      for (const [id, streams] of [
        ["room1-a", ["room:1"]],
        ["room1-b", ["room:1"]],
        ["room2", ["room:2"]],
        ["both", ["room:1", "room:2"]],
      ] as const) {
        const want = expected([...streams]);
        const got = await worker.waitForFrames(id, want.length);
        // exactly these frames, in this order: nothing missing, nothing twice, nothing foreign
        // (a duplicate or a stranger would take a place in the list and fail the comparison)
        expect(got.map((f) => [f.stream, f.position, f.frame])).toEqual(
          want.map((f) => [f.stream, f.position, f.frame]),
        );
        for (const f of got) latencies.push(f.at - published.find((p) => p.position === f.position)!.at);
      }
    }
    console.info(`[${kind}] publish → deliver across processes, ms:`, percentiles(latencies));
    for (const worker of all) expect(worker.gaps).toEqual([]);
    for (const worker of all) expect(await worker.close()).toBe(0);
  });

  it("resumes a subscriber on another process from the shared history, then goes live", async () => {
    const {
      workers: [a, b],
    } = await startWorkers(2);
    const frames = Array.from({ length: 6 }, (_, i) => ({ stream: "room:9", frame: frame(`r${i}`) }));
    // another stream in between: one cursor covers the subscription whatever else is published
    frames.splice(3, 0, { stream: "room:other", frame: frame("other") });
    const published = await a!.request<Array<{ position: string }>>({ op: "publishMany", frames });
    const cursor = published[1]!.position; // the page saw r0 and r1

    await b!.subscribe("resumed", ["room:9"], cursor);
    const replayed = await b!.waitForFrames("resumed", 4);
    expect(replayed.map((f) => f.frame)).toEqual(["r2", "r3", "r4", "r5"].map((l) => frame(l)));

    await a!.request({ op: "publish", stream: "room:9", frame: frame("live") });
    const all = await b!.waitForFrames("resumed", 5);
    expect(all.map((f) => f.frame)).toEqual(["r2", "r3", "r4", "r5", "live"].map((l) => frame(l)));
    expect(b!.gaps).toEqual([]);
  });

  it("carries a frame far over NOTIFY's 8000-byte payload limit between processes, intact", async () => {
    const {
      workers: [w0, w1, w2],
    } = await startWorkers(3);
    for (const worker of [w1!, w2!]) await worker.subscribe("big", ["room:big"]);
    // multi-byte characters, quotes and newlines: the byte count is what matters
    const html = Array.from({ length: 2000 }, (_, i) => `<li data-i="${i}">élan “${i}”</li>`).join("\n");
    const big = frame("big", html);
    expect(Buffer.byteLength(big)).toBeGreaterThan(40_000);
    const small = frame("small");
    await w0!.request({
      op: "publishMany",
      frames: [
        { stream: "room:big", frame: big },
        { stream: "room:big", frame: small },
      ],
    });
    for (const worker of [w1!, w2!]) {
      const got: ReceivedFrame[] = await worker.waitForFrames("big", 2);
      expect(got.map((f) => f.frame)).toEqual([big, small]);
    }
  });
}
