/**
 * `npm run bench`: every figure of bench/RESULTS.md, measured in one run on
 * this machine, turbocast side by side with a bare `ws` server and Socket.IO.
 *
 *   npm run bench                      full run (N up to 10,000): bench/RESULTS.md, bench/fanout.svg, bench/results.json
 *   npm run bench -- --quick           smaller run, written to bench/out/ instead
 *   npm run bench -- --targets=a,b     only these servers (raw-tcp, bare-ws, socketio, tc-ws, tc-sse, tc-mux1, tc-mux5;
 *                                      tc-pg: the turbocast app on PostgreSQL, measured end to end only)
 *   npm run bench -- --sections=a,b    only these sections (fanout, end-to-end, write-cost, bulk-update, reauthorize, data),
 *                                      written to bench/out/; the report says what the others did not measure
 *
 * End to end (and render cost) run inside the fan-out section, at 1,000 subscribers, on its turbocast WS
 * server and a PostgreSQL twin started for it; --sections=end-to-end runs them alone (the two apps at 1,000
 * subscribers, nothing else): `npm run bench -- --quick --sections=end-to-end`. write-cost measures the
 * SQLite app's and the PostgreSQL app's (BENCH_PG_URL, default postgres://postgres@127.0.0.1:5432/test).
 */
import { execSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";
import { log } from "./lib/log.js";
import { renderReport } from "./lib/report.js";
import type { PostgresCapture, Results, WriteCost } from "./lib/results.js";
import { fanoutSvg } from "./lib/svg.js";
import { Target, type TargetSpec } from "./lib/target.js";
import { runFanout } from "./sections/fanout.js";
import { runReauthorizeCost } from "./sections/reauthorize.js";
import { runThroughput } from "./sections/throughput.js";
import { runEndToEnd, runRenderCost } from "./sections/turbocast.js";
import { runBulkUpdate } from "./sections/bulk-update.js";
import { runDataCost } from "./sections/data.js";
import { Child } from "./lib/ipc.js";

const quick = process.argv.includes("--quick");
const only = process.argv
  .find((a) => a.startsWith("--targets="))
  ?.slice("--targets=".length)
  .split(",");

const SECTIONS = ["fanout", "end-to-end", "write-cost", "bulk-update", "reauthorize", "data"] as const;
const sections = new Set(
  process.argv
    .find((a) => a.startsWith("--sections="))
    ?.slice("--sections=".length)
    .split(",") ?? SECTIONS,
);
for (const name of sections) {
  if (!(SECTIONS as readonly string[]).includes(name))
    throw new Error(`unknown section ${name}: ${SECTIONS.join(", ")}`);
}

const WS_NS = quick ? [1000, 5000] : [1000, 5000, 10000];
const SSE_NS = quick ? [1000] : [1000, 5000];

const SPECS: TargetSpec[] = [
  { key: "raw-tcp", label: "raw TCP (floor)", server: "raw-tcp", protocol: "tcp", ns: WS_NS },
  { key: "bare-ws", label: "bare ws", server: "bare-ws", protocol: "ws", ns: WS_NS },
  { key: "socketio", label: "Socket.IO", server: "socketio", protocol: "sio", ns: WS_NS },
  { key: "tc-ws", label: "turbocast WS", server: "turbocast", protocol: "ws", ns: WS_NS },
  { key: "tc-sse", label: "turbocast SSE", server: "turbocast", protocol: "sse", ns: SSE_NS },
  // the client script's one connection per page: pages holding 1 and 5 subscriptions on it
  { key: "tc-mux1", label: "turbocast shared WS, 1 sub", server: "turbocast", protocol: "mux1", ns: WS_NS },
  {
    key: "tc-mux5",
    label: "turbocast shared WS, 5 subs",
    server: "turbocast",
    protocol: "mux5",
    ns: WS_NS,
    subscriptionsPerConnection: 5,
  },
];

/** The turbocast WS app on PostgreSQL: measured end to end beside tc-ws (not in the fan-out rounds: its fan-out is tc-ws's). */
const PG_APP: TargetSpec = {
  key: "tc-pg",
  label: "turbocast WS, PostgreSQL app",
  server: "turbocast-pg",
  protocol: "ws",
  ns: [1000],
};
const E2E_N = 1000;

// a partial run (--quick, or only some sections) never replaces the committed report
const partial = quick || sections.size < SECTIONS.length;
const outDir = fileURLToPath(new URL(partial ? "./out/" : "./", import.meta.url));

function fdLimit(): { soft: number; hard: number } {
  try {
    const [soft, hard] = execSync(
      'bash -c \'ulimit -n "$(ulimit -Hn)" 2>/dev/null; echo "$(ulimit -n) $(ulimit -Hn)"\'',
    )
      .toString()
      .trim()
      .split(" ")
      .map((x) => (x === "unlimited" ? Number.POSITIVE_INFINITY : Number(x)));
    return { soft: soft!, hard: hard! };
  } catch {
    return { soft: Number.NaN, hard: Number.NaN };
  }
}

async function main(): Promise<void> {
  const fd = fdLimit();
  const results: Results = {
    env: {
      node: process.version,
      cpus: `${os.cpus().length} × ${os.cpus()[0]?.model?.trim() ?? "?"}`,
      memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB RAM`,
      fdLimit: `${fd.soft} (hard limit ${fd.hard})`,
      date: new Date().toISOString(),
      mode: quick ? "quick" : "full",
      loadBefore: os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(" / "),
    },
    labels: Object.fromEntries([...SPECS, PG_APP].map((s) => [s.key, s.label])),
    fanout: [],
    memory: [],
    throughput: [],
    endToEnd: null,
    render: null,
    writeCost: null,
    bulkUpdate: null,
    reauthorize: null,
    clock: [],
    missing: [],
    notes: [],
  };
  log(`turbocast bench (${results.env.mode}); file descriptors per process: ${results.env.fdLimit}`);

  // each process holds N sockets plus a few dozen descriptors of its own
  const specs = SPECS.filter((s) => sections.has("fanout") && (!only || only.includes(s.key))).map((s) => {
    const reachable = s.ns.filter((n) => n + 64 <= fd.soft);
    for (const n of s.ns.filter((x) => !reachable.includes(x))) {
      results.missing.push(
        `${s.label} at N = ${n.toLocaleString("en-US")}: the file-descriptor limit (${fd.soft}, hard ${fd.hard}) is too low for one process to hold that many sockets.`,
      );
    }
    return { ...s, ns: reachable };
  });

  const targets: Target[] = [];
  try {
    for (const spec of specs) {
      const t = new Target(spec);
      log(`starting ${spec.label}`);
      try {
        await t.start();
        targets.push(t);
      } catch (error) {
        await t.stop();
        const reason = error instanceof Error ? error.message.split("\n")[0] : String(error);
        results.missing.push(`${spec.label}: its server did not start (${reason}).`);
        log(`  skipped: ${reason}`);
      }
    }
    if (specs.length > 0) log("fan-out and idle memory, largest N first");
    const fanout = await runFanout(
      targets,
      // many short turns rather than a few long ones: a burst of load from a neighbour lands on every server alike
      { warmup: 5, rounds: quick ? 10 : 25, perRound: 2 },
      {
        afterStage: async (n, active) => {
          if (n !== 1000) return;
          log("throughput at 1,000 subscribers");
          results.throughput = await runThroughput(active, {
            startRate: 10,
            factor: quick ? 1.5 : 1.25,
            windowMs: quick ? 1000 : 2000,
            maxRate: 20_000,
            maxLagGrowthMs: 25,
            maxLagMs: 100,
          });
          const tc = active.find((t) => t.spec.key === "tc-ws");
          if (tc) await measureEndToEnd(results, tc);
        },
      },
    );
    results.fanout = fanout.cells;
    results.memory = fanout.memory;
    for (const cell of fanout.cells) {
      if (cell.connectFailures > 0)
        results.notes.push(
          `${results.labels[cell.target]} at N = ${cell.n}: ${cell.connectFailures} connections failed to open.`,
        );
    }
    results.clock.push(
      ...targets.map((t) => ({
        target: t.spec.key,
        server: { offset: t.server.clockOffset, uncertainty: t.server.clockUncertainty },
        clients: { offset: t.clients.clockOffset, uncertainty: t.clients.clockUncertainty },
      })),
    );
  } finally {
    await Promise.all(targets.map((t) => t.stop()));
  }

  // end to end on its own (the two apps at 1,000 subscribers) when the fan-out stage did not measure it:
  // --sections=end-to-end, or --targets without tc-ws
  if ((sections.has("fanout") || sections.has("end-to-end")) && !results.endToEnd) {
    if (E2E_N + 64 > fd.soft)
      results.missing.push(
        `End to end at N = ${E2E_N.toLocaleString("en-US")}: the file-descriptor limit (${fd.soft}) is too low.`,
      );
    else await measureEndToEnd(results, undefined);
  }

  if (sections.has("write-cost")) {
    await measureWriteCost(results);
    await measurePostgresCapture(results);
  }
  if (sections.has("bulk-update")) await measureBulkUpdate(results);
  if (sections.has("data")) await measureData(results);

  if (sections.has("reauthorize")) {
    log("periodic re-check: CPU per round over 10,000 subscriptions");
    try {
      results.reauthorize = await runReauthorizeCost({ subscriptions: 10_000, rounds: quick ? 5 : 15 });
    } catch (error) {
      results.missing.push(
        `Periodic re-check cost: the measurement failed (${error instanceof Error ? error.message.split("\n")[0] : String(error)}).`,
      );
    }
  }

  if (!results.endToEnd)
    results.missing.push(
      "End to end (Drizzle insert → hook → render → received): needs change capture and turbocast delivery.",
    );
  if (!results.render) results.missing.push("Render cost: needs a turbocast server (delivery).");

  results.env.loadAfter = os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(" / ");
  mkdirSync(outDir, { recursive: true });
  writeFileSync(`${outDir}results.json`, `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(`${outDir}fanout.svg`, fanoutSvg(results));
  writeFileSync(`${outDir}RESULTS.md`, renderReport(results, "fanout.svg"));
  log(`wrote ${outDir}RESULTS.md, fanout.svg and results.json`);
}

/**
 * End to end at 1,000 subscribers on the SQLite app (`sqlite`, the fan-out's tc-ws server, or one
 * started here) and on the PostgreSQL app (started here), alternated sample by sample; then the
 * render cost on the SQLite app. Either app can be left out with --targets.
 */
async function measureEndToEnd(results: Results, sqlite: Target | undefined): Promise<void> {
  const started: Target[] = [];
  const apps: Target[] = [];
  const start = async (spec: TargetSpec): Promise<Target | undefined> => {
    const t = new Target(spec);
    started.push(t);
    log(`starting ${spec.label}`);
    try {
      await t.start();
      log(`  ${spec.label}: connecting ${E2E_N} subscribers`);
      await t.resize(E2E_N);
      return t;
    } catch (error) {
      const reason = error instanceof Error ? error.message.split("\n")[0] : String(error);
      results.missing.push(`End to end on ${spec.label}: its server did not start (${reason}).`);
      log(`  skipped: ${reason}`);
      return undefined;
    }
  };
  try {
    const wanted = (key: string): boolean => !only || only.includes(key);
    const tcWs = SPECS.find((s) => s.key === "tc-ws")!;
    const onSqlite = sqlite ?? (wanted("tc-ws") ? await start({ ...tcWs, ns: [E2E_N] }) : undefined);
    if (onSqlite) apps.push(onSqlite);
    const onPostgres = wanted(PG_APP.key) ? await start(PG_APP) : undefined;
    if (onPostgres) apps.push(onPostgres);
    if (apps.length === 0) return;
    log(
      `end to end at ${E2E_N.toLocaleString("en-US")} subscribers: Drizzle insert -> capture -> onSave -> render -> received` +
        (apps.length > 1 ? " (SQLite and PostgreSQL apps taking turns)" : ""),
    );
    const runs = await runEndToEnd(apps, { warmup: 5, samples: quick ? 20 : 40 });
    const none = { n: E2E_N, samples: [], fanoutSamples: [] };
    results.endToEnd = {
      ...(onSqlite ? runs.get(onSqlite.spec.key)! : none),
      postgres: onPostgres ? runs.get(PG_APP.key)! : null,
    };
    for (const t of started) {
      results.clock.push({
        target: t.spec.key,
        server: { offset: t.server.clockOffset, uncertainty: t.server.clockUncertainty },
        clients: { offset: t.clients.clockOffset, uncertainty: t.clients.clockUncertainty },
      });
    }
    if (onSqlite) {
      log("render cost at 1,000 subscribers, then at 1");
      const renders = [await runRenderCost(onSqlite, 20)];
      await onSqlite.resize(1);
      renders.unshift(await runRenderCost(onSqlite, 20));
      results.render = renders;
    }
  } finally {
    await Promise.all(started.map((t) => t.stop()));
  }
}

async function measurePostgresCapture(results: Results): Promise<void> {
  log("change capture on a PostgreSQL app: write cost and a bulk UPDATE, beside SQLite");
  const pgWriter = await Child.spawn("procs/write-cost-pg.ts", { name: "write-cost-pg" });
  try {
    results.postgresCapture = await pgWriter.request<PostgresCapture>(
      "measure",
      { inserts: quick ? 500 : 1000, rounds: quick ? 6 : 12, bulkRows: 10_000, bulkRounds: quick ? 3 : 5 },
      900_000,
    );
  } catch (error) {
    results.postgresCapture = null;
    results.missing.push(
      `Change capture on PostgreSQL: the measurement failed (${error instanceof Error ? error.message.split("\n")[0] : String(error)}).`,
    );
  } finally {
    await pgWriter.stop();
  }
}

async function measureWriteCost(results: Results): Promise<void> {
  log("write cost: Drizzle inserts per second with and without change capture");
  const writer = await Child.spawn("procs/write-cost.ts", { name: "write-cost" });
  try {
    const inserts = quick ? 2000 : 5000;
    const workloads = await writer.request<WriteCost["workloads"]>(
      "measure",
      { inserts, rounds: quick ? 3 : 5 },
      600_000,
    );
    results.writeCost = { inserts, workloads };
  } catch (error) {
    results.missing.push(
      `Write cost: the measurement failed (${error instanceof Error ? error.message.split("\n")[0] : String(error)}).`,
    );
  } finally {
    await writer.stop();
  }
}

async function measureData(results: Results): Promise<void> {
  log(
    "data subscribers: delivery per write with 1,000 data subscribers next to 1,000 HTML ones; ETag hits on 10,000 rows",
  );
  try {
    results.data = await runDataCost({
      subscribers: 1000,
      writes: quick ? 50 : 200,
      rows: 10_000,
      hits: quick ? 200 : 2000,
    });
  } catch (error) {
    results.missing.push(
      `Data subscribers: the measurement failed (${error instanceof Error ? error.message.split("\n")[0] : String(error)}).`,
    );
  }
}

async function measureBulkUpdate(results: Results): Promise<void> {
  log(
    "bulk update: changes/s through the in-memory, Redis and PostgreSQL brokers side by side, on a SQLite and a PostgreSQL app",
  );
  try {
    results.bulkUpdate = await runBulkUpdate({
      apps: ["sqlite", "postgres"],
      brokers: ["memory", "redis", "postgres"],
      runs: [
        { hook: "fire", rows: 10_000, rounds: quick ? 3 : 5 },
        // one round trip per change: fewer rows, or PostgreSQL alone would take minutes
        { hook: "await", rows: quick ? 500 : 2000, rounds: quick ? 1 : 3 },
      ],
    });
  } catch (error) {
    results.missing.push(
      `Bulk update: the measurement failed (${error instanceof Error ? error.message.split("\n")[0] : String(error)}).`,
    );
  }
}

await main();
