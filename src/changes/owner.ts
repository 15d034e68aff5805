import { randomBytes } from "node:crypto";
import { readlinkSync } from "node:fs";
import os from "node:os";

/**
 * Who holds a claim on the change log: `<host>/<pid namespace>/<pid>/<nonce>`,
 * a fresh nonce per feed. The pid namespace (Linux: the target of
 * /proc/self/ns/pid, "-" elsewhere) tells two containers that share a
 * hostname apart, so a pid is only ever looked up where it means the same
 * process.
 */
export function newOwner(): string {
  return `${os.hostname()}/${PID_NAMESPACE}/${process.pid}/${randomBytes(4).toString("hex")}`;
}

const PID_NAMESPACE = ((): string => {
  try {
    return readlinkSync("/proc/self/ns/pid").replaceAll("/", "_");
  } catch {
    return "-";
  }
})();

/**
 * Whether the process behind a claim may still be running. Only a claim
 * made on this host, in this pid namespace, by a pid that no longer exists
 * is known dead; anything else (another host, an old owner format, a pid
 * that exists — even if reused by another program) counts as alive, and
 * its claim is taken over only when its lease runs out.
 */
export function ownerMayBeAlive(owner: string): boolean {
  const parts = owner.split("/");
  if (parts.length !== 4) return true;
  const [host, namespace, pidText] = parts as [string, string, string, string];
  if (namespace === "-" || namespace !== PID_NAMESPACE || host !== os.hostname()) return true;
  const pid = Number(pidText);
  if (!Number.isSafeInteger(pid) || pid <= 0) return true;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, under another user
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}
