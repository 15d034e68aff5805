import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { parsePosition } from "../../src/brokers/broker.js";
import { type RedisBrokerOptions, redisBroker } from "../../src/brokers/redis.js";
import type { Broker } from "../../src/brokers/broker.js";
import * as index from "../../src/index.js";
import { waitFor } from "../helpers.js";
import { isRefresh, recordingSink, startWithHub } from "./harness.js";
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

  it("gives every frame a position on one seq across streams and delivers them in that order", async () => {
    const { delivered, broker } = await startWithHub(make({ url: REDIS_URL, ...namespace() }));
    const head = parsePosition(await broker.head())!;
    const odd = 'multi\nline "quoted" <b>&amp;</b> — ünïcødé 🎉';
    const a = await broker.publish("a", frame("1"));
    const b = await broker.publish("b", frame(odd));
    const c = await broker.publish("a", frame("3"));
    expect([a.seq, b.seq, c.seq]).toEqual([head.seq + 1, head.seq + 2, head.seq + 3]);
    expect(parsePosition(c.position)).toEqual({ epoch: head.epoch, seq: c.seq });
    await waitFor(() => delivered.length === 3);
    expect(delivered.map((f) => [f.stream, f.position, f.frame])).toEqual([
      ["a", a.position, frame("1")],
      ["b", b.position, frame(odd)],
      ["a", c.position, frame("3")],
    ]);
    expect(await broker.head()).toBe(c.position);
  });

  it("replays the frames after a cursor, merged across streams, oldest first", async () => {
    const broker = make({ url: REDIS_URL, ...namespace() });
    const { hub } = await startWithHub(broker);
    const start = await broker.head();
    const p = [];
    for (const [stream, label] of [
      ["a", "1"],
      ["b", "2"],
      ["c", "x"],
      ["a", "3"],
      ["b", "4"],
    ] as const)
      p.push(await broker.publish(stream, frame(label)));
    expect((await broker.history(["a", "b"], start))!.map((f) => f.frame)).toEqual(["1", "2", "3", "4"].map(frame));
    expect((await broker.history(["a", "b"], p[1]!.position))!.map((f) => f.position)).toEqual([
      p[3]!.position,
      p[4]!.position,
    ]);
    expect(await broker.history(["a"], p[4]!.position)).toEqual([]);
    expect(await broker.history(["never-published"], start)).toEqual([]);

    // the hub replays from the same history
    const sink = recordingSink();
    await hub.subscribe(["a", "b"], sink, { cursor: p[0]!.position });
    expect(sink.frames.map((f) => f.frame)).toEqual(["2", "3", "4"].map(frame));
  });

  it("answers a gap for a malformed cursor, another epoch's cursor, or one ahead of the head", async () => {
    const broker = make({ url: REDIS_URL, ...namespace() });
    await startWithHub(broker);
    await broker.publish("a", frame("1"));
    const { epoch, seq } = parsePosition(await broker.head())!;
    expect(await broker.history(["a"], "garbage")).toBeNull();
    expect(await broker.history(["a"], `otherEpoch.${seq - 1}`)).toBeNull();
    expect(await broker.history(["a"], `${epoch}.${seq + 1}`)).toBeNull();
    expect(await broker.history(["a"], `${epoch}.${seq}`)).toEqual([]);
  });

  it("caps each stream at maxFrames and answers a gap for a cursor below what was trimmed", async () => {
    const broker = make({ url: REDIS_URL, ...namespace(), history: { frames: 2, maxFrames: 3, ageMs: 60_000 } });
    await startWithHub(broker);
    const start = await broker.head();
    const p = [];
    for (let i = 0; i < 5; i++) p.push(await broker.publish("a", frame(String(i))));
    await broker.publish("b", frame("other stream, untouched"));
    expect(await broker.history(["a"], start)).toBeNull();
    expect(await broker.history(["a"], p[0]!.position)).toBeNull();
    // the cursor saw the newest trimmed frame: nothing is missing
    expect((await broker.history(["a"], p[1]!.position))!.map((f) => f.frame)).toEqual(["2", "3", "4"].map(frame));
    expect((await broker.history(["b"], start))!.map((f) => f.frame)).toEqual([frame("other stream, untouched")]);
  });

  it("keeps frames younger than ageMs beyond the newest `frames`, and lets older ones go", async () => {
    const broker = make({ url: REDIS_URL, ...namespace(), history: { frames: 1, ageMs: 150, maxFrames: 100 } });
    await startWithHub(broker);
    const start = await broker.head();
    const t0 = Date.now();
    await broker.publish("a", frame("0"));
    const p1 = await broker.publish("a", frame("1"));
    expect((await broker.history(["a"], start))!.map((f) => f.frame)).toEqual(["0", "1"].map(frame));
    await waitFor(() => Date.now() - t0 > 300, { message: "frames 0 and 1 age past ageMs" });
    const p2 = await broker.publish("a", frame("2"));
    expect(await broker.history(["a"], start)).toBeNull();
    expect((await broker.history(["a"], p1.position))!.map((f) => f.position)).toEqual([p2.position]);
  });

  it("drops a stream idle for idleMs whole, and then answers older cursors with a gap", async () => {
    const ns = namespace();
    const broker = make({ url: REDIS_URL, ...ns, idleMs: 300, history: { frames: 10, ageMs: 100 } });
    await startWithHub(broker);
    const before = await broker.head();
    await broker.publish("x", frame("x1"));
    await waitFor(async () => (await admin.exists(`${ns.keyPrefix}s:x`)) === 0, {
      message: "stream x expires",
      timeoutMs: 5_000,
    });
    const y = await broker.publish("y", frame("y1"));
    // x's frame is gone with its key: a cursor from before it must not get silence
    expect(await broker.history(["x"], before)).toBeNull();
    const x2 = await broker.publish("x", frame("x2"));
    expect(await broker.history(["x"], before)).toBeNull();
    expect((await broker.history(["x"], y.position))!.map((f) => f.position)).toEqual([x2.position]);
  });

  it("starts a new epoch, with higher seqs, when Redis loses the broker's keys", async () => {
    const ns = namespace();
    const broker = make({ url: REDIS_URL, ...ns });
    const { hub, delivered } = await startWithHub(broker);
    const sink = recordingSink();
    await hub.subscribe(["a"], sink);
    const old = await broker.publish("a", frame("before"));
    await waitFor(() => sink.frames.length === 1);
    await deleteRedisKeys(REDIS_URL, ns.keyPrefix); // what a restart without persistence does

    const next = await broker.publish("a", frame("after"));
    expect(parsePosition(next.position)!.epoch).not.toBe(parsePosition(old.position)!.epoch);
    // hubs compare seqs: a new epoch must not count from 1 again
    expect(next.seq).toBeGreaterThan(old.seq);
    expect(await broker.history(["a"], old.position)).toBeNull();
    await waitFor(() => sink.frames.length === 2);
    expect(sink.frames.map((f) => f.frame)).toEqual([frame("before"), frame("after")]);
    expect(delivered.every((f) => !isRefresh(f))).toBe(true);
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
