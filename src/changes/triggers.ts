import type Database from "better-sqlite3";
import { CaptureInstallError } from "../errors.js";
import { LOG_DDL } from "./log.js";
import { LOG_TABLE, NAMESPACE, quoteIdent, quoteLiteral } from "./sql.js";

/**
 * Change capture is three AFTER triggers per bound table, each appending the
 * changed row to the change log inside the writer's own transaction — so
 * every writer is seen (Drizzle, raw SQL, bulk statements, other processes,
 * the sqlite3 shell), a rolled-back write leaves nothing behind, and a
 * committed one survives a crash.
 *
 *   _turbocast_<table>_ins   AFTER INSERT: the new row
 *   _turbocast_<table>_upd   AFTER UPDATE, only when some column's value changed: the new row
 *   _turbocast_<table>_del   AFTER DELETE: the old row
 *
 * The trigger text is the signature: it lists the table's actual columns, so
 * when a migration adds, renames or drops a column the generated SQL no
 * longer matches what sqlite_master holds and the triggers are recreated.
 */

/** A bound table as capture sees it: SQL names only. */
export interface CaptureTable {
  /** The table's SQL name (what the log records and the registry looks up). */
  name: string;
  /** SQL names of the primary-key columns, in the Drizzle key's order. */
  keys: readonly string[];
  /** SQL names of the columns the Drizzle table declares (to warn about ones the database lacks). */
  columns: readonly string[];
}

export type TriggerKind = "ins" | "upd" | "del";

export function triggerName(table: string, kind: TriggerKind): string {
  return `${NAMESPACE}${table}_${kind}`;
}

/**
 * A value as it goes into the row JSON. json_object() refuses blobs (and an
 * error there would fail the app's own write), so a blob — in any column,
 * SQLite lets every column hold one — becomes `["<HEX>"]`. No other value can
 * appear as a JSON array in the row (text stays a JSON string), so the
 * decoder knows it for a blob.
 */
function jsonValue(ref: string): string {
  return `CASE typeof(${ref}) WHEN 'blob' THEN json_array(hex(${ref})) ELSE ${ref} END`;
}

/**
 * The CREATE TRIGGER statements for a table with these columns, by trigger
 * name. Pure; the text is compared with sqlite_master to decide whether to
 * recreate, so it must stay byte-stable (no leading blanks, no IF NOT EXISTS:
 * SQLite stores the statement as written, minus those).
 */
export function triggerStatements(table: string, columns: readonly string[], keys: readonly string[]): Map<string, string> {
  const t = quoteIdent(table);
  const log = quoteIdent(LOG_TABLE);
  const name = quoteLiteral(table);
  const body = (op: string, rowAlias: "NEW" | "OLD"): string => {
    const pk = `json_array(${keys.map((k) => jsonValue(`${rowAlias}.${quoteIdent(k)}`)).join(", ")})`;
    const row = `json_object(${columns.map((c) => `${quoteLiteral(c)}, ${jsonValue(`${rowAlias}.${quoteIdent(c)}`)}`).join(", ")})`;
    return `BEGIN INSERT INTO ${log} (tbl, op, pk, row_json) VALUES (${name}, '${op}', ${pk}, ${row}); END`;
  };
  // An UPDATE that changes no column is not a change (turbo-rails #610: no-op saves broadcast).
  // COLLATE BINARY: under a NOCASE column 'a' -> 'A' is still a change the page should show.
  const changed = columns.map((c) => `NEW.${quoteIdent(c)} IS NOT OLD.${quoteIdent(c)} COLLATE BINARY`).join(" OR ");
  const ins = triggerName(table, "ins");
  const upd = triggerName(table, "upd");
  const del = triggerName(table, "del");
  return new Map([
    [ins, `CREATE TRIGGER ${quoteIdent(ins)} AFTER INSERT ON ${t} FOR EACH ROW ${body("insert", "NEW")}`],
    [upd, `CREATE TRIGGER ${quoteIdent(upd)} AFTER UPDATE ON ${t} FOR EACH ROW WHEN ${changed} ${body("update", "NEW")}`],
    [del, `CREATE TRIGGER ${quoteIdent(del)} AFTER DELETE ON ${t} FOR EACH ROW ${body("delete", "OLD")}`],
  ]);
}

