/**
 * `npm run bench`: every figure of bench/RESULTS.md, measured in one run on
 * this machine, turbocast side by side with a bare `ws` server and Socket.IO.
 *
 *   npm run bench              full run (N up to 10,000), writes bench/RESULTS.md and bench/fanout.svg
 *   npm run bench -- --quick   smaller run, writes bench/out/RESULTS.md and bench/out/fanout.svg
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { execSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { log } from "./lib/log.js";
import { Target, type TargetSpec } from "./lib/target.js";
import { runFanout } from "./sections/fanout.js";
import { runThroughput } from "./sections/throughput.js";

const quick = process.argv.includes("--quick");
const only = process.argv.find((a) => a.startsWith("--targets="))?.slice("--targets=".length).split(",");

const WS_NS = quick ? [1000, 5000] : [1000, 5000, 10000];
const SSE_NS = quick ? [1000] : [1000, 5000];

const SPECS: TargetSpec[] = [
  { key: "bare-ws", label: "bare ws", server: "bare-ws", protocol: "ws", ns: WS_NS },
  { key: "socketio", label: "Socket.IO", server: "socketio", protocol: "sio", ns: WS_NS },
  { key: "tc-ws", label: "turbocast WS", server: "turbocast", protocol: "ws", ns: WS_NS },
  { key: "tc-sse", label: "turbocast SSE", server: "turbocast", protocol: "sse", ns: SSE_NS },
];

const outDir = fileURLToPath(new URL(quick ? "./out/" : "./", import.meta.url));

function environment(): Record<string, string> {
  const fdLimit = (() => {
    try {
      return execSync('bash -c \'ulimit -n "$(ulimit -Hn)" 2>/dev/null; echo "$(ulimit -n) (hard $(ulimit -Hn))"\'').toString().trim();
    } catch {
      return "unknown";
    }
  })();
  return {
    node: process.version,
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? "?"}`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    fdLimit,
    date: new Date().toISOString(),
    mode: quick ? "quick" : "full",
  };
}

async function main(): Promise<void> {
  const env = environment();
  log(`turbocast bench (${env.mode}); fd limit per process: ${env.fdLimit}`);
  const specs = SPECS.filter((s) => !only || only.includes(s.key));
  const targets: Target[] = [];
  const results: Record<string, unknown> = { env };
  try {
    for (const spec of specs) {
      const t = new Target(spec);
      targets.push(t);
      log(`starting ${spec.label}`);
      await t.start();
    }
    log("fan-out and idle memory");
    const throughputTargets: Target[] = [];
    const fanout = await runFanout(
      targets,
      { warmup: 5, rounds: quick ? 2 : 3, perRound: 10 },
      {
        afterStage: async (n, active) => {
          if (n !== 1000) return;
          log("throughput at 1,000 subscribers");
          throughputTargets.push(...active);
          results.throughput = await runThroughput(active, {
            startRate: 50,
            factor: quick ? 1.5 : 1.25,
            windowMs: quick ? 1000 : 2000,
            maxRate: 20_000,
            maxLagGrowthMs: 25,
          });
        },
      },
    );
    results.fanout = fanout.cells;
    results.memory = fanout.memory;
    results.clock = targets.map((t) => ({
      target: t.spec.key,
      server: { offset: t.server.clockOffset, uncertainty: t.server.clockUncertainty },
      clients: { offset: t.clients.clockOffset, uncertainty: t.clients.clockUncertainty },
    }));
  } finally {
    await Promise.all(targets.map((t) => t.stop()));
  }
  mkdirSync(outDir, { recursive: true });
  writeFileSync(`${outDir}results.json`, `${JSON.stringify(results, null, 2)}\n`);
  log(`wrote ${outDir}results.json`);
}

await main();
