import type { Redis } from "ioredis";
import { sha1 } from "./redis-scripts.js";

/** EVALSHA, falling back to EVAL when Redis does not know the script (first use, or after a restart). */
export async function runScript(
  cmd: Redis,
  script: string,
  keys: string[],
  args: Array<string | number | Buffer>,
): Promise<unknown> {
  try {
    return await cmd.evalsha(sha1(script), keys.length, ...keys, ...args);
  } catch (error) {
    if (error instanceof Error && error.message.startsWith("NOSCRIPT")) {
      return await cmd.eval(script, keys.length, ...keys, ...args);
    }
    throw error;
  }
}

/** An error Redis itself answered with (a script error, OOM): the connection is fine. */
export function isReplyError(error: unknown): boolean {
  return error instanceof Error && error.name === "ReplyError";
}

/** Closes a connection now; resolves once its socket is gone (at most a second later, whatever happens). */
export function disconnect(connection: Redis): Promise<void> {
  // between attempts ('reconnecting') there is no socket: disconnect() just cancels the next attempt
  const hasSocket =
    connection.status === "connecting" || connection.status === "connect" || connection.status === "ready";
  if (!hasSocket) {
    connection.disconnect();
    return Promise.resolve();
  }
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 1_000);
    timer.unref();
    connection.once("end", () => {
      clearTimeout(timer);
      resolve();
    });
    connection.disconnect();
  });
}
