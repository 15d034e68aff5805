import { afterEach, expect, it } from "vitest";
import {
  type Broker,
  type HistoryOptions,
  type Published,
  formatPosition,
  parsePosition,
} from "../../src/brokers/broker.js";
import { waitFor } from "../helpers.js";
import { isRefresh, recordingSink, startWithHub } from "./harness.js";

/** What every broker takes in the contract tests (each factory adds its own, e.g. a fast sweep). */
export interface ContractOptions {
  history?: HistoryOptions;
  idleMs?: number;
}

/** One namespace of a broker kind: the brokers it makes share frames when the kind spans processes. */
export interface ContractNamespace {
  make(options?: ContractOptions): Broker;
  /** Loses the stored history, as a server restart without persistence would (when the kind has a server). */
  loseHistory(): Promise<void>;
  /** Makes the server refuse to store frames of `stream` (where the kind has a server that can). */
  breakStream?(stream: string): Promise<void>;
  cleanup(): Promise<void>;
}

/** What a broker kind can do beyond one process. */
export interface ContractCapabilities {
  /** Two brokers of one namespace share frames, as two processes do (Redis, PostgreSQL). */
  shared: boolean;
  /** The history lives on a server that can lose it (then `loseHistory` does). */
  server: boolean;
}

const frame = (label: string) =>
  `<turbo-stream action="append" target="t"><template>${label}</template></turbo-stream>`;

/**
 * The behaviour every broker (memory, Redis, PostgreSQL) must have, as the
 * Hub and createTurbo rely on it. Call inside a `describe`; `namespace` is
 * called once per test.
 */
