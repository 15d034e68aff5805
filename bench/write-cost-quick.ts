/**
 * The bench's write-cost measurement on its own, repeated: spawns
 * bench/procs/write-cost.ts (as `npm run bench` does) `runs` times and prints
 * the slowdown of each workload (median without / median with) of each run,
 * in wall-clock time and in the process's CPU time, then the median slowdowns
 * over the runs. On a shared machine the wall-clock figure moves with the
 * other load; the CPU-time one is steadier (and blind to I/O waits).
 *
 * Run: npx tsx bench/write-cost-quick.ts [runs=3] [inserts=5000] [rounds=5]
 * Not part of npm test.
 */
import { Child } from "./lib/ipc.js";
import type { WriteCost } from "./lib/results.js";

const [runs = 3, inserts = 5000, rounds = 5] = process.argv.slice(2).map(Number);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const ratios: Record<string, number[]> = {};
const cpuRatios: Record<string, number[]> = {};
for (let run = 0; run < runs; run++) {
  const writer = await Child.spawn("procs/write-cost.ts", { name: "write-cost" });
  try {
    const workloads = await writer.request<WriteCost["workloads"]>("measure", { inserts, rounds }, 600_000);
    const line = workloads.map((w) => {
      const r = median(w.without) / median(w.with);
      (ratios[w.workload] ??= []).push(r);
      const cached =
        w.cached && w.cached.length > 0
          ? ` (cache only ${Math.round(median(w.cached))}, capture alone ${(median(w.cached) / median(w.with)).toFixed(3)}x)`
          : "";
      const cpu =
        w.withoutCpu && w.withCpu && w.withCpu.length > 0 ? median(w.withoutCpu) / median(w.withCpu) : Number.NaN;
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
      return `${w} median ${median(rs).toFixed(3)}x [${rs.map((r) => r.toFixed(2)).join(", ")}], cpu ${cpu.length > 0 ? median(cpu).toFixed(3) : "–"}x [${cpu.map((r) => r.toFixed(2)).join(", ")}]`;
    })
    .join("\n"),
);
