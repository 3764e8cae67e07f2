-- The extension's sync state, inside the app's own database so that it
-- commits atomically with the data it describes. All names start pdb_.

-- Settings and the verified head: url, group, public_key, token, policy,
-- schema_version, schema_hash, tables (JSON), head_seq, head_hash, root
-- (state-root lanes of the verified head), last_error, last_sync_ms.
CREATE TABLE IF NOT EXISTS pdb_state(
  k TEXT PRIMARY KEY,
  v
) WITHOUT ROWID;

-- The sealed commit being pushed (at most one): the exact request, so a
-- retry after a lost response is byte-identical and replays.
CREATE TABLE IF NOT EXISTS pdb_outbox(
  id INTEGER PRIMARY KEY,
  idem_key TEXT NOT NULL UNIQUE,
  base_seq INTEGER NOT NULL,
  base_hash BLOB NOT NULL,
  changeset BLOB NOT NULL,
  rows INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  sealed_ms INTEGER NOT NULL
);

-- Every applied commit's certificate, verified against the pinned key.
CREATE TABLE IF NOT EXISTS pdb_certificates(
  seq INTEGER PRIMARY KEY,
  idem_key TEXT NOT NULL,
  author TEXT NOT NULL,
  mine INTEGER NOT NULL,
  head_hash BLOB NOT NULL,
  state_root BLOB NOT NULL,
  time_ms INTEGER NOT NULL,
  record BLOB NOT NULL,
  signature BLOB NOT NULL
);

-- Both sides of every conflict a rebase met, and which one was kept.
-- col is NULL when a whole row was deleted on one side; the row values
-- are then JSON arrays.
CREATE TABLE IF NOT EXISTS pdb_conflicts(
  id INTEGER PRIMARY KEY,
  seq INTEGER NOT NULL,
  tbl TEXT NOT NULL,
  pk TEXT NOT NULL,
  col TEXT,
  base_value,
  local_value,
  remote_value,
  kept TEXT NOT NULL,
  policy TEXT NOT NULL,
  at_ms INTEGER NOT NULL
);
