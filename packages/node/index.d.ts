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

/** Anything that prepares SQL statements (better-sqlite3, node:sqlite). */
export interface Preparing {
  prepare(sql: string): { get(...params: unknown[]): unknown; all(...params: unknown[]): unknown[] };
}

/** `pdb_sync_start`'s options (all optional; milliseconds unless named). */
export interface SyncOptions {
  debounce_ms?: number;
  max_delay_ms?: number;
  poll_ms?: number;
  wait_seconds?: number;
  pull_every_ms?: number;
  min_backoff_ms?: number;
  max_backoff_ms?: number;
  busy_timeout_ms?: number;
}

/**
 * Starts the background sync worker for this database file
 * (`pdb_sync_start`): `{worker: "started" | "running", file}`. It pushes
 * soon after local writes (from any connection) and pulls when the
 * witness's head moves; `pdb_status().worker` says how it is doing.
 */
export declare function syncStart(db: Preparing, options?: SyncOptions): { worker: string; file: string };

/** Stops this file's worker (`pdb_sync_stop`): `{worker: "stopped" | "stopping" | "not_running", file}`. */
export declare function syncStop(db: Preparing): { worker: string; file: string };

/** Blocks until the verified head reaches `seq`, or `timeoutMs` (≤ 600000) passed (`pdb_wait`). */
export declare function wait(db: Preparing, seq: number, timeoutMs: number): { reached: boolean; head_seq: number };

/** One row of `pdb_changes`: what an applied remote commit changed. */
export interface Change {
  id: number;
  seq: number;
  /** `null` for `migration` and `snapshot`: refresh everything. */
  tbl: string | null;
  /** The row's key; `null` for `many` (refresh the table), `migration`, `snapshot`. */
  key: unknown[] | null;
  op: 'insert' | 'update' | 'delete' | 'many' | 'migration' | 'snapshot';
}

/** Rows of `pdb_changes` with `id > after`, oldest first. */
export declare function changes(db: Preparing, after?: number, limit?: number): Change[];
