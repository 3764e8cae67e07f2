-- Rows held back from sealing until something changes, each with what
-- must change (extension/src/hold.rs). Written by sync only; shown by
-- pdb_status() under "blocked".
--   tbl, pk: the row (pk: its key values, encoded as in the state root;
--     key: the same as a JSON array, for people);
--   code: why — a witness rejection (changeset_conflict, invalid_changeset,
--     rule_error, unauthorized), or found at seal time (null_key: a NULL in
--     a key column; row_too_large: the row alone exceeds what one request
--     may carry);
--   message, advice: what happened and what to do;
--   head_seq, row_digest, tried_ms: the verified head, a digest of the row
--     as it was (empty: absent) and the time when it was last refused. A refused row
--     is tried again once the row was edited or the head moved (others'
--     commits may have freed a value), and at least every 10 minutes (the
--     witness's rules may have changed); at_ms: when it was first held.
CREATE TABLE IF NOT EXISTS pdb_blocked(
  tbl TEXT NOT NULL,
  pk BLOB NOT NULL,
  key TEXT NOT NULL,
  code TEXT NOT NULL,
  message TEXT NOT NULL,
  advice TEXT NOT NULL,
  head_seq INTEGER NOT NULL,
  row_digest BLOB NOT NULL,
  tried_ms INTEGER NOT NULL,
  at_ms INTEGER NOT NULL,
  PRIMARY KEY (tbl, pk)
) WITHOUT ROWID;

-- Conflicts: what kind each is (column: the same column changed on both
-- sides; row: deleted on one side, changed on the other; constraint: the
-- local row could not stand beside the remote one — a UNIQUE value taken,
-- or a CHECK the merged row fails — and was set aside), and when an open
-- one (kept = 'open', policy manual) was resolved with pdb_resolve().
-- key_values: the row's key exactly (encoded as in the state root), for
-- pdb_resolve; pk stays the readable JSON form.
ALTER TABLE pdb_conflicts ADD COLUMN kind TEXT NOT NULL DEFAULT 'column';
ALTER TABLE pdb_conflicts ADD COLUMN resolved_ms INTEGER;
ALTER TABLE pdb_conflicts ADD COLUMN key_values BLOB;
UPDATE pdb_conflicts SET kind = 'row' WHERE col IS NULL;