export function brokerContract(namespace: () => ContractNamespace, capabilities: ContractCapabilities): void {
  let ns: ContractNamespace | null = null;
  const brokers: Broker[] = [];

  afterEach(async () => {
    for (const broker of brokers.splice(0)) await broker.close();
    await ns?.cleanup();
    ns = null;
  });

  function make(options?: ContractOptions): Broker {
    ns ??= namespace();
    const broker = ns.make(options);
    brokers.push(broker);
    return broker;
  }

  it("gives every frame a position on one seq across streams and delivers them in that order", async () => {
    const { delivered, broker } = await startWithHub(make());
    const head = parsePosition(await broker.head())!;
    const odd = 'multi\nline "quoted" <b>&amp;</b> — ünïcødé 🎉 \\ backslash';
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

  it("delivers concurrent publishes to every broker of the namespace in seq order, with no holes", async () => {
    const one = await startWithHub(make());
    const all = capabilities.shared ? [one, await startWithHub(make())] : [one];
    const published = await Promise.all(
      Array.from({ length: 60 }, (_, i) => all[i % all.length]!.broker.publish(`s${i % 3}`, frame(String(i)))),
    );
    const seqs = published.map((p) => p.seq).sort((x, y) => x - y);
    expect(seqs).toEqual(seqs.map((_, i) => seqs[0]! + i));
    for (const { delivered } of all) {
      await waitFor(() => delivered.length === 60);
      expect(delivered.map((f) => f.seq)).toEqual(seqs);
    }
  });

  it("carries any text to every broker of the namespace: multi-line, quoted and non-ASCII frames and stream names", async () => {
    const one = await startWithHub(make());
    const all = capabilities.shared ? [one, await startWithHub(make())] : [one];
    const texts = ['multi\nline "quoted" \\ backslash', "ünïcødé — 🎉🎉 ∑", '\r\n\t{}[],:"\u0001', "", "a\nb\n"];
    const streams = ["plain", 'quo"ted\nname', "ünï 🎉", "data:x:1"];
    const calls = texts.flatMap((text, i) =>
      streams.map((stream, j) => ({ stream, frame: i % 2 === 0 ? frame(text) : text, by: (i + j) % all.length })),
    );
    // every broker publishes some, in one turn: each sees its own batch and the other's
    const published = await Promise.all(calls.map((c) => all[c.by]!.broker.publish(c.stream, c.frame)));
    const bySeq = [...published].sort((x, y) => x.seq - y.seq);
    for (const { delivered } of all) {
      await waitFor(() => delivered.length === calls.length, { message: "every frame delivered" });
      expect(delivered.map((f) => [f.stream, f.seq, f.frame])).toEqual(bySeq.map((p) => [p.stream, p.seq, p.frame]));
    }
    expect(published.map((p) => [p.stream, p.frame])).toEqual(calls.map((c) => [c.stream, c.frame]));
  });

  it("keeps call order for many publishes made at once: positions follow the calls, per stream and across streams, and each promise gets its own", async () => {
    const one = await startWithHub(make());
    const all = capabilities.shared ? [one, await startWithHub(make())] : [one];
    const head = parsePosition(await one.broker.head())!;
    // more than one batch's worth (see PublishBatcher), published in one turn without awaiting
    // with a few frames too large for a PostgreSQL notice among them
    const calls = Array.from({ length: 2500 }, (_, i) => ({
      stream: `s${i % 7}`,
      frame: frame(i % 150 === 7 ? `n${i} ${"x".repeat(9000)}` : `n${i}`),
    }));
    const published = await Promise.all(calls.map((c) => one.broker.publish(c.stream, c.frame)));
    expect(published.map((p) => [p.stream, p.frame])).toEqual(calls.map((c) => [c.stream, c.frame]));
    expect(published.map((p) => p.seq)).toEqual(calls.map((_, i) => head.seq + 1 + i));
    expect(new Set(published.map((p) => p.position)).size).toBe(calls.length);
    for (const p of published) expect(parsePosition(p.position)).toEqual({ epoch: head.epoch, seq: p.seq });
    for (const { delivered } of all) {
      await waitFor(() => delivered.length === calls.length, { message: "every frame delivered" });
      expect(delivered.map((f) => [f.stream, f.position, f.frame])).toEqual(
        published.map((p) => [p.stream, p.position, p.frame]),
      );
    }
    expect((await one.broker.history(["s3"], formatPosition(head.epoch, head.seq)))!.map((f) => f.frame)).toEqual(
      calls.filter((c) => c.stream === "s3").map((c) => c.frame),
    );
  });

  it("keeps publishes that overlap a round trip in call order, interleaved with awaited ones", async () => {
    const { broker, delivered } = await startWithHub(make());
    const order: string[] = [];
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < 20; i++) {
      pending.push(broker.publish("a", frame(`early${i}`)).then((p) => order.push(`${p.seq}`)));
      if (i % 5 === 0) await broker.publish("a", frame(`awaited${i}`));
    }
    await Promise.all(pending);
    await waitFor(() => delivered.length === 24);
    const seqs = delivered.map((f) => f.seq);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    const labels = delivered.map((f) => /<template>(.*)<\/template>/.exec(f.frame)![1]);
    expect(labels.slice(0, 3)).toEqual(["early0", "awaited0", "early1"]);
    expect(labels.filter((l) => l!.startsWith("early"))).toEqual(Array.from({ length: 20 }, (_, i) => `early${i}`));
  });

  it("settles publishes made just before close", async () => {
    const broker = make();
    await startWithHub(broker);
    const sent = [broker.publish("a", frame("1")), broker.publish("b", frame("2"))];
    await broker.close();
    const [a, b] = await Promise.all(sent);
    expect(b!.seq).toBe(a!.seq + 1);
  });

  it("replays the frames after a cursor, merged across streams, oldest first", async () => {
    const broker = make();
    const { hub } = await startWithHub(broker);
    const start = await broker.head();
    const p: Published[] = [];
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

    // the hub replays from the same history, then goes live
    const sink = recordingSink();
    await hub.subscribe(["a", "b"], sink, { cursor: p[0]!.position });
    expect(sink.frames.map((f) => f.frame)).toEqual(["2", "3", "4"].map(frame));
    const live = await broker.publish("a", frame("5"));
    await waitFor(() => sink.frames.some((f) => f.position === live.position));
    expect(sink.frames.map((f) => f.frame)).toEqual(["2", "3", "4", "5"].map(frame));
  });

  it("answers a gap for a malformed cursor, another epoch's cursor, or one ahead of the head", async () => {
    const broker = make();
    await startWithHub(broker);
    await broker.publish("a", frame("1"));
    const { epoch, seq } = parsePosition(await broker.head())!;
    expect(await broker.history(["a"], "garbage")).toBeNull();
    expect(await broker.history(["a"], `otherEpoch.${seq - 1}`)).toBeNull();
    expect(await broker.history(["a"], `${epoch}.${seq + 1}`)).toBeNull();
    expect(await broker.history(["a"], `${epoch}.${seq}`)).toEqual([]);
  });

  it("caps each stream at maxFrames, answers a gap for a cursor below what was trimmed, and the hub sends a refresh for it", async () => {
    const broker = make({ history: { frames: 2, maxFrames: 3, ageMs: 60_000 } });
    const { hub } = await startWithHub(broker);
    const start = await broker.head();
    const p: Published[] = [];
    for (let i = 0; i < 5; i++) p.push(await broker.publish("a", frame(String(i))));
    await broker.publish("b", frame("other stream, untouched"));
    // a sweep that ran between two publishes trims less: wait for the cap to hold for all five
    await waitFor(async () => (await broker.history(["a"], p[0]!.position)) === null, {
      message: "stream a is trimmed to its newest 3",
    });
    expect(await broker.history(["a"], start)).toBeNull();
    // the cursor saw the newest trimmed frame: nothing is missing
    expect((await broker.history(["a"], p[1]!.position))!.map((f) => f.frame)).toEqual(["2", "3", "4"].map(frame));
    expect((await broker.history(["b"], start))!.map((f) => f.frame)).toEqual([frame("other stream, untouched")]);

    const sink = recordingSink();
    await hub.subscribe(["a"], sink, { cursor: start });
    const next = await broker.publish("a", frame("5"));
    await waitFor(() => sink.frames.some((f) => f.position === next.position));
    expect(sink.frames.map((f) => (isRefresh(f) ? "refresh" : f.frame))).toEqual(["refresh", frame("5")]);
  });

  it("keeps frames younger than ageMs beyond the newest `frames`, and lets older ones go", async () => {
    const broker = make({ history: { frames: 1, ageMs: 150, maxFrames: 100 } });
    await startWithHub(broker);
    const start = await broker.head();
    const t0 = Date.now();
    await broker.publish("a", frame("0"));
    const p1 = await broker.publish("a", frame("1"));
    expect((await broker.history(["a"], start))!.map((f) => f.frame)).toEqual(["0", "1"].map(frame));
    await waitFor(() => Date.now() - t0 > 300, { message: "frames 0 and 1 age past ageMs" });
    const p2 = await broker.publish("a", frame("2"));
    await waitFor(async () => (await broker.history(["a"], start)) === null, { message: "old frames go" });
    expect((await broker.history(["a"], p1.position))!.map((f) => f.position)).toEqual([p2.position]);
  });

  it("forgets a stream idle for idleMs whole, and then answers older cursors with a gap", async () => {
    const broker = make({ idleMs: 300, history: { frames: 10, ageMs: 100 } });
    await startWithHub(broker);
    const before = await broker.head();
    await broker.publish("x", frame("x1"));
    await waitFor(async () => (await broker.history(["x"], before)) === null, {
      message: "stream x is forgotten",
    });
    const y = await broker.publish("y", frame("y1"));
    const x2 = await broker.publish("x", frame("x2"));
    expect(await broker.history(["x"], before)).toBeNull();
    expect((await broker.history(["x"], y.position))!.map((f) => f.position)).toEqual([x2.position]);
  });

  // (registered only where there is a server to lose it: an in-memory history dies with its broker)
  if (capabilities.server)
    it("starts a new epoch, with higher seqs, when the server loses the history", async () => {
      const broker = make();
      const { hub, delivered } = await startWithHub(broker);
      const sink = recordingSink();
      await hub.subscribe(["a"], sink);
      const old = await broker.publish("a", frame("before"));
      await waitFor(() => sink.frames.length === 1);
      await ns!.loseHistory();

      const next = await broker.publish("a", frame("after"));
      expect(parsePosition(next.position)!.epoch).not.toBe(parsePosition(old.position)!.epoch);
      // hubs compare seqs: a new epoch must not count from 1 again
      expect(next.seq).toBeGreaterThan(old.seq);
      expect(await broker.history(["a"], old.position)).toBeNull();
      await waitFor(() => sink.frames.length === 2);
      expect(sink.frames.map((f) => f.frame)).toEqual([frame("before"), frame("after")]);
      expect(delivered.every((f) => !isRefresh(f))).toBe(true);
    });

  it("delivers each frame to the subscribers of its streams only, until they unsubscribe", async () => {
    const broker = make();
    const { hub } = await startWithHub(broker);
    const one = recordingSink();
    const two = recordingSink();
    await hub.subscribe(["a"], one);
    const off = await hub.subscribe(["a", "b"], two);
    await broker.publish("a", frame("x"));
    await broker.publish("b", frame("y"));
    const z = await broker.publish("c", frame("z"));
    await waitFor(() => two.frames.length === 2);
    off();
    await broker.publish("b", frame("w"));
    const last = await broker.publish("a", frame("v"));
    await waitFor(() => one.frames.some((f) => f.position === last.position));
    expect(one.frames.map((f) => f.frame)).toEqual(["x", "v"].map(frame));
    expect(two.frames.map((f) => f.frame)).toEqual(["x", "y"].map(frame));
    expect(hub.size).toBe(1);
    expect(z.stream).toBe("c");
  });

  it("fails every publish of a batch the server refuses, with TURBOCAST_BROKER, publishing none of it", async (context) => {
    const broker = make();
    // only a broker with a server can have a batch refused (the memory broker never refuses one)
    if (!ns?.breakStream) return context.skip("this broker has no server that could refuse a batch");
    const { delivered } = await startWithHub(broker);
    const before = await broker.head();
    await ns.breakStream("broken");
    const batch = [
      broker.publish("ok", frame("1")),
      broker.publish("broken", frame("2")),
      broker.publish("ok", frame("3")),
    ];
    const results = await Promise.allSettled(batch);
    for (const result of results) {
      expect(result.status).toBe("rejected");
      expect((result as PromiseRejectedResult).reason).toMatchObject({ code: "TURBOCAST_BROKER" });
    }
    expect((results[0] as PromiseRejectedResult).reason.message).toContain('"ok"');
    expect((results[1] as PromiseRejectedResult).reason.message).toContain('"broken"');
    expect(await broker.head()).toBe(before);
    expect(await broker.history(["ok"], before)).toEqual([]);
    // the next batch goes through, right after the refused one's positions: none was taken
    const next = await broker.publish("ok", frame("4"));
    expect(next.seq).toBe(parsePosition(before)!.seq + 1);
    await waitFor(() => delivered.length === 1);
    expect(delivered.map((f) => f.frame)).toEqual([frame("4")]);
  });

  it("carries a control message to every broker of the namespace, the sender's included, in order with the frames", async () => {
    const start = async (broker: Broker) => {
      const timeline: unknown[] = [];
      await broker.start((f) => timeline.push(f.frame), {
        gap: () => {},
        log: () => {},
        control: (message) => timeline.push(message),
      });
      return { broker, timeline };
    };
    const one = await start(make());
    const two = capabilities.shared ? await start(make()) : one;
    const message = { type: "disconnect", origin: "o1", userKey: "bob", streams: ["a", "ü 🎉"] } as const;
    // over NOTIFY's payload limit: PostgreSQL's notice carries only its seq, and the frame is read from the table
    const before = frame(`before ${"x".repeat(9_000)}`);
    // not awaited: a frame published before control() was called goes first even while it waits for its batch
    const beforePublished = one.broker.publish("a", before);
    await one.broker.control(message);
    await beforePublished;
    // published by another process once control() resolved: no process sees it before the message
    await two.broker.publish("a", frame("after"));
    await one.broker.control({ type: "reauthorize", origin: "o2" });
    for (const { timeline } of new Set([one, two])) {
      await waitFor(() => timeline.length === 4);
      expect(timeline).toEqual([
        before,
        message,
        frame("after"),
        { type: "reauthorize", origin: "o2", userKey: undefined, streams: undefined },
      ]);
    }
    await one.broker.close();
    await expect(one.broker.control(message)).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
  });

  it("is safe to close twice, and refuses to publish afterwards", async () => {
    const broker = make();
    await startWithHub(broker);
    await broker.publish("a", frame("1"));
    await broker.close();
    await broker.close();
    await expect(broker.publish("a", frame("late"))).rejects.toMatchObject({ code: "TURBOCAST_CLOSED" });
  });
}