export interface TriggerSync {
  /** Triggers created or recreated. */
  created: string[];
  /** turbocast triggers dropped: stale ones, and those of tables no longer bound. */
  dropped: string[];
  /** Bound tables that do not exist (yet): captured once a migration creates them. */
  missingTables: string[];
  /** Columns the Drizzle table declares but the database table lacks (their values decode as undefined). */
  missingColumns: Array<{ table: string; columns: string[] }>;
  /** Tables whose triggers are in place. */
  captured: string[];
  /** `PRAGMA schema_version` after the sync, read under the same write lock. */
  schemaVersion: number;
}

/**
 * Makes the database's turbocast triggers match the bound tables, in one
 * IMMEDIATE transaction: creates the change log if needed, (re)creates each
 * bound table's triggers whose text differs from what they should be, and
 * drops every `_turbocast_*` trigger not wanted (tables no longer bound). On
 * any failure nothing is changed. A no-op when everything already matches.
 *
 * Throws CaptureInstallError for a bound name that is a view, or a table
 * SQLite will not put triggers on.
 */
export function syncTriggers(client: Database.Database, tables: readonly CaptureTable[]): TriggerSync {
  const run = client.transaction((): TriggerSync => {
    for (const ddl of LOG_DDL) client.exec(ddl);
    const result: TriggerSync = { created: [], dropped: [], missingTables: [], missingColumns: [], captured: [], schemaVersion: 0 };
    const objectType = client.prepare(`SELECT type FROM sqlite_schema WHERE name = ? COLLATE NOCASE AND type IN ('table', 'view')`).pluck();
    const tableColumns = client.prepare(`SELECT name, hidden FROM pragma_table_xinfo(?)`);
    const wanted = new Map<string, string>();
    for (const table of tables) {
      const type = objectType.get(table.name) as string | undefined;
      if (type === undefined) {
        result.missingTables.push(table.name);
        continue;
      }
      if (type === "view") throw new CaptureInstallError(table.name, "it is a view; bind a table");
      // hidden: 0 ordinary, 1 virtual-table hidden column, 2/3 generated (readable in triggers)
      const columns = (tableColumns.all(table.name) as Array<{ name: string; hidden: number }>)
        .filter((c) => c.hidden !== 1)
        .map((c) => c.name);
      const present = new Set(columns.map((c) => c.toLowerCase()));
      const missingKeys = table.keys.filter((k) => !present.has(k.toLowerCase()));
      if (missingKeys.length > 0) {
        throw new CaptureInstallError(table.name, `its primary-key column(s) ${missingKeys.join(", ")} do not exist in the database`);
      }
      const missing = table.columns.filter((c) => !present.has(c.toLowerCase()));
      if (missing.length > 0) result.missingColumns.push({ table: table.name, columns: missing });
      for (const [name, sql] of triggerStatements(table.name, columns, table.keys)) wanted.set(name, sql);
      result.captured.push(table.name);
    }
    const existing = client
      .prepare(`SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND name LIKE ? ESCAPE '\\'`)
      .all(`${NAMESPACE.replaceAll("_", "\\_")}%`) as Array<{ name: string; sql: string }>;
    const current = new Map(existing.map((t) => [t.name, t.sql]));
    for (const { name } of existing) {
      if (wanted.has(name)) continue;
      client.exec(`DROP TRIGGER ${quoteIdent(name)}`);
      result.dropped.push(name);
    }
    for (const [name, sql] of wanted) {
      if (current.get(name) === sql) continue;
      if (current.has(name)) client.exec(`DROP TRIGGER ${quoteIdent(name)}`);
      try {
        client.exec(sql);
      } catch (error) {
        const table = tables.find((t) => name.startsWith(`${NAMESPACE}${t.name}_`))?.name ?? name;
        throw new CaptureInstallError(table, `SQLite refused its trigger: ${(error as Error).message}`, { cause: error });
      }
      result.created.push(name);
    }
    result.schemaVersion = client.prepare(`SELECT schema_version FROM pragma_schema_version`).pluck().get() as number;
    return result;
  });
  return run.immediate();
}
