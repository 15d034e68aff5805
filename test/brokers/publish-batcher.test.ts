import { describe, expect, it } from "vitest";
import type { Published } from "../../src/brokers/broker.js";
import { decodeChannelMessage } from "../../src/brokers/continuity.js";
import { NOTIFY_LIMIT, encodeBatch } from "../../src/brokers/postgres-sql.js";
import { type OutgoingFrame, PublishBatcher, type WatchFilter } from "../../src/brokers/publish-batcher.js";

/** A server that records each batch and answers when told to. */
function fakeServer() {
  const batches: OutgoingFrame[][] = [];
  const answers: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  let seq = 0;
  const send = (frames: readonly OutgoingFrame[]): Promise<Published[]> => {
    batches.push([...frames]);
    return new Promise<Published[]>((resolve, reject) => {
      answers.push({
        resolve: () => resolve(frames.map((f) => ({ ...f, seq: ++seq, position: `E.${seq}` }))),
        reject,
      });
    });
  };
  return { batches, answers, send };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe("PublishBatcher", () => {
  it("sends the publishes of one turn as one batch, and those made while it is in flight as the next", async () => {
    const server = fakeServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 100, bytes: 1 << 20 },
    });
    const first = ["a", "b", "a"].map((s, i) => batcher.publish(s, `f${i}`));
    await tick();
    expect(server.batches.map((b) => b.map((f) => f.frame))).toEqual([["f0", "f1", "f2"]]);
    const second = [batcher.publish("c", "f3")];
    await tick();
    const third = [batcher.publish("c", "f4")];
    await tick();
    // one batch in flight: the later publishes wait for it, together
    expect(server.batches).toHaveLength(1);
    server.answers[0]!.resolve();
    expect((await Promise.all(first)).map((p) => [p.stream, p.seq])).toEqual([
      ["a", 1],
      ["b", 2],
      ["a", 3],
    ]);
    await tick();
    expect(server.batches.map((b) => b.map((f) => f.frame))).toEqual([
      ["f0", "f1", "f2"],
      ["f3", "f4"],
    ]);
    server.answers[1]!.resolve();
    expect((await Promise.all([...second, ...third])).map((p) => p.seq)).toEqual([4, 5]);
    await batcher.idle();
    expect(batcher.size).toBe(0);
  });

  it("cuts batches at the frame and byte limits, a frame larger than the byte limit going alone", async () => {
    const server = fakeServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 3, bytes: 10 },
    });
    const sent = ["1", "2", "3", "4", "x".repeat(20), "5", "6"].map((f) => batcher.publish("s", f));
    for (let i = 0; i < 4; i++) {
      await tick();
      server.answers[i]?.resolve();
    }
    await Promise.all(sent);
    expect(server.batches.map((b) => b.map((f) => f.frame.length))).toEqual([[1, 1, 1], [1], [20], [1, 1]]);
  });

  it("rejects every publish of a failed batch with its own error, and goes on with the next batch", async () => {
    const server = fakeServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (stream, error) => new Error(`${stream}: ${(error as Error).message}`),
      limits: { frames: 100, bytes: 1 << 20 },
    });
    const failed = [batcher.publish("a", "1"), batcher.publish("b", "2")];
    await tick();
    const next = batcher.publish("a", "3");
    server.answers[0]!.reject(new Error("refused"));
    const results = await Promise.allSettled(failed);
    expect(results.map((r) => (r as PromiseRejectedResult).reason.message)).toEqual(["a: refused", "b: refused"]);
    await tick();
    server.answers[1]!.resolve();
    expect((await next).frame).toBe("3");
  });
});

