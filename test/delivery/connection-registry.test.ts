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
