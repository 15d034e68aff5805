import type pg from "pg";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { type Broker, type Published, parsePosition } from "../../src/brokers/broker.js";
import { type PostgresBrokerOptions, postgresBroker } from "../../src/brokers/postgres.js";
import { waitFor } from "../helpers.js";
import {
  collectUnhandled,
  expectEverythingAfterRefresh,
  expectOrderedSubset,
  isRefresh,
  publishLoop,
  recordingSink,
  refreshCount,
  startWithHub,
  waitPastRefreshes,
} from "./harness.js";
import {
  PG_URL,
  PrivatePostgres,
  describeWithServer,
  dropPostgresNamespace,
  inCI,
  pgClient,
  postgresServerMissing,
  postgresUnavailable,
  uniqueName,
} from "./servers.js";

describeWithServer("postgres broker outages", await postgresUnavailable(), () => {
  let admin: pg.Client;
  const prefixes: string[] = [];
  const brokers: Broker[] = [];
  const servers: PrivatePostgres[] = [];

  beforeAll(async () => {
    admin = pgClient();
    await admin.connect();
  });
  afterAll(() => admin.end());
  afterEach(async () => {
    for (const broker of brokers.splice(0)) await broker.close();
    for (const server of servers.splice(0)) await server.destroy();
    for (const prefix of prefixes.splice(0)) await dropPostgresNamespace(PG_URL, prefix);
  });

  function make(options: PostgresBrokerOptions): Broker {
    const broker = postgresBroker({ maxBackoffMs: 200, ...options });
    brokers.push(broker);
    return broker;
  }

  const terminate = (applicationName: string) =>
    admin.query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1", [
      applicationName,
    ]);
  const connections = async (applicationName: string): Promise<number> =>
    Number(
      (await admin.query("select count(*) from pg_stat_activity where application_name = $1", [applicationName]))
        .rows[0].count,
    );

  it("rides out a PostgreSQL restart in the middle of a stream of frames, and its history survives it", async (ctx) => {
    const missing = postgresServerMissing();
    if (missing && !inCI) {
      console.warn(`[turbocast tests] skipping the PostgreSQL restart test: ${missing}`);
      ctx.skip(missing);
    }
    if (missing) throw new Error(`${missing} — CI must run this test`);
    const server = await PrivatePostgres.start();
    servers.push(server);
    const broker = make({ connectionString: server.url, prefix: "outage", maxBackoffMs: 100 });
    const { hub, events } = await startWithHub(broker);
    const sink = recordingSink();
    await hub.subscribe(["s"], sink);

    let lastBefore = "";
    let headWhileDown = "";
    let historyWhileDown: unknown = "not asked";
    const loop = publishLoop(broker, "s");
    const unhandled = await collectUnhandled(async () => {
      await waitFor(() => sink.frames.length >= 10, { message: "frames flow before the outage" });
      lastBefore = sink.frames.at(-1)!.position;

      await server.crash();
      await waitFor(() => loop.outcomes.filter((o) => !o.ok).length >= 20, {
        message: "publishes are refused while PostgreSQL is down",
      });
      headWhileDown = await broker.head();
      historyWhileDown = await broker.history(["s"], lastBefore);

      await server.start();
      await waitFor(() => events.logs.some((l) => l.level === "info"), { timeoutMs: 20_000, message: "reconnected" });
      await waitFor(() => sink.frames.some(isRefresh), { message: "subscribers get a refresh" });
      await waitPastRefreshes([sink], loop.outcomes);
      const recovered = loop.outcomes.length;
      await waitFor(() => loop.outcomes.slice(recovered).filter((o) => o.ok).length >= 10, {
        message: "publishing works again",
      });
      await loop.stop();
      const lastOk = loop.outcomes.filter((o) => o.ok).at(-1)!;
      await waitFor(() => sink.frames.some((f) => f.position === lastOk.position), {
        message: "frames after the recovery arrive",
      });
    });

    expect(unhandled).toEqual([]);
    expect(events.logs.map((l) => l.level)).toEqual(["warn", "info"]);
    expect(events.logs[0]!.message).toMatch(/postgres broker lost .* reconnecting/);
    expect(events.logs[1]!.message).toMatch(/reconnected .* refused meanwhile\)$/); // and no new epoch: the data survived
    expect(refreshCount(sink)).toBe(1);

    // the loop's own publishes may all fall outside the short outage (the one above did not): any refused is a BrokerError
    const refused = loop.outcomes.filter((o) => !o.ok);
    expect(refused.filter((o) => o.code !== "TURBOCAST_BROKER")).toEqual([]);
    const durations = refused
      .slice(1)
      .map((o) => o.ms)
      .sort((a, b) => a - b);
    expect(durations[Math.floor(durations.length / 2)]!).toBeLessThan(5);
    expect(headWhileDown.split(".")[0]).toBe(lastBefore.split(".")[0]);
    expect(historyWhileDown).toBeNull();

    expectOrderedSubset(sink.frames, loop.outcomes);
    await expectEverythingAfterRefresh(sink, loop.outcomes);
    // the frames table outlived the restart: a page from before the outage resumes without a refresh
    const replay = await broker.history(["s"], lastBefore);
    expect(replay).not.toBeNull();
    const replayed = replay!.map((f) => f.position);
    const before = parsePosition(lastBefore)!.seq;
    const publishedAfter = loop.outcomes
      .filter((o) => o.ok && parsePosition(o.position!)!.seq > before)
      .map((o) => o.position!);
    expect(publishedAfter.length).toBeGreaterThanOrEqual(10);
    expect(publishedAfter.filter((p) => !replayed.includes(p))).toEqual([]);
  });

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
          brokerA
            .publish("s", '<turbo-stream action="remove" target="x"></turbo-stream>')
            .catch((error: unknown) => error),
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
      await waitFor(() => sinkA.frames.length >= 10 && sinkB.frames.length >= 10, {
        message: "frames flow before the outage",
      });
      const killed = await terminate(nameA);
      expect(killed.rowCount).toBeGreaterThanOrEqual(2); // the LISTEN connection and at least one pooled one
      await waitFor(() => a.events.logs.some((l) => l.level === "info"), {
        timeoutMs: 10_000,
        message: "A reconnects",
      });
      await waitFor(() => sinkA.frames.some(isRefresh) && sinkB.frames.some(isRefresh), {
        message: "both processes refresh",
      });
      await waitPastRefreshes([sinkA, sinkB], loop.outcomes);
      const recovered = loop.outcomes.length;
      await waitFor(() => loop.outcomes.slice(recovered).filter((o) => o.ok).length >= 10, {
        message: "publishing works again",
      });
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
    // one outage, one refresh for every subscriber of either process
    expect([refreshCount(sinkA), refreshCount(sinkB)]).toEqual([1, 1]);
    // B had no outage, but A's refused frames were lost for B's subscribers too
    expect(b.events.logs).toEqual([]);
    expect(b.events.gaps).toEqual(["postgres publishes were refused during an outage"]);

    // the loop's own publishes may all fall outside the short outage (the one above did not): any refused is a BrokerError
    const refused = loop.outcomes.filter((o) => !o.ok);
    expect(refused.filter((o) => o.code !== "TURBOCAST_BROKER")).toEqual([]);
    for (const sink of [sinkA, sinkB]) {
      expectOrderedSubset(sink.frames, loop.outcomes);
      await expectEverythingAfterRefresh(sink, loop.outcomes);
    }
    // B, which stayed connected, got every frame A managed to publish
    expect(sinkB.frames.filter((f) => !isRefresh(f)).map((f) => f.position)).toEqual(
      loop.outcomes.filter((o) => o.ok).map((o) => o.position),
    );

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
    await expectEverythingAfterRefresh(sinkA, loop.outcomes);
  });
});
