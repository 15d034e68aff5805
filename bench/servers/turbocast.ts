import type { BenchServer } from "./types.js";

/** Placeholder until the delivery branch (turbo.listen, signed subscription URLs) is merged. */
export function turbocastServer(): BenchServer {
  throw new Error("the turbocast server needs turbo.listen() from the delivery branch");
}
