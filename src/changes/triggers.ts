import type Database from "better-sqlite3";
import { CaptureInstallError } from "../errors.js";
import type { CaptureSync } from "./capture.js";
import { LOG_DDL, upgradeLog } from "./log.js";
import { LOG_TABLE, NAMESPACE, quoteIdent, quoteLiteral } from "./sql.js";

/**
 * Change capture is three AFTER triggers per bound table, each appending the
 * changed row to the change log inside the writer's own transaction — so
 * every writer is seen (Drizzle, raw SQL, bulk statements, other processes,
 * the sqlite3 shell), a rolled-back write leaves nothing behind, and a
 * committed one survives a crash.
 *
 *   _turbocast_<table>_ins   AFTER INSERT: the new row
 *   _turbocast_<table>_upd   AFTER UPDATE, only when some column's value changed: the new row and the old one
 *   _turbocast_<table>_del   AFTER DELETE: the old row
 *
 * The trigger text is the signature: it lists the table's actual columns, so
 * when a migration adds or renames a column the generated SQL no longer
 * matches what sqlite_master holds and the triggers are recreated. SQLite
 * refuses `ALTER TABLE ... DROP COLUMN` on a column a trigger names: a
 * migration that drops a column of a bound table drops the table's triggers
 * first, in the same transaction (`dropCaptureTriggers`); they come back at
 * the next poll or start.
 */

/** A column as the triggers copy it. */
export interface TriggerColumn {
  name: string;
  /** Copy it blob-safe (see `encodesBlobs`). */
  blobSafe: boolean;
}

/** A bound table as capture sees it: SQL names only. */
export interface CaptureTable {
  /** The table's SQL name (what the log records and the registry looks up). */
  name: string;
  /** SQL names of the primary-key columns, in the Drizzle key's order. */
  keys: readonly string[];
  /** SQL names of the columns the Drizzle table declares (to warn about ones the database lacks). */
  columns: readonly string[];
  /** SQL names of the columns whose Drizzle type writes blobs (blob modes, custom types), whatever the declared type. */
  blobColumns: readonly string[];
}

/**
 * Whether a column's values are copied blob-safe. json_object() refuses a
 * blob — inside a trigger that would fail the app's own write — so "blob
 * columns" get `CASE typeof(x) WHEN 'blob' ...`: columns of BLOB affinity
 * (declared BLOB, or no type), ANY columns of STRICT tables, and columns
 * whose Drizzle type writes blobs. The rest are copied as is: the CASE costs
 * compile time in every statement that fires the trigger, and Drizzle
 * prepares every query anew. The price: a blob forced by raw SQL into a
 * column declared INTEGER, TEXT, REAL or NUMERIC of a non-STRICT table makes
 * that write fail ("JSON cannot hold BLOB values"; "malformed JSON" since
 * SQLite 3.45) — declare such a column BLOB.
 */
export function encodesBlobs(
  column: { type: string; rowidAlias: boolean; drizzleBlob: boolean },
  strict: boolean,
): boolean {
  if (column.rowidAlias) return false;
  if (column.drizzleBlob) return true;
  const type = column.type.toUpperCase();
  if (strict) return type === "BLOB" || type === "ANY";
  // SQLite's affinity rules, in their order: INT, then CHAR/CLOB/TEXT, then BLOB or no type
  if (type.includes("INT") || type.includes("CHAR") || type.includes("CLOB") || type.includes("TEXT")) return false;
  return type === "" || type.includes("BLOB");
}

export type TriggerKind = "ins" | "upd" | "del";

export function triggerName(table: string, kind: TriggerKind): string {
  return `${NAMESPACE}${table}_${kind}`;
}

/**
 * A value as it goes into the row JSON. In a blob-safe column a blob becomes
 * `["<HEX>"]`; no other value can appear as a JSON array in the row (text
 * stays a JSON string), so the decoder knows it for a blob.
 */
function jsonValue(ref: string, blobSafe: boolean): string {
  return blobSafe ? `CASE typeof(${ref}) WHEN 'blob' THEN json_array(hex(${ref})) ELSE ${ref} END` : ref;
}

/**
 * The CREATE TRIGGER statements for a table with these columns, by trigger
 * name. Pure; the text is compared with sqlite_master to decide whether to
 * recreate, so it must stay byte-stable (no leading blanks, no IF NOT EXISTS:
 * SQLite stores the statement as written, minus those).
 */
