import type pg from "pg";
import { CaptureInstallError } from "../../errors.js";
import { NAMESPACE, quoteIdent, quoteLiteral } from "../sql.js";
import type { PgColumnType } from "./decode.js";
import { logDdl, logNames } from "./log.js";

/**
 * Change capture on PostgreSQL: three AFTER … FOR EACH ROW triggers per bound
 * table that append the row, as jsonb, to the change log in the writer's own
 * transaction — so every writer is seen (Drizzle, raw SQL, bulk statements,
 * `psql`, another service), a rolled-back write (or savepoint) leaves
 * nothing, and a committed one survives a crash — and, unless the session
 * set turbocast.quiet = 'on', wake the feeds (pg_notify(channel, '')):
 *
 *   _turbocast_ins      AFTER INSERT, each row: the new row
 *   _turbocast_upd      AFTER UPDATE, each row WHEN (OLD.* *<> NEW.*): the new row and the old one
 *   _turbocast_del      AFTER DELETE, each row: the old row
 *
 * The triggers live on the table; the functions they call
 * (`_turbocast_capture_ins` / `_upd` / `_del`) live next to the change log.
 * `*<>` compares the rows' stored bytes, so an UPDATE that changes no column
 * is not a change (turbo-rails #610) while `12.50` -> `12.5` or `'a'` ->
 * `'A'` under a case-insensitive collation still is; it also works for
 * column types without an equality operator (json, point). PostgreSQL folds
 * a transaction's identical notifications into one, delivered at commit.
 *
 * Why the quiet test is in the row functions and not a statement-level
 * trigger's WHEN (earlier versions' `_turbocast_notify`, dropped at start):
 * PostgreSQL reads and compiles a trigger's WHEN condition again for every
 * statement, so a quiet writer paid for it on every INSERT — about a
 * quarter of the triggers' server CPU for one-row statements (9 of 33 µs
 * in a one-row-transaction loop). Inside the function the test is a few
 * hundred nanoseconds a row; a non-quiet writer's repeated pg_notify is
 * folded into the one already queued.
 *
 * Why turbocast's own connections are quiet: a transaction that NOTIFYs
 * holds a database-wide lock from just before its commit until after it
 * (so notifications queue in commit order), which serializes the commits of
 * every notifying transaction — measured, 2,000 concurrent inserts over 10
 * connections went from 2,400/s to 370/s with the NOTIFY. The app's own
 * writes need no NOTIFY: its process wakes its feed itself after each write
 * (instrument-pg.ts), and any one feed dispatching a change is enough. So
 * createTurbo sets `turbocast.quiet` on the app pool's connections, and
 * only other writers (psql, another service, another app) notify.
 *
 * The functions copy whole rows (`to_jsonb(NEW)`) rather than a column
 * list, so nothing in them depends on the table's columns: a migration that
 * adds, drops or renames a column needs no trigger change, and there is no
 * window in which writes are captured without a new column (or fail on a
 * dropped one). What does depend on the columns — their types, for
 * decoding — is read again when the schema signature changes (see
 * schemaSignature).
 *
 * They are SECURITY DEFINER, owned by the role that installs them: a writer
 * needs no privilege on the change log (another service, a `psql` user) and
 * cannot forge changes into it. They have no `SET search_path` (which costs
 * about as much as the rest of the trigger): every name and operator in
 * them is schema-qualified, so a writer's search_path cannot redirect what
 * they call.
 */

/** A bound table as capture sees it. */
export interface PgCaptureTable {
  /** The name the change log records (what the registry looks the table up by). */
  name: string;
  /** The Drizzle table's schema (`pgSchema`), or undefined: found through the search_path, as the app's queries find it. */
  schema?: string;
  /** SQL names of the primary-key columns. */
  keys: readonly string[];
  /** SQL names of the columns the Drizzle table declares (to warn about ones the database lacks). */
  columns: readonly string[];
}

export type PgTriggerKind = "ins" | "upd" | "del";

interface TriggerSpec {
  name: string;
  fn: string;
  event: string;
  /** pg_trigger.tgtype: 1 row, 4 insert, 8 delete, 16 update (AFTER is the absence of 2) */
  tgtype: number;
  when: string;
}

