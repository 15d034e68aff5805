import type { MemorySample } from "../procs/server.js";
import { sleep } from "../lib/clock.js";
import type { BroadcastSample, Target } from "../lib/target.js";
import { nextId } from "../lib/ids.js";
import { log } from "../lib/log.js";

export interface FanoutOptions {
  /** Unrecorded broadcasts per target and N, first. */
  warmup: number;
  /** Rounds; in each, every target gets `perRound` broadcasts, in a rotating order. */
  rounds: number;
  perRound: number;
}

export interface FanoutCell {
  target: string;
  n: number;
  samples: BroadcastSample[];
  /** Server CPU per broadcast, ms (process.cpuUsage across the recorded broadcasts). */
  cpuPerBroadcast: number;
  incomplete: number;
  connectMs: number;
  connectFailures: number;
}

export interface MemoryCell {
  target: string;
  n: number;
  baseline: MemorySample;
  loaded: MemorySample;
}

/**
 * Fan-out at each N, largest first, every target side by side: the targets
 * measured at an N all hold N idle subscribers at once (each in its own
 * server and client processes) and take turns broadcasting, round after
 * round, so a noisy neighbour on this shared machine hits them alike.
 * A target's idle memory is read when it first reaches its largest N,
 * before it has broadcast anything.
 */
export async function runFanout(
  targets: Target[],
  options: FanoutOptions,
  hooks: { afterStage?: (n: number, active: Target[]) => Promise<void> } = {},
): Promise<{ cells: FanoutCell[]; memory: MemoryCell[] }> {
  const ns = [...new Set(targets.flatMap((t) => t.spec.ns))].sort((a, b) => b - a);
  const cells: FanoutCell[] = [];
  const memory: MemoryCell[] = [];
  const measuredMemory = new Set<string>();
  for (const n of ns) {
    const active = targets.filter((t) => t.spec.ns.includes(n));
    const connect = new Map<string, { ms: number; failed: number }>();
    // release the targets that are done, so they hold no sockets
    for (const t of targets) if (!active.includes(t) && t.size > 0 && Math.max(...t.spec.ns) > n) await t.resize(0);
    for (const t of active) {
      log(`  ${t.spec.label}: connecting ${n} subscribers`);
      const result = await t.resize(n);
      if (result.failed > 0) log(`    ${result.failed} connections failed: ${result.errors.join("; ")}`);
      connect.set(t.spec.key, result);
      if (!measuredMemory.has(t.spec.key)) {
        measuredMemory.add(t.spec.key);
        memory.push({ target: t.spec.key, n: t.size, baseline: t.baseline!, loaded: await t.memory() });
      }
    }
    for (const t of active) for (let i = 0; i < options.warmup; i++) await t.broadcast(nextId());
    const byTarget = new Map<string, { samples: BroadcastSample[]; cpu: number }>(
      active.map((t) => [t.spec.key, { samples: [], cpu: 0 }]),
    );
    for (let round = 0; round < options.rounds; round++) {
      for (let k = 0; k < active.length; k++) {
        const t = active[(k + round) % active.length]!;
        const cell = byTarget.get(t.spec.key)!;
        const cpu0 = await t.cpu();
        for (let i = 0; i < options.perRound; i++) {
          cell.samples.push(await t.broadcast(nextId()));
          await sleep(5);
        }
        cell.cpu += (await t.cpu()) - cpu0;
      }
    }
    for (const t of active) {
      const { samples, cpu } = byTarget.get(t.spec.key)!;
      const c = connect.get(t.spec.key)!;
      cells.push({
        target: t.spec.key,
        n: t.size,
        samples,
        cpuPerBroadcast: cpu / samples.length,
        incomplete: samples.filter((s) => s.count < t.size).length,
        connectMs: c.ms,
        connectFailures: c.failed,
      });
    }
    await hooks.afterStage?.(n, active);
  }
  return { cells, memory };
}
