import type { TurboDatabase } from "./turbo.js";

/**
 * Tells TypeScript what `this.db` on streams and `actor` in the change
 * context are in this app, by declaration merging (the same pattern as
 * TanStack Router's `Register`):
 *
 * @example
 * declare module "turbocast" {
 *   interface Register {
 *     db: typeof db;   // the Drizzle database given to createTurbo
 *     actor: User;     // what `authenticate` returns (null is added when it may return null)
 *   }
 * }
 *
 * Without it, `this.db` is a better-sqlite3 Drizzle database of any schema
 * (TurboDatabase) and `actor` is `unknown`.
 */
// biome-ignore lint/suspicious/noEmptyInterface: filled by the app's declaration merging
export interface Register {}

/** The type of `this.db`: Register's `db`, else TurboDatabase. */
export type RegisteredDb = Register extends { db: infer D } ? D : TurboDatabase;

/** The type of `actor` in a change context: Register's `actor`, else unknown. */
export type RegisteredActor = Register extends { actor: infer A } ? A : unknown;
