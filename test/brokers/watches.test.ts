import { Redis } from "ioredis";
import type pg from "pg";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import type { Broker, Published } from "../../src/brokers/broker.js";
import { postgresBroker } from "../../src/brokers/postgres.js";
import { redisBroker } from "../../src/brokers/redis.js";
import { waitFor } from "../helpers.js";
import { isRefresh, recordingSink, startWithHub } from "./harness.js";
import {
  PG_URL,
  REDIS_URL,
  deleteRedisKeys,
  describeWithServer,
  dropPostgresNamespace,
  pgClient,
  postgresUnavailable,
  redisUnavailable,
  uniqueName,
} from "./servers.js";

/**
 * Watches of data channels on the scale-out brokers (src/brokers/watches.ts):
 * two brokers of one namespace are two processes. A skips the data events of
 * channels nobody watches; B watching one must never lose them.
 */

/** What these tests set on a broker (a fast sweep where it has one, to see idle streams go). */
interface BrokerOptions {
  watchTtlMs?: number;
  skipUnwatched?: boolean;
  idleMs?: number;
  history?: { ageMs: number };
}

/** One broker namespace on a server, as a test sees it. */
interface Namespace {
  make(options?: BrokerOptions): Broker;
  /** Whether the server keeps any history of `channel`. */
  stored(channel: string): Promise<boolean>;
  /** Lets the watch of `channel` expire now, as a stall longer than its time to live would. */
  expire(channel: string): Promise<void>;
  /** Loses the namespace's whole state under running brokers (Redis: its keys deleted; PostgreSQL: its tables dropped). */
  wipe(): Promise<void>;
  drop(): Promise<void>;
}

interface Kind {
  title: string;
  unavailable: string | null;
  namespace(): Namespace;
}

let redisAdmin: Redis | null = null;
let pgAdmin: pg.Client | null = null;

const redisDown = await redisUnavailable();

function redisKind(title: string, prefixOf: (name: string) => string): Kind {
  return {
    title,
    unavailable: redisDown,
    namespace() {
      const keyPrefix = prefixOf(uniqueName("tcw"));
      return {
        make: (options) => redisBroker({ url: REDIS_URL, keyPrefix, ...options }),
        stored: async (channel) => (await redisAdmin!.exists(`${keyPrefix}s:${channel}`)) === 1,
        expire: async (channel) => void (await redisAdmin!.zadd(`${keyPrefix}watch`, 0, channel)),
        wipe: () => deleteRedisKeys(REDIS_URL, keyPrefix),
        drop: () => deleteRedisKeys(REDIS_URL, keyPrefix),
      };
    },
  };
}

const kinds: Kind[] = [
  redisKind("redis", (name) => `${name}:`),
  // Lua counts a key's bytes, JavaScript its UTF-16 units: nothing may depend on either
  redisKind("redis with a non-ASCII key prefix", (name) => `${name}-ü🎉:`),
  {
    title: "postgres",
    unavailable: await postgresUnavailable(),
    namespace() {
      const prefix = uniqueName("tcw").replace(/[^a-z0-9_]/gi, "_");
      return {
        make: (options) => postgresBroker({ connectionString: PG_URL, prefix, sweepIntervalMs: 50, ...options }),
        stored: async (channel) =>
          Number(
            (await pgAdmin!.query(`select count(*) from "${prefix}_frames" where stream = $1`, [channel])).rows[0]
              .count,
          ) > 0,
        expire: async (channel) =>
          void (await pgAdmin!.query(`update "${prefix}_watches" set until = 0 where channel = $1`, [channel])),
        wipe: () => dropPostgresNamespace(PG_URL, prefix),
        drop: () => dropPostgresNamespace(PG_URL, prefix),
      };
    },
  },
];

const html = (label: string) => `<turbo-stream action="append" target="t"><template>${label}</template></turbo-stream>`;

/** The frames of `streams` among those delivered, as "<stream> <frame>". */
const of = (delivered: readonly Published[], streams: readonly string[]): string[] =>
  delivered.filter((f) => streams.includes(f.stream)).map((f) => `${f.stream} ${f.frame}`);

