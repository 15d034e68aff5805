import { describe, expect, it } from "vitest";
import type { Published } from "../../src/brokers/broker.js";
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

  it("keeps exactly the newest maxFrames of a stream at its cap, publish after publish", async () => {
    const broker = new MemoryBroker({ history: { frames: 5, maxFrames: 8, ageMs: 60_000 } });
    await broker.start(() => {}, { gap() {}, log() {} });
    const published: Published[] = [];
    for (let i = 0; i < 100; i++) {
      published.push(await broker.publish("s", String(i)));
      const kept = Math.min(i + 1, 8);
      // the kept window replays whole from just before it...
      if (i >= kept) {
        const replay = await broker.history(["s"], published[i - kept]!.position);
        expect(replay!.map((f) => f.frame)).toEqual(published.slice(i + 1 - kept).map((f) => f.frame));
      }
      // ...and a cursor before what was evicted is a gap, not a shorter replay
      if (i > kept) expect(await broker.history(["s"], published[i - kept - 1]!.position)).toBeNull();
    }
    await broker.close();
  });
});
