import { describe, expect, it } from "vitest";
import type { Broker } from "../../src/brokers/broker.js";
import { DataCache } from "../../src/data/handler.js";
import type { SyncReader } from "../../src/data/sync.js";
import { Hub } from "../../src/delivery/hub.js";
import type { Stream } from "../../src/streams/stream.js";

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A hub over a broker whose watch (a scale-out broker's registration) settles when the test says. */
function cacheOverSlowWatch() {
  let settle!: { resolve: (unwatch: () => void) => void; reject: (error: Error) => void };
  const broker = {
    watch: () =>
      new Promise<() => void>((resolve, reject) => {
        settle = { resolve, reject };
      }),
  } as unknown as Broker;
  const hub = new Hub(broker);
  let reads = 0;
  const reader = {
    read: async () => {
      reads++;
      return { rows: [{ id: reads }], version: reads, exact: true };
    },
  } as unknown as SyncReader;
  const cache = new DataCache({ hub, reader, maxEntries: 10 });
  return { hub, cache, settle: () => settle, reads: () => reads };
}

const stream = { name: "all:rooms" } as Stream;

describe("DataCache over a broker that registers watches", () => {
  it("reads a set only once its data channel is watched, and a change after marks it stale", async () => {
    const { hub, cache, settle, reads } = cacheOverSlowWatch();
    const first = cache.get(stream);
    await tick();
    // a change between a read and the watch would be lost to the cache for good
    expect(reads()).toBe(0);
    settle().resolve(() => {});
    expect((await first).body).toBe('{"version":1,"rows":[{"id":1}]}');
    hub.deliver({ stream: "data:all:rooms", seq: 1, position: "E.1", frame: '{"version":2,"action":"created"}' });
    expect((await cache.get(stream)).body).toBe('{"version":2,"rows":[{"id":2}]}');
    expect(cache.size).toBe(1);
  });

  it("serves a set whose watch failed without keeping it", async () => {
    const { cache, settle, reads } = cacheOverSlowWatch();
    const first = cache.get(stream);
    await tick();
    settle().reject(new Error("broker unreachable"));
    expect((await first).body).toBe('{"version":1,"rows":[{"id":1}]}');
    expect(cache.size).toBe(0);
    const again = cache.get(stream);
    settle().resolve(() => {});
    await again;
    expect(reads()).toBe(2);
  });
});
