import { randomBytes } from "node:crypto";
import os from "node:os";
import pg from "pg";
import { isConnectionError } from "./postgres-errors.js";
import type { Statements } from "./postgres-sql.js";

/** How the PostgreSQL broker's connections are made (its options, resolved). */
export interface ConnectionConfig {
  connectionString: string;
  applicationName: string;
  poolSize: number;
  commandTimeoutMs: number;
}

/**
 * The pool for publish, history and head. `onError` hears about idle pooled
 * connections that die (a restart, pg_terminate_backend): the pool drops
 * them, and without a listener the error would crash the process.
 */
export function createPool(config: ConnectionConfig, onError: (error: Error) => void): pg.Pool {
  const pool = new pg.Pool({
    connectionString: config.connectionString,
    application_name: config.applicationName,
    max: config.poolSize,
    connectionTimeoutMillis: config.commandTimeoutMs,
    // the server gives up first (a publish it cancels was certainly not
    // published); the client-side timeout is the backstop for a dead link
    statement_timeout: config.commandTimeoutMs,
    query_timeout: config.commandTimeoutMs + 1_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
  });
  pool.on("error", onError);
  return pool;
}

/**
 * The client publishes go through: one connection, pipelined (pg's
 * `pipeline`), so the next batch's statement is on its way while the server
 * runs one, and the server runs them in the order they were sent — commit
 * order, hence position order, stays call order. The same timeouts as the
 * pool's: the server cancels a stuck statement first (an error for that
 * batch alone); the client-side timeout is the backstop for a dead link.
 * Not yet connected.
 */
export function createPublisher(config: ConnectionConfig): pg.Client {
  return new pg.Client({
    connectionString: config.connectionString,
    application_name: config.applicationName,
    connectionTimeoutMillis: config.commandTimeoutMs,
    statement_timeout: config.commandTimeoutMs,
    query_timeout: config.commandTimeoutMs + 1_000,
    keepAlive: true,
    pipeline: true,
  });
}

/** The client that LISTENs (not pooled: a pooled client may be handed to a query and released). Not yet connected. */
export function createListener(config: ConnectionConfig): pg.Client {
  return new pg.Client({
    connectionString: config.connectionString,
    application_name: config.applicationName,
    connectionTimeoutMillis: config.commandTimeoutMs,
    query_timeout: config.commandTimeoutMs,
    keepAlive: true,
  });
}

/** Creates the tables and the epoch when missing; returns the current epoch and head seq. */
export async function ensureSchema(
  pool: pg.Pool,
  sql: Statements,
  prefix: string,
  newEpochMinSeq: number,
): Promise<{ epoch: string; seq: number }> {
  const client = await pool.connect();
  let failure: unknown;
  try {
    await client.query("begin");
    // concurrent `create table if not exists` can collide on the catalog: one process at a time
    await client.query("select pg_advisory_xact_lock(hashtext($1))", [`${prefix}_schema`]);
    await client.query(sql.schema);
    await client.query(sql.createEpoch, [randomBytes(6).toString("base64url"), newEpochMinSeq]);
    const row = (await client.query<{ epoch: string; seq: string }>(sql.head)).rows[0]!;
    await client.query("commit");
    return { epoch: row.epoch, seq: Number(row.seq) };
  } catch (error) {
    failure = error;
    await client.query("rollback").catch(() => {});
    throw error;
  } finally {
    // a connection that failed is destroyed rather than returned to the pool
    client.release(failure !== undefined && isConnectionError(failure) ? (failure as Error) : undefined);
  }
}

/**
 * Like libpq (psql), connect as the OS user when neither the URL nor PGUSER
 * nor USER names one; node-postgres alone would send no user at all where
 * USER is unset (containers, CI runners, services).
 */
export function withDefaultUser(connectionString: string): string {
  if (process.env.PGUSER || process.env.USER) return connectionString;
  let url: URL;
  try {
    url = new URL(connectionString);
  } catch {
    return connectionString;
  }
  if (url.username !== "" || !/^postgres(ql)?:$/.test(url.protocol)) return connectionString;
  try {
    url.username = encodeURIComponent(os.userInfo().username);
  } catch {
    return connectionString;
  }
  return url.toString();
}
