-- Version 2 of the walkthrough app: tasks get a due date, found by an index.
-- Ordinary DDL, run by the witness on a scratch copy of the schema under an
-- authorizer and turned into structured operations (docs/witness.md,
-- "Migrations"); devices build their own statements from those.
-- Submit as the group's admin:
--   sqlite3 CLI:  SELECT pdb_migrate(readfile('sql/migrations/walkthrough_002.sql'));
--   witness host: pdb-witness migrate --group walkthrough --file sql/migrations/walkthrough_002.sql
ALTER TABLE tasks ADD COLUMN due TEXT;
CREATE INDEX tasks_due ON tasks(due);
