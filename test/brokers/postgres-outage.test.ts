import type pg from "pg";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import type { Broker, Published } from "../../src/brokers/broker.js";
import { type PostgresBrokerOptions, postgresBroker } from "../../src/brokers/postgres.js";
import { waitFor } from "../helpers.js";
import { collectUnhandled, expectEverythingAfterRefresh, expectOrderedSubset, isRefresh, publishLoop, recordingSink, startWithHub } from "./harness.js";
import { PG_URL, describeWithServer, dropPostgresNamespace, pgClient, postgresUnavailable, uniqueName } from "./servers.js";

describeWithServer("postgres broker outages", await postgresUnavailable(), () => {
  let admin: pg.Client;
  let prefixes: string[] = [];
  let brokers: Broker[] = [];

  beforeAll(async () => {
    admin = pgClient();
    await admin.connect();
  });
  afterAll(() => admin.end());
  afterEach(async () => {
    for (const broker of brokers.splice(0)) await broker.close();
    for (const prefix of prefixes.splice(0)) await dropPostgresNamespace(PG_URL, prefix);
  });

  function make(options: PostgresBrokerOptions): Broker {
    const broker = postgresBroker({ maxBackoffMs: 200, ...options });
    brokers.push(broker);
    return broker;
  }

  const terminate = (applicationName: string) =>
    admin.query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1", [applicationName]);
  const connections = async (applicationName: string): Promise<number> =>
    Number((await admin.query("select count(*) from pg_stat_activity where application_name = $1", [applicationName])).rows[0].count);

  it("rides out the termination of all its connections in the middle of a stream of frames", async () => {
    const prefix = uniqueName("tc");
    prefixes.push(prefix);
    const nameA = `${prefix}_a`;
    const brokerA = make({ connectionString: PG_URL, prefix, applicationName: nameA });
    // the moment A reports the outage, a publish and a resume are attempted: both must fail soft
    let duringOutage: Promise<[unknown, Published[] | null, string]> | null = null;
    const a = await startWithHub(brokerA, (level) => {
      if (level === "warn" && !duringOutage) {
        duringOutage = Promise.all([
          brokerA.publish("s", "<turbo-stream action=\"remove\" target=\"x\"></turbo-stream>").catch((error: unknown) => error),
          brokerA.history(["s"], "whatever.1"),
          brokerA.head(),
        ]);
      }
    });
    const b = await startWithHub(make({ connectionString: PG_URL, prefix, applicationName: `${prefix}_b` }));
    const sinkA = recordingSink();
    const sinkB = recordingSink();
    await a.hub.subscribe(["s"], sinkA);
    await b.hub.subscribe(["s"], sinkB);

    const loop = publishLoop(brokerA, "s");
    const unhandled = await collectUnhandled(async () => {
      await waitFor(() => sinkA.frames.length >= 10 && sinkB.frames.length >= 10, { message: "frames flow before the outage" });
      const killed = await terminate(nameA);
      expect(killed.rowCount).toBeGreaterThanOrEqual(2); // the LISTEN connection and at least one pooled one
      await waitFor(() => a.events.logs.some((l) => l.level === "info"), { timeoutMs: 10_000, message: "A reconnects" });
      await waitFor(() => sinkA.frames.some(isRefresh) && sinkB.frames.some(isRefresh), { message: "both processes refresh" });
      const recovered = loop.outcomes.length;
      await waitFor(() => loop.outcomes.slice(recovered).filter((o) => o.ok).length >= 10, { message: "publishing works again" });
      await loop.stop();
      const lastOk = loop.outcomes.filter((o) => o.ok).at(-1)!;
      await waitFor(() => [sinkA, sinkB].every((sink) => sink.frames.some((f) => f.position === lastOk.position)), {
        message: "frames after the recovery arrive everywhere",
      });
    });

    expect(unhandled).toEqual([]);
    const [refusedPublish, resumeWhileDown, headWhileDown] = await duringOutage!;
    expect(refusedPublish).toMatchObject({ code: "TURBOCAST_BROKER" });
    expect(resumeWhileDown).toBeNull(); // a resuming subscriber gets a refresh, not an error
    expect(headWhileDown).toMatch(/^[\w-]+\.\d+$/); // pages still render

    // one warning when it started, one line when it ended: not one per refused frame
    expect(a.events.logs.map((l) => l.level)).toEqual(["warn", "info"]);
    expect(a.events.logs[0]!.message).toMatch(/postgres broker lost .* reconnecting/);
    expect(a.events.logs[1]!.message).toMatch(/reconnected .* refused meanwhile/);
    // B had no outage, but A's refused frames were lost for B's subscribers too
    expect(b.events.logs).toEqual([]);
    expect(b.events.gaps).toEqual(["postgres publishes were refused during an outage"]);

    const refused = loop.outcomes.filter((o) => !o.ok);
    expect(new Set(refused.map((o) => o.code))).toEqual(new Set(["TURBOCAST_BROKER"]));
    for (const sink of [sinkA, sinkB]) {
      expectOrderedSubset(sink.frames, loop.outcomes);
      expectEverythingAfterRefresh(sink, loop.outcomes);
    }
    // B, which stayed connected, got every frame A managed to publish
    expect(sinkB.frames.filter((f) => !isRefresh(f)).map((f) => f.position)).toEqual(loop.outcomes.filter((o) => o.ok).map((o) => o.position));

    expect(await connections(nameA)).toBeGreaterThanOrEqual(1);
    await brokerA.close();
    await waitFor(async () => (await connections(nameA)) === 0, { message: "A's connections are released on close" });
  });

  it("restores a terminated LISTEN connection alone and refreshes only that process's subscribers", async () => {
    const prefix = uniqueName("tc");
    prefixes.push(prefix);
    const nameA = `${prefix}_a`;
    // A publishes nothing: only its LISTEN connection exists to be terminated
    const a = await startWithHub(make({ connectionString: PG_URL, prefix, applicationName: nameA, poolSize: 1 }));
    const b = await startWithHub(make({ connectionString: PG_URL, prefix, applicationName: `${prefix}_b` }));
    const sinkA = recordingSink();
    await a.hub.subscribe(["s"], sinkA);

    const loop = publishLoop(b.broker, "s");
    const unhandled = await collectUnhandled(async () => {
      await waitFor(() => sinkA.frames.length >= 5);
      await terminate(nameA);
      await waitFor(() => sinkA.frames.some(isRefresh), { message: "A's subscribers get a refresh" });
      const refreshAt = sinkA.frames.findIndex(isRefresh);
      await waitFor(() => sinkA.frames.length >= refreshAt + 6, { message: "frames reach A again" });
      await loop.stop();
    });

    expect(unhandled).toEqual([]);
    expect(loop.outcomes.every((o) => o.ok)).toBe(true);
    expect(a.events.logs.map((l) => l.level)).toEqual(["warn", "info"]);
    expect(a.events.gaps).toEqual(["the postgres connection was interrupted"]);
    expect(b.events.logs).toEqual([]);
    expect(b.events.gaps).toEqual([]);
    expectOrderedSubset(sinkA.frames, loop.outcomes);
    expectEverythingAfterRefresh(sinkA, loop.outcomes);
  });
});
