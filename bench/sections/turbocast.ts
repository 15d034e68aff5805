import { nextId } from "../lib/ids.js";
import { log } from "../lib/log.js";
import type { EndToEnd, RenderCost } from "../lib/results.js";
import type { BroadcastSample, Target } from "../lib/target.js";
import { sleep } from "../lib/clock.js";

/**
 * End to end: a Drizzle insert into a bound table (the trigger logs it, the
 * change feed claims it, MessageStream.onSave renders the message template
 * and appends it to the room's stream) until the last subscriber has the
 * frame; alternated with a broadcastRaw of an already built frame on the
 * same server and subscribers, so both see the same conditions.
 */
export async function runEndToEnd(tc: Target, options: { warmup: number; samples: number }): Promise<EndToEnd> {
  for (let i = 0; i < options.warmup; i++) {
    await tc.broadcast(nextId(), 15_000, "insert");
    await tc.broadcast(nextId());
  }
  const samples: BroadcastSample[] = [];
  const fanoutSamples: BroadcastSample[] = [];
  for (let i = 0; i < options.samples; i++) {
    samples.push(await tc.broadcast(nextId(), 15_000, "insert"));
    await sleep(5);
    fanoutSamples.push(await tc.broadcast(nextId()));
    await sleep(5);
  }
  const incomplete = [...samples, ...fanoutSamples].filter((s) => s.count < tc.size).length;
  if (incomplete > 0) log(`  end to end: ${incomplete} broadcasts did not reach every subscriber`);
  return { n: tc.size, samples, fanoutSamples };
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
