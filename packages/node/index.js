'use strict';
// PersonalDB for Node: loads the bundled libpdb SQLite extension into a
// better-sqlite3 Database or a node:sqlite DatabaseSync. After that, sync is
// plain SQL on that connection: SELECT pdb_open(...), pdb_sync(), ...

const fs = require('node:fs');
const path = require('node:path');

const version = require('./package.json').version;

// SQLite derives the entry point (sqlite3_pdb_init) from this file name.
const LIBRARY = 'libpdb.so';

/** The absolute path of the bundled libpdb.so. */
function getLoadablePath() {
  return path.join(__dirname, LIBRARY);
}

/**
 * Loads the bundled libpdb into `db` (once per connection).
 * - better-sqlite3: any Database.
 * - node:sqlite (Node 22.13+ / 23.5+): a DatabaseSync opened with
 *   { allowExtension: true }; loading is switched off again afterwards.
 */
function load(db) {
  if (db === null || typeof db !== 'object' || typeof db.loadExtension !== 'function') {
    throw new TypeError(
      'personaldb.load: expected a better-sqlite3 Database or a node:sqlite DatabaseSync ' +
        '(an object with loadExtension()), got ' +
        (db === null ? 'null' : typeof db === 'object' ? (db.constructor && db.constructor.name) || 'an object' : typeof db),
    );
  }
  const file = getLoadablePath();
  if (!fs.existsSync(file)) {
    throw new Error(`personaldb.load: the bundled library is missing (${file}); reinstall personaldb`);
  }
  if (typeof db.enableLoadExtension === 'function') {
    // node:sqlite refuses enableLoadExtension(true) unless the database
    // was constructed with allowExtension: true.
    try {
      db.enableLoadExtension(true);
    } catch (cause) {
      throw new Error(
        'personaldb.load: this node:sqlite database does not allow extensions; open it with ' +
          'new DatabaseSync(path, { allowExtension: true })',
        { cause },
      );
    }
    try {
      db.loadExtension(file);
    } finally {
      db.enableLoadExtension(false);
    }
    return;
  }
  db.loadExtension(file);
}

// One SQL function call on `db`, its JSON answer parsed. Works with
// better-sqlite3 and node:sqlite alike.
function call(db, sql, ...params) {
  const row = db.prepare(sql).get(...params);
  const text = row && Object.values(row)[0];
  return JSON.parse(text);
}

/**
 * Starts the background sync worker for this database file (pdb_sync_start):
 * it pushes soon after local writes and pulls when the witness's head moves.
 * A second call is harmless and applies new options.
 */
function syncStart(db, options) {
  return options === undefined
    ? call(db, 'SELECT pdb_sync_start()')
    : call(db, 'SELECT pdb_sync_start(?)', JSON.stringify(options));
}

/** Stops this file's background worker (pdb_sync_stop). */
function syncStop(db) {
  return call(db, 'SELECT pdb_sync_stop()');
}

/**
 * Blocks until the verified head reaches `seq` or `timeoutMs` passed
 * (pdb_wait; it blocks the calling thread).
 */
function wait(db, seq, timeoutMs) {
  return call(db, 'SELECT pdb_wait(?, ?)', seq, timeoutMs);
}

/** Rows of pdb_changes after id `after`, oldest first: [{id, seq, tbl, key, op}]. */
function changes(db, after = 0, limit = 1000) {
  const rows = db
    .prepare('SELECT id, seq, tbl, key, op FROM pdb_changes WHERE id > ? ORDER BY id LIMIT ?')
    .all(after, limit);
  return rows.map((r) => ({ ...r, key: r.key === null ? null : JSON.parse(r.key) }));
}

module.exports = { load, getLoadablePath, version, syncStart, syncStop, wait, changes };