export function triggerStatements(table: string, columns: readonly TriggerColumn[]): Map<string, string> {
  const t = quoteIdent(table);
  const log = quoteIdent(LOG_TABLE);
  const name = quoteLiteral(table);
  const row = (alias: "NEW" | "OLD"): string =>
    `json_object(${columns.map((c) => `${quoteLiteral(c.name)}, ${jsonValue(`${alias}.${quoteIdent(c.name)}`, c.blobSafe)}`).join(", ")})`;
  const body = (op: string, rowAlias: "NEW" | "OLD"): string =>
    `BEGIN INSERT INTO ${log} (tbl, op, row_json, at) VALUES (${name}, '${op}', ${row(rowAlias)}, unixepoch()); END`;
  // an update logs the row before it too: hooks get `previous`, and a row that moved is removed where it was
  const updateBody = `BEGIN INSERT INTO ${log} (tbl, op, row_json, prev_json, at) VALUES (${name}, 'update', ${row("NEW")}, ${row("OLD")}, unixepoch()); END`;
  // An UPDATE that changes no column is not a change (turbo-rails #610: no-op saves broadcast).
  // COLLATE BINARY: under a NOCASE column 'a' -> 'A' is still a change the page should show.
  const changed = columns
    .map(({ name: c }) => `NEW.${quoteIdent(c)} IS NOT OLD.${quoteIdent(c)} COLLATE BINARY`)
    .join(" OR ");
  const ins = triggerName(table, "ins");
  const upd = triggerName(table, "upd");
  const del = triggerName(table, "del");
  return new Map([
    [ins, `CREATE TRIGGER ${quoteIdent(ins)} AFTER INSERT ON ${t} FOR EACH ROW ${body("insert", "NEW")}`],
    [upd, `CREATE TRIGGER ${quoteIdent(upd)} AFTER UPDATE ON ${t} FOR EACH ROW WHEN ${changed} ${updateBody}`],
    [del, `CREATE TRIGGER ${quoteIdent(del)} AFTER DELETE ON ${t} FOR EACH ROW ${body("delete", "OLD")}`],
  ]);
}

/** A sync as the SQLite adapter sees it: CaptureSync, plus what it needs for the next one. */
export interface TriggerSync extends CaptureSync {
  /** `PRAGMA schema_version` after the sync, read under the same write lock. */
  schemaVersion: number;
  /** Every trigger this sync wanted, by name: pass it back as `previous` on the next (runtime) sync. */
  wanted: Map<string, string>;
}

/**
 * How a sync treats triggers it did not expect.
 *
 * - At start (no `previous`): the database is made to match this app — stale
 *   triggers are recreated, those of tables it does not bind are dropped.
 * - After a schema change while running (`previous`: what the last sync
 *   wanted): only what this process's own view changed is rewritten — a
 *   trigger that is missing, or whose table's columns changed. A trigger
 *   another process wrote differently, or bound to a table this one does not
 *   bind, is left alone: two app versions sharing a file during a rolling
 *   deploy must not rewrite each other's triggers on every poll.
 */
export interface SyncOptions {
  previous?: ReadonlyMap<string, string>;
}

/**
 * Makes the database's turbocast triggers match the bound tables, in one
 * IMMEDIATE transaction: creates the change log if needed, (re)creates each
 * bound table's triggers whose text differs from what they should be, and
 * drops every `_turbocast_*` trigger not wanted (tables no longer bound) —
 * at start; see SyncOptions for a sync while running. On any failure nothing
 * is changed. A no-op when everything already matches.
 *
 * Throws CaptureInstallError for a bound name that is a view, or a table
 * SQLite will not put triggers on.
 */
