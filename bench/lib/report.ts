import type { FanoutCell } from "../sections/fanout.js";
import type { BulkUpdate, EndToEndRun, PostgresCapture, Results } from "./results.js";
import { median, quantile } from "./stats.js";

const ms = (x: number): string => (Number.isFinite(x) ? (x < 10 ? x.toFixed(2) : x.toFixed(1)) : "—");
const kb = (bytes: number): string => (Number.isFinite(bytes) ? (bytes / 1024).toFixed(1) : "—");
const times = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(2)}×` : "—");
const int = (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "—");

export interface CellStats {
  p50: number;
  p99: number;
  loop: number;
  cpu: number;
  samples: number;
  incomplete: number;
}

export function cellStats(cell: FanoutCell): CellStats {
  const complete = cell.samples.filter((s) => s.count === cell.n);
  const last = complete.map((s) => s.last);
  return {
    p50: median(last),
    p99: quantile(last, 0.99),
    loop: median(cell.samples.map((s) => s.loop)),
    cpu: cell.cpuPerBroadcast,
    samples: cell.samples.length,
    incomplete: cell.incomplete,
  };
}

function find(results: Results, target: string, n: number): CellStats | null {
  const cell = results.fanout.find((c) => c.target === target && c.n === n);
  return cell ? cellStats(cell) : null;
}

/** A PostgreSQL capture workload's slowdown: the median of its paired rounds' ratios (older runs: of the medians), and their range. */
export function pgSlowdown(w: PostgresCapture["workloads"][number]): { ratio: number; min: number; max: number } {
  const ratios = w.ratios?.length ? w.ratios : null;
  if (!ratios) {
    const r = median(w.without) / median(w.with);
    return { ratio: r, min: r, max: r };
  }
  return { ratio: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) };
}

/** End to end on one app: the insert path and fan-out alone, p50 and p99 of the last delivery. */
function e2eStats(run: EndToEndRun): { p50: number; p99: number; aloneP50: number; aloneP99: number; samples: number } {
  const a = run.samples.map((s) => s.last);
  const b = run.fanoutSamples.map((s) => s.last);
  return {
    p50: median(a),
    p99: quantile(a, 0.99),
    aloneP50: median(b),
    aloneP99: quantile(b, 0.99),
    samples: a.length,
  };
}

/** Targets a check compares, with the verdict. */
export interface Check {
  goal: string;
  measured: string;
  met: boolean | null;
}

export function checks(results: Results): Check[] {
  const out: Check[] = [];
  const wsNs = [...new Set(results.fanout.filter((c) => c.target === "tc-ws").map((c) => c.n))].sort((a, b) => a - b);
  for (const n of wsNs) {
    const tc = find(results, "tc-ws", n);
    const bare = find(results, "bare-ws", n);
    if (tc && bare) {
      const r = tc.p50 / bare.p50;
      out.push({
        goal: `fan-out at ${n.toLocaleString("en-US")} no slower than the bare ws string loop (p50)`,
        measured: `${ms(tc.p50)} ms vs ${ms(bare.p50)} ms: ${times(r)} (CPU per broadcast ${times(tc.cpu / bare.cpu)})`,
        // the run-to-run noise of this shared machine is a few per cent; ties count as met
        met: r <= 1.05,
      });
    }
  }
  for (const n of wsNs.filter((x) => x >= 5000)) {
    const tc = find(results, "tc-ws", n);
    const sio = find(results, "socketio", n);
    if (tc && sio) {
      const r = sio.p50 / tc.p50;
      out.push({
        goal: `fan-out at ${n.toLocaleString("en-US")} at least 1.3× faster than Socket.IO (p50)`,
        measured:
          `Socket.IO ${ms(sio.p50)} ms / turbocast ${ms(tc.p50)} ms = ${times(r)} ` +
          `(server loop ${times(sio.loop / tc.loop)}, server CPU per broadcast ${times(sio.cpu / tc.cpu)})`,
        met: r >= 1.3,
      });
    }
  }
  const mem = results.memory.find((m) => m.target === "tc-ws");
  if (mem) {
    const per = (mem.loaded.rss - mem.baseline.rss) / mem.n;
    out.push({
      goal: "at most 20 KB per idle WebSocket subscriber (RSS)",
      measured: `${kb(per)} KB`,
      met: per <= 20 * 1024,
    });
  }
  if (results.writeCost) {
    const ratios = results.writeCost.workloads.map((w) => ({
      name: w.workload,
      r: median(w.without) / median(w.with),
    }));
    out.push({
      goal: "change capture costs writes at most 1.5×",
      measured: ratios.map((x) => `${x.name} ${times(x.r)}`).join(", "),
      met: ratios.every((x) => x.r <= 1.5),
    });
  } else out.push({ goal: "change capture costs writes at most 1.5×", measured: "not measured", met: null });
  if (results.bulkUpdate) {
    for (const app of bulkApps(results.bulkUpdate)) {
      for (const broker of ["redis", "postgres"] as const) {
        const r = bulkRatio(results.bulkUpdate, app, broker, "fire");
        if (r === null) continue;
        out.push({
          goal: `bulk update on a ${APP_LABEL[app]} app through ${BROKER_LABEL[broker]} within 1.5× of the in-memory broker`,
          measured: `${int(r.other)} vs ${int(r.memory)} changes/s: ${times(r.memory / r.other)}`,
          met: r.memory / r.other <= 1.5,
        });
      }
    }
  } else
    out.push({
      goal: "bulk update through Redis and PostgreSQL within 1.5× of the in-memory broker",
      measured: "not measured",
      met: null,
    });
  if (results.postgresCapture) {
    const ratios = results.postgresCapture.workloads.map((w) => ({ name: w.workload, ...pgSlowdown(w) }));
    out.push({
      goal: "change capture on a PostgreSQL app costs writes at most 1.3×",
      measured: ratios
        .map((x) => `${x.name} ${times(x.ratio)}${x.min !== x.max ? ` (rounds ${times(x.min)}–${times(x.max)})` : ""}`)
        .join(", "),
      met: ratios.every((x) => x.ratio <= 1.3),
    });
  }
  const e2e = results.endToEnd;
  const apps: Array<[string, EndToEndRun | null | undefined]> = [
    ["", e2e?.samples.length ? e2e : null],
    [" on a PostgreSQL app", e2e?.postgres],
  ];
  for (const [where, run] of apps) {
    const n = (run?.n ?? 1000).toLocaleString("en-US");
    if (!run?.samples.length) {
      out.push({
        goal: `end-to-end p99 at ${n}${where} within 2× of fan-out alone`,
        measured: "not measured",
        met: null,
      });
      continue;
    }
    const x = e2eStats(run);
    out.push({
      goal: `end-to-end p99 at ${n}${where} within 2× of fan-out alone`,
      measured: `${ms(x.p99)} ms vs ${ms(x.aloneP99)} ms: ${times(x.p99 / x.aloneP99)}`,
      met: x.p99 / x.aloneP99 <= 2,
    });
  }
  return out;
}

function fanoutTable(results: Results, targets: string[], note: string): string[] {
  const label = (k: string): string => results.labels[k] ?? k;
  const lines = [
    note,
    "",
    "| N | server | p50 ms | p99 ms | p50 × bare ws | p99 × bare ws | server loop p50 ms | server CPU / broadcast ms | CPU × bare ws | broadcasts |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  // the N at which the last-named target (the one the table is about) was measured
  const subject = [...targets].reverse().find((t) => results.fanout.some((c) => c.target === t));
  const ns = [...new Set(results.fanout.filter((c) => c.target === subject).map((c) => c.n))].sort((a, b) => a - b);
  for (const n of ns) {
    const bare = find(results, "bare-ws", n);
    for (const target of targets) {
      const s = find(results, target, n);
      if (!s) continue;
      const r = (a: number, b: number | undefined): string => (b === undefined ? "—" : times(a / b));
      lines.push(
        `| ${int(n)} | ${label(target)} | ${ms(s.p50)} | ${ms(s.p99)} | ${r(s.p50, bare?.p50)} | ${r(s.p99, bare?.p99)} | ` +
          `${ms(s.loop)} | ${ms(s.cpu)} | ${r(s.cpu, bare?.cpu)} | ${s.samples}${s.incomplete ? ` (${s.incomplete} incomplete)` : ""} |`,
      );
    }
  }
  return lines;
}

const APP_LABEL: Record<string, string> = { sqlite: "SQLite", postgres: "PostgreSQL" };
const BROKER_LABEL: Record<string, string> = { memory: "in-memory", redis: "Redis", postgres: "PostgreSQL" };

/** The apps a bulk-update run measured, SQLite first (runs before PostgreSQL apps were measured name none: SQLite). */
function bulkApps(bulk: BulkUpdate): Array<"sqlite" | "postgres"> {
  const apps = new Set(bulk.cells.map((c) => c.app ?? "sqlite"));
  return (["sqlite", "postgres"] as const).filter((a) => apps.has(a));
}

/** Median changes/s of the memory broker and of `broker` on one app with one hook style; null when either is missing. */
function bulkRatio(
  bulk: BulkUpdate,
  app: "sqlite" | "postgres",
  broker: "redis" | "postgres",
  hook: "fire" | "await",
): { memory: number; other: number } | null {
  const of = (b: string): number[] | undefined =>
    bulk.cells.find((c) => (c.app ?? "sqlite") === app && c.broker === b && c.hook === hook)?.changesPerSecond;
  const memory = of("memory");
  const other = of(broker);
  if (!memory?.length || !other?.length) return null;
  return { memory: median(memory), other: median(other) };
}

export function renderReport(results: Results, chartFile: string): string {
  const label = (k: string): string => results.labels[k] ?? k;
  const env = results.env;
  const out: string[] = [];
  out.push("# turbocast benchmarks", "");
  out.push(
    `Measured by \`npm run bench\` (${env.mode} run) on ${env.date}: Node ${env.node}, ${env.cpus}, ${env.memory}, ` +
      `file descriptors per process ${env.fdLimit}; load average (1 / 5 / 15 min) ${env.loadBefore} at the start, ` +
      `${env.loadAfter} at the end. The machine is shared and noisy (other work ran on its two cores during the run): read the ratios, ` +
      "which compare servers measured side by side in the same run, rather than the absolute numbers.",
    "",
  );
  out.push(
    "Every server runs in its own process and its subscribers in another (one process per server, so each server has " +
      "its own clients); the run's orchestrator is a third. A broadcast is one ~1 KB `<turbo-stream>` frame; its time is " +
      "from the moment the server is asked to publish to the moment the last of the N subscribers has received it " +
      "(wall clock, corrected by each process's measured clock offset). Servers measured at the same N hold their N " +
      "subscribers at the same time and take turns, round after round, so a noisy moment hits them alike.",
    "",
  );
  out.push(`![Fan-out: publish to last delivery](${chartFile})`, "");

  out.push("## Targets", "", "| goal | measured | |", "| --- | --- | --- |");
  for (const c of checks(results))
    out.push(`| ${c.goal} | ${c.measured} | ${c.met === null ? "not measured" : c.met ? "met" : "**missed**"} |`);
  out.push("");

  out.push("## Fan-out over WebSocket", "");
  out.push(
    ...fanoutTable(
      results,
      ["raw-tcp", "bare-ws", "socketio", "tc-ws"],
      "Publish to last delivery. *server loop*: the server's own synchronous broadcast call; *server CPU*: " +
        "process CPU time (user + system) per broadcast, which also counts work a server defers past its loop. " +
        "raw TCP is not a WebSocket server: one `write()` of the frame per subscriber, the floor under every row.",
    ),
    "",
  );
  if (results.fanout.some((c) => c.target === "tc-sse")) {
    out.push("## Fan-out over Server-Sent Events", "");
    out.push(
      ...fanoutTable(
        results,
        ["bare-ws", "tc-sse"],
        "turbocast SSE next to the bare ws server (WebSocket) at the same N.",
      ),
      "",
    );
  }

  if (results.fanout.some((c) => c.target === "tc-mux1" || c.target === "tc-mux5")) {
    out.push("## Fan-out on a shared connection (one connection per page)", "");
    out.push(
      ...fanoutTable(
        results,
        ["bare-ws", "tc-ws", "tc-mux1", "tc-mux5"],
        "The client script's shared WebSocket (`turbocast.v1`): each of the N connections is a page holding 1 or 5 " +
          "subscriptions on it (the room broadcast to, and 4 other rooms), next to bare ws and a URL-subscribed turbocast " +
          "WebSocket. A frame on a shared connection carries the ids of the subscriptions it is for (memoised per set of ids).",
      ),
      "",
    );
  }

  out.push("## Throughput at 1,000 subscribers", "");
  out.push(
    "The publish rate rises step by step until delivery falls behind: a broadcast does not reach every subscriber, " +
      "or the lag (scheduled publish to last delivery) of a window's last quarter exceeds its first quarter's by more than 25 ms, or 100 ms at all. " +
      "CPU columns are the share of one core each process used at the highest sustained rate: when the client " +
      "process is near 100%, the subscribers, not the server, set the limit.",
    "",
    "| server | broadcasts/s sustained | × bare ws | server CPU | client CPU |",
    "| --- | ---: | ---: | ---: | ---: |",
  );
  const bareTp = results.throughput.find((t) => t.target === "bare-ws")?.sustained;
  for (const t of results.throughput) {
    const step = [...t.steps].reverse().find((s) => s.ok && s.rate === t.sustained);
    out.push(
      `| ${label(t.target)} | ${t.sustained > 0 ? int(t.sustained) : `< ${int(t.steps[0]?.rate ?? Number.NaN)}`} | ${bareTp ? times(t.sustained / bareTp) : "—"} | ` +
        `${step ? `${Math.round(step.serverCpu * 100)}%` : "—"} | ${step ? `${Math.round(step.clientCpu * 100)}%` : "—"} |`,
    );
  }
  out.push("");

  out.push("## End to end at 1,000 subscribers", "");
  const runs: Array<[string, EndToEndRun]> = [];
  if (results.endToEnd?.samples.length) runs.push(["SQLite (WAL)", results.endToEnd]);
  if (results.endToEnd?.postgres?.samples.length) runs.push(["PostgreSQL", results.endToEnd.postgres]);
  if (runs.length > 0) {
    out.push(
      "A Drizzle insert into a bound table, captured by the trigger, claimed from the change feed, passed to " +
        "`onSave`, rendered through nunjucks and broadcast, to the last of the subscribers; next to turbocast's fan-out " +
        "of an already built frame, measured alternately on the same server. The same app on SQLite and on PostgreSQL " +
        "(Drizzle node-postgres, a schema of its own; the insert commits, the feed claims it — its own writes wake " +
        "it, other writers' NOTIFY — over its own connections), each holding its own subscribers at the same time, " +
        "take turns sample by sample.",
      "",
      "| app database | path | p50 ms | p99 ms | samples |",
      "| --- | --- | ---: | ---: | ---: |",
    );
    for (const [name, run] of runs) {
      const x = e2eStats(run);
      out.push(
        `| ${name} | insert → hook → render → received | ${ms(x.p50)} | ${ms(x.p99)} | ${x.samples} |`,
        `| ${name} | fan-out alone (broadcastRaw) | ${ms(x.aloneP50)} | ${ms(x.aloneP99)} | ${run.fanoutSamples.length} |`,
        `| ${name} | ratio | ${times(x.p50 / x.aloneP50)} | ${times(x.p99 / x.aloneP99)} | |`,
      );
    }
    if (runs.length === 2) {
      const [a, b] = [e2eStats(runs[0]![1]), e2eStats(runs[1]![1])];
      out.push(
        `| PostgreSQL / SQLite | insert → hook → render → received | ${times(b.p50 / a.p50)} | ${times(b.p99 / a.p99)} | |`,
      );
    }
    out.push("");
  } else out.push("Not measured in this run (see *Not measured* below).", "");

  out.push("## Memory per idle subscriber", "");
  out.push(
    "Server RSS after a full GC with N idle subscribers, minus the same server's RSS after a full GC before its " +
      "first subscriber, divided by N; heap is V8 heap used plus external memory, the part the server's own " +
      "objects hold (RSS also counts kernel-side and allocator slack).",
    "",
    "| server | N | RSS / subscriber KB | × bare ws | heap + external / subscriber KB |",
    "| --- | ---: | ---: | ---: | ---: |",
  );
  const perSub = (target: string): { rss: number; heap: number; n: number } | null => {
    const m = results.memory.find((x) => x.target === target);
    if (!m) return null;
    return {
      n: m.n,
      rss: (m.loaded.rss - m.baseline.rss) / m.n,
      heap: (m.loaded.heapUsed + m.loaded.external - m.baseline.heapUsed - m.baseline.external) / m.n,
    };
  };
  const bareMem = perSub("bare-ws");
  for (const m of results.memory) {
    const p = perSub(m.target)!;
    out.push(
      `| ${label(m.target)} | ${int(p.n)} | ${kb(p.rss)} | ${bareMem ? times(p.rss / bareMem.rss) : "—"} | ${kb(p.heap)} |`,
    );
  }
  out.push("");

  out.push("## Render cost", "");
  if (results.render) {
    out.push(
      "Template renders counted through a wrapped nunjucks environment while `stream.append(template, …)` " +
        "broadcasts to N subscribers: the frame is rendered once per broadcast, whatever N.",
      "",
      "| N | broadcasts | renders | renders per broadcast | append p50 ms |",
      "| ---: | ---: | ---: | ---: | ---: |",
    );
    for (const r of results.render) {
      out.push(
        `| ${int(r.n)} | ${r.broadcasts} | ${r.renders} | ${(r.renders / r.broadcasts).toFixed(2)} | ${ms(median(r.samples.map((s) => s.last)))} |`,
      );
    }
    out.push("");
  } else out.push("Not measured in this run (see *Not measured* below).", "");

  out.push("## Periodic re-check (live authorization)", "");
  if (results.reauthorize) {
    const r = results.reauthorize;
    out.push(
      `CPU of one round of the periodic re-check: ${int(r.subscriptions)} live subscriptions (one stream each), every one's ` +
        `\`userPassesTest\` run once, slot by slot as the timer does over one \`reauthorizeMs\` (${int(r.reauthorizeMs)} ms, ` +
        `${r.slots} slots: one slot per ${ms(r.reauthorizeMs / r.slots)} ms). Measured in one process, apart from the fan-out: ` +
        "the re-check adds nothing to the publish path.",
      "",
      "| userPassesTest | CPU per round (median) | per subscription | share of one core at the default interval | rounds, ms |",
      "| --- | ---: | ---: | ---: | --- |",
    );
    for (const [label, median_, rounds] of [
      ["returns at once (the re-check's own cost)", r.trivialMedianMs, r.trivialMs],
      ["one SQLite primary-key lookup", r.lookupMedianMs, r.lookupMs],
    ] as const) {
      out.push(
        `| ${label} | ${ms(median_)} | ${((median_ * 1000) / r.subscriptions).toFixed(2)} µs | ` +
          `${((median_ / r.reauthorizeMs) * 100).toFixed(3)} % | ${rounds.map((x) => x.toFixed(1)).join(", ")} |`,
      );
    }
    out.push("");
  } else out.push("Not measured in this run (see *Not measured* below).", "");

  out.push("## Write cost of change capture", "");
  if (results.writeCost) {
    const w = results.writeCost;
    out.push(
      `Drizzle inserts per second into a SQLite file (a fresh one per round: WAL, synchronous=NORMAL), ${int(w.inserts)} per round, ` +
        "rounds alternating which mode goes first. With capture, a round ends only when every insert has reached its " +
        "`onSave` hook (a no-op), so the figure includes the trigger, the change-log claims and the dispatch. " +
        "*per-turn*: one insert per event-loop turn, as requests arrive (each change claimed on its own); " +
        "*burst*: inserts back to back, drained in batches after; " +
        "*update*: one UPDATE of an existing row per turn (the trigger logs the new and the previous row).",
      "",
      "Drizzle prepares every statement anew, and preparing a write to a captured table compiles its trigger too; " +
        "turbocast keeps the app's prepared write statements (INSERT, UPDATE, DELETE without RETURNING) and hands them back, " +
        "so a trigger is compiled once per statement text. *cache only* is bare Drizzle with that cache and no capture: " +
        "*slowdown* is what an app sees when it adds turbocast, *capture alone* what the triggers, claims and dispatch cost " +
        "next to the same cache. *CPU slowdown* is the same ratio in the process's CPU time (user + system, GC threads " +
        "included): on a shared machine the wall clock moves with the other load and the CPU time much less; it does not " +
        "see I/O waits (the WAL checkpoints' fsyncs, more frequent with capture since every write also appends to the change log).",
      "",
      "| workload | without turbocast, inserts/s | cache only, inserts/s | with capture, inserts/s | slowdown | capture alone | CPU slowdown | rounds without / cache only / with |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    );
    for (const x of w.workloads) {
      const cached = x.cached ?? [];
      const cachedMedian = cached.length > 0 ? median(cached) : Number.NaN;
      const cpu =
        x.withoutCpu && x.withCpu && x.withCpu.length > 0 ? times(median(x.withoutCpu) / median(x.withCpu)) : "–";
      out.push(
        `| ${x.workload} | ${int(median(x.without))} | ${cached.length > 0 ? int(cachedMedian) : "–"} | ${int(median(x.with))} | ` +
          `${times(median(x.without) / median(x.with))} | ${cached.length > 0 ? times(cachedMedian / median(x.with)) : "–"} | ${cpu} | ` +
          `${x.without.map(int).join(", ")} / ${cached.map(int).join(", ") || "–"} / ${x.with.map(int).join(", ")} |`,
      );
    }
    out.push("");
  } else out.push("Not measured in this run (see *Not measured* below).", "");

  out.push("## Bulk update through each broker", "");
  if (results.bulkUpdate) {
    const b = results.bulkUpdate;
    out.push(
      "One UPDATE of many rows on an app like the demo (messages in 100 rooms; `onSave` replaces the message's " +
        "element on its room's stream, rendering a template), until every frame is back from the broker in the " +
        "app's hub: capture, claims, the hook, the render, the publish and the delivery. The app is a SQLite one " +
        "(Drizzle better-sqlite3, WAL) or a PostgreSQL one (Drizzle node-postgres, captured by PostgreSQL triggers), " +
        "with the same hook, template and rows. Apps and brokers take turns round after round, each round on a fresh " +
        "SQLite file or PostgreSQL schema and broker namespace. *fire*: the hook broadcasts without awaiting, so a " +
        "claimed batch's frames reach the broker together (one script call on Redis, one statement on PostgreSQL); " +
        "*await*: an async hook that awaits its broadcast, one broker round trip per change (the feed runs async " +
        "hooks one at a time). × in-memory compares with the in-memory broker on the same app.",
      "",
      "| app | hook | rows | broker | changes/s (median) | × in-memory | rounds |",
      "| --- | --- | ---: | --- | ---: | ---: | --- |",
    );
    for (const app of bulkApps(b)) {
      for (const cell of b.cells.filter((c) => (c.app ?? "sqlite") === app)) {
        const memory = b.cells.find(
          (c) => (c.app ?? "sqlite") === app && c.hook === cell.hook && c.broker === "memory",
        );
        const m = median(cell.changesPerSecond);
        const ratio = memory?.changesPerSecond.length ? median(memory.changesPerSecond) / m : Number.NaN;
        out.push(
          `| ${APP_LABEL[app]} | ${cell.hook} | ${int(cell.rows)} | ${BROKER_LABEL[cell.broker] ?? cell.broker} | ${int(m)} | ${times(ratio)} | ${cell.changesPerSecond.map(int).join(", ")} |`,
        );
      }
    }
    out.push("");
  } else out.push("Not measured in this run (see *Not measured* below).", "");

  if (results.postgresCapture) {
    const p = results.postgresCapture;
    const paired = p.workloads.some((w) => w.ratios?.length);
    out.push(
      "## Change capture on a PostgreSQL app",
      "",
      `Drizzle node-postgres inserts per second into a PostgreSQL table, ${int(p.inserts)} per round and mode` +
        (paired
          ? " (each mode in a schema of its own, set up once for all rounds). "
          : " (a fresh schema per round). ") +
        "With capture, a round ends only when every insert has reached its " +
        "`onSave` hook (a no-op), so the figure includes the trigger, the claims and the dispatch. " +
        "*per-turn*: one insert at a time; *burst*: all at once over a pool of 10 connections. " +
        (paired
          ? "In each round both workloads are measured without and with capture back to back (which goes first " +
            "alternates), so a pair sees the same moment of this shared machine; *slowdown* is the median of the " +
            "pairs' ratios, with their range."
          : "Rounds alternate which mode goes first; *slowdown* is the ratio of the medians."),
      "",
      "| workload | without turbocast, inserts/s | with capture, inserts/s | slowdown | pairs' range | rounds without / with |",
      "| --- | ---: | ---: | ---: | --- | --- |",
    );
    for (const x of p.workloads) {
      const slow = pgSlowdown(x);
      out.push(
        `| ${x.workload} | ${int(median(x.without))} | ${int(median(x.with))} | ${times(slow.ratio)} | ` +
          `${x.ratios?.length ? `${times(slow.min)}–${times(slow.max)}` : "–"} | ` +
          `${x.without.map(int).join(", ")} / ${x.with.map(int).join(", ")} |`,
      );
    }
    out.push(
      "",
      `One UPDATE of ${int(p.bulk.rows)} rows, from the statement's start to the last \`onSave\` (a no-op: no broker), ` +
        "changes dispatched per second:",
      "",
      "| app database | changes/s (median) | rounds |",
      "| --- | ---: | --- |",
      `| SQLite (WAL) | ${int(median(p.bulk.sqlite))} | ${p.bulk.sqlite.map(int).join(", ")} |`,
      `| PostgreSQL | ${int(median(p.bulk.postgres))} | ${p.bulk.postgres.map(int).join(", ")} |`,
      "",
    );
  }

  if (results.data) {
    const d = results.data;
    out.push(
      "## Data subscribers",
      "",
      `In one process: a Drizzle insert into a table whose rows \`broadcastsTo\` a room, from the insert to the last ` +
        `delivery, per write (median and p99 over ${int(d.writes)} writes), each subscriber taking the frame's memoised ` +
        "WebSocket bytes as the transports do. The data event is built once per change (fields projected once, JSON once).",
      "",
      "| subscribers of the room | per write, median | p99 | bytes handed to sockets per write |",
      "| --- | ---: | ---: | ---: |",
      `| none | ${ms(d.noSubscribersMedianMs)} ms | — | 0 |`,
      `| ${int(d.subscribers)} HTML | ${ms(d.htmlMedianMs)} ms | ${ms(d.htmlP99Ms)} ms | ${int(d.htmlBytesPerWrite)} |`,
      `| ${int(d.subscribers)} HTML + ${int(d.subscribers)} data | ${ms(d.htmlAndDataMedianMs)} ms | ${ms(d.htmlAndDataP99Ms)} ms | ${int(d.htmlAndDataBytesPerWrite)} |`,
      "",
      `\`turbo.dataHandler\` for a set of ${int(d.rows)} rows over HTTP (keep-alive): the first GET reads and caches it ` +
        `(${ms(d.firstGetMs)} ms, ${int(d.firstGetBytes)} bytes); a conditional GET with its ETag is answered 304 from the ` +
        `cache in ${ms(d.etagHitP50Ms)} ms p50 (${ms(d.etagHitP99Ms)} ms p99) including the round trip, ` +
        `${d.handlerHitP50Us.toFixed(1)} µs p50 in the handler itself.`,
      "",
    );
  }

  if (results.missing.length > 0) {
    out.push("## Not measured", "");
    for (const m of results.missing) out.push(`- ${m}`);
    out.push("");
  }
  out.push("## What limits these numbers", "");
  for (const n of [...new Set(results.fanout.filter((c) => c.target === "raw-tcp").map((c) => c.n))].sort(
    (a, b) => a - b,
  )) {
    const floor = find(results, "raw-tcp", n);
    const bare = find(results, "bare-ws", n);
    const sio = find(results, "socketio", n);
    const tc = find(results, "tc-ws", n);
    if (!floor) continue;
    const parts = [
      `- N = ${int(n)}: one \`write()\` per subscriber (raw TCP) takes ${ms(floor.p50)} ms, ${ms((floor.cpu / n) * 1000)} µs of CPU per subscriber`,
    ];
    if (bare) parts.push(`bare ws is ${times(bare.p50 / floor.p50)} that floor`);
    if (sio) parts.push(`Socket.IO ${times(sio.p50 / floor.p50)}`);
    if (tc) parts.push(`turbocast WS ${times(tc.p50 / floor.p50)}`);
    out.push(`${parts.join(", ")}.`);
  }
  out.push(
    "",
    "On this machine most of a broadcast's time is the kernel's: each subscriber costs one system call that also " +
      "carries the data through loopback TCP into the receiving socket. What a server adds on top is its own " +
      "per-subscriber work, which the *server CPU* column shows best (it is also what sets the throughput). The " +
      "subscribers' process reads and parses every message too; its clients are hand-written parsers over plain sockets " +
      "(bench/lib/wire.ts) so that it keeps up with the fastest server and publish-to-last-delivery measures the server.",
    "",
  );
  out.push("## Notes", "");
  const worstClock = Math.max(
    ...results.clock.flatMap((c) => [Math.abs(c.server.offset), Math.abs(c.clients.offset)]),
    0,
  );
  const worstUnc = Math.max(...results.clock.flatMap((c) => [c.server.uncertainty, c.clients.uncertainty]), 0);
  out.push(
    `- Clock offsets between processes, measured and corrected: at most ${worstClock.toFixed(3)} ms (± ${worstUnc.toFixed(3)} ms).`,
  );
  out.push(
    "- Each server runs with its defaults for keeping connections alive: turbocast pings WebSocket subscribers and writes " +
      "an SSE comment every 15 s, Socket.IO pings every 25 s, the bare ws and raw TCP servers send nothing. Those bursts " +
      "(N writes each) are part of running each server and may land in a measurement.",
    "- Subscribers, all in one process per server and the same code for every server: a minimal WebSocket client over " +
      "`net` (frames parsed by hand, pings answered) for the WebSocket servers, raw Engine.IO packets over it for " +
      "Socket.IO, an HTTP/1.1 GET whose chunks are split into events by hand for SSE, length-prefixed reads for raw TCP; " +
      "turbocast's subscribe to the signed URLs of a `<turbo-stream-source>` the app rendered. (Before they replaced " +
      "`ws` and `http` clients, the subscriber process was the slower half at 5,000 and 10,000: the fastest servers' " +
      "last delivery waited on it.)",
  );
  for (const n of results.notes) out.push(`- ${n}`);
  out.push("");
  return out.join("\n");
}
