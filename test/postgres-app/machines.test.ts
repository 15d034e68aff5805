/**
 * Several machines, for real: three app processes, each in a network
 * namespace of its own (its own host address on a veth pair), each reaching
 * the one PostgreSQL server over TCP (through a forwarder on its pair's other
 * end: the server listens on 127.0.0.1 only), with SSE clients on each. A
 * write through one app and writes through psql reach every client exactly
 * once, and each change's hook runs exactly once across the machines.
 *
 * Needs `ip netns` (root, CAP_NET_ADMIN): where it is not permitted the test
 * is skipped with a loud message — never in CI, where it fails instead.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import path from "node:path";
import { EventSource } from "eventsource";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dropPostgresNamespace, inCI } from "../brokers/servers.js";
import type { MachineConfig } from "../fixtures/netns-app-worker.js";
import { unescapeHtml, waitFor } from "../helpers.js";
import { createTestSchema, type TestSchema } from "./pg-helpers.js";

const root = path.resolve(import.meta.dirname, "..", "..");
const FIXTURE = path.join(import.meta.dirname, "..", "fixtures", "netns-app-worker.ts");
const SECRET = "machines-test-secret-0123456789abcdef";
const MACHINES = 3;
const tag = randomBytes(2).toString("hex");
const octet = 100 + (randomBytes(1)[0]! % 150);

const ip = (...args: string[]) => spawnSync("ip", args, { encoding: "utf8" });

/** Whether this process may make network namespaces (tried once, undone at once). */
function netnsPermitted(): string | null {
  const probe = `tcprobe${tag}`;
  const added = ip("netns", "add", probe);
  if (added.status !== 0) return added.stderr.trim() || `ip exited with ${added.status}`;
  ip("netns", "delete", probe);
  return null;
}

const refusal = process.platform === "linux" ? netnsPermitted() : "not Linux";
if (refusal) {
  console.warn(
    `\n*** SKIPPED test/postgres-app/machines.test.ts: network namespaces are not permitted here (${refusal}). ***\n` +
      "*** The several-machines test needs root with CAP_NET_ADMIN (ip netns). ***\n",
  );
}

interface Machine {
  index: number;
  ns: string;
  host: string;
  child: ChildProcess;
  port: number;
  hooks: Array<{ id: number; body: string; position: string }>;
  stderr: () => string;
  request(op: { op: "insert"; roomId: number; body: string } | { op: "close" }): Promise<unknown>;
  exited: Promise<unknown>;
}

let schema: TestSchema;
const brokerPrefix = `tc_machines_${tag}`;
const machines: Machine[] = [];
const forwarders: net.Server[] = [];
const sockets = new Set<net.Socket>();
const sources: EventSource[] = [];

/** A veth pair between the root namespace (10.O.i.1) and a new namespace (10.O.i.2). */
function makeNamespace(i: number): { ns: string; host: string; gateway: string } {
  const ns = `tcns${tag}${i}`;
  const outside = `tcv${tag}${i}a`;
  const inside = `tcv${tag}${i}b`;
  const gateway = `10.${octet}.${i}.1`;
  const host = `10.${octet}.${i}.2`;
  const steps = [
    ["netns", "add", ns],
    ["link", "add", outside, "type", "veth", "peer", "name", inside],
    ["link", "set", inside, "netns", ns],
    ["addr", "add", `${gateway}/24`, "dev", outside],
    ["link", "set", outside, "up"],
    ["netns", "exec", ns, "ip", "addr", "add", `${host}/24`, "dev", inside],
    ["netns", "exec", ns, "ip", "link", "set", inside, "up"],
    ["netns", "exec", ns, "ip", "link", "set", "lo", "up"],
  ];
  for (const step of steps) {
    const result = ip(...step);
    if (result.status !== 0) throw new Error(`ip ${step.join(" ")}: ${result.stderr}`);
  }
  return { ns, host, gateway };
}

/** Forwards TCP from `gateway`:port (reachable from the namespace) to the PostgreSQL server on 127.0.0.1:5432. */
async function forwarder(gateway: string): Promise<number> {
  const target = new URL(schema.url);
  const server = net.createServer((socket) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    for (const s of [socket, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        socket.destroy();
        upstream.destroy();
      });
    }
    socket.pipe(upstream).pipe(socket);
  });
  forwarders.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, gateway, () => resolve());
  });
  return (server.address() as net.AddressInfo).port;
}

function startMachine(index: number, ns: string, host: string, config: MachineConfig): Machine {
  const child = spawn(
    "ip",
    ["netns", "exec", ns, process.execPath, "--import", "tsx", FIXTURE, "serve", JSON.stringify(config)],
    {
      cwd: root,
      stdio: ["ignore", "ignore", "pipe", "ipc"],
    },
  );
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  let rid = 0;
  const pending = new Map<number, (value: unknown) => void>();
  const machine: Machine = {
    index,
    ns,
    host,
    child,
    port: 0,
    hooks: [],
    stderr: () => stderr,
    request(op) {
      const id = ++rid;
      return new Promise((resolve) => {
        pending.set(id, resolve);
        child.send({ rid: id, ...op });
      });
    },
    exited: new Promise((resolve) => child.once("exit", resolve)),
  };
  child.on(
    "message",
    (message: { event?: string; rid?: number; port?: number; value?: unknown } & Record<string, unknown>) => {
      if (message.rid !== undefined) {
        pending.get(message.rid)?.(message.value);
        pending.delete(message.rid);
      } else if (message.event === "ready") machine.port = message.port!;
      else if (message.event === "hook") machine.hooks.push(message as never);
    },
  );
  return machine;
}

