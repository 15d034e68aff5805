import { nextId } from "../lib/ids.js";
import { log } from "../lib/log.js";
import type { EndToEndRun, RenderCost } from "../lib/results.js";
import type { BroadcastSample, Target } from "../lib/target.js";
import { sleep } from "../lib/clock.js";

/**
 * End to end: a Drizzle insert into a bound table (the trigger logs it, the
 * change feed claims it, MessageStream.onSave renders the message template
 * and appends it to the room's stream) until the last subscriber has the
 * frame; alternated with a broadcastRaw of an already built frame on the
 * same server and subscribers, so both see the same conditions. With
 * several apps (SQLite and PostgreSQL, each holding its own subscribers at
 * once), they take turns sample by sample, in a rotating order.
 */
export async function runEndToEnd(
  apps: Target[],
  options: { warmup: number; samples: number },
): Promise<Map<string, EndToEndRun>> {
  for (let i = 0; i < options.warmup; i++) {
    for (const app of apps) {
      await app.broadcast(nextId(), 15_000, "insert");
      await app.broadcast(nextId());
    }
  }
  const runs = new Map(
    apps.map((app) => [app.spec.key, { n: app.size, samples: [], fanoutSamples: [] } as EndToEndRun]),
  );
  for (let i = 0; i < options.samples; i++) {
    for (let k = 0; k < apps.length; k++) {
      const app = apps[(k + i) % apps.length]!;
      const run = runs.get(app.spec.key)!;
      run.samples.push(await app.broadcast(nextId(), 15_000, "insert"));
      await sleep(5);
      run.fanoutSamples.push(await app.broadcast(nextId()));
      await sleep(5);
    }
  }
  for (const app of apps) {
    const run = runs.get(app.spec.key)!;
    const incomplete = [...run.samples, ...run.fanoutSamples].filter((s) => s.count < app.size).length;
    if (incomplete > 0) log(`  end to end, ${app.spec.label}: ${incomplete} broadcasts did not reach every subscriber`);
  }
  return runs;
}

/** Template renders while `count` `append` broadcasts (which render) go to the target's current subscribers. */
export async function runRenderCost(tc: Target, count: number): Promise<RenderCost> {
  await tc.broadcast(nextId(), 15_000, "append"); // the template is compiled on first use
  const before = await tc.server.request<number>("renders");
  const samples: BroadcastSample[] = [];
  for (let i = 0; i < count; i++) {
    samples.push(await tc.broadcast(nextId(), 15_000, "append"));
    await sleep(5);
  }
  const renders = (await tc.server.request<number>("renders")) - before;
  return { n: tc.size, broadcasts: count, renders, samples };
}
