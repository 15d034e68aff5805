let last = 0;

/** A broadcast id never used before in this run. */
export function nextId(): number {
  return ++last;
}

/** `count` consecutive fresh ids; returns the first. */
export function reserveIds(count: number): number {
  const first = last + 1;
  last += count;
  return first;
}
