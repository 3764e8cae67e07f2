-- The extension's sync state, inside the app's own database so that it
-- commits atomically with the data it describes. All names start pdb_.
-- Each synced table also gets a base log, pdb_base_<table>, created by
-- pdb_open (extension/src/capture.rs): pdb_seq, pdb_existed, then the
-- table's own columns.

-- Key/value settings and state (extension/src/state.rs):
--   set by pdb_open: url, group, token, public_key (the pinned witness key,
--     hex), policy; the group's schema as verified against a signed head:
--     schema (its structure, JSON), schema_version, schema_hash (hex), and
--     schema_fingerprint (a digest of the catalog rows of the synced tables
--     when they were last found to match it);
--   the verified head: head_seq, head_hash (32 bytes), root (the state-root
--     lanes, a blob);
--   remote_seq (the newest signed head seen), last_error, last_sync_ms;
--   local_version (the last of these migrations applied; 001 is 1);
--   snapshot_download (the digest of a snapshot being downloaded, while
--     its download can resume).
CREATE TABLE IF NOT EXISTS pdb_state(
  k TEXT PRIMARY KEY,
  v
) WITHOUT ROWID;

-- The sealed commit being pushed (at most one): the changeset bytes, its
-- idempotency key and the head it was sealed on. Once sent (attempts > 0)
-- it is resent byte for byte, so a retry after a lost answer replays.
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

-- Every applied commit's certificate, verified against the pinned key:
-- the signed record and signature as received, and from them the head
-- hash after the commit (SHA-256 of the record), its state root, author,
-- idempotency key and witness time. mine = 1 for this database's own.
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

-- Both sides of every conflict a rebase met, and which one was kept
-- (kept = 'remote' or 'local', under policy). seq is the remote commit,
-- pk the row's key values as a JSON array. For a column changed on both
-- sides, col names it and the values are the column's (base_value NULL
-- when the row had no base: inserted on both sides). For a row deleted on
-- one side and changed on the other, col is NULL and each value is the
-- whole row as a JSON array, or NULL where the row does not exist.
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
