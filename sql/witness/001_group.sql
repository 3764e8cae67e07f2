-- Bookkeeping inside each group's database file, beside the group's own
-- tables (the replica). Keeping both in one file makes the log append, the
-- head move and the replica change one atomic SQLite transaction.
-- Group tables may not use the pdb_ prefix.

CREATE TABLE pdb_meta(
  k TEXT PRIMARY KEY,
  v ANY NOT NULL
) WITHOUT ROWID, STRICT;

-- Exactly one row: the current head and the full state-root lanes.
CREATE TABLE pdb_head(
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL,
  head_hash BLOB NOT NULL,
  root BLOB NOT NULL,
  time_ms INTEGER NOT NULL
) STRICT;

-- The linear history. record/signature are the certificate exactly as
-- signed; head_hash is SHA-256(record), kept for base-head lookups.
CREATE TABLE pdb_log(
  seq INTEGER PRIMARY KEY,
  idem_key TEXT NOT NULL UNIQUE,
  head_hash BLOB NOT NULL,
  changeset BLOB NOT NULL,
  record BLOB NOT NULL,
  signature BLOB NOT NULL,
  client_time INTEGER
) STRICT;

-- Last sequence that touched each row (table, encoded primary key); the
-- rebase_if_clean policy checks it.
CREATE TABLE pdb_row_version(
  tbl TEXT NOT NULL,
  pk BLOB NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (tbl, pk)
) WITHOUT ROWID, STRICT;
