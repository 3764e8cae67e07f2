-- Schema evolution: a migration is an entry of the log (docs/witness.md,
-- "Migrations").

-- Every schema version the group has had: the log entry that made it (0
-- for the group's creation), its structure (JSON, as pdb_meta.schema) and
-- hash, the oldest version whose commits are still accepted while it is
-- the newest, and the DDL it was made from (for people; never run).
CREATE TABLE pdb_schemas(
  version INTEGER PRIMARY KEY,
  seq INTEGER NOT NULL,
  structure TEXT NOT NULL,
  hash BLOB NOT NULL,
  accepts_from INTEGER NOT NULL,
  ddl TEXT NOT NULL
) STRICT;
INSERT INTO pdb_schemas(version, seq, structure, hash, accepts_from, ddl)
  SELECT v.v, 0, s.v, h.v, v.v, coalesce((SELECT v FROM pdb_meta WHERE k = 'schema_sql'), '')
    FROM pdb_meta v, pdb_meta s, pdb_meta h
   WHERE v.k = 'schema_version' AND s.k = 'schema' AND h.k = 'schema_hash';

-- A migration entry's canonical bytes (NULL for a commit; its changeset is
-- then empty, and its idem_key is 'migration/<version>', a key no client
-- can send). For a commit sealed on an older schema version and translated
-- to the current one, `submitted_digest` is the SHA-256 of the changeset
-- as sent (a retry with the same bytes replays).
ALTER TABLE pdb_log ADD COLUMN migration BLOB;
ALTER TABLE pdb_log ADD COLUMN submitted_digest BLOB;

-- The schema in force at the head, so a head is always signed with the
-- schema of its own moment.
ALTER TABLE pdb_head ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pdb_head ADD COLUMN schema_hash BLOB NOT NULL DEFAULT x'';
UPDATE pdb_head SET
  schema_version = coalesce((SELECT v FROM pdb_meta WHERE k = 'schema_version'), 0),
  schema_hash = coalesce((SELECT v FROM pdb_meta WHERE k = 'schema_hash'), x'');