export function syncTriggers(
  client: Database.Database,
  tables: readonly CaptureTable[],
  options: SyncOptions = {},
): TriggerSync {
  const { previous } = options;
  const run = client.transaction((): TriggerSync => {
    for (const ddl of LOG_DDL) client.exec(ddl);
    upgradeLog(client);
    const wanted = new Map<string, string>();
    const result: TriggerSync = {
      created: [],
      dropped: [],
      missingTables: [],
      missingColumns: [],
      captured: [],
      schemaVersion: 0,
      wanted,
    };
    const objectType = client
      .prepare(`SELECT type FROM sqlite_schema WHERE name = ? COLLATE NOCASE AND type IN ('table', 'view')`)
      .pluck();
    const tableColumns = client.prepare(`SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)`);
    const tableKind = client.prepare(
      `SELECT strict, wr AS withoutRowid FROM pragma_table_list WHERE name = ? COLLATE NOCASE AND schema = 'main'`,
    );
    for (const table of tables) {
      const type = objectType.get(table.name) as string | undefined;
      if (type === undefined) {
        result.missingTables.push(table.name);
        continue;
      }
      if (type === "view") throw new CaptureInstallError(table.name, "it is a view; bind a table");
      // hidden: 0 ordinary, 1 virtual-table hidden column, 2/3 generated (readable in triggers)
      const info = (
        tableColumns.all(table.name) as Array<{ name: string; type: string; pk: number; hidden: number }>
      ).filter((c) => c.hidden !== 1);
      const kind = tableKind.get(table.name) as { strict: number; withoutRowid: number } | undefined;
      const keyColumns = info.filter((c) => c.pk > 0);
      const drizzleBlobs = new Set(table.blobColumns.map((c) => c.toLowerCase()));
      const columns: TriggerColumn[] = info.map((c) => {
        const rowidAlias =
          kind?.withoutRowid === 0 && keyColumns.length === 1 && c.pk > 0 && c.type.toUpperCase() === "INTEGER";
        const drizzleBlob = drizzleBlobs.has(c.name.toLowerCase());
        return { name: c.name, blobSafe: encodesBlobs({ type: c.type, rowidAlias, drizzleBlob }, kind?.strict === 1) };
      });
      const present = new Set(columns.map((c) => c.name.toLowerCase()));
      const missingKeys = table.keys.filter((k) => !present.has(k.toLowerCase()));
      if (missingKeys.length > 0) {
        throw new CaptureInstallError(
          table.name,
          `its primary-key column(s) ${missingKeys.join(", ")} do not exist in the database`,
        );
      }
      const missing = table.columns.filter((c) => !present.has(c.toLowerCase()));
      if (missing.length > 0) result.missingColumns.push({ table: table.name, columns: missing });
      for (const [name, sql] of triggerStatements(table.name, columns)) wanted.set(name, sql);
      result.captured.push(table.name);
    }
    const existing = client
      .prepare(`SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\'`)
      .all(`${NAMESPACE.replaceAll("_", "\\_")}%`) as Array<{ name: string; sql: string }>;
    const current = new Map(existing.map((t) => [t.name, t.sql]));
    for (const { name } of existing) {
      if (wanted.has(name) || previous) continue;
      client.exec(`DROP TRIGGER ${quoteIdent(name)}`);
      result.dropped.push(name);
    }
    for (const [name, sql] of wanted) {
      const stored = current.get(name);
      if (stored === sql) continue;
      if (stored !== undefined && previous?.get(name) === sql) continue;
      if (stored !== undefined) client.exec(`DROP TRIGGER ${quoteIdent(name)}`);
      try {
        client.exec(sql);
      } catch (error) {
        const table = tables.find((t) => name.startsWith(`${NAMESPACE}${t.name}_`))?.name ?? name;
        throw new CaptureInstallError(table, `SQLite refused its trigger: ${(error as Error).message}`, {
          cause: error,
        });
      }
      result.created.push(name);
    }
    result.schemaVersion = client.prepare(`SELECT schema_version FROM pragma_schema_version`).pluck().get() as number;
    return result;
  });
  return run.immediate();
}

/**
 * Drops turbocast's triggers of one table (or of every table), for a
 * migration that must drop a column of a bound table: SQLite refuses to drop
 * a column a trigger names. Run it in the migration's transaction; a running
 * app puts the triggers back (with the new columns) within one poll interval,
 * and any app does at start. Writes made in between are not captured. In SQL:
 * `DROP TRIGGER IF EXISTS "_turbocast_<table>_ins";` and likewise `_upd`, `_del`.
 *
 * @example
 * dropCaptureTriggers(sqlite, "messages");
 * sqlite.exec("ALTER TABLE messages DROP COLUMN legacy");
 */
export function dropCaptureTriggers(client: Database.Database, table?: string): string[] {
  const names = client
    .prepare(`SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\'`)
    .pluck()
    .all(`${NAMESPACE.replaceAll("_", "\\_")}%`) as string[];
  const kinds: TriggerKind[] = ["ins", "upd", "del"];
  const dropped = table === undefined ? names : names.filter((n) => kinds.some((k) => n === triggerName(table, k)));
  for (const name of dropped) client.exec(`DROP TRIGGER IF EXISTS ${quoteIdent(name)}`);
  return dropped;
}