export const PG_TRIGGERS: Record<PgTriggerKind, TriggerSpec> = {
  ins: { name: `${NAMESPACE}ins`, fn: `${NAMESPACE}capture_ins`, event: "INSERT", tgtype: 5, when: "" },
  upd: {
    name: `${NAMESPACE}upd`,
    fn: `${NAMESPACE}capture_upd`,
    event: "UPDATE",
    tgtype: 17,
    when: " WHEN (OLD.* *<> NEW.*)",
  },
  del: { name: `${NAMESPACE}del`, fn: `${NAMESPACE}capture_del`, event: "DELETE", tgtype: 9, when: "" },
};

/**
 * The statement-level trigger (and its function) that earlier versions woke the feeds with: dropped at
 * start. Not when syncing after a schema change, where it may be an older process's, still running in a
 * rolling deploy: that process would put it back at its next sync (changing the signature), and the two
 * would take turns with DDL on the app's tables. Left there meanwhile it only notifies twice (folded into
 * one).
 */
const EARLIER_NOTIFY = `${NAMESPACE}notify`;

const KINDS = Object.keys(PG_TRIGGERS) as PgTriggerKind[];

/** The LISTEN/NOTIFY channel of a change log: one per log schema, so apps in other schemas are not woken. */
export function channelFor(logSchema: string): string {
  return `${NAMESPACE}${logSchema}`.slice(0, 63);
}

/** The body of each function (compared with pg_proc.prosrc to decide whether to replace it). */
export function functionBody(kind: PgTriggerKind, logSchema: string): string {
  const log = logNames(logSchema).changes;
  const request = "pg_catalog.current_setting('turbocast.request_id', true)";
  const values =
    kind === "upd"
      ? `'update', pg_catalog.to_jsonb(NEW), pg_catalog.to_jsonb(OLD)`
      : kind === "ins"
        ? `'insert', pg_catalog.to_jsonb(NEW), NULL`
        : `'delete', pg_catalog.to_jsonb(OLD), NULL`;
  // OPERATOR(pg_catalog.=): a bare = would be looked up in the writer's search_path, and run as the owner.
  // One channel and an empty payload, so that PostgreSQL folds a transaction's notifications into one.
  return `
BEGIN
  INSERT INTO ${log} (tbl, op, row_data, old_data, request_id) VALUES (TG_ARGV[0], ${values}, ${request});
  IF pg_catalog.current_setting('turbocast.quiet', true) OPERATOR(pg_catalog.=) 'on' THEN
    RETURN NULL;
  END IF;
  PERFORM pg_catalog.pg_notify(${quoteLiteral(channelFor(logSchema))}, '');
  RETURN NULL;
END
`;
}

function createFunction(kind: PgTriggerKind, logSchema: string): string {
  return `CREATE OR REPLACE FUNCTION ${quoteIdent(logSchema)}.${quoteIdent(PG_TRIGGERS[kind].fn)}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $turbocast$${functionBody(kind, logSchema)}$turbocast$`;
}

function createTrigger(kind: PgTriggerKind, relation: string, logSchema: string, name: string): string {
  const t = PG_TRIGGERS[kind];
  // the table's name as the log records it, passed to the function
  return `CREATE TRIGGER ${quoteIdent(t.name)} AFTER ${t.event} ON ${relation} FOR EACH ROW${t.when} EXECUTE FUNCTION ${quoteIdent(logSchema)}.${quoteIdent(t.fn)}(${quoteLiteral(name)})`;
}

export interface PgTriggerSync {
  /** The schema of the change log (the option, or the connection's current_schema()). */
  logSchema: string;
  /** Triggers created or recreated, as `schema.table.trigger`. */
  created: string[];
  /** turbocast triggers dropped: those of tables no longer bound (at start only). */
  dropped: string[];
  /** Bound tables that do not exist (yet): captured once a migration creates them. */
  missingTables: string[];
  /** Columns the Drizzle table declares but the database table lacks (their values decode as undefined). */
  missingColumns: Array<{ table: string; columns: string[] }>;
  /** Tables whose triggers are in place. */
  captured: string[];
  /** Each captured table's column types by SQL column name, for the decoder. */
  types: Map<string, Map<string, PgColumnType>>;
  /** schemaSignature() as read under the sync's lock. */
  signature: string;
}

