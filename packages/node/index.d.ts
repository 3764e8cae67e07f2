/**
 * PersonalDB for Node: the bundled libpdb SQLite extension.
 *
 * ```ts
 * import Database from 'better-sqlite3';
 * import { load } from 'personaldb';
 * const db = new Database('app.db');
 * load(db);
 * db.prepare("SELECT pdb_sync()").pluck().get();
 * ```
 */

/** A better-sqlite3 `Database` (anything with `loadExtension(path)`). */
export interface BetterSqlite3Database {
  loadExtension(path: string, entryPoint?: string): unknown;
}

/**
 * A `node:sqlite` `DatabaseSync` (Node 22.13+ / 23.5+), opened with
 * `{ allowExtension: true }`.
 */
export interface NodeSqliteDatabase {
  enableLoadExtension(allow: boolean): void;
  loadExtension(path: string, entryPoint?: string): void;
}

/**
 * Loads the bundled libpdb into `db` (once per connection). For node:sqlite,
 * extension loading is switched off again afterwards.
 * @throws Error when a node:sqlite database was opened without `allowExtension: true`.
 */
export declare function load(db: BetterSqlite3Database | NodeSqliteDatabase): void;

/** The absolute path of the bundled `libpdb.so` (for other hosts). */
export declare function getLoadablePath(): string;

/** This package's version; equals `SELECT pdb_version()` after `load`. */
export declare const version: string;
