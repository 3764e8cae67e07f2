-- PersonalDB walkthrough, part two: shipping version 2 of the app from the
-- sqlite3 CLI. scripts/walkthrough.sh runs it after sql/walkthrough.sql; by
-- hand, run it after that in the same directory (the same walkthrough_a.db,
-- walkthrough_b.db and pdb_params.sql), with
-- sql/migrations/walkthrough_002.sql reachable from there and the token in
-- pdb_params.sql being the group's admin's (a migration is the admin's).
-- Run: sqlite3 < sql/walkthrough_v2.sql
--
-- Device B is an install of version 1 of the app that has not upgraded yet:
-- its sync stops with app_upgrade_required (sqlite3 prints that error and so
-- exits with status 1 at the end), while its reads and writes go on; once
-- upgraded, it syncs where it stopped and nothing is lost.
.bail on
.mode list

-- B runs version 1 of the app: it says which schema versions it understands.
.open walkthrough_b.db
.read pdb_params.sql
SELECT 'B opened understanding ' || json_extract(pdb_open(@url, @group, json_object('token', @token, 'schema_versions', json_array(1, 1))), '$.group') || ' versions ' || json_extract(pdb_status(), '$.app_schema_versions');

-- The admin ships version 2 of the schema: ordinary DDL, submitted through
-- any device opened for the group.
.open walkthrough_a.db
.read pdb_params.sql
SELECT 'migrated to version ' || json_extract(m, '$.schema_version') || ' at seq ' || json_extract(m, '$.seq') || ': ' || json_extract(m, '$.operations')
  FROM (SELECT pdb_migrate(readfile('sql/migrations/walkthrough_002.sql')) AS m);

-- A runs version 2 of the app: it re-opens saying so; sync migrates its
-- tables (the extension builds the statements itself from the signed
-- operations), and the app uses the new column.
SELECT 'A opened, migrations applied: ' || json_extract(pdb_open(@url, @group, json_object('token', @token, 'schema_versions', json_array(1, 2))), '$.migrations');
UPDATE tasks SET due = '2026-12-24' WHERE id = 't3';
SELECT 'A sync: ' || pdb_sync();

-- B, still version 1, adds a task and tries to sync: its t4 is pushed
-- (commits sealed on version 1 are still accepted inside the migration's
-- window: the witness translates them), then the pull meets the migration,
-- which is past what this app understands, so sync stops and says so.
.open walkthrough_b.db
.read pdb_params.sql
INSERT INTO tasks(id, title) VALUES ('t4', 'Plan the trip');
-- (From here on, an error no longer ends the script: sqlite3 cannot bail
-- again once one error happened.)
.bail off
SELECT pdb_sync();
SELECT 'B stopped: ' || json_extract(pdb_status(), '$.reason.code') || ', still at schema version ' || json_extract(pdb_status(), '$.schema_version') || ', ' || (SELECT count(*) FROM tasks) || ' tasks here';

-- B upgrades to version 2 of the app and syncs where it stopped: it
-- migrates (its t4, already accepted, takes the new column's default) and
-- A's due date arrives; nothing is left to push.
SELECT 'B opened, migrations applied: ' || json_extract(pdb_open(@url, @group, json_object('token', @token, 'schema_versions', json_array(1, 2))), '$.migrations');
SELECT 'B sync: ' || pdb_sync();
.open walkthrough_a.db
.read pdb_params.sql
SELECT 'A sync: ' || pdb_sync();

-- Both hold the same rows at version 2 and prove it against the same root.
SELECT 'A v2 rows: ' || group_concat(id || '=' || title || '/' || done || '/' || ifnull(due, '-'), ', ') FROM (SELECT * FROM tasks ORDER BY id);
SELECT 'A v2 root: ' || json_extract(pdb_head(), '$.state_root') || ' schema=' || json_extract(pdb_status(), '$.schema_version') || ' verified=' || json_extract(pdb_verify(), '$.ok');
.open walkthrough_b.db
.read pdb_params.sql
SELECT 'B v2 rows: ' || group_concat(id || '=' || title || '/' || done || '/' || ifnull(due, '-'), ', ') FROM (SELECT * FROM tasks ORDER BY id);
SELECT 'B v2 root: ' || json_extract(pdb_head(), '$.state_root') || ' schema=' || json_extract(pdb_status(), '$.schema_version') || ' verified=' || json_extract(pdb_verify(), '$.ok');