export interface PgSyncOptions {
  /** Schema of the change log; default the connection's current_schema(). */
  logSchema?: string;
  /**
   * Whether to drop this log's triggers on tables that are not bound: at
   * start, yes (the database is made to match this app); after a schema
   * change while running, no — another app version sharing the database
   * during a rolling deploy may bind them.
   */
  dropUnbound?: boolean;
}

/** PostgreSQL's error for a missing privilege. */
const INSUFFICIENT_PRIVILEGE = "42501";

/**
 * Makes the database's turbocast triggers match the bound tables, in one
 * transaction (under an advisory lock, so processes starting together take
 * turns): creates the change log and the capture function if needed, creates
 * each bound table's missing triggers, and at start drops this log's
 * triggers on tables that are no longer bound. On any failure nothing is
 * changed. A no-op when everything already matches.
 *
 * Throws CaptureInstallError for a bound name that is a view or another
 * relation that takes no row triggers, a key column the table lacks, or a
 * missing privilege (named: TRIGGER on the table, CREATE on the log's schema).
 */
export async function syncPgTriggers(
  client: pg.ClientBase,
  tables: readonly PgCaptureTable[],
  options: PgSyncOptions = {},
): Promise<PgTriggerSync> {
  await client.query("BEGIN");
  try {
    const result = await syncInTransaction(client, tables, options);
    await client.query("COMMIT");
    return result;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  }
}

