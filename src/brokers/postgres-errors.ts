/**
 * How the PostgreSQL broker tells a broken connection (an outage: reconnect,
 * refresh) from a failed statement (the server is fine) and from a slow one
 * (not yet an outage: the heartbeat decides), from what node-postgres throws.
 */

/**
 * True for failures of the connection rather than of the statement: socket
 * errors, timeouts, and the SQLSTATE classes 08 (connection exception) and
 * 57P (operator intervention: shutdown, pg_terminate_backend), 53300 (too many connections).
 */
export function isConnectionError(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) {
    return code.startsWith("08") || code.startsWith("57P") || code === "53300";
  }
  return true;
}

/** A statement the server cancelled for its statement_timeout, or node-postgres's own timeouts (query read, pool wait). */
export function isTimeout(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  return code === "57014" || (!code && /timeout/i.test(error.message));
}

/** Someone dropped the broker's tables (undefined_table). */
export function isMissingTable(error: unknown): boolean {
  return error instanceof Error && (error as { code?: unknown }).code === "42P01";
}
