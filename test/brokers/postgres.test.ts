import type pg from "pg";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { type Broker, parsePosition } from "../../src/brokers/broker.js";
import { decodeChannelMessage } from "../../src/brokers/continuity.js";
import { type PostgresBrokerOptions, postgresBroker } from "../../src/brokers/postgres.js";
import * as index from "../../src/index.js";
import { waitFor } from "../helpers.js";
import { brokerContract } from "./contract.js";
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

  brokerContract(
    () => {
      const ns = namespace();
      return {
        // a fast sweep, so that pruning shows within the tests' timeouts
        make: (options) => make({ connectionString: PG_URL, ...ns, sweepIntervalMs: 50, ...options }),
        loseHistory: () => dropPostgresNamespace(PG_URL, ns.prefix),
        breakStream: async (stream) =>
          void (await admin.query(
            `alter table "${ns.prefix}_frames" add constraint "${ns.prefix}_broken" check (stream <> '${stream}')`,
          )),
        cleanup: async () => {},
      };
    },
    { shared: true, server: true },
  );

  it("deletes the rows of streams idle for idleMs", async () => {
    const ns = namespace();
    const broker = make({
      connectionString: PG_URL,
      ...ns,
      sweepIntervalMs: 50,
      idleMs: 300,
      history: { frames: 10, ageMs: 100 },
    });
    await startWithHub(broker);
    await broker.publish("x", frame("x1"));
    await broker.publish("y", frame("y1"));
    const rows = async () => Number((await admin.query(`select count(*) from "${ns.prefix}_frames"`)).rows[0].count);
    expect(await rows()).toBe(2);
    await waitFor(async () => (await rows()) === 0, { message: "idle streams are dropped" });
  });

  it("announces a batch too large for one notice by its seq range alone, and a small one with its frames", async () => {
    const ns = namespace();
    const listener = pgClient();
    await listener.connect();
    const notices: string[] = [];
    listener.on("notification", (n) => notices.push(n.payload ?? ""));
    try {
      await listener.query(`listen "${ns.prefix}"`);
      const { broker, delivered } = await startWithHub(make({ connectionString: PG_URL, ...ns }));
      // 100 frames of 200 bytes in one turn: one batch, over NOTIFY's 8000 bytes
      const big = await Promise.all(
        Array.from({ length: 100 }, (_, i) => broker.publish(`s${i % 3}`, frame(`${i} ${"x".repeat(200)}`))),
      );
      const small = await broker.publish("s0", frame("small"));
      await waitFor(() => notices.length === 2 && delivered.length === 101);
      const last = big[99]!;
      expect(JSON.parse(notices[0]!)).toEqual({
        o: expect.any(String),
        n: 1,
        e: parsePosition(last.position)!.epoch,
        s: last.seq,
        c: 100,
      });
      expect(decodeChannelMessage(notices[1]!)).toEqual({
        kind: "frames",
        epoch: parsePosition(small.position)!.epoch,
        seq: small.seq,
        frames: [{ stream: "s0", frame: frame("small") }],
      });
      // the publishing process delivered its own batch from what it sent
      expect(delivered.map((f) => f.position)).toEqual([...big, small].map((p) => p.position));
    } finally {
      await listener.end();
    }
  });

  it("says once that its tables lost their history when they are dropped under it", async () => {
    const ns = namespace();
    const broker = make({ connectionString: PG_URL, ...ns });
    const { events } = await startWithHub(broker);
    await broker.publish("x", frame("x1"));
    await dropPostgresNamespace(PG_URL, ns.prefix);
    await broker.publish("x", frame("x2"));
    await broker.publish("x", frame("x3"));
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

  it("adds the watch generation to a meta table from before watches, and alters no table that has it", async () => {
    const ns = namespace();
    await admin.query(`
      create table "${ns.prefix}_meta" (id smallint primary key check (id = 1), epoch text not null,
                                        seq bigint not null, expired_floor bigint not null default 0);
      insert into "${ns.prefix}_meta" (id, epoch, seq) values (1, 'old', 5)`);
    const first = make({ connectionString: PG_URL, ...ns });
    await startWithHub(first);
    await first.watch!(["data:row:t:1"]);
    expect((await admin.query(`select epoch, watch_gen from "${ns.prefix}_meta"`)).rows).toEqual([
      { epoch: "old", watch_gen: "1" },
    ]);
    // a reader holds the table: an ALTER would wait for it (and make everyone wait behind it)
    await admin.query(`begin; lock table "${ns.prefix}_meta" in access share mode`);
    try {
      const second = make({ connectionString: PG_URL, ...ns, connectTimeoutMs: 3_000 });
      await startWithHub(second);
      expect((await second.publish("a", frame("1"))).position).toMatch(/^old\./);
    } finally {
      await admin.query("commit");
    }
  });

  it("announces a watch registration's reserved seq, so listeners neither read it from the table nor call it lost when pruned", async () => {
    const ns = namespace();
    const a = await startWithHub(make({ connectionString: PG_URL, ...ns }));
    const b = await startWithHub(make({ connectionString: PG_URL, ...ns, applicationName: `${ns.applicationName}_b` }));
    await a.broker.watch!(["data:row:t:1"]);
    // the mark's row pruned before any listener read it
    await admin.query(`delete from "${ns.prefix}_frames" where stream = '~watched'`);
    const next = await a.broker.publish("s", frame("next"));
    for (const { delivered } of [a, b]) await waitFor(() => delivered.some((f) => f.position === next.position));
    expect([...a.events.gaps, ...b.events.gaps]).toEqual([]);
    expect(b.delivered.map((f) => [f.stream, f.seq])).toEqual([
      ["~watched", next.seq - 1],
      ["s", next.seq],
    ]);
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
