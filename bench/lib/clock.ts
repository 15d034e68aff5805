/**
 * Wall-clock milliseconds with sub-millisecond precision, comparable across
 * processes on one machine: every process's `performance.timeOrigin` is the
 * system clock at its start, and `performance.now()` the monotonic time since.
 * The orchestrator still measures each child's offset (see `Child.clockOffset`)
 * and corrects for it, so a skew between two processes cannot pose as latency.
 */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
