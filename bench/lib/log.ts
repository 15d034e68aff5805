const started = Date.now();

/** Progress on stderr, with seconds since the run began. */
export function log(message: string): void {
  process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s] ${message}\n`);
}
