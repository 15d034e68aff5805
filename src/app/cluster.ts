import cluster from "node:cluster";
import { availableParallelism } from "node:os";
import type { Broker } from "turbocast";
import { createChatApp } from "./app.js";
import { databasePath, openDatabase } from "./db.js";

/**
 * `npm run start:cluster`: the demo on N worker processes (WORKERS, default
 * the number of cores) sharing one SQLite file and port. Frames cross
 * workers through Redis (REDIS_URL, default redis://127.0.0.1:6379) or,
 * with BROKER=postgres, PostgreSQL (DATABASE_URL). The change feed still
 * dispatches each write once, whichever worker claims it.
 */
const workers = Number(process.env.WORKERS ?? Math.max(2, availableParallelism()));
const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? "localhost";

async function broker(): Promise<Broker> {
  const { redisBroker, postgresBroker } = await import("turbocast");
  if (process.env.BROKER === "postgres") {
    return postgresBroker({ connectionString: process.env.DATABASE_URL ?? "postgres://127.0.0.1:5432/test" });
  }
  return redisBroker({ url: process.env.REDIS_URL ?? "redis://127.0.0.1:6379" });
}

if (cluster.isPrimary) {
  // migrate and seed once, before any worker opens the file
  openDatabase(databasePath()).sqlite.close();
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on("exit", (worker, code, signal) => {
    console.warn(`worker ${worker.process.pid} exited (${signal ?? code})`);
  });
  console.log(`turbocast chat on http://${host}:${port} with ${workers} workers (${process.env.BROKER ?? "redis"} broker)`);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill(signal);
      process.exit(0);
    });
  }
} else {
  const chat = await createChatApp({ broker: await broker() });
  chat.server.listen(port, host);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => void chat.close().then(() => process.exit(0)));
  }
}
