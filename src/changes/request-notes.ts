import type Database from "better-sqlite3";
import type { ChangeRecord } from "./log.js";
import { LOG_TABLE, NAMESPACE, quoteIdent } from "./sql.js";

/** How the feed reads the request a write was made in (delivery/request-context.ts). */
export interface RequestScopeAccess {
  /** The X-Turbo-Request-Id of the code running now, if any. */
  current(): string | undefined;
  /** Runs `fn` as if inside the request with that id. */
  run<T>(requestId: string, fn: () => T): T;
}

interface Note {
  requestId: string;
  /** The change as the log holds it: a seq reused after a rollback does not match. */
  fingerprint: string;
}

const fingerprint = (table: string, op: string, row: string): string => `${table}\u0000${op}\u0000${row}`;

/**
 * Which request wrote each change, for the changes this process's own
 * connection writes: a TEMP trigger on the change log — it exists on this
 * connection only, so other connections and processes never see it — calls
 * a JS function with every row the capture triggers append, and the
 * function notes the id of the request the write runs in (the statement
 * runs synchronously inside it). When the feed dispatches the change, the
 * hook runs inside that request id again, so a `refresh()` it broadcasts
 * carries `request-id` and the page that made the request ignores its own
 * refresh, as in turbo-rails.
 *
 * A note is checked against the change's table, op and row before use: a
 * rolled-back write leaves a note whose seq a later write (by anyone) may
 * reuse, and that write must not inherit the id. Notes go once their change
 * is dispatched, or once the log's done_seq passes them (another process
 * dispatched it, or it was rolled back).
 */
export class RequestNotes {
  readonly #client: Database.Database;
  readonly #scope: RequestScopeAccess;
  readonly #trigger: string;
  readonly #function: string;
  /** seq -> note, in insertion (≈ seq) order. */
  #notes = new Map<number, Note>();

  constructor(client: Database.Database, scope: RequestScopeAccess, suffix: string) {
    this.#client = client;
    this.#scope = scope;
    this.#trigger = `${NAMESPACE}request_note_${suffix}`;
    this.#function = `${NAMESPACE}note_request_${suffix}`;
  }

  /** Registers the function and creates the TEMP trigger; call once the change log exists. */
  install(): void {
    // the WHEN clause is the whole cost of a write made outside a request: one call, no arguments
    this.#client.function(`${this.#function}_wanted`, { deterministic: false }, () => (this.#scope.current() === undefined ? 0 : 1));
    this.#client.function(this.#function, { deterministic: false }, (seq: unknown, table: unknown, op: unknown, row: unknown) => {
      const requestId = this.#scope.current();
      if (requestId !== undefined) this.#notes.set(Number(seq), { requestId, fingerprint: fingerprint(String(table), String(op), String(row)) });
      return null;
    });
    this.#client.exec(
      `CREATE TEMP TRIGGER IF NOT EXISTS ${quoteIdent(this.#trigger)} AFTER INSERT ON main.${quoteIdent(LOG_TABLE)} FOR EACH ROW ` +
        `WHEN ${this.#function}_wanted() BEGIN SELECT ${this.#function}(NEW.seq, NEW.tbl, NEW.op, NEW.row_json); END`,
    );
  }

  /** Drops the TEMP trigger (the function stays registered, unused). Safe on a closed connection. */
  uninstall(): void {
    this.#notes.clear();
    if (!this.#client.open) return;
    try {
      this.#client.exec(`DROP TRIGGER IF EXISTS temp.${quoteIdent(this.#trigger)}`);
    } catch {
      // a connection busy in a statement (closing from inside a hook): the trigger goes with the connection
    }
  }

  /** The request id a change was written in, if this connection wrote it inside a request; forgets the note. */
  take(change: ChangeRecord): string | undefined {
    const note = this.#notes.get(change.seq);
    if (note === undefined) return undefined;
    this.#notes.delete(change.seq);
    return note.fingerprint === fingerprint(change.table, change.op, change.row) ? note.requestId : undefined;
  }

  /** Forgets the notes of changes up to `doneSeq` (dispatched by anyone, or rolled back). */
  prune(doneSeq: number): void {
    for (const seq of this.#notes.keys()) {
      if (seq > doneSeq) break;
      this.#notes.delete(seq);
    }
  }

  /** Runs a hook inside the request its change was written in (or as it is). */
  run<T>(requestId: string | undefined, fn: () => T): T {
    return requestId === undefined ? fn() : this.#scope.run(requestId, fn);
  }

  get size(): number {
    return this.#notes.size;
  }
}
