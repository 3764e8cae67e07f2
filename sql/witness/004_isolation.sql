-- Projection-only access, write rules per operation, and projections that
-- stopped being maintained.

-- Roles now include 'viewer': reads projections only (all of them, or the
-- names in `projections`, a JSON list), never the log or snapshots.
CREATE TABLE pdb_members_v2(
  identity TEXT PRIMARY KEY,
  role TEXT NOT NULL CHECK (role IN ('viewer', 'reader', 'writer', 'admin')),
  projections TEXT,
  version INTEGER NOT NULL
) WITHOUT ROWID, STRICT;
INSERT INTO pdb_members_v2(identity, role, version)
  SELECT identity, role, version FROM pdb_members;
DROP TABLE pdb_members;
ALTER TABLE pdb_members_v2 RENAME TO pdb_members;

-- A rule per operation: a JSON object {"insert", "update", "delete"} of
-- expressions (an operation without one is refused); `expr` is then ''.
ALTER TABLE pdb_rules ADD COLUMN ops TEXT;

-- Why a projection stopped being maintained (its SQL failed or ran out of
-- budget at run time), and at which commit; NULL while it is in step.
ALTER TABLE pdb_projections ADD COLUMN broken TEXT;
