import { sleep } from "../lib/clock.js";
import { reserveIds } from "../lib/ids.js";
import { log } from "../lib/log.js";
import { median } from "../lib/stats.js";
import type { Target } from "../lib/target.js";

export interface ThroughputOptions {
  /** First offered rate, broadcasts/s. */
  startRate: number;
  /** Each step multiplies the rate by this. */
  factor: number;
  /** Length of one step's window, ms. */
  windowMs: number;
  /** Stop ramping past this rate. */
  maxRate: number;
  /** How far the lag may grow across a window before the target counts as behind, ms. */
  maxLagGrowthMs: number;
  /** The most the lag of the window's last quarter may be at all, ms (a standing queue is behind too). */
  maxLagMs: number;
}

export interface ThroughputStep {
  rate: number;
  ok: boolean;
  /** Median lag (scheduled publish -> last delivery) of the first and last quarter of the window, ms. */
  lagStart: number;
  lagEnd: number;
  incomplete: number;
  /** CPU use of the server and of the client process over the step (1 = one core). */
  serverCpu: number;
  clientCpu: number;
}

export interface ThroughputResult {
  target: string;
  n: number;
  /** Highest offered rate every subscriber kept up with. */
  sustained: number;
  steps: ThroughputStep[];
}

/**
 * Raises the publish rate step by step until delivery falls behind: some
 * broadcast does not reach every subscriber, or the lag of the window's last
 * quarter exceeds its first quarter's by more than `maxLagGrowthMs` (a queue
 * that grows) or `maxLagMs` at all (a queue that stands). A failed step is tried once more before a target is done, so a
 * single noisy moment does not end its ramp. Targets take turns per step.
 */
export async function runThroughput(targets: Target[], options: ThroughputOptions): Promise<ThroughputResult[]> {
  const results = new Map<string, ThroughputResult>(
    targets.map((t) => [t.spec.key, { target: t.spec.key, n: t.size, sustained: 0, steps: [] }]),
  );
  const running = new Set(targets);
  for (
    let rate = options.startRate;
    running.size > 0 && rate <= options.maxRate;
    rate = Math.round(rate * options.factor)
  ) {
    for (const t of [...running]) {
      const result = results.get(t.spec.key)!;
      let step: ThroughputStep | null = null;
      for (let attempt = 0; attempt < 2; attempt++) {
        step = await oneStep(t, rate, options);
        result.steps.push(step);
        if (step.ok) break;
      }
      log(
        `  ${t.spec.label} @ ${rate}/s: ${step!.ok ? "keeps up" : "falls behind"} ` +
          `(lag ${step!.lagStart.toFixed(1)} -> ${step!.lagEnd.toFixed(1)} ms, server cpu ${(step!.serverCpu * 100).toFixed(0)}%, client cpu ${(step!.clientCpu * 100).toFixed(0)}%)`,
      );
      if (step!.ok) result.sustained = rate;
      else running.delete(t);
      await sleep(200);
    }
  }
  return [...results.values()];
}

async function oneStep(t: Target, rate: number, options: ThroughputOptions): Promise<ThroughputStep> {
  const count = Math.max(8, Math.round((rate * options.windowMs) / 1000));
  const firstId = reserveIds(count);
  const drainMs = options.windowMs + 3_000;
  const { lags, serverCpu, clientCpu } = await t.burst(firstId, count, rate, drainMs);
  const quarter = Math.max(1, Math.floor(count / 4));
  const complete = lags.filter((l) => Number.isFinite(l));
  const incomplete = lags.length - complete.length;
  const lagStart = median(lags.slice(0, quarter).filter(Number.isFinite));
  const lagEnd = median(lags.slice(-quarter).filter(Number.isFinite));
  const ok = incomplete === 0 && lagEnd - lagStart <= options.maxLagGrowthMs && lagEnd <= options.maxLagMs;
  return { rate, ok, lagStart, lagEnd, incomplete, serverCpu, clientCpu };
}
