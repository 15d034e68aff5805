import { describe, expect, it } from "vitest";
import { BufferBound } from "../../src/delivery/connection.js";

describe("BufferBound", () => {
  it("drops past the bound once live", () => {
    const bound = new BufferBound(100);
    expect(bound.exceeded(100)).toBe(false);
    expect(bound.exceeded(101)).toBe(true);
  });

  it("lets a replay write its whole backlog, then allows that backlog on top of the bound until it drains", () => {
    const bound = new BufferBound(100);
    bound.beginReplay();
    expect(bound.exceeded(5_000)).toBe(false);
    bound.endReplay(5_000);
    expect(bound.exceeded(5_050)).toBe(false);
    expect(bound.exceeded(5_101)).toBe(true);
    // once drained to the bound, the allowance is gone for good
    expect(bound.exceeded(80)).toBe(false);
    expect(bound.exceeded(150)).toBe(true);
  });

  it("gives no allowance when the replay left little behind", () => {
    const bound = new BufferBound(100);
    bound.beginReplay();
    bound.endReplay(40);
    expect(bound.exceeded(101)).toBe(true);
  });
});
