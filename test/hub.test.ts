import { describe, expect, it } from "vitest";
import type { Broker, Published } from "../src/brokers/broker.js";
import { MemoryBroker } from "../src/brokers/memory.js";
import { Hub, exceptFrame, exceptOf } from "../src/delivery/hub.js";

async function setup(history?: ConstructorParameters<typeof MemoryBroker>[0]) {
  const broker = new MemoryBroker(history);
  const hub = new Hub(broker);
  await broker.start((f) => hub.deliver(f), { gap: () => void hub.refreshAll(), log: () => {} });
  return { broker, hub };
}

const recorder = () => {
  const frames: Published[] = [];
  return { frames, sink: { send: (f: Published) => frames.push(f) } };
};

// the memory broker itself runs the broker contract (test/brokers/memory.test.ts)
describe("hub", () => {
  it("delivers each frame to the subscribers of its stream only", async () => {
    const { broker, hub } = await setup();
    const one = recorder();
    const two = recorder();
    await hub.subscribe(["a"], one.sink);
    const off = await hub.subscribe(["a", "b"], two.sink);
    await broker.publish("a", "x");
    await broker.publish("b", "y");
    await broker.publish("c", "z");
    off();
    await broker.publish("b", "w");
    expect(one.frames.map((f) => f.frame)).toEqual(["x"]);
    expect(two.frames.map((f) => f.frame)).toEqual(["x", "y"]);
    expect(hub.size).toBe(1);
  });

  it("skips a toOthers frame for the page it names only, live and in a replay", async () => {
    const { broker, hub } = await setup();
    const frame = '<turbo-stream action="remove" target="x"></turbo-stream>';
    const marked = exceptFrame(frame, "pageA");
    expect(exceptOf(marked)).toBe("pageA");
    expect(exceptOf(frame)).toBeNull();
    const cursor = await broker.head();
    const a = recorder();
    const b = recorder();
    const plain = recorder();
    await hub.subscribe(["s"], a.sink, { page: "pageA" });
    await hub.subscribe(["s"], b.sink, { page: "pageB" });
    await hub.subscribe(["s"], plain.sink);
    await broker.publish("s", marked);
    await broker.publish("s", frame);
    expect(a.frames.map((f) => f.frame)).toEqual([frame]);
    expect(b.frames.map((f) => f.frame)).toEqual([marked, frame]);
    expect(plain.frames.map((f) => f.frame)).toEqual([marked, frame]);
    // the page reconnecting from before both frames: the replay skips it as well
    const again = recorder();
    await hub.subscribe(["s"], again.sink, { page: "pageA", cursor });
    expect(again.frames.map((f) => f.frame)).toEqual([frame]);
  });

  it("replays from a cursor, then goes live without gaps or duplicates", async () => {
    const { broker, hub } = await setup();
    const cursor = await broker.head();
    await broker.publish("a", "1");
    await broker.publish("a", "2");
    // frames published while the replay's history read is in flight are held, then sent once
    const slowBroker: Broker = Object.create(broker);
    slowBroker.history = async (streams, after) => {
      const frames = await broker.history(streams, after);
      await broker.publish("a", "3");
      return frames;
    };
    const slowHub = new Hub(slowBroker);
    await broker.start(
      (f) => {
        hub.deliver(f);
        slowHub.deliver(f);
      },
      { gap: () => {}, log: () => {} },
    );
    const rec = recorder();
    await slowHub.subscribe(["a"], rec.sink, { cursor });
    await broker.publish("a", "4");
    expect(rec.frames.map((f) => f.frame)).toEqual(["1", "2", "3", "4"]);
  });

  it("replays each stream after its own cursor in one pass, says when it is live, and lets a cursorless stream start live", async () => {
    const { broker, hub } = await setup();
    const start = await broker.head();
    await broker.publish("a", "a1");
    await broker.publish("b", "b1");
    const middle = await broker.head();
    await broker.publish("a", "a2");
    await broker.publish("b", "b2");
    await broker.publish("c", "c-before");
    const got = recorder();
    const events: string[] = [];
    const sink = {
      send: (f: Published) => {
        got.sink.send(f);
        events.push(f.frame);
      },
      live: () => events.push("live"),
    };
    const subscribing = hub.subscribe(["a", "b", "c"], sink, {
      cursors: new Map([
        ["a", start],
        ["b", middle],
        ["c", null],
      ]),
    });
    await broker.publish("c", "c-after");
    await subscribing;
    await broker.publish("b", "b3");
    // in position order; a from start, b from middle, c from the moment it subscribed
    expect(events).toEqual(["a1", "a2", "b2", "c-after", "live", "b3"]);
    const seqs = got.frames.slice(0, 3).map((f) => f.seq);
    expect([...seqs].sort((x, y) => x - y)).toEqual(seqs);
  });

  it("sends one refresh instead of a silent gap", async () => {
    const { broker, hub } = await setup({ history: { frames: 1, ageMs: 0, maxFrames: 1 } });
    const cursor = await broker.head();
    await broker.publish("a", "1");
    await broker.publish("a", "2");
    const rec = recorder();
    await hub.subscribe(["a"], rec.sink, { cursor });
    await broker.publish("a", "3");
    expect(rec.frames.map((f) => f.frame)).toEqual([`<turbo-stream action="refresh"></turbo-stream>`, "3"]);
  });

  it("refreshAll sends every subscriber exactly one refresh", async () => {
    const { hub } = await setup();
    const rec = recorder();
    await hub.subscribe(["a", "b"], rec.sink);
    await hub.refreshAll();
    expect(rec.frames.map((f) => f.frame)).toEqual([`<turbo-stream action="refresh"></turbo-stream>`]);
  });
});
