-- After a restore (extension/src/recover.rs, docs/operations.md): the
-- certificates of commits this database applied that the witness's history
-- no longer holds (it went back to an older backup), kept when
-- pdb_recover replaced them with the witness's history — who wrote each
-- lost commit, when, and its signed record. mode: how this device
-- recovered ('recommit': its verified state re-committed; 'in_place').
CREATE TABLE IF NOT EXISTS pdb_lost_commits(
  seq INTEGER NOT NULL,
  idem_key TEXT NOT NULL,
  author TEXT NOT NULL,
  mine INTEGER NOT NULL,
  head_hash BLOB NOT NULL,
  time_ms INTEGER NOT NULL,
  record BLOB NOT NULL,
  signature BLOB NOT NULL,
  recovered_at_ms INTEGER NOT NULL,
  mode TEXT NOT NULL
);
