-- The witness's directory (DATA/directory.sqlite): which groups exist and
-- who holds which role in each. Access checks and group listings read
-- only this, so they never open a group's file; a caller with no role
-- makes the witness open nothing.

CREATE TABLE groups(
  grp TEXT PRIMARY KEY,
  created_ms INTEGER NOT NULL
) WITHOUT ROWID, STRICT;

-- One row per (identity, group): the role, and for a viewer the
-- projections it may read (a JSON list; NULL: all).
CREATE TABLE members(
  identity TEXT NOT NULL,
  grp TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('viewer', 'reader', 'writer', 'admin')),
  projections TEXT,
  version INTEGER NOT NULL,
  PRIMARY KEY (identity, grp)
) WITHOUT ROWID, STRICT;
CREATE INDEX members_by_group ON members(grp, identity);

-- Every change of a group's members, numbered per group: who, when, what
-- (value: the role, with the named projections; NULL when revoked).
CREATE TABLE member_log(
  grp TEXT NOT NULL,
  version INTEGER NOT NULL,
  identity TEXT NOT NULL,
  value TEXT,
  changed_by TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  PRIMARY KEY (grp, version)
) WITHOUT ROWID, STRICT;

CREATE TABLE meta(
  k TEXT PRIMARY KEY,
  v ANY NOT NULL
) WITHOUT ROWID, STRICT;