async function syncInTransaction(
  client: pg.ClientBase,
  tables: readonly PgCaptureTable[],
  options: PgSyncOptions,
): Promise<PgTriggerSync> {
  await client.query(`SELECT pg_advisory_xact_lock(hashtext('${NAMESPACE}sync'))`);
  const logSchema = options.logSchema ?? (await currentSchema(client));
  const role = (await client.query<{ role: string }>("SELECT current_user AS role")).rows[0]!.role;
  const privilege = (what: string, table: string, error: unknown): CaptureInstallError =>
    new CaptureInstallError(table, `the role "${role}" lacks ${what}`, { cause: error });

  const names = logNames(logSchema);
  const logExists = (await client.query(`SELECT to_regclass($1) IS NOT NULL AS ok`, [names.changes])).rows[0].ok;
  try {
    if (!logExists) for (const ddl of logDdl(logSchema)) await client.query(ddl);
    const existing = await client.query<{ name: string; src: string; oid: number }>(
      `SELECT p.proname AS name, p.prosrc AS src, p.oid::int AS oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = $1 AND p.proname LIKE '\\_turbocast\\_%'`,
      [logSchema],
    );
    const current = new Map(existing.rows.map((f) => [f.name, f.src]));
    for (const kind of KINDS) {
      if (current.get(PG_TRIGGERS[kind].fn) !== functionBody(kind, logSchema)) {
        await client.query(createFunction(kind, logSchema));
      }
    }
  } catch (error) {
    if ((error as { code?: string }).code === INSUFFICIENT_PRIVILEGE) {
      throw privilege(
        `the CREATE privilege on schema "${logSchema}", where turbocast keeps its change log (GRANT CREATE ON SCHEMA ${quoteIdent(logSchema)} TO ${quoteIdent(role)}, or pick another schema)`,
        tables[0]?.name ?? names.changes,
        error,
      );
    }
    throw error;
  }
  const functions = await client.query<{ name: string; oid: number }>(
    `SELECT p.proname AS name, p.oid::int AS oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = $1 AND p.proname = ANY($2::text[])`,
    [logSchema, [...KINDS.map((k) => PG_TRIGGERS[k].fn), EARLIER_NOTIFY]],
  );
  const functionOid = new Map(functions.rows.map((f) => [f.name, f.oid]));
  const ourFunctions = [...functionOid.values()];

  const result: PgTriggerSync = {
    logSchema,
    created: [],
    dropped: [],
    missingTables: [],
    missingColumns: [],
    captured: [],
    types: new Map(),
    signature: "",
  };
  const capturedOids = new Set<number>();
  for (const table of tables) {
    const relation =
      table.schema === undefined ? quoteIdent(table.name) : `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
    const found = await client.query<{ oid: string; kind: string; schema: string; name: string; may: boolean }>(
      `SELECT c.oid, c.relkind AS kind, n.nspname AS schema, c.relname AS name,
              has_table_privilege(c.oid, 'TRIGGER') AS may
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)`,
      [relation],
    );
    const rel = found.rows[0];
    if (!rel) {
      result.missingTables.push(table.name);
      continue;
    }
    if (rel.kind === "v" || rel.kind === "m") {
      throw new CaptureInstallError(
        table.name,
        `it is a ${rel.kind === "v" ? "view" : "materialized view"}; bind a table`,
      );
    }
    if (rel.kind !== "r" && rel.kind !== "p") {
      throw new CaptureInstallError(table.name, `it is not a table (relkind '${rel.kind}'); bind a table`);
    }
    const qualified = `${quoteIdent(rel.schema)}.${quoteIdent(rel.name)}`;
    const columns = await client.query<{ name: string; oid: number; elem: number }>(
      `SELECT a.attname AS name, t.oid::int AS oid, CASE WHEN t.typcategory = 'A' THEN t.typelem::int ELSE 0 END AS elem
       FROM pg_attribute a
       JOIN pg_type d ON d.oid = a.atttypid
       JOIN pg_type t ON t.oid = CASE WHEN d.typtype = 'd' THEN d.typbasetype ELSE d.oid END
       WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
      [rel.oid],
    );
    const types = new Map(columns.rows.map((c) => [c.name, { oid: c.oid, elem: c.elem }] as const));
    const missingKeys = table.keys.filter((k) => !types.has(k));
    if (missingKeys.length > 0) {
      throw new CaptureInstallError(
        table.name,
        `its primary-key column(s) ${missingKeys.join(", ")} do not exist in the database`,
      );
    }
    const missing = table.columns.filter((c) => !types.has(c));
    if (missing.length > 0) result.missingColumns.push({ table: table.name, columns: missing });
    result.types.set(table.name, types);

    const existing = await client.query<{ name: string; fn: string; tgtype: number; args: string; qual: boolean }>(
      `SELECT tgname AS name, tgfoid::int AS fn, tgtype::int AS tgtype, encode(tgargs, 'escape') AS args, tgqual IS NOT NULL AS qual
       FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal AND tgname LIKE '\\_turbocast\\_%'`,
      [rel.oid],
    );
    const byName = new Map(existing.rows.map((t) => [t.name, t]));
    for (const kind of KINDS) {
      const want = PG_TRIGGERS[kind];
      const have = byName.get(want.name);
      const matches =
        have !== undefined &&
        Number(have.fn) === functionOid.get(want.fn) &&
        have.tgtype === want.tgtype &&
        have.args === `${table.name}\\000` &&
        have.qual === (want.when !== "");
      if (matches) continue;
      if (!rel.may) {
        throw privilege(
          `the TRIGGER privilege on table ${qualified} (GRANT TRIGGER ON ${qualified} TO ${quoteIdent(role)}, or own the table)`,
          table.name,
          undefined,
        );
      }
      try {
        if (have) await client.query(`DROP TRIGGER ${quoteIdent(want.name)} ON ${qualified}`);
        await client.query(createTrigger(kind, qualified, logSchema, table.name));
      } catch (error) {
        if ((error as { code?: string }).code === INSUFFICIENT_PRIVILEGE) {
          throw privilege(`the TRIGGER privilege on table ${qualified}`, table.name, error);
        }
        throw new CaptureInstallError(table.name, `PostgreSQL refused its trigger: ${(error as Error).message}`, {
          cause: error,
        });
      }
      result.created.push(`${rel.schema}.${rel.name}.${want.name}`);
    }
    capturedOids.add(Number(rel.oid));
    result.captured.push(table.name);
  }

  if (options.dropUnbound !== false) {
    const ours = await client.query<{ rel: number; relation: string; name: string }>(
      `SELECT t.tgrelid::int AS rel, t.tgrelid::regclass::text AS relation, t.tgname AS name
       FROM pg_trigger t WHERE t.tgfoid = ANY($1::oid[]) AND NOT t.tgisinternal`,
      [ourFunctions],
    );
    for (const t of ours.rows) {
      if (capturedOids.has(t.rel) && t.name !== EARLIER_NOTIFY) continue;
      await client.query(`DROP TRIGGER ${quoteIdent(t.name)} ON ${t.relation}`);
      result.dropped.push(`${t.relation}.${t.name}`);
    }
    // every trigger calling it is gone with the loop above
    if (functionOid.has(EARLIER_NOTIFY)) {
      await client.query(`DROP FUNCTION ${quoteIdent(logSchema)}.${quoteIdent(EARLIER_NOTIFY)}()`);
    }
  }
  result.signature = await schemaSignature(client, tables);
  return result;
}

