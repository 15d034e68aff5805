import { randomBytes } from "node:crypto";
import { readFileSync, readlinkSync } from "node:fs";
import os from "node:os";

/**
 * Who holds a claim on the change log:
 * `<host>/<boot id>/<pid namespace>/<pid>/<nonce>`, a fresh nonce per feed.
 * A pid means one process only on one running kernel (the boot id, which
 * Linux draws at random at every boot, tells two machines with the same
 * hostname apart — and this boot from the last) and in one pid namespace
 * (containers sharing a hostname). Where either is unknown ("-", not
 * Linux), no pid is ever looked up.
 */
export function newOwner(): string {
  return `${os.hostname()}/${MACHINE.bootId}/${MACHINE.pidNamespace}/${process.pid}/${randomBytes(4).toString("hex")}`;
}

const MACHINE = ((): { bootId: string; pidNamespace: string } => {
  const read = (fn: () => string): string => {
    try {
      return fn().trim().replaceAll("/", "_") || "-";
    } catch {
      return "-";
    }
  };
  return {
    bootId: read(() => readFileSync("/proc/sys/kernel/random/boot_id", "utf8")),
    pidNamespace: read(() => readlinkSync("/proc/self/ns/pid")),
  };
})();

/**
 * Whether the process behind a claim may still be running. Only a claim
 * made on this host, this boot, in this pid namespace, by a pid that no
 * longer exists is known dead; anything else — another machine, an owner
 * in an older format, a pid that exists (even reused by another program, or
 * a dead process its parent has not reaped yet) — counts as alive, and its
 * claim is taken over only when its lease runs out.
 */
export function ownerMayBeAlive(owner: string): boolean {
  const parts = owner.split("/");
  if (parts.length !== 5) return true;
  const [host, bootId, namespace, pidText] = parts as [string, string, string, string, string];
  if (bootId === "-" || namespace === "-") return true;
  if (host !== os.hostname() || bootId !== MACHINE.bootId || namespace !== MACHINE.pidNamespace) return true;
  const pid = Number(pidText);
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, under another user
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}
