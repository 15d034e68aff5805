import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { BrokerEvents } from "../../src/brokers/broker.js";
import { TimerSet } from "../../src/brokers/connection.js";
import { OWN_OPENING, batchTail, encodeFrames, messageHead } from "../../src/brokers/batch-wire.js";
import { Continuity, decodeChannelMessage } from "../../src/brokers/continuity.js";

function setup() {
  const logs: Array<{ level: string; message: string }> = [];
  const gaps: string[] = [];
  const events: BrokerEvents = {
    gap: (reason) => gaps.push(reason),
    log: (level, message) => logs.push({ level, message }),
  };
  const timers = new TimerSet();
  const continuity = new Continuity(
    { kind: "redis", target: "redis://h:6379", historyLost: "Redis lost the broker's keys", settleMs: 500 },
    events,
    timers,
  );
  return { continuity, logs, gaps, timers };
}

describe("broker continuity (what the Redis and PostgreSQL brokers share)", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("logs an outage once when it starts and once when it ends, counting the refused publishes in between", () => {
    const { continuity, logs } = setup();
    continuity.seen("E1", 10);
    continuity.lost("its connection", new Error("ECONNREFUSED"));
    continuity.lost("its subscription");
    for (let i = 0; i < 50; i++) continuity.refused();
    continuity.recovered(null);
    expect(logs.map((l) => l.level)).toEqual(["warn", "info"]);
    expect(logs[0]!.message).toContain("redis broker lost its connection to redis://h:6379: ECONNREFUSED");
    expect(logs[1]!.message).toMatch(/reconnected to redis:\/\/h:6379 after .*s \(50 publishes refused meanwhile\)$/);
  });

  it("says a new epoch seen during an outage in the line that ends it, and one seen otherwise at once", () => {
    const { continuity, logs } = setup();
    expect(continuity.seen("E1", 10)).toBe("first");
    continuity.lost("its connection");
    expect(continuity.seen("E2", 500)).toBe("new");
    continuity.recovered(null);
    expect(logs[1]!.message).toContain("; Redis lost the broker's keys (new epoch E2)");
    expect(continuity.seen("E3", 900)).toBe("new");
    expect(logs.map((l) => l.level)).toEqual(["warn", "info", "warn"]);
  });

  it("gives one refresh for an outage, after settleMs, covering every refresh request that arrives meanwhile", () => {
    const { continuity, gaps } = setup();
    continuity.seen("E1", 10);
    continuity.lost("its subscription");
    continuity.refused();
    const request = continuity.recovered("the redis subscription was interrupted");
    expect(request).toMatchObject({ g: "redis publishes were refused during an outage", o: continuity.id, s: 10 });
    // its own request echoed back, and two other processes' of the same outage
    continuity.answer(request!);
    continuity.answer({ g: "other", o: "B", at: Date.now(), e: "E1", s: 12 });
    continuity.answer({ g: "other", o: "C", at: Date.now() });
    expect(gaps).toEqual([]);
    vi.advanceTimersByTime(500);
    expect(gaps).toEqual(["the redis subscription was interrupted"]);
    continuity.answer(request!);
    expect(gaps).toHaveLength(1);
  });

  it("gives no refresh when the outage lost nothing, and an immediate gap replaces a pending one", () => {
    const { continuity, gaps } = setup();
    continuity.seen("E1", 10);
    continuity.lost("its connection");
    expect(continuity.recovered(null)).toBeNull();
    vi.advanceTimersByTime(1_000);
    expect(gaps).toEqual([]);

    continuity.lost("its subscription");
    continuity.recovered("interrupted");
    continuity.gap("frames were pruned");
    vi.advanceTimersByTime(1_000);
    expect(gaps).toEqual(["frames were pruned"]);
  });

  it("answers a later request from another process unless its last refresh came after a frame published after that request's head", () => {
    const { continuity, gaps } = setup();
    continuity.seen("E1", 10);
    continuity.gap("first");
    // its losses were before seq 9 was published: the refresh after seeing 10 covers them
    continuity.answer({ g: "covered", o: "B", at: Date.now(), e: "E1", s: 9 });
    // losses up to seq 10, which this refresh also saw: not provably covered
    continuity.answer({ g: "same head", o: "B", at: Date.now(), e: "E1", s: 10 });
    vi.advanceTimersByTime(500);
    // another epoch, or no head at all: refresh
    continuity.answer({ g: "no head", o: "B", at: Date.now() });
    vi.advanceTimersByTime(500);
    expect(gaps).toEqual(["first", "same head", "no head"]);
  });

  it("decodes frames, batches of frames and refresh requests from the channel, and nothing else", () => {
    expect(decodeChannelMessage('{"e":"E","s":3,"n":"a","f":"<x>"}')).toEqual({
      kind: "frame",
      epoch: "E",
      seq: 3,
      stream: "a",
      frame: "<x>",
    });
    expect(decodeChannelMessage('{"e":"E","s":3}')).toMatchObject({ kind: "frame", stream: undefined });
    // a batch, inline or (too large for a notice) as its last seq and count
    expect(decodeChannelMessage('{"e":"E","s":3,"b":[["a","<x>"],["b","<y>"]]}')).toEqual({
      kind: "frames",
      epoch: "E",
      seq: 3,
      frames: [
        { stream: "a", frame: "<x>" },
        { stream: "b", frame: "<y>" },
      ],
    });
    expect(decodeChannelMessage('{"e":"E","s":9,"c":4}')).toMatchObject({ kind: "frame", seq: 9, count: 4 });
    expect(decodeChannelMessage('{"e":"E","s":3,"b":[["a"]]}')).toBeNull();
    expect(decodeChannelMessage('{"g":"why","o":"A","at":1}')).toEqual({
      kind: "refresh",
      request: { g: "why", o: "A", at: 1 },
    });
    for (const junk of ["", "nope", "null", "[]", '{"e":1,"s":"x"}', '{"g":"x"}']) {
      expect(decodeChannelMessage(junk)).toBeNull();
    }
  });

  it("decodes a batch as batch-wire sends it: a JSON head, a newline, the frames back to back, cut by their lengths", () => {
    const frames = [
      { stream: "a", frame: "<p>one\nline two</p>" },
      { stream: 'b "quoted"', frame: "ünïcødé 🎉 \\ {}" },
      { stream: "a", frame: "" },
      { stream: "a", frame: "\n" },
    ];
    const encoded = encodeFrames(frames);
    const tail = batchTail(frames, encoded, encoded.streamIndexes.join(","));
    const message = `${messageHead("O", 7)}"e":"E","s":40,${tail}${encoded.body.toString()}`;
    expect(decodeChannelMessage(message)).toEqual({ kind: "frames", epoch: "E", seq: 40, frames });
    // what the publishing broker reads of it to know its own batch
    expect(OWN_OPENING.exec(message)?.slice(1)).toEqual(["O", "7", "E", "40"]);
    // lengths that do not cut the body exactly, or name no stream: not a batch
    expect(decodeChannelMessage(`${message}x`)).toBeNull();
    expect(decodeChannelMessage('{"e":"E","s":1,"k":["a"],"x":[1],"l":[1]}\nx')).toBeNull();
    expect(decodeChannelMessage('{"e":"E","s":1,"k":["a"],"x":[0],"l":[2]}\nx')).toBeNull();
    expect(decodeChannelMessage('{"e":"E","s":1}\nx')).toBeNull();
  });
});