describe("PublishBatcher: publishes nobody awaits", () => {
  it("sends them in call order with awaited ones, and tells `failed` of each with its stream when a batch fails", async () => {
    const server = fakeServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (stream, error) => new Error(`${stream}: ${(error as Error).message}`),
      limits: { frames: 100, bytes: 1 << 20 },
    });
    const failures: Array<[string, string]> = [];
    const failed = (error: unknown, stream: string) => failures.push([stream, (error as Error).message]);
    const awaited = batcher.publish("a", "1");
    batcher.publishUnawaited("data:a", "2", failed);
    const last = batcher.publish("b", "3");
    expect(batcher.unanswered).toBe(3);
    await tick();
    expect(server.batches.map((b) => b.map((f) => f.frame))).toEqual([["1", "2", "3"]]);
    server.answers[0]!.resolve();
    expect((await awaited).seq).toBe(1);
    expect((await last).seq).toBe(3);
    expect(batcher.unanswered).toBe(0);
    batcher.publishUnawaited("data:b", "4", failed);
    const refused = batcher.publish("b", "5");
    await tick();
    server.answers[1]!.reject(new Error("refused"));
    await expect(refused).rejects.toThrow("b: refused");
    expect(failures).toEqual([["data:b", "data:b: refused"]]);
    expect(batcher.unanswered).toBe(0);
  });

  it("flushed() and backlog() count them: flushed waits for every frame taken before it, backlog for the queue to fall to its limit", async () => {
    const server = fakeServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 2, bytes: 1 << 20 },
    });
    const failed = () => {};
    for (let i = 0; i < 5; i++) batcher.publishUnawaited("s", String(i), failed);
    let flushed = false;
    const flushing = batcher.flushed().then(() => (flushed = true));
    batcher.publishUnawaited("s", "later", failed);
    expect(batcher.backlog(6)).toBeUndefined();
    let drained = false;
    const draining = batcher.backlog(2)!.then(() => (drained = true));
    await tick();
    server.answers[0]!.resolve(); // 2 of 6 answered: 4 left
    await tick();
    expect(drained).toBe(false);
    server.answers[1]!.resolve(); // 4 answered: 2 left
    await draining;
    expect(flushed).toBe(false);
    await tick();
    server.answers[2]!.resolve(); // the 5 taken before flushed() are answered
    await flushing;
    expect(batcher.unanswered).toBe(0);
    await batcher.idle();
  });
});

/**
 * A server with a watch generation: a checked batch whose generation is not
 * the server's is refused (null), as the Redis script and the PostgreSQL
 * statement do; it answers when told to, in the order it received batches.
 */
function watchingServer() {
  const server = {
    generation: 1,
    /** Every batch received, with the generation it was checked against (null: unchecked). */
    batches: [] as Array<{ frames: string[]; check: number | null }>,
    /** What the server published, in its order. */
    published: [] as string[],
    answers: [] as Array<() => void>,
    send(frames: readonly OutgoingFrame[], check: WatchFilter | null): Promise<Published[] | null> {
      server.batches.push({ frames: frames.map((f) => f.frame), check: check?.generation ?? null });
      return new Promise((resolve) => {
        server.answers.push(() => {
          if (check !== null && check.generation !== server.generation) return resolve(null);
          resolve(
            frames.map((f) => {
              server.published.push(f.frame);
              const seq = server.published.length;
              return { ...f, seq, position: `E.${seq}` };
            }),
          );
        });
      });
    },
    /** Answers the oldest batch not answered yet. */
    answer(): void {
      server.answers.shift()!();
    },
  };
  return server;
}

