/**
 * The bench's write-cost measurement on its own, repeated: spawns
 * bench/procs/write-cost.ts (or, with --pg, bench/procs/write-cost-pg.ts) as
 * `npm run bench` does, `runs` times, and prints each workload's slowdown
 * (median without / median with; on PostgreSQL the median of the paired
 * rounds' ratios) of each run — on SQLite in wall-clock time and in the
 * process's CPU time (steadier on a shared machine, blind to I/O waits) —
 * then the median slowdowns over the runs and their range.
 *
 * Run: npx tsx bench/write-cost-quick.ts [--pg] [--only=update] [runs=3] [inserts=5000 (--pg: 1000)] [rounds=5 (--pg: 12)]
 * `--only=` measures only the listed SQLite workloads (comma-separated: per-turn, burst, update), so more
 * rounds of one fit in a turn of the shared bench lock. Not part of npm test.
 */
import { Child } from "./lib/ipc.js";
import type { PostgresCapture, WriteCost } from "./lib/results.js";

const pg = process.argv.includes("--pg");
const only = process.argv
  .find((a) => a.startsWith("--only="))
  ?.slice("--only=".length)
  .split(",");
const [runs = 3, inserts = pg ? 1000 : 5000, rounds = pg ? 12 : 5] = process.argv
  .slice(2)
  .filter((a) => !a.startsWith("--"))
  .map(Number);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const ratios: Record<string, number[]> = {};
const cpuRatios: Record<string, number[]> = {};
for (let run = 0; run < runs; run++) {
  const writer = await Child.spawn(pg ? "procs/write-cost-pg.ts" : "procs/write-cost.ts", { name: "write-cost" });
  try {
    const workloads = pg
      ? (await writer.request<PostgresCapture>("measure", { inserts, rounds, bulkRows: 0 }, 900_000)).workloads
      : await writer.request<WriteCost["workloads"]>("measure", { inserts, rounds, workloads: only }, 600_000);
    const line = workloads.map((w: WriteCost["workloads"][number] | PostgresCapture["workloads"][number]) => {
      // PostgreSQL rounds come in pairs measured back to back: the median of their ratios, as the report takes it
      const r = "ratios" in w && w.ratios?.length ? median(w.ratios) : median(w.without) / median(w.with);
      (ratios[w.workload] ??= []).push(r);
      const cached =
        "cached" in w && w.cached && w.cached.length > 0
          ? ` (cache only ${Math.round(median(w.cached))}, capture alone ${(median(w.cached) / median(w.with)).toFixed(3)}x)`
          : "";
      // PostgreSQL: the median of the paired rounds' CPU ratios, as for the wall clock
      const cpu =
        "cpuRatios" in w && w.cpuRatios?.length
          ? median(w.cpuRatios)
          : "withCpu" in w && w.withoutCpu && w.withCpu && w.withCpu.length > 0
            ? median(w.withoutCpu) / median(w.withCpu)
            : Number.NaN;
      if (!Number.isNaN(cpu)) (cpuRatios[w.workload] ??= []).push(cpu);
      return `${w.workload} ${Math.round(median(w.without))}/${Math.round(median(w.with))} = ${r.toFixed(3)}x${cached}, cpu ${cpu.toFixed(3)}x`;
    });
    console.log(`run ${run + 1}: ${line.join("  ")}`);
  } finally {
    await writer.stop();
  }
}
console.log(
  Object.entries(ratios)
    .map(([w, rs]) => {
      const cpu = cpuRatios[w] ?? [];
      return `${w} median ${median(rs).toFixed(3)}x, range ${Math.min(...rs).toFixed(2)}-${Math.max(...rs).toFixed(2)} [${rs.map((r) => r.toFixed(2)).join(", ")}], cpu ${cpu.length > 0 ? median(cpu).toFixed(3) : "–"}x [${cpu.map((r) => r.toFixed(2)).join(", ")}]`;
    })
    .join("\n"),
);
