import { describe, expect, it } from "vitest";
import type { Connection } from "../../src/delivery/connection.js";
import { ConnectionRegistry } from "../../src/delivery/connection-registry.js";

/** A connection that only records being closed or cut off. */
function fakeConnection(options: { answersClose?: boolean } = {}): Connection & { ended: string[] } {
  let resolve!: () => void;
  const closed = new Promise<void>((r) => (resolve = r));
  const connection = {
    transport: "sse" as const,
    state: "open" as "open" | "closing" | "closed",
    closed,
    ended: [] as string[],
    send: () => {},
    beginReplay: () => {},
    endReplay: () => {},
    attach: () => {},
    heartbeat: () => {},
    close() {
      connection.ended.push("close");
      if (options.answersClose !== false) {
        connection.state = "closed";
        resolve();
      } else connection.state = "closing";
    },
    terminate() {
      connection.ended.push("terminate");
      connection.state = "closed";
      resolve();
    },
  };
  return connection as unknown as Connection & { ended: string[] };
}

describe("ConnectionRegistry", () => {
  it("finds live connections by stream and by what was registered with them", () => {
    const registry = new ConnectionRegistry();
    const a = fakeConnection();
    const b = fakeConnection();
    registry.add(a, { streams: ["row:rooms:1", "named:lobby"] });
    registry.add(b, { streams: ["named:lobby"] });
    expect(registry.size).toBe(2);
    expect(registry.withStream("named:lobby")).toEqual([a, b]);
    expect(registry.withStream("row:rooms:1")).toEqual([a]);
    expect(registry.withStream("row:rooms:2")).toEqual([]);
    expect(registry.select((info) => info.streams.length === 1)).toEqual([b]);
    expect(registry.info(a)).toEqual({ streams: ["row:rooms:1", "named:lobby"] });

    registry.remove(a);
    registry.remove(a);
    expect(registry.size).toBe(1);
    expect(registry.withStream("row:rooms:1")).toEqual([]);
    expect(registry.all()).toEqual([b]);
  });

  it("finds a user's connections, and a user's holding given streams, through its indexes", () => {
    const registry = new ConnectionRegistry();
    const bob1 = fakeConnection();
    const bob3 = fakeConnection();
    const carol1 = fakeConnection();
    const anonymous = fakeConnection();
    registry.add(bob1, { streams: ["row:rooms:1", "named:lobby"], userKey: "2" });
    registry.add(bob3, { streams: ["row:rooms:3"], userKey: "2" });
    registry.add(carol1, { streams: ["row:rooms:1"], userKey: "3" });
    registry.add(anonymous, { streams: ["row:rooms:1"] });
    expect(registry.withUser("2")).toEqual([bob1, bob3]);
    expect(registry.matching({ userKey: "2" })).toEqual([bob1, bob3]);
    expect(registry.matching({ streams: ["row:rooms:1"] })).toEqual([bob1, carol1, anonymous]);
    expect(registry.matching({ streams: ["row:rooms:3", "named:lobby"] })).toEqual([bob3, bob1]);
    expect(registry.matching({ userKey: "2", streams: ["row:rooms:1"] })).toEqual([bob1]);
    expect(registry.matching({ userKey: "9" })).toEqual([]);
    expect(registry.matching({ userKey: "9", streams: ["row:rooms:1"] })).toEqual([]);
    expect(registry.matching({})).toHaveLength(4);
    registry.remove(bob1);
    expect(registry.withUser("2")).toEqual([bob3]);
    registry.remove(bob3);
    expect(registry.matching({ userKey: "2" })).toEqual([]);
  });

  it("deals connections round-robin into re-check slots and buckets them by expiry second", () => {
    const registry = new ConnectionRegistry({ slots: 3 });
    const connections = Array.from({ length: 7 }, () => fakeConnection());
    for (const [i, c] of connections.entries()) {
      registry.add(c, { streams: ["named:lobby"], expiresAt: i < 2 ? 5_000 : i === 2 ? 4_500 : undefined });
    }
    expect([0, 1, 2].map((slot) => registry.inSlot(slot).length)).toEqual([3, 2, 2]);
    // expiries are whole seconds (signatures carry seconds): 4.5 s waits for the bucket of second 5
    expect(registry.expiringIn(5)).toEqual(connections.slice(0, 3));
    expect(registry.expiringIn(4)).toEqual([]);
    registry.remove(connections[0]!);
    expect(registry.inSlot(0)).toHaveLength(2);
    expect(registry.expiringIn(5)).toHaveLength(2);
  });

  it("closes every connection and cuts off those that do not finish within the grace period", async () => {
    const registry = new ConnectionRegistry();
    const polite = fakeConnection();
    const stuck = fakeConnection({ answersClose: false });
    registry.add(polite, { streams: ["named:lobby"] });
    registry.add(stuck, { streams: ["named:lobby"] });
    await registry.closeAll(20);
    expect(polite.ended).toEqual(["close"]);
    expect(stuck.ended).toEqual(["close", "terminate"]);
  });
});
