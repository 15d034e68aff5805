import cluster, { type Worker } from "node:cluster";
import { availableParallelism } from "node:os";
import { type Broker, postgresBroker, redisBroker } from "turbocast";
import { createChatApp } from "./app.js";
import { chatDatabaseUrl, databasePath, openDatabase, openPostgresDatabase } from "./db.js";

/**
 * `npm run start:cluster`: the demo on N worker processes (WORKERS, default
 * the number of cores) sharing one SQLite file (CHAT_DB) and port (PORT,
 * HOST) — or, with DATABASE_URL and no CHAT_DB, one PostgreSQL database and
 * no shared file at all. Frames cross workers through Redis (REDIS_URL,
 * default redis://127.0.0.1:6379) or, with BROKER=postgres (the default on
 * PostgreSQL), PostgreSQL (DATABASE_URL); BROKER_PREFIX names the broker's keys or tables (default
 * `turbocast`), so several apps can share one server. The change feed still
 * dispatches each write once, whichever worker claims it.
 *
 * A worker that dies while serving is replaced; one that fails before it
 * listens (broker unreachable, port taken) is not, and when none is left the
 * primary exits with status 1. SIGINT or SIGTERM stops every worker
 * gracefully (subscriptions ended, change feed and broker closed) before the
 * primary exits.
 */
const workers = Number(process.env.WORKERS ?? Math.max(2, availableParallelism()));
const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? "localhost";
const databaseUrl = chatDatabaseUrl();
const kind = process.env.BROKER ?? (databaseUrl ? "postgres" : "redis");
const prefix = process.env.BROKER_PREFIX;
/** How long the primary waits for its workers to close before killing them. */
const SHUTDOWN_GRACE_MS = 10_000;

if (!Number.isInteger(workers) || workers < 1)
  fail(`WORKERS must be a positive integer, not ${JSON.stringify(process.env.WORKERS)}`);
if (kind !== "redis" && kind !== "postgres") fail(`BROKER must be "redis" or "postgres", not ${JSON.stringify(kind)}`);

function fail(message: string): never {
  console.error(message);
  process.exit(1);
}

function broker(): Broker {
  if (kind === "postgres") {
    return postgresBroker({
      connectionString: process.env.DATABASE_URL ?? "postgres://127.0.0.1:5432/test",
      ...(prefix ? { prefix } : {}),
    });
  }
  return redisBroker({
    url: process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
    ...(prefix ? { keyPrefix: `${prefix}:` } : {}),
  });
}

if (cluster.isPrimary) {
  // migrate and seed once, before any worker opens the database
  if (databaseUrl) await (await openPostgresDatabase(databaseUrl)).pool.end();
  else openDatabase(databasePath()).sqlite.close();
  let stopping = false;
  let announced = false;
  const serving = new Set<number>();

  cluster.on("listening", (worker) => {
    serving.add(worker.id);
    if (!announced && serving.size === workers) {
      announced = true;
      console.log(
        `turbocast chat on http://${host}:${port} with ${workers} workers (${kind} broker, database ${databaseUrl ? "PostgreSQL" : databasePath()})`,
      );
    }
  });
  cluster.on("exit", (worker, code, signal) => {
    if (stopping) return;
    const wasServing = serving.delete(worker.id);
    console.warn(
      `worker ${worker.process.pid} exited (${signal ?? code})${wasServing ? "; starting another" : " before it could serve"}`,
    );
    if (wasServing) {
      cluster.fork();
    } else if (Object.keys(cluster.workers ?? {}).length === 0) {
      console.error("no worker is running; stopping");
      process.exit(1);
    }
  });

  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
    // a terminal's Ctrl-C reaches the workers too; they ignore the second signal
    for (const worker of alive) worker.process.kill("SIGTERM");
    const timer = setTimeout(() => {
      console.warn(`workers still running after ${SHUTDOWN_GRACE_MS} ms; killing them`);
      for (const worker of alive) worker.process.kill("SIGKILL");
      process.exit(1);
    }, SHUTDOWN_GRACE_MS);
    const exited = alive.map(
      (w) =>
        new Promise<string | null>((resolve) =>
          w.once("exit", (code, signal) =>
            resolve(code === 0 ? null : `worker ${w.process.pid} exited (${signal ?? code})`),
          ),
        ),
    );
    void Promise.all(exited).then((failures) => {
      clearTimeout(timer);
      for (const failure of failures) if (failure) console.warn(failure);
      process.exit(failures.some(Boolean) ? 1 : 0);
    });
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);

  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  let chat: Awaited<ReturnType<typeof createChatApp>>;
  try {
    chat = await createChatApp({ broker: broker() });
  } catch (error) {
    fail(`worker ${process.pid} could not start: ${error instanceof Error ? error.message : String(error)}`);
  }
  chat.server.on("error", (error) =>
    fail(`worker ${process.pid} could not listen on ${host}:${port}: ${error.message}`),
  );
  chat.server.listen(port, host);
  let closing = false;
  const stop = (): void => {
    if (closing) return;
    closing = true;
    chat.close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(`worker ${process.pid} did not close cleanly`, error);
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
