import { describe, expect, it } from "vitest";
import { MemoryBroker } from "../../src/brokers/memory.js";
import { brokerContract } from "./contract.js";

describe("memory broker", () => {
  brokerContract(
    () => ({
      make: (options) => new MemoryBroker(options),
      loseHistory: async () => {},
      cleanup: async () => {},
    }),
    { shared: false, server: false },
  );

  it("keeps exactly the newest maxFrames of a stream at its cap, publish after publish (evicted in bulk, not shifted each time)", async () => {
    const broker = new MemoryBroker({ history: { frames: 3, maxFrames: 7, ageMs: 60_000 } });
    await broker.start(() => {}, {} as never);
    const start = await broker.head();
    const published = [];
    for (let i = 0; i < 50; i++) {
      published.push(await broker.publish("a", `f${i}`));
      const kept = published.slice(-7);
      const oldest = published.length - kept.length;
      // from the newest evicted frame on, the rest is replayed; from before it, a gap
      if (oldest > 0) {
        expect((await broker.history(["a"], published[oldest - 1]!.position))!.map((f) => f.frame)).toEqual(
          kept.map((f) => f.frame),
        );
        expect(await broker.history(["a"], start)).toBeNull();
      } else expect((await broker.history(["a"], start))!.map((f) => f.frame)).toEqual(kept.map((f) => f.frame));
    }
    await broker.close();
  });
});