async function currentSchema(client: pg.ClientBase): Promise<string> {
  const schema = (await client.query<{ schema: string | null }>("SELECT current_schema() AS schema")).rows[0]!.schema;
  if (schema === null) {
    throw new CaptureInstallError(
      "_turbocast_changes",
      "the connection's search_path names no existing schema to keep the change log in (set capture.schema)",
    );
  }
  return schema;
}

/**
 * A string that changes when a bound table is created, dropped or
 * recreated, gains or loses a column or changes a column's type, or loses a
 * turbocast trigger: the feed compares it on every safety poll and syncs
 * again when it moved (as the SQLite feed follows `schema_version`).
 */
export async function schemaSignature(client: pg.ClientBase, tables: readonly PgCaptureTable[]): Promise<string> {
  const relations = relationNames(tables);
  const { rows } = await client.query<{ signature: string | null }>(`SELECT ${signatureSubquery("$1")} AS signature`, [
    relations,
  ]);
  return rows[0]?.signature ?? "";
}

/** The SQL names under which a sync finds the tables, in order: what schemaSignature takes. */
export function relationNames(tables: readonly PgCaptureTable[]): string[] {
  return tables.map((t) =>
    t.schema === undefined ? quoteIdent(t.name) : `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`,
  );
}

/** schemaSignature as a scalar subquery over the relation names in `param` (a text[] parameter), to ride along another query. */
export function signatureSubquery(param: string): string {
  return `(SELECT string_agg(r.rel || ':' || coalesce(r.oid::text, '-') || ':' || coalesce((
  SELECT md5(string_agg(a.attname || ' ' || a.atttypid::text, ',' ORDER BY a.attnum))
  FROM pg_attribute a WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
), '') || ':' || coalesce((
  SELECT count(*)::text FROM pg_trigger t WHERE t.tgrelid = r.oid AND t.tgname LIKE '\\_turbocast\\_%'
), ''), ';' ORDER BY r.ord)
FROM (SELECT rel, to_regclass(rel)::oid AS oid, ord FROM unnest(${param}::text[]) WITH ORDINALITY AS u(rel, ord)) r)`;
}

/**
 * Drops turbocast's triggers of one table (`table`: its name as a query
 * finds it, optionally schema-qualified), or of every table captured into
 * this log — for tearing capture down by hand. In SQL: `DROP TRIGGER IF
 * EXISTS _turbocast_ins ON <table>;` and likewise `_turbocast_upd` and
 * `_turbocast_del` (and an earlier version's `_turbocast_notify`).
 */
export async function dropPgCaptureTriggers(
  client: pg.ClientBase,
  logSchema: string,
  table?: string,
): Promise<string[]> {
  const { rows } = await client.query<{ relation: string; name: string }>(
    `SELECT t.tgrelid::regclass::text AS relation, t.tgname AS name
     FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = $1 AND p.proname LIKE '\\_turbocast\\_%' AND NOT t.tgisinternal
       AND ($2::text IS NULL OR t.tgrelid = to_regclass($2))`,
    [logSchema, table ?? null],
  );
  for (const t of rows) await client.query(`DROP TRIGGER IF EXISTS ${quoteIdent(t.name)} ON ${t.relation}`);
  return rows.map((t) => `${t.relation}.${t.name}`);
}
