import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { type Browser, chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const hasChromium = existsSync(CHROMIUM);

/**
 * Browser tests never skip in CI (.ci/run installs Debian's chromium); outside
 * CI they skip only when no Chromium exists, and say so loudly.
 */
export function browserTestsEnabled(): boolean {
  if (hasChromium) return true;
  if (process.env.CI) throw new Error(`CI: no Chromium at ${CHROMIUM}; .ci/run installs it (apt-get install chromium)`);
  console.warn(
    `\n*** SKIPPING BROWSER TESTS: no Chromium at ${CHROMIUM}. Install it with: apt-get install -y chromium ***\n`,
  );
  return false;
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-sync",
      "--disable-quic",
    ],
  });
}

export const outputDir = path.resolve("test-output");
export function ensureOutputDir(): string {
  mkdirSync(outputDir, { recursive: true });
  return outputDir;
}
