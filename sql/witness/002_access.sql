-- Who may do what in the group, and rules on the rows they write.
-- Every change is versioned and logged in pdb_access_log.

CREATE TABLE pdb_members(
  identity TEXT PRIMARY KEY,
  role TEXT NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
  version INTEGER NOT NULL
) WITHOUT ROWID, STRICT;

-- A SQL boolean expression per table over new.*, old.*, :caller and :op,
-- checked for every row of every changeset.
CREATE TABLE pdb_rules(
  tbl TEXT PRIMARY KEY,
  expr TEXT NOT NULL,
  version INTEGER NOT NULL
) WITHOUT ROWID, STRICT;

-- kind: 'member' (subject = identity, value = role or NULL when revoked)
-- or 'rule' (subject = table, value = expression or NULL when removed).
CREATE TABLE pdb_access_log(
  version INTEGER PRIMARY KEY,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  value TEXT,
  changed_by TEXT NOT NULL,
  time_ms INTEGER NOT NULL
) STRICT;
