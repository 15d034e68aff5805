import { describe, expect, it } from "vitest";
import { waitFor } from "../helpers.js";
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

describe("memory broker: data channels", () => {
  const start = async (options: ConstructorParameters<typeof MemoryBroker>[0] = {}) => {
    const broker = new MemoryBroker(options);
    const delivered: Published[] = [];
    await broker.start((frame) => delivered.push(frame), { gap() {}, log() {} });
    return { broker, delivered };
  };

  it("keeps a data channel's events from when it is first watched; before, delivers them but keeps none", async () => {
    const { broker, delivered } = await start();
    const origin = await broker.head();
    const unkept = await broker.publish("data:row:t:1", "e1");
    // delivered live all the same (a subscriber of this process would have watched first)
    expect(delivered.map((f) => f.frame)).toEqual(["e1"]);
    // a resume from before it cannot be answered: a gap, not a silent empty replay
    expect(await broker.history(["data:row:t:1"], origin)).toBeNull();
    expect(await broker.history(["data:row:t:1"], unkept.position)).toEqual([]);
    const unwatch = broker.watch(["data:row:t:1", "row:t:1"]);
    const kept = await broker.publish("data:row:t:1", "e2");
    expect((await broker.history(["data:row:t:1"], unkept.position))!.map((f) => f.frame)).toEqual(["e2"]);
    expect(await broker.history(["data:row:t:1"], origin)).toBeNull();
    // still kept once the watch ended: a subscriber that reconnects resumes from what it saw
    unwatch();
    await broker.publish("data:row:t:1", "e3");
    expect((await broker.history(["data:row:t:1"], kept.position))!.map((f) => f.frame)).toEqual(["e3"]);
    await broker.close();
  });

  it("neither builds nor delivers a data event published with publishNow to a channel nobody watched, but moves the position past it", async () => {
    const { broker, delivered } = await start();
    const before = await broker.head();
    broker.publishNow("data:row:t:1", {
      get text(): string {
        throw new Error("an event nobody can receive was built");
      },
    });
    expect(delivered).toEqual([]);
    const after = await broker.head();
    expect(after).not.toBe(before);
    expect(await broker.history(["data:row:t:1"], before)).toBeNull();
    const unwatch = broker.watch(["data:row:t:1"]);
    broker.publishNow("data:row:t:1", { text: "built" });
    expect(delivered.map((f) => [f.stream, f.frame])).toEqual([["data:row:t:1", "built"]]);
    expect((await broker.history(["data:row:t:1"], after))!.map((f) => f.frame)).toEqual(["built"]);
    unwatch();
    await broker.close();
  });

  it("answers a gap for a cursor older than an unkept event of a channel watched after it", async () => {
    const { broker } = await start();
    const before = await broker.head();
    await broker.publish("data:row:t:2", "other channel, unkept");
    const unwatch = broker.watch(["data:row:t:1"]);
    const after = await broker.head();
    await broker.publish("data:row:t:1", "kept");
    expect(await broker.history(["data:row:t:1"], before)).toBeNull();
    expect((await broker.history(["data:row:t:1"], after))!.map((f) => f.frame)).toEqual(["kept"]);
    unwatch();
    await broker.close();
  });

  it("keeps every other stream from its first frame, watched or not", async () => {
    const { broker } = await start();
    const origin = await broker.head();
    await broker.publish("data:row:t:9", "unkept data event");
    await broker.publish("row:t:1", "<turbo-stream></turbo-stream>");
    expect((await broker.history(["row:t:1"], origin))!.map((f) => f.frame)).toEqual(["<turbo-stream></turbo-stream>"]);
    await broker.close();
  });

  it("forgets an idle data channel without giving other streams' cursors a gap", async () => {
    const { broker } = await start({ history: { frames: 1, ageMs: 10 }, idleMs: 30 });
    const frame = await broker.publish("row:t:1", "frame");
    const unwatch = broker.watch(["data:row:t:1"]);
    await broker.publish("data:row:t:1", "event");
    unwatch();
    // both go idle and are forgotten: a cursor at the frame now misses nothing of any HTML stream...
    await waitFor(async () => (await broker.history(["data:row:t:1"], frame.position)) === null, {
      message: "the idle data channel is forgotten, its older cursors answered with a gap",
    });
    expect(await broker.history(["row:t:1", "row:t:2"], frame.position)).toEqual([]);
    await broker.close();
  });
});
