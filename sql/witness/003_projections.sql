-- Projections: named queries over the group's tables, materialised in
-- pdb_proj_<name> and maintained in the same transaction as each commit.
CREATE TABLE pdb_projections(
  name TEXT PRIMARY KEY,
  definition TEXT NOT NULL,
  columns TEXT NOT NULL,
  version INTEGER NOT NULL
) WITHOUT ROWID, STRICT;
