import type pg from "pg";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { type Broker, parsePosition } from "../../src/brokers/broker.js";
import { type PostgresBrokerOptions, postgresBroker } from "../../src/brokers/postgres.js";
import * as index from "../../src/index.js";
import { waitFor } from "../helpers.js";
import { isRefresh, recordingSink, startWithHub } from "./harness.js";
import {
  PG_URL,
  describeWithServer,
  dropPostgresNamespace,
  freePort,
  pgClient,
  postgresUnavailable,
  uniqueName,
} from "./servers.js";

const frame = (label: string) =>
  `<turbo-stream action="append" target="t"><template>${label}</template></turbo-stream>`;

describeWithServer("postgres broker", await postgresUnavailable(), () => {
  let admin: pg.Client;
  const prefixes: string[] = [];
  const brokers: Broker[] = [];

  beforeAll(async () => {
    admin = pgClient();
    await admin.connect();
  });
  afterAll(() => admin.end());
  afterEach(async () => {
    for (const broker of brokers.splice(0)) await broker.close();
    for (const prefix of prefixes.splice(0)) await dropPostgresNamespace(PG_URL, prefix);
  });

  function namespace(): { prefix: string; applicationName: string } {
    const prefix = uniqueName("tc");
    prefixes.push(prefix);
    return { prefix, applicationName: prefix };
  }

  function make(options: PostgresBrokerOptions): Broker {
    const broker = postgresBroker(options);
    brokers.push(broker);
    return broker;
  }

  const connections = async (applicationName: string): Promise<number> =>
    Number(
      (await admin.query("select count(*) from pg_stat_activity where application_name = $1", [applicationName]))
        .rows[0].count,
    );

  it("gives every frame a position on one seq across streams and delivers them in that order", async () => {
    const { delivered, broker } = await startWithHub(make({ connectionString: PG_URL, ...namespace() }));
    const head = parsePosition(await broker.head())!;
    const odd = 'multi\nline "quoted" <b>&amp;</b> — ünïcødé 🎉 \\ backslash';
    const a = await broker.publish("a", frame("1"));
    const b = await broker.publish("b", frame(odd));
    const c = await broker.publish("a", frame("3"));
    expect([a.seq, b.seq, c.seq]).toEqual([head.seq + 1, head.seq + 2, head.seq + 3]);
    await waitFor(() => delivered.length === 3);
    expect(delivered.map((f) => [f.stream, f.position, f.frame])).toEqual([
      ["a", a.position, frame("1")],
      ["b", b.position, frame(odd)],
      ["a", c.position, frame("3")],
    ]);
    expect(await broker.head()).toBe(c.position);
  });

  it("delivers concurrent publishes from several brokers to every broker in seq order", async () => {
    const ns = namespace();
    const one = await startWithHub(make({ connectionString: PG_URL, ...ns }));
    const two = await startWithHub(make({ connectionString: PG_URL, ...ns }));
    const published = await Promise.all(
      Array.from({ length: 60 }, (_, i) => (i % 2 ? one : two).broker.publish(`s${i % 3}`, frame(String(i)))),
    );
    const seqs = published.map((p) => p.seq).sort((x, y) => x - y);
    // no holes, no duplicates: a rolled back publish would undo its increment too
    expect(seqs).toEqual(seqs.map((_, i) => seqs[0]! + i));
    for (const { delivered } of [one, two]) {
      await waitFor(() => delivered.length === 60);
      expect(delivered.map((f) => f.seq)).toEqual(seqs);
    }
  });

  it("replays the frames after a cursor, merged across streams, oldest first", async () => {
    const broker = make({ connectionString: PG_URL, ...namespace() });
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

    const sink = recordingSink();
    await hub.subscribe(["a", "b"], sink, { cursor: p[0]!.position });
    expect(sink.frames.map((f) => f.frame)).toEqual(["2", "3", "4"].map(frame));
  });

  it("answers a gap for a malformed cursor, another epoch's cursor, or one ahead of the head", async () => {
    const broker = make({ connectionString: PG_URL, ...namespace() });
    await startWithHub(broker);
    await broker.publish("a", frame("1"));
    const { epoch, seq } = parsePosition(await broker.head())!;
    expect(await broker.history(["a"], "garbage")).toBeNull();
    expect(await broker.history(["a"], `otherEpoch.${seq - 1}`)).toBeNull();
    expect(await broker.history(["a"], `${epoch}.${seq + 1}`)).toBeNull();
    expect(await broker.history(["a"], `${epoch}.${seq}`)).toEqual([]);
  });

  it("prunes each stream to maxFrames and answers a gap for a cursor below what was pruned", async () => {
    const broker = make({
      connectionString: PG_URL,
      ...namespace(),
      sweepIntervalMs: 50,
      history: { frames: 2, maxFrames: 3, ageMs: 60_000 },
    });
    await startWithHub(broker);
    const start = await broker.head();
    const p = [];
    for (let i = 0; i < 5; i++) p.push(await broker.publish("a", frame(String(i))));
    await broker.publish("b", frame("other stream, untouched"));
    await waitFor(async () => (await broker.history(["a"], start)) === null, { message: "the sweep prunes stream a" });
    expect(await broker.history(["a"], p[0]!.position)).toBeNull();
    expect((await broker.history(["a"], p[1]!.position))!.map((f) => f.frame)).toEqual(["2", "3", "4"].map(frame));
    expect((await broker.history(["b"], start))!.map((f) => f.frame)).toEqual([frame("other stream, untouched")]);
  });

  it("keeps frames younger than ageMs beyond the newest `frames`, and prunes older ones", async () => {
    const broker = make({
      connectionString: PG_URL,
      ...namespace(),
      sweepIntervalMs: 50,
      history: { frames: 1, ageMs: 200, maxFrames: 100 },
    });
    await startWithHub(broker);
    const start = await broker.head();
    const p0 = await broker.publish("a", frame("0"));
    const p1 = await broker.publish("a", frame("1"));
    expect((await broker.history(["a"], start))!.map((f) => f.frame)).toEqual(["0", "1"].map(frame));
    await waitFor(async () => (await broker.history(["a"], start)) === null, { message: "frame 0 ages out" });
    expect((await broker.history(["a"], p0.position))!.map((f) => f.position)).toEqual([p1.position]);
  });

  it("drops streams idle for idleMs whole, and then answers older cursors with a gap", async () => {
    const ns = namespace();
    const broker = make({
      connectionString: PG_URL,
      ...ns,
      sweepIntervalMs: 50,
      idleMs: 300,
      history: { frames: 10, ageMs: 100 },
    });
    await startWithHub(broker);
    const before = await broker.head();
    await broker.publish("x", frame("x1"));
    const y = await broker.publish("y", frame("y1"));
    await waitFor(
      async () => Number((await admin.query(`select count(*) from "${ns.prefix}_frames"`)).rows[0].count) === 0,
      {
        message: "idle streams are dropped",
      },
    );
    expect(await broker.history(["x"], before)).toBeNull();
    const x2 = await broker.publish("x", frame("x2"));
    expect(await broker.history(["x"], before)).toBeNull();
    expect((await broker.history(["x"], y.position))!.map((f) => f.position)).toEqual([x2.position]);
  });

  it("starts a new epoch, with higher seqs, when its tables lose their history", async () => {
    const ns = namespace();
    const broker = make({ connectionString: PG_URL, ...ns });
    const { hub, events } = await startWithHub(broker);
    const sink = recordingSink();
    await hub.subscribe(["a"], sink);
    const old = await broker.publish("a", frame("before"));
    await waitFor(() => sink.frames.length === 1);
    await dropPostgresNamespace(PG_URL, ns.prefix);

    const next = await broker.publish("a", frame("after"));
    expect(parsePosition(next.position)!.epoch).not.toBe(parsePosition(old.position)!.epoch);
    expect(next.seq).toBeGreaterThan(old.seq);
    expect(await broker.history(["a"], old.position)).toBeNull();
    await waitFor(() => sink.frames.length === 2);
    expect(sink.frames.map((f) => f.frame)).toEqual([frame("before"), frame("after")]);
    expect(events.logs.map((l) => l.message)).toEqual([expect.stringContaining("lost their history")]);
  });

  it("lets a publish stuck behind a lock time out without calling it an outage, and asks every process to refresh", async () => {
    const ns = namespace();
    const a = await startWithHub(make({ connectionString: PG_URL, ...ns, commandTimeoutMs: 300 }));
    const b = await startWithHub(make({ connectionString: PG_URL, ...ns, applicationName: `${ns.applicationName}_b` }));
    const sinkB = recordingSink();
    await b.hub.subscribe(["s"], sinkB);
    const locker = pgClient();
    await locker.connect();
    try {
      await locker.query("begin");
      await locker.query(`select * from "${ns.prefix}_meta" for update`);
      const started = Date.now();
      await expect(a.broker.publish("s", frame("stuck"))).rejects.toMatchObject({ code: "TURBOCAST_BROKER" });
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      await locker.query("rollback");
      await locker.end();
    }
    await waitFor(() => sinkB.frames.some(isRefresh), { message: "B refreshes" });
    expect(a.events.logs).toEqual([]);
    expect(b.events.gaps).toEqual(["a postgres publish timed out"]);
    const next = await a.broker.publish("s", frame("next"));
    await waitFor(() => sinkB.frames.some((f) => f.position === next.position));
    // the server cancelled the stuck publish: it never went out late
    expect(sinkB.frames.map((f) => (isRefresh(f) ? "refresh" : f.frame))).toEqual(["refresh", frame("next")]);
  });

  it("closes every connection, is safe to close twice, and refuses to publish afterwards", async () => {
    const ns = namespace();
    const broker = make({ connectionString: PG_URL, ...ns });
    await startWithHub(broker);
    await broker.publish("a", frame("1"));
    expect(await connections(ns.applicationName)).toBeGreaterThanOrEqual(2);
    await broker.close();
    await broker.close();
    await waitFor(async () => (await connections(ns.applicationName)) === 0, { message: "connections closed" });
    await expect(broker.publish("a", frame("late"))).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
    await expect(broker.head()).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
  });

  it("refuses to publish before start, and fails start with TURBOCAST_BROKER when PostgreSQL is unreachable", async () => {
    const broker = make({ connectionString: PG_URL, ...namespace() });
    await expect(broker.publish("a", frame("early"))).rejects.toMatchObject({ code: "TURBOCAST_BROKER" });

    const port = await freePort();
    const unreachable = make({
      connectionString: `postgres://someone:secret@127.0.0.1:${port}/test`,
      connectTimeoutMs: 300,
      ...namespace(),
    });
    const started = Date.now();
    const error = await unreachable.start(() => {}, { gap() {}, log() {} }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "TURBOCAST_BROKER" });
    expect((error as Error).message).toContain(`127.0.0.1:${port}`);
    expect((error as Error).message).not.toContain("secret");
    expect(Date.now() - started).toBeLessThan(3_000);
    await expect(unreachable.publish("a", frame("x"))).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
  });

  it("is exported from the package, and takes a bare URL as well as options", () => {
    expect(index.postgresBroker).toBe(postgresBroker);
    expect(postgresBroker(PG_URL).kind).toBe("postgres");
  });

  it("rejects a missing connection string or an unsafe table prefix with TURBOCAST_CONFIG", () => {
    // @ts-expect-error connectionString is required
    expect(() => postgresBroker({})).toThrow(expect.objectContaining({ code: "TURBOCAST_CONFIG" }));
    expect(() => postgresBroker({ connectionString: PG_URL, prefix: 'x"; drop table users; --' })).toThrow(
      expect.objectContaining({ code: "TURBOCAST_CONFIG" }),
    );
    expect(() => postgresBroker({ connectionString: PG_URL, channel: "Bad-Channel" })).toThrow(
      expect.objectContaining({ code: "TURBOCAST_CONFIG" }),
    );
  });
});
