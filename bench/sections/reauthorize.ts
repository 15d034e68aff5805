import Database from "better-sqlite3";
import { LogThrottle } from "../../src/log-throttle.js";
import type { Connection } from "../../src/delivery/connection.js";
import { ConnectionRegistry } from "../../src/delivery/connection-registry.js";
import { LiveAuthorization, recheckSlots } from "../../src/delivery/live-authorization.js";
import { Stream } from "../../src/streams/stream.js";
import { StreamRegistry } from "../../src/streams/registry.js";
import { median } from "../lib/stats.js";
import type { ReauthorizeCost } from "../lib/results.js";

const silent = { info() {}, warn() {}, error() {} };

/** A row of the check's table per user: what a membership lookup reads. */
const members = new Database(":memory:");
members.exec("create table members (room integer, user integer, primary key (room, user)) without rowid");
const isMember = members.prepare("select 1 from members where room = ? and user = ?").pluck();

/** A check that costs nothing: the re-check's own overhead (slot, resolve, promise, verdict). */
class TrivialStream extends Stream {
  override userPassesTest(user: unknown): boolean {
    return user !== null;
  }
}

/** A check that does what an app's usually does: one primary-key lookup in SQLite. */
class LookupStream extends Stream {
  override userPassesTest(user: unknown): boolean {
    return isMember.get(Number(this.parts[0]), (user as { id: number }).id) === 1;
  }
}

/** One connection as the re-check sees it: open, never closed (every check passes). */
const openConnection = (): Connection => ({ state: "open" }) as unknown as Connection;

/**
 * The CPU one round of the periodic re-check costs: `subscriptions` live
 * subscriptions (one stream each) checked once, slot by slot as the timer
 * does over one `reauthorizeMs`, in this process. Measured with a trivial
 * `userPassesTest` (the re-check's own cost) and with one SQLite lookup per
 * check (a membership test). The publish path is not touched by any of it.
 */
export async function runReauthorizeCost(options: { subscriptions: number; rounds: number }): Promise<ReauthorizeCost> {
  const reauthorizeMs = 60_000;
  const slots = recheckSlots(reauthorizeMs);
  const insert = members.prepare("insert or ignore into members (room, user) values (?, ?)");
  members.transaction(() => {
    for (let i = 0; i < options.subscriptions; i++) insert.run(i % 500, i);
  })();
  const measure = async (cls: typeof Stream, prefix: string): Promise<number[]> => {
    const registry = new StreamRegistry();
    registry.register(cls);
    const connections = new ConnectionRegistry({ slots });
    for (let i = 0; i < options.subscriptions; i++) {
      connections.add(openConnection(), {
        streams: [`named:${prefix}:${i % 500}`],
        user: { id: i },
        userKey: String(i),
      });
    }
    const access = new LiveAuthorization({
      connections,
      registry,
      log: new LogThrottle(silent),
      reauthorizeMs,
      expiring: false,
      position: () => null,
    });
    const cpu: number[] = [];
    for (let round = 0; round < options.rounds + 1; round++) {
      const before = process.cpuUsage();
      let closed = 0;
      for (let slot = 0; slot < slots; slot++) closed += await access.recheckNextSlot();
      const used = process.cpuUsage(before);
      if (closed !== 0) throw new Error(`the re-check closed ${closed} subscriptions that pass`);
      // the first round warms the JIT and the statement
      if (round > 0) cpu.push((used.user + used.system) / 1000);
    }
    return cpu;
  };
  const trivial = await measure(TrivialStream, "trivial");
  const lookup = await measure(LookupStream, "lookup");
  return {
    subscriptions: options.subscriptions,
    reauthorizeMs,
    slots,
    trivialMs: trivial,
    lookupMs: lookup,
    trivialMedianMs: median(trivial),
    lookupMedianMs: median(lookup),
  };
}