for (const kind of kinds) {
  describeWithServer(`watches of data channels on ${kind.title}`, kind.unavailable, () => {
    let ns: Namespace | null = null;
    const brokers: Broker[] = [];
    const failures: unknown[] = [];
    const failed = (error: unknown): void => void failures.push(error);

    beforeAll(async () => {
      redisAdmin ??= new Redis(REDIS_URL);
      if (pgAdmin === null) {
        pgAdmin = pgClient();
        await pgAdmin.connect();
      }
    });
    afterAll(async () => {
      redisAdmin?.disconnect();
      redisAdmin = null;
      await pgAdmin?.end();
      pgAdmin = null;
    });
    afterEach(async () => {
      for (const broker of brokers.splice(0)) await broker.close();
      await ns?.drop();
      ns = null;
      expect(failures.splice(0)).toEqual([]);
    });

    /** A started broker of the test's namespace with its hub: one process. */
    async function process(options?: BrokerOptions) {
      ns ??= kind.namespace();
      const broker = ns.make(options);
      brokers.push(broker);
      return startWithHub(broker);
    }

    it("neither stores nor delivers a data event of a channel nobody watches, and does once a process watches it", async () => {
      const a = await process();
      const b = await process();
      a.broker.publishUnawaited!("data:row:t:1", "e1", failed);
      await a.broker.publish("row:t:1", html("h1"));
      await waitFor(() => of(b.delivered, ["row:t:1"]).length === 1);
      expect(of(b.delivered, ["data:row:t:1"])).toEqual([]);
      expect(of(a.delivered, ["data:row:t:1"])).toEqual([]);
      expect(await ns!.stored("data:row:t:1")).toBe(false);

      await b.broker.watch!(["data:row:t:1"]);
      a.broker.publishUnawaited!("data:row:t:1", "e2", failed);
      await a.broker.publish("row:t:1", html("h2"));
      await waitFor(() => of(b.delivered, ["row:t:1"]).length === 2);
      expect(of(b.delivered, ["data:row:t:1", "row:t:1"])).toEqual([
        `row:t:1 ${html("h1")}`,
        "data:row:t:1 e2",
        `row:t:1 ${html("h2")}`,
      ]);
      expect(await ns!.stored("data:row:t:1")).toBe(true);
    });

    it("delivers the data events of a process that has not seen a new watch yet, in order with its HTML frames, with two batches in flight", async () => {
      const a = await process();
      const b = await process();
      // a's watch set is stale from here on: its batches are refused and go again whole
      await b.broker.watch!(["data:row:t:1"]);
      // several batches' worth in one turn (1,000 frames a batch on Redis, 2,000 on PostgreSQL)
      const calls: string[] = [];
      const awaited: Array<Promise<Published>> = [];
      for (let i = 0; i < 1500; i++) {
        awaited.push(a.broker.publish("row:t:1", html(`h${i}`)));
        a.broker.publishUnawaited!("data:row:t:1", `w${i}`, failed);
        a.broker.publishUnawaited!("data:row:t:2", `u${i}`, failed);
        calls.push(`row:t:1 ${html(`h${i}`)}`, `data:row:t:1 w${i}`);
      }
      const seqs = (await Promise.all(awaited)).map((p) => p.seq);
      expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
      for (const { delivered } of [a, b]) {
        await waitFor(() => of(delivered, ["row:t:1", "data:row:t:1"]).length === calls.length, {
          message: "every frame of the watched channels",
        });
        expect(of(delivered, ["row:t:1", "data:row:t:1"])).toEqual(calls);
      }
    });

    it("checks a batch whose every frame is skipped, and sends it again when refused", async () => {
      const a = await process();
      const b = await process();
      // nothing but a data event nobody watches: the batch is its check alone
      a.broker.publishUnawaited!("data:row:t:2", "skipped", failed);
      await (a.broker as { backlog(limit: number): Promise<void> | undefined }).backlog(0);
      await b.broker.watch!(["data:row:t:1"]);
      // a's watch set is stale: refused, and sent again whole
      a.broker.publishUnawaited!("data:row:t:1", "due", failed);
      await waitFor(() => of(b.delivered, ["data:row:t:1"]).length === 1, { message: "the data event" });
      expect(of(b.delivered, ["data:row:t:1", "data:row:t:2"])).toEqual(["data:row:t:1 due"]);
    });

    it("answers a cursor from before a registration with a gap, and resumes one read after it exactly", async () => {
      const a = await process();
      const b = await process();
      const before = await b.broker.head();
      a.broker.publishUnawaited!("data:row:t:1", "skipped", failed);
      await a.broker.publish("row:t:1", html("h1"));
      await b.broker.watch!(["data:row:t:1"]);
      const after = await b.broker.head();
      expect(await b.broker.history(["data:row:t:1"], before)).toBeNull();
      expect(await a.broker.history(["data:row:t:1", "row:t:1"], before)).toBeNull();
      expect(await b.broker.history(["data:row:t:1"], after)).toEqual([]);
      a.broker.publishUnawaited!("data:row:t:1", "kept", failed);
      await a.broker.publish("row:t:1", html("h2"));
      expect((await b.broker.history(["data:row:t:1", "row:t:1"], after))!.map((f) => f.frame)).toEqual([
        "kept",
        html("h2"),
      ]);
      // a frame at the reserved seq goes nowhere: a process delivers only what was published
      await waitFor(() => of(b.delivered, ["row:t:1"]).length === 2);
      expect(of(b.delivered, ["data:row:t:1"])).toEqual(["data:row:t:1 kept"]);
      // the reserved seq is no hole a listener would take for lost frames
      expect([...a.events.gaps, ...b.events.gaps]).toEqual([]);
    });

    it("keeps the gap of a channel registered again after its old frames went idle", async () => {
      const options = { idleMs: 300, history: { ageMs: 100 } };
      const a = await process(options);
      const b = await process(options);
      await b.broker.watch!(["data:row:t:1"]);
      a.broker.publishUnawaited!("data:row:t:1", "old", failed);
      await a.broker.publish("row:t:2", html("h"));
      // the watch lapses: a's events of the channel may be skipped from here
      await ns!.expire("data:row:t:1");
      const lapsed = await b.broker.head();
      // (by a: b registered it lately, so its own watch() of it asks the server nothing)
      await a.broker.watch!(["data:row:t:1"]);
      // the old frames go idle and are dropped (registrations of other channels keep going meanwhile,
      // as they would in an app); the floor the registration set stays
      let other = 0;
      await waitFor(
        async () => {
          await b.broker.watch!([`data:row:other:${other++}`]);
          return !(await ns!.stored("data:row:t:1")) && !(await ns!.stored("row:t:2"));
        },
        { message: "the idle frames dropped" },
      );
      expect(await b.broker.history(["data:row:t:1"], lapsed)).toBeNull();
    });

    it("resumes a cursor equal to the head after a registration in a namespace idle for idleMs", async () => {
      const a = await process({ idleMs: 300, history: { ageMs: 100 } });
      const before = await a.broker.head();
      await a.broker.publish("row:t:1", html("h"));
      // nothing published for idleMs: a cursor older than the head counts as idle
      await waitFor(async () => (await a.broker.history(["row:t:2"], before)) === null, {
        message: "the namespace idle",
      });
      const cursor = await a.broker.head();
      expect(await a.broker.history(["row:t:2"], cursor)).toEqual([]);
      // the registration takes a seq: a cursor equal to the head before it is not idle for that
      await a.broker.watch!(["data:row:t:1"]);
      expect(await a.broker.history(["row:t:2"], cursor)).toEqual([]);
    });

    it("loses nothing of a watched channel while another process registers 200 channels during 10,000 publishes", async () => {
      const a = await process();
      const b = await process();
      const channels = Array.from({ length: 200 }, (_, i) => `data:row:t:${i}`);
      const watched = new Set<string>();
      const registering = (async () => {
        for (const channel of channels) {
          await b.broker.watch!([channel]);
          watched.add(channel);
        }
      })();
      const htmlCalls: string[] = [];
      const dataCalls: Array<{ line: string; required: boolean }> = [];
      const awaited: Array<Promise<Published>> = [];
      for (let round = 0, n = 0; round < 200; round++) {
        for (let j = 0; j < 25; j++, n++) {
          const channel = channels[n % channels.length]!;
          awaited.push(a.broker.publish(`row:t:${n % channels.length}`, html(`h${n}`)));
          htmlCalls.push(`row:t:${n % channels.length} ${html(`h${n}`)}`);
          // published after b's registration of its channel completed: b must get it
          dataCalls.push({ line: `${channel} d${n}`, required: watched.has(channel) });
          a.broker.publishUnawaited!(channel, `d${n}`, failed);
        }
        // a round trip a round: the registrations go on meanwhile
        await awaited.at(-1);
      }
      await registering;
      await Promise.all(awaited);
      const rows = channels.map((c) => c.slice("data:".length));
      await waitFor(() => of(b.delivered, rows).length === htmlCalls.length, { message: "every HTML frame" });
      expect(of(b.delivered, rows)).toEqual(htmlCalls);
      const received = of(b.delivered, channels);
      expect(new Set(received).size).toBe(received.length);
      // those received are in call order; every one published after its channel's registration is among them
      const order = new Map(dataCalls.map((c, i) => [c.line, i]));
      const positions = received.map((line) => order.get(line)!);
      expect(positions).toEqual([...positions].sort((x, y) => x - y));
      const missing = dataCalls.filter((c) => c.required && !received.includes(c.line));
      expect(missing).toEqual([]);
      // the test means something: many events were due
      expect(dataCalls.filter((c) => c.required).length).toBeGreaterThan(1000);
      // and a is skipping again once the registrations stopped (a refusal, then a read of the watch set)
      for (let round = 0; round < 5; round++) {
        a.broker.publishUnawaited!("data:row:u:1", `u${round}`, failed);
        await a.broker.publish("row:u:1", html(`u${round}`));
      }
      await waitFor(() => of(b.delivered, ["row:u:1"]).length === 5);
      expect(of(b.delivered, ["data:row:u:1"]).length).toBeLessThan(5);
      expect([...a.events.gaps, ...b.events.gaps]).toEqual([]);
    }, 30_000);

    it("registers 1,000 channels at once", async () => {
      const a = await process();
      const b = await process();
      const channels = Array.from({ length: 1000 }, (_, i) => `data:row:t:${i}`);
      await b.broker.watch!(channels);
      for (const channel of channels) a.broker.publishUnawaited!(channel, `e ${channel}`, failed);
      await a.broker.publish("row:t:0", html("after"));
      await waitFor(() => of(b.delivered, ["row:t:0"]).length === 1);
      expect(of(b.delivered, channels)).toEqual(channels.map((c) => `${c} e ${c}`));
    });

    it("gives a gap to this process's subscribers of a channel whose watch expired while it held it", async () => {
      const b = await process({ watchTtlMs: 400 });
      const sink = recordingSink();
      await b.hub.subscribe(["data:row:t:1"], sink);
      await ns!.expire("data:row:t:1");
      // the next renewal finds it new: its events may have been skipped meanwhile
      await waitFor(() => b.events.gaps.length > 0, { message: "a gap" });
      expect(b.events.gaps[0]).toMatch(/watch of a data channel expired/);
      await waitFor(() => sink.frames.some(isRefresh), { message: "a refresh" });
    });

    it("registers its channels again as soon as it sees the namespace lost, so the others do not skip them until a renewal", async () => {
      // no renewal tick within the test: only the epoch change can bring the watch back
      const b = await process({ watchTtlMs: 600_000 });
      const sink = recordingSink();
      await b.hub.subscribe(["row:t:1", "data:row:t:1"], sink);
      await ns!.wipe();
      // started after the loss: its watch set is the new epoch's, empty, and it skips by it
      const a = await process();
      // each round's data event reaches b, or b's subscribers get a refresh after it: never silence
      let round = 0;
      await waitFor(
        async () => {
          const n = round++;
          a.broker.publishUnawaited!("data:row:t:1", `d${n}`, failed);
          await a.broker.publish("row:t:1", html(`h${n}`));
          await waitFor(() => sink.frames.some((f) => f.frame === html(`h${n}`)), { message: `h${n}` });
          return sink.frames.some((f) => f.frame === `d${n}`);
        },
        { message: "a data event published after b saw the new epoch", timeoutMs: 5_000 },
      );
      const frames = sink.frames.map((f) => (isRefresh(f) ? "refresh" : f.frame));
      for (let n = 0; n < round; n++) {
        if (frames.includes(`d${n}`)) continue;
        expect(
          frames.indexOf("refresh", frames.indexOf(html(`h${n}`))),
          `a refresh after skipped d${n}`,
        ).toBeGreaterThan(0);
      }
    });

    it("answers a watch of channels held here and registered lately at once, and goes to the server for any other", async () => {
      const a = await process();
      const b = await process({ watchTtlMs: 600_000 });
      const first = await b.broker.watch!(["data:row:t:1"]);
      const again = b.broker.watch!(["data:row:t:1"]);
      expect(typeof again).toBe("function");
      const mixed = b.broker.watch!(["data:row:t:1", "data:row:t:2"]);
      expect(mixed).toBeInstanceOf(Promise);
      await mixed;
      // held while any of its watches is
      first();
      (again as () => void)();
      a.broker.publishUnawaited!("data:row:t:1", "e1", failed);
      a.broker.publishUnawaited!("data:row:t:2", "e2", failed);
      await a.broker.publish("row:t:1", html("h1"));
      await waitFor(() => of(b.delivered, ["row:t:1"]).length === 1);
      expect(of(b.delivered, ["data:row:t:1", "data:row:t:2"])).toEqual(["data:row:t:1 e1", "data:row:t:2 e2"]);
      // let go of: a watch of it goes to the server again
      (await mixed)();
      expect(b.broker.watch!(["data:row:t:1"])).toBeInstanceOf(Promise);
    });

    it("skips nothing with skipUnwatched: false, and still registers its watches for the others", async () => {
      const a = await process({ skipUnwatched: false });
      const b = await process({ skipUnwatched: false });
      const c = await process();
      a.broker.publishUnawaited!("data:row:t:1", "e1", failed);
      await a.broker.publish("row:t:1", html("h1"));
      await waitFor(() => of(b.delivered, ["row:t:1"]).length === 1);
      expect(of(b.delivered, ["data:row:t:1"])).toEqual(["data:row:t:1 e1"]);
      await b.broker.watch!(["data:row:t:2"]);
      c.broker.publishUnawaited!("data:row:t:2", "e2", failed);
      await c.broker.publish("row:t:1", html("h2"));
      await waitFor(() => of(b.delivered, ["row:t:1"]).length === 2);
      expect(of(b.delivered, ["data:row:t:2"])).toEqual(["data:row:t:2 e2"]);
    });

    it("gives a gap to this process's subscribers of a channel whose watch expired and another process registered again", async () => {
      const b = await process({ watchTtlMs: 2_000 });
      const c = await process();
      const sink = recordingSink();
      await b.hub.subscribe(["data:row:t:1"], sink);
      await ns!.expire("data:row:t:1");
      // registered anew by another process before b renews it: b's renewal does not find it new
      await c.broker.watch!(["data:row:t:1"]);
      await waitFor(() => b.events.gaps.length > 0, { message: "a gap", timeoutMs: 3_000 });
      expect(b.events.gaps[0]).toMatch(/watch of a data channel expired/);
      await waitFor(() => sink.frames.some(isRefresh), { message: "a refresh" });
      expect(c.events.gaps).toEqual([]);
    });

    it("rejects a watch once the broker is closed, and fails the hub subscription that needed it", async () => {
      const b = await process();
      await b.broker.close();
      await expect(b.broker.watch!(["data:row:t:1"])).rejects.toThrow(/closed/);
      await expect(b.hub.subscribe(["row:t:1", "data:row:t:1"], recordingSink())).rejects.toThrow(/closed/);
      expect(b.hub.size).toBe(0);
    });
  });
}
