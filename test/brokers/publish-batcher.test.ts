import { describe, expect, it } from "vitest";
import type { Published } from "../../src/brokers/broker.js";
import { decodeChannelMessage } from "../../src/brokers/continuity.js";
import { NOTIFY_LIMIT, encodeBatch } from "../../src/brokers/postgres-sql.js";
import { type OutgoingFrame, PublishBatcher } from "../../src/brokers/publish-batcher.js";

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
