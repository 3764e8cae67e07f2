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

module.exports = { load, getLoadablePath, version };
