import { describe, expect, it } from "vitest";
import { checks, pgSlowdown, renderReport } from "../bench/lib/report.js";
import type { EndToEndRun, Results } from "../bench/lib/results.js";
import type { BroadcastSample } from "../bench/lib/target.js";

// RESULTS.md is rendered from results.json: the end-to-end and PostgreSQL write-cost figures must come out
// as measured, for each app database, and runs from before a figure existed must still render.

const sample = (last: number, n = 1000): BroadcastSample => ({ id: 0, last, first: last / 2, loop: 1, count: n });
const run = (lasts: number[], alone: number[]): EndToEndRun => ({
  n: 1000,
  samples: lasts.map((x) => sample(x)),
  fanoutSamples: alone.map((x) => sample(x)),
});

function results(extra: Partial<Results>): Results {
  return {
    env: { date: "2026-01-01", mode: "quick", node: "v20", cpus: "2", memory: "1 GiB", fdLimit: "1", loadBefore: "0" },
    labels: {},
    fanout: [],
    memory: [],
    throughput: [],
    endToEnd: null,
    render: null,
    writeCost: null,
    clock: [],
    missing: [],
    notes: [],
    ...extra,
  };
}

describe("bench report", () => {
  it("shows end to end p50 and p99 on the SQLite and the PostgreSQL app side by side, with a goal each", () => {
    const r = results({
      endToEnd: { ...run([10, 12, 14], [9, 10, 11]), postgres: run([20, 22, 40], [9, 10, 30]) },
    });
    const md = renderReport(r, "fanout.svg");
    expect(md).toContain("| SQLite (WAL) | insert → hook → render → received | 12.0 | 14.0 | 3 |");
    expect(md).toContain("| PostgreSQL | insert → hook → render → received | 22.0 | 40.0 | 3 |");
    expect(md).toContain("| PostgreSQL | fan-out alone (broadcastRaw) | 10.0 | 30.0 | 3 |");
    expect(md).toContain("| PostgreSQL / SQLite | insert → hook → render → received | 1.83× | 2.86× | |");
    const goals = checks(r).filter((c) => c.goal.startsWith("end-to-end"));
    expect(goals.map((c) => [c.goal, c.met])).toEqual([
      ["end-to-end p99 at 1,000 within 2× of fan-out alone", true],
      ["end-to-end p99 at 1,000 on a PostgreSQL app within 2× of fan-out alone", true],
    ]);
  });

  it("shows only the PostgreSQL app when the SQLite one was not measured, and says when neither was", () => {
    const pgOnly = renderReport(
      results({ endToEnd: { n: 1000, samples: [], fanoutSamples: [], postgres: run([20], [10]) } }),
      "x.svg",
    );
    expect(pgOnly).toContain("| PostgreSQL | insert → hook → render → received | 20.0 | 20.0 | 1 |");
    expect(pgOnly).not.toContain("| SQLite (WAL) |");
    const none = results({});
    expect(renderReport(none, "x.svg")).toMatch(/## End to end at 1,000 subscribers\n\nNot measured in this run/);
    expect(
      checks(none)
        .filter((c) => c.goal.startsWith("end-to-end"))
        .map((c) => c.met),
    ).toEqual([null, null]);
  });

  it("reports the PostgreSQL write cost as the median of paired rounds (older runs: the ratio of medians)", () => {
    const paired = {
      workload: "per-turn" as const,
      without: [1000, 900, 1100],
      with: [800, 800, 800],
      ratios: [1.25, 1.1, 1.4],
    };
    expect(pgSlowdown(paired)).toEqual({ ratio: 1.25, min: 1.1, max: 1.4 });
    const { ratios: _, ...older } = paired;
    expect(pgSlowdown(older).ratio).toBeCloseTo(1000 / 800);
    const r = results({
      postgresCapture: { inserts: 1000, workloads: [paired], bulk: { rows: 10, sqlite: [1], postgres: [1] } },
    });
    expect(renderReport(r, "x.svg")).toContain("| per-turn | 1,000 | 800 | 1.25× | 1.10×–1.40× |");
    expect(checks(r).find((c) => c.goal.includes("PostgreSQL app costs writes"))).toMatchObject({
      measured: "per-turn 1.25× (rounds 1.10×–1.40×)",
      met: true,
    });
  });
});