describe("PublishBatcher: watches", () => {
  const filter = (generation: number, channels: string[]): WatchFilter => ({
    epoch: "E",
    generation,
    channels: new Set(channels),
  });

  it("counts only the frames it sends against the batch limit", async () => {
    const server = watchingServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 2, bytes: 1 << 20 },
    });
    batcher.filter = filter(1, []);
    for (let i = 0; i < 5; i++) {
      void batcher.publish("row:1", `h${i}`);
      for (let j = 0; j < 3; j++) batcher.publishUnawaited("data:row:1", `e${i}.${j}`, () => {});
    }
    await tick();
    // two frames a batch, as without data events
    expect(server.batches).toEqual([{ frames: ["h0", "h1"], check: 1 }]);
    for (let i = 0; i < 3; i++) {
      server.answer();
      await tick();
    }
    expect(server.batches.map((b) => b.frames)).toEqual([["h0", "h1"], ["h2", "h3"], ["h4"]]);
    await batcher.idle();
  });

  it("counts only the bytes of the frames it sends against the batch's byte limit, and decides each skip once", async () => {
    const server = watchingServer();
    let asked = 0;
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 100, bytes: 10 },
      watchedHere: () => {
        asked++;
        return false;
      },
    });
    batcher.filter = filter(1, []);
    void batcher.publish("row:1", "h0xxx");
    for (let j = 0; j < 3; j++) batcher.publishUnawaited("data:row:1", `event ${j} of twenty`, () => {});
    void batcher.publish("row:1", "h1xxx");
    await tick();
    expect(server.batches).toEqual([{ frames: ["h0xxx", "h1xxx"], check: 1 }]);
    expect(asked).toBe(3);
    server.answer();
    await batcher.idle();
  });

  it("leaves out data events of channels watched neither by the filter nor here, and checks the batch", async () => {
    const server = watchingServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 100, bytes: 1 << 20 },
      watchedHere: (channel) => channel === "data:here",
    });
    batcher.filter = filter(1, ["data:watched"]);
    const failed = () => {};
    const html = batcher.publish("row:1", "h1");
    for (const channel of ["data:watched", "data:nobody", "data:here"])
      batcher.publishUnawaited(channel, channel, failed);
    // an awaited publish is never left out, data channel or not
    const awaited = batcher.publish("data:nobody", "awaited");
    await tick();
    expect(server.batches).toEqual([{ frames: ["h1", "data:watched", "data:here", "awaited"], check: 1 }]);
    server.answer();
    expect((await html).seq).toBe(1);
    expect((await awaited).seq).toBe(4);
    await batcher.idle();
  });

  it("sends a refused batch again at once, whole and unchecked, and keeps call order with two batches in flight", async () => {
    const server = watchingServer();
    let refusals = 0;
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 2, bytes: 1 << 20 },
      inFlight: 2,
      refused: () => refusals++,
    });
    batcher.filter = filter(1, []);
    const failed = () => {};
    const calls = ["h1", "e1", "h2", "h3", "e2", "h4", "h5", "e3"];
    const awaited: Array<Promise<Published>> = [];
    for (const call of calls) {
      if (call.startsWith("h")) awaited.push(batcher.publish("row:1", call));
      else batcher.publishUnawaited("data:row:1", call, failed);
    }
    await tick();
    // two frames sent a batch (the limit), the data events among them left out:
    // two checked batches in flight, the third waits
    expect(server.batches).toEqual([
      { frames: ["h1", "h2"], check: 1 },
      { frames: ["h3", "h4"], check: 1 },
    ]);
    // another process watches data:row:1 now
    server.generation = 2;
    server.answer();
    await tick();
    // the refused batch goes again whole, unchecked (two batches' worth now, back to back);
    // nothing else may pass the second, which is refused too
    expect(server.batches.slice(2)).toEqual([
      { frames: ["h1", "e1"], check: null },
      { frames: ["h2"], check: null },
    ]);
    expect(refusals).toBe(1);
    server.answer();
    await tick();
    expect(server.batches.slice(4)).toEqual([
      { frames: ["h3", "e2"], check: null },
      { frames: ["h4"], check: null },
    ]);
    for (let i = 0; i < 4; i++) server.answer();
    await tick();
    // until the broker reads a new filter, batches skip nothing and carry no check
    expect(server.batches.slice(6)).toEqual([{ frames: ["h5", "e3"], check: null }]);
    server.answer();
    expect((await Promise.all(awaited)).map((p) => p.seq)).toEqual([1, 3, 4, 6, 7]);
    expect(server.published).toEqual(calls);
    await batcher.idle();
  });

  it("sends no batch of another check, or none, behind a checked batch in flight", async () => {
    const server = watchingServer();
    const batcher = new PublishBatcher({
      send: server.send,
      failure: (_stream, error) => error,
      limits: { frames: 100, bytes: 1 << 20 },
      inFlight: 2,
    });
    batcher.filter = filter(1, []);
    const first = batcher.publish("row:1", "h1");
    await tick();
    // a newer filter: were its batch accepted and the one in flight refused, the resend would come after it
    batcher.filter = filter(2, []);
    const second = batcher.publish("row:1", "h2");
    await tick();
    expect(server.batches.map((b) => b.frames)).toEqual([["h1"]]);
    server.generation = 2;
    server.answer();
    await tick();
    // the resend first (it cannot be refused), the newer check's batch after it
    expect(server.batches.slice(1)).toEqual([
      { frames: ["h1"], check: null },
      { frames: ["h2"], check: 2 },
    ]);
    server.answer();
    server.answer();
    expect([(await first).seq, (await second).seq]).toEqual([1, 2]);
  });
});

