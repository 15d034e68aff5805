import type Database from "better-sqlite3";
import { LOG_TABLE, NAMESPACE, quoteIdent } from "./sql.js";

/**
 * How the feed reads and sets the request a piece of code runs for
 * (delivery/request-context.ts). The "request id" noted with a change is an
 * opaque token of the scope that wrote it (ScopeTokens): its X-Turbo-Request-Id,
 * page, actor and suppression are looked up with it at dispatch.
 */
export interface RequestScopeAccess {
  /** The token of the scope the code running now is in (a request, or suppressingBroadcasts), if any. */
  current(): string | undefined;
  /** Runs `fn` as if inside the scope with that token. */
  run<T>(requestId: string, fn: () => T): T;
  /** Runs `fn` outside any request. */
  outside<T>(fn: () => T): T;
  /** What the dispatcher needs of the scope a change was written in (undefined: not known, or forgotten). */
  scope?(requestId: string): WriteScope | undefined;
}

/** The scope a change was written in, as its dispatch needs it. */
export interface WriteScope {
  /** Written inside `turbo.suppressingBroadcasts`: the change reaches no hook and no broadcast. */
  readonly suppressed?: boolean | undefined;
  /** The request's user (`authenticate`, memoised; may return a promise). */
  readonly actor?: (() => unknown) | undefined;
}

const NOTES = `${NAMESPACE}request_notes`;
const TRIGGER = `${NAMESPACE}request_note`;
const WANTED = `${NAMESPACE}request_note_wanted`;
const CURRENT = `${NAMESPACE}request_id`;

interface ConnectionNotes {
  /** Feeds on this connection with notes installed: the trigger and table live while it is above 0. */
  feeds: number;
  /** The functions the trigger calls, registered once per connection (SQLite cannot unregister them). */
  registered: boolean;
  scope: RequestScopeAccess | null;
  /** Whether the TEMP table may hold notes (set by the trigger's call): if not, a batch costs no query. */
  noted: boolean;
}

const connections = new WeakMap<Database.Database, ConnectionNotes>();

/**
 * Which request wrote each change, for the changes this process's own
 * connection writes. A TEMP trigger on the change log — TEMP objects exist
 * on this connection only, so other connections and processes never see
 * them — copies the id of the request the write runs in (the statement runs
 * synchronously inside it) with the change's seq into a TEMP table, in the
 * writer's own transaction: a rolled-back write takes its note with it, so
 * a seq reused afterwards never inherits an id. When the feed dispatches a
 * change, its hook runs inside that request id again, so a `refresh()` it
 * broadcasts carries `request-id` and the page that made the request
 * ignores its own refresh, as in turbo-rails; a change without a note runs
 * outside any request.
 *
 * A write made outside a request pays one call of an argument-less
 * function (the trigger's WHEN); one inside a request, one row in a TEMP
 * table. Notes are deleted with the batch that dispatches them, and those
 * of changes dispatched by other processes once the log's done_seq passes
 * them.
 */
export class RequestNotes {
  readonly #client: Database.Database;
  readonly #scope: RequestScopeAccess;
  #state: "idle" | "installed" | "closed" = "idle";
  #shared: ConnectionNotes | null = null;
  #take: Database.Statement | null = null;
  #forget: Database.Statement | null = null;
  #any: Database.Statement | null = null;

  constructor(client: Database.Database, scope: RequestScopeAccess) {
    this.#client = client;
    this.#scope = scope;
  }

  /** Creates the TEMP table and trigger (once per connection) and the statements; call once the change log exists. */
  install(): void {
    if (this.#state !== "idle") return;
    let shared = connections.get(this.#client);
    if (!shared) connections.set(this.#client, (shared = { feeds: 0, registered: false, scope: null, noted: false }));
    shared.scope = this.#scope;
    if (!shared.registered) {
      const state = shared;
      // no feed left on the connection (a trigger a close could not drop): note nothing
      this.#client.function(WANTED, { deterministic: false }, () =>
        state.feeds > 0 && state.scope?.current() !== undefined ? 1 : 0,
      );
      this.#client.function(CURRENT, { deterministic: false }, () => {
        state.noted = true;
        return state.scope?.current() ?? null;
      });
      shared.registered = true;
    }
    this.#client.exec(
      `CREATE TEMP TABLE IF NOT EXISTS ${quoteIdent(NOTES)} (seq INTEGER PRIMARY KEY, request_id TEXT NOT NULL)`,
    );
    this.#client.exec(
      `CREATE TEMP TRIGGER IF NOT EXISTS ${quoteIdent(TRIGGER)} AFTER INSERT ON main.${quoteIdent(LOG_TABLE)} FOR EACH ROW ` +
        `WHEN ${WANTED}() BEGIN INSERT OR REPLACE INTO temp.${quoteIdent(NOTES)} (seq, request_id) VALUES (NEW.seq, ${CURRENT}()); END`,
    );
    this.#take = this.#client
      .prepare(`SELECT seq, request_id FROM temp.${quoteIdent(NOTES)} WHERE seq BETWEEN ? AND ?`)
      .raw(true);
    this.#forget = this.#client.prepare(`DELETE FROM temp.${quoteIdent(NOTES)} WHERE seq <= ?`);
    this.#any = this.#client.prepare(`SELECT EXISTS (SELECT 1 FROM temp.${quoteIdent(NOTES)})`).pluck();
    this.#shared = shared;
    shared.feeds++;
    this.#state = "installed";
  }

  /**
   * Drops the TEMP trigger and table when no other feed on the connection
   * uses them. Inside a transaction the app holds open the drop would share
   * its fate, so they are left (noting nothing: no feed is left to read
   * them) until the connection closes. Safe to call twice, and on a closed
   * connection.
   */
  uninstall(): void {
    if (this.#state !== "installed") {
      this.#state = "closed";
      return;
    }
    this.#state = "closed";
    const shared = this.#shared!;
    shared.feeds--;
    if (shared.feeds > 0 || !this.#client.open || this.#client.inTransaction) return;
    try {
      this.#client.exec(
        `DROP TRIGGER IF EXISTS temp.${quoteIdent(TRIGGER)}; DROP TABLE IF EXISTS temp.${quoteIdent(NOTES)}`,
      );
    } catch {
      // the connection is busy (closing from inside a statement): WANTED answers 0 from now on
    }
  }

  /**
   * The request ids of the changes in [first, last] that this connection
   * wrote inside a request, by seq; forgets every note up to `last`.
   */
  take(first: number, last: number): Map<number, string> | null {
    if (this.#state !== "installed" || !this.#shared!.noted) return null;
    const rows = this.#take!.all(first, last) as Array<[number, string]>;
    this.#forgetUpTo(last);
    return rows.length === 0 ? null : new Map(rows);
  }

  /** Forgets the notes of changes up to `doneSeq` (dispatched by another feed). */
  forget(doneSeq: number): void {
    if (this.#state === "installed" && this.#shared!.noted) this.#forgetUpTo(doneSeq);
  }

  #forgetUpTo(seq: number): void {
    this.#forget!.run(seq);
    // notes of writes not dispatched yet may remain; rolled-back ones took theirs along
    this.#shared!.noted = this.#any!.get() === 1;
  }

  /** Runs a hook inside the request its change was written in, or outside any request. */
  run<T>(requestId: string | undefined, fn: () => T): T {
    return requestId === undefined ? this.#scope.outside(fn) : this.#scope.run(requestId, fn);
  }
}
