-- Schema migrations (extension/src/migrate.rs).

-- The schema version (and its hash, hex) a sealed commit was made on: a
-- commit sealed before a migration is pulled is sent as it was, and the
-- witness carries it to the new version while its window allows.
ALTER TABLE pdb_outbox ADD COLUMN schema_version INTEGER;
ALTER TABLE pdb_outbox ADD COLUMN schema_hash TEXT;

-- New pdb_state keys: app_schema_min, app_schema_max (the range of schema
-- versions the app's code understands, from pdb_open's schema_versions;
-- absent: any). The extension never moves the local schema past
-- app_schema_max.
--
-- pdb_conflicts.kind 'schema': a local edit a migration took away (a value
-- of a dropped column, col names it; a row of a dropped table, col NULL,
-- local_value the row as a JSON array). kept = 'remote': the group's
-- schema no longer has it.
