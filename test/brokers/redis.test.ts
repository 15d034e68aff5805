import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { type RedisBrokerOptions, redisBroker } from "../../src/brokers/redis.js";
import type { Broker } from "../../src/brokers/broker.js";
import * as index from "../../src/index.js";
import { waitFor } from "../helpers.js";
import { brokerContract } from "./contract.js";
import { startWithHub } from "./harness.js";
import {
  REDIS_URL,
  deleteRedisKeys,
  describeWithServer,
  freePort,
  redisClients,
  redisUnavailable,
  uniqueName,
} from "./servers.js";

const frame = (label: string) =>
  `<turbo-stream action="append" target="t"><template>${label}</template></turbo-stream>`;

describeWithServer("redis broker", await redisUnavailable(), () => {
  let admin: Redis;
  const prefixes: string[] = [];
  const brokers: Broker[] = [];

  beforeAll(() => {
    admin = new Redis(REDIS_URL);
  });
  afterAll(() => admin.disconnect());
  afterEach(async () => {
    for (const broker of brokers.splice(0)) await broker.close();
    for (const prefix of prefixes.splice(0)) await deleteRedisKeys(REDIS_URL, prefix);
  });

  function namespace(): { keyPrefix: string; connectionName: string } {
    const name = uniqueName("tc");
    prefixes.push(`${name}:`);
    return { keyPrefix: `${name}:`, connectionName: name };
  }

  function make(options: RedisBrokerOptions): Broker {
    const broker = redisBroker(options);
    brokers.push(broker);
    return broker;
  }

  brokerContract(
    () => {
      const ns = namespace();
      return {
        make: (options) => make({ url: REDIS_URL, ...ns, ...options }),
        loseHistory: () => deleteRedisKeys(REDIS_URL, ns.keyPrefix), // what a restart without persistence does
        breakStream: async (stream) =>
          void (await admin.set(`${ns.keyPrefix}s:${stream}`, "not a stream's sorted set")),
        cleanup: async () => {},
      };
    },
    { shared: true, server: true },
  );

  it("lets the key of a stream idle for idleMs expire, so streams nobody writes to stop costing memory", async () => {
    const ns = namespace();
    const broker = make({ url: REDIS_URL, ...ns, idleMs: 300, history: { frames: 10, ageMs: 100 } });
    await startWithHub(broker);
    await broker.publish("x", frame("x1"));
    expect(await admin.exists(`${ns.keyPrefix}s:x`)).toBe(1);
    await waitFor(async () => (await admin.exists(`${ns.keyPrefix}s:x`)) === 0, {
      message: "stream x expires",
      timeoutMs: 5_000,
    });
  });

  it("closes both connections, is safe to close twice, and refuses to publish afterwards", async () => {
    const ns = namespace();
    const broker = make({ url: REDIS_URL, ...ns });
    await startWithHub(broker);
    expect(await redisClients(admin, ns.connectionName)).toHaveLength(2);
    await broker.close();
    await broker.close();
    await waitFor(async () => (await redisClients(admin, ns.connectionName)).length === 0, {
      message: "connections closed",
    });
    await expect(broker.publish("a", frame("late"))).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
    await expect(broker.head()).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
  });

  it("refuses to publish before start, and fails start with TURBOCAST_BROKER when Redis is unreachable", async () => {
    const broker = make({ url: REDIS_URL, ...namespace() });
    await expect(broker.publish("a", frame("early"))).rejects.toMatchObject({ code: "TURBOCAST_BROKER" });

    const port = await freePort();
    const unreachable = make({ url: `redis://:secret@127.0.0.1:${port}`, connectTimeoutMs: 300, ...namespace() });
    const started = Date.now();
    const error = await unreachable.start(() => {}, { gap() {}, log() {} }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "TURBOCAST_BROKER" });
    expect((error as Error).message).toContain(`127.0.0.1:${port}`);
    expect((error as Error).message).not.toContain("secret");
    expect(Date.now() - started).toBeLessThan(3_000);
    await expect(unreachable.publish("a", frame("x"))).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
  });

  it("is exported from the package, and takes a bare URL as well as options", () => {
    expect(index.redisBroker).toBe(redisBroker);
    expect(redisBroker(REDIS_URL).kind).toBe("redis");
  });

  it("rejects a missing url or an unusable connection name with TURBOCAST_CONFIG", () => {
    // @ts-expect-error url is required
    expect(() => redisBroker({})).toThrow(expect.objectContaining({ code: "TURBOCAST_CONFIG" }));
    expect(() => redisBroker({ url: REDIS_URL, connectionName: "has space" })).toThrow(
      expect.objectContaining({ code: "TURBOCAST_CONFIG" }),
    );
  });
});