/** An SSE client on a machine's room page stream; collects the frames it receives. */
async function client(machine: Machine): Promise<string[]> {
  const base = `http://${machine.host}:${machine.port}`;
  const html = await (await fetch(`${base}/rooms/1`)).text();
  const src = /<turbo-stream-source src="([^"]*)"/.exec(html)?.[1];
  if (!src) throw new Error(`machine ${machine.index}: no <turbo-stream-source> in ${html}`);
  const frames: string[] = [];
  const source = new EventSource(`${base}${unescapeHtml(src)}`);
  sources.push(source);
  source.onmessage = (event) => frames.push(event.data);
  await new Promise<void>((resolve, reject) => {
    source.addEventListener("open", () => resolve(), { once: true });
    source.addEventListener("error", () => reject(new Error(`client of machine ${machine.index} failed`)), {
      once: true,
    });
  });
  return frames;
}

describe.skipIf(refusal !== null && !inCI)("PostgreSQL apps on several machines (network namespaces)", () => {
  beforeAll(async () => {
    if (refusal) throw new Error(`network namespaces are required in CI: ${refusal}`);
    schema = await createTestSchema("tcmach");
    await schema.admin.query(`
      SET search_path = "${schema.name}";
      CREATE TABLE rooms (id integer PRIMARY KEY, name text NOT NULL);
      CREATE TABLE messages (id serial PRIMARY KEY, room_id integer NOT NULL, body text NOT NULL);
      INSERT INTO rooms VALUES (1, 'General');`);
    const target = new URL(schema.url);
    for (let i = 0; i < MACHINES; i++) {
      const { ns, host, gateway } = makeNamespace(i);
      const port = await forwarder(gateway);
      const databaseUrl = `postgres://${target.username || "postgres"}@${gateway}:${port}${target.pathname}`;
      machines.push(
        startMachine(i, ns, host, {
          worker: i,
          host,
          databaseUrl,
          searchPath: schema.name,
          brokerPrefix,
          secret: SECRET,
        }),
      );
    }
    for (const m of machines) await waitFor(() => m.port > 0, { timeoutMs: 30_000, message: m.stderr() });
  }, 60_000);

  afterAll(async () => {
    for (const source of sources) source.close();
    for (const m of machines) {
      if (m.child.exitCode === null) await Promise.race([m.request({ op: "close" }), m.exited]);
    }
    for (const m of machines) if (m.child.exitCode === null) m.child.kill("SIGKILL");
    for (const s of sockets) s.destroy();
    for (const server of forwarders) server.close();
    for (let i = 0; i < MACHINES; i++) {
      ip("link", "delete", `tcv${tag}${i}a`);
      ip("netns", "delete", `tcns${tag}${i}`);
    }
    if (schema) {
      await dropPostgresNamespace(schema.url, brokerPrefix).catch(() => {});
      await schema.drop();
    }
  }, 60_000);

  it("gives every client on every machine every frame exactly once: writes through one machine and through psql", async () => {
    const received: string[][] = [];
    for (const m of machines) for (let c = 0; c < 2; c++) received.push(await client(m));
    const bodies: string[] = [];
    for (let n = 0; n < 3; n++) {
      bodies.push(`via machine 0 #${n}`);
      await machines[0]!.request({ op: "insert", roomId: 1, body: `via machine 0 #${n}` });
    }
    for (let n = 0; n < 2; n++) {
      bodies.push(`via psql #${n}`);
      const result = spawnSync(
        "psql",
        [
          schema.url,
          "-v",
          "ON_ERROR_STOP=1",
          "-q",
          "-c",
          `INSERT INTO "${schema.name}".messages (room_id, body) VALUES (1, 'via psql #${n}')`,
        ],
        { encoding: "utf8" },
      );
      expect(result.status, result.stderr).toBe(0);
    }
    await waitFor(() => received.every((frames) => frames.length >= bodies.length), {
      timeoutMs: 20_000,
      message: `frames per client: ${received.map((f) => f.length).join(", ")}`,
    });
    for (const frames of received) {
      const got = frames.map((f) => /<li id="message_\d+">([^<]*)<\/li>/.exec(f)?.[1]);
      expect([...got].sort()).toEqual([...bodies].sort());
    }
    // a machine reports its hook over IPC after the hook's broadcast, which may reach the clients first
    await waitFor(() => machines.flatMap((m) => m.hooks).length >= bodies.length, {
      timeoutMs: 10_000,
      message: `hooks per machine: ${machines.map((m) => m.hooks.length).join(", ")}`,
    });
    const hooks = machines.flatMap((m) => m.hooks);
    expect(hooks.map((h) => h.body).sort()).toEqual([...bodies].sort());
    console.log(`[machines] hooks ran on machines ${machines.map((m) => m.hooks.length).join(" + ")}`);
  }, 60_000);
});
