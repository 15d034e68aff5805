import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { now } from "./clock.js";

/**
 * A tiny request/response protocol over Node's IPC channel between the
 * orchestrator (bench/run.ts) and its child processes (servers and clients).
 * Requests are `{ id, cmd, args }`, answers `{ id, ok, value | error }`;
 * children may also send unsolicited `{ event, data }` messages.
 */
interface Request {
  id: number;
  cmd: string;
  args: unknown;
}
type Answer = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };
interface EventMessage {
  event: string;
  data: unknown;
}

export type Handler = (args: never) => unknown;

/**
 * Child side: answers the parent's requests with `handlers` and exits when
 * the parent goes away (so nothing outlives a crashed or interrupted run).
 */
export function serve(handlers: Record<string, Handler>): void {
  if (!process.send) throw new Error("this script runs as a child of bench/run.ts (it needs an IPC channel)");
  const all: Record<string, Handler> = {
    clock: () => now(),
    /** CPU time this process has used, user + system, in ms. */
    cpu: () => {
      const usage = process.cpuUsage();
      return (usage.user + usage.system) / 1000;
    },
    exit: () => {
      setImmediate(() => process.exit(0));
      return true;
    },
    ...handlers,
  };
  process.on("message", (message: Request) => {
    const handler = all[message.cmd];
    const reply = (answer: Answer): void => {
      process.send?.(answer);
    };
    if (!handler) {
      reply({ id: message.id, ok: false, error: `unknown command ${message.cmd}` });
      return;
    }
    Promise.resolve()
      .then(() => (handler as (args: unknown) => unknown)(message.args))
      .then(
        (value) => reply({ id: message.id, ok: true, value: value ?? null }),
        (error: unknown) =>
          reply({
            id: message.id,
            ok: false,
            error: error instanceof Error ? (error.stack ?? error.message) : String(error),
          }),
      );
  });
  process.on("disconnect", () => process.exit(0));
  process.send({ event: "ready", data: null });
}

/** Child side: an unsolicited message to the parent. */
export function emit(event: string, data: unknown): void {
  process.send?.({ event, data } satisfies EventMessage);
}

export interface SpawnOptions {
  /** Shown in errors. */
  name: string;
  /** Extra node flags, e.g. `--expose-gc`. */
  nodeFlags?: string[];
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

/** Parent side: one child process running a TypeScript entry under tsx. */
export class Child {
  readonly name: string;
  #proc: ChildProcess;
  #nextId = 1;
  #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #listeners = new Map<string, Set<(data: unknown) => void>>();
  #exited: Promise<number | null>;
  #state: "starting" | "open" | "closed" = "starting";
  /** This child's clock minus ours, in ms (see `calibrate`). */
  clockOffset = 0;
  /** Half the round trip of the best calibration sample: the offset's uncertainty. */
  clockUncertainty = Number.NaN;

  private constructor(name: string, proc: ChildProcess) {
    this.name = name;
    this.#proc = proc;
    this.#exited = new Promise((resolve) => proc.once("exit", (code) => resolve(code)));
    proc.on("message", (message: Answer | EventMessage) => {
      if ("event" in message) {
        for (const listener of this.#listeners.get(message.event) ?? []) listener(message.data);
        return;
      }
      const pending = this.#pending.get(message.id);
      if (!pending) return;
      this.#pending.delete(message.id);
      if (message.ok) pending.resolve(message.value);
      else pending.reject(new Error(`${this.name}: ${message.error}`));
    });
    proc.once("exit", (code, signal) => {
      this.#state = "closed";
      for (const pending of this.#pending.values()) {
        pending.reject(new Error(`${this.name} exited (code ${code}, signal ${signal})`));
      }
      this.#pending.clear();
    });
  }

  /**
   * Starts `script` (a path relative to bench/) under `node --import tsx`,
   * through bash so the file-descriptor limit can be raised to the hard
   * limit first (10,000 sockets need 10,000 descriptors in each process).
   */
  static async spawn(script: string, options: SpawnOptions): Promise<Child> {
    const entry = fileURLToPath(new URL(`../${script}`, import.meta.url));
    const node = [process.execPath, ...(options.nodeFlags ?? []), "--import", "tsx", entry, ...(options.args ?? [])];
    const proc = spawn("bash", ["-c", 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', "bash", ...node], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      env: { ...process.env, ...options.env },
    });
    const child = new Child(options.name, proc);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${options.name} did not start within 30 s`)), 30_000);
      child.once("ready", () => {
        clearTimeout(timer);
        child.#state = "open";
        resolve();
      });
      void child.#exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${options.name} exited during start (code ${code})`));
      });
    });
    return child;
  }

  request<T = unknown>(cmd: string, args: unknown = null, timeoutMs = 120_000): Promise<T> {
    if (this.#state === "closed") return Promise.reject(new Error(`${this.name} has exited`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`${this.name}: ${cmd} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.#proc.send({ id, cmd, args } satisfies Request);
    });
  }

  on(event: string, listener: (data: unknown) => void): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  once(event: string, listener: (data: unknown) => void): void {
    const off = this.on(event, (data) => {
      off();
      listener(data);
    });
  }

  /**
   * Estimates this child's clock offset NTP-style: the sample with the
   * shortest round trip bounds the error by half that round trip.
   */
  async calibrate(samples = 25): Promise<void> {
    let best = Number.POSITIVE_INFINITY;
    for (let i = 0; i < samples; i++) {
      const t0 = now();
      const remote = await this.request<number>("clock");
      const t1 = now();
      if (t1 - t0 < best) {
        best = t1 - t0;
        this.clockOffset = remote - (t0 + t1) / 2;
        this.clockUncertainty = best / 2;
      }
    }
  }

  /** Asks the child to exit; kills it if it has not within 5 s. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.#state === "closed") return;
    this.request("exit", null, 5_000).catch(() => {});
    const timer = setTimeout(() => this.#proc.kill("SIGKILL"), 5_000);
    await this.#exited;
    clearTimeout(timer);
  }
}
