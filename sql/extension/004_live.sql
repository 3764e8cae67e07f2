-- Live sync (extension/src/worker.rs, extension/src/pull.rs).

-- What each applied remote commit changed, for an app to refresh only
-- that: one row per row changed (tbl, key as a JSON array, op 'insert',
-- 'update' or 'delete'), or per table when a page changed too many rows
-- to list (key NULL, op 'many'), or per migration or snapshot (tbl and
-- key NULL, op 'migration' or 'snapshot': refresh everything). Only the
-- newest 10,000 rows are kept; `id` only grows, so an app reads
-- `WHERE id > ?` from the last id it saw.
CREATE TABLE IF NOT EXISTS pdb_changes(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  seq INTEGER NOT NULL,
  tbl TEXT,
  key TEXT,
  op TEXT NOT NULL
);