describe("encodeBatch (PostgreSQL notices)", () => {
  /** The notice as the publish statement builds it, for a batch whose first frame got `first`. */
  function notice(batch: OutgoingFrame[], first: number): string {
    const { tail, body } = encodeBatch(batch);
    return tail === null
      ? `{"o":"O","n":1,"e":"E","s":${first + batch.length - 1},"c":${batch.length}}`
      : `{"o":"O","n":1,"e":"E","s":${first},${tail}${body.toString()}`;
  }

  const small = { stream: "s", frame: "x".repeat(3000) };
  const odd = { stream: 'q"uote\n', frame: "ü\n\u0001 — 🎉" };

  it("puts the frames back to back in the body, cut by their byte lengths, and lists their streams", () => {
    for (const batch of [
      [small, odd, { stream: "t", frame: "" }, small],
      [odd, { stream: "t", frame: "" }],
    ]) {
      const encoded = encodeBatch(batch);
      expect(JSON.parse(encoded.streams)).toEqual(batch.map((f) => f.stream));
      let offset = 0;
      const frames = encoded.lengths.map((length) => encoded.body.subarray(offset, (offset += length)).toString());
      expect(frames).toEqual(batch.map((f) => f.frame));
      expect(offset).toBe(encoded.body.length);
    }
  });

  it("carries a batch that fits one notice in it, frames and all", () => {
    const batch = [small, odd, small];
    const sent = notice(batch, 100);
    expect(Buffer.byteLength(sent)).toBeLessThan(8000);
    expect(decodeChannelMessage(sent)).toEqual({ kind: "frames", epoch: "E", seq: 100, frames: batch });
  });

  it("names a larger batch, or one frame too large for a notice, by its last seq and count only", () => {
    const huge = { stream: "s", frame: "y".repeat(NOTIFY_LIMIT) };
    expect(encodeBatch([small, small, small]).tail).toBeNull();
    expect(decodeChannelMessage(notice([small, small, small], 100))).toEqual({
      kind: "frame",
      epoch: "E",
      seq: 102,
      stream: undefined,
      frame: undefined,
      count: 3,
    });
    expect(encodeBatch([huge]).tail).toBeNull();
    expect(decodeChannelMessage(notice([huge], 7))).toMatchObject({ kind: "frame", seq: 7, count: 1 });
  });

  it("keeps the notice under NOTIFY's limit whatever the streams' names cost", () => {
    const kinds = new Set<string>();
    for (let n = 10; n <= 400; n += 10) {
      const batch = Array.from({ length: n }, (_, i) => ({ stream: `"\u0001${i}"`.repeat(8), frame: `<p>${i}</p>` }));
      const sent = notice(batch, 1);
      expect(Buffer.byteLength(sent)).toBeLessThan(8000);
      const decoded = decodeChannelMessage(sent)!;
      kinds.add(decoded.kind);
      if (decoded.kind === "frames") expect(decoded.frames).toEqual(batch);
      else expect(decoded).toMatchObject({ kind: "frame", seq: n, count: n });
    }
    expect(kinds).toEqual(new Set(["frames", "frame"]));
  });
});
