-- PersonalDB walkthrough, plain SQL in the sqlite3 CLI: two devices (two
-- database files), offline edits on both, sync, and both converge.
--
-- One command sets it up and runs it (and part two) against a running
-- witness: PDB_ADMIN_TOKEN=<admin token> scripts/walkthrough.sh
-- By hand it needs the group created from sql/walkthrough_schema.sql and a
-- file pdb_params.sql in the current directory holding:
--   .load /path/to/target/release/libpdb
--   .parameter set @url 'http://127.0.0.1:7070'
--   .parameter set @group '<the group id>'
--   .parameter set @token '<a token of the group's admin>'
-- Run: sqlite3 < sql/walkthrough.sql
.bail on
.mode list

-- Device A opens the group (creating the table) and adds two tasks.
.open walkthrough_a.db
.read pdb_params.sql
SELECT 'A opened at seq ' || json_extract(pdb_open(@url, @group, json_object('token', @token)), '$.head.seq');
INSERT INTO tasks(id, title) VALUES ('t1', 'Buy milk'), ('t2', 'Write report');
SELECT 'A pushed ' || json_extract(pdb_sync(), '$.pushed') || ' commit(s)';

-- Device B opens the same group and receives them.
.open walkthrough_b.db
.read pdb_params.sql
SELECT 'B pulled ' || json_extract(pdb_open(@url, @group, json_object('token', @token)), '$.pulled') || ' commit(s)';

-- Offline on B: finish t1, add t3. (No sync yet.)
UPDATE tasks SET done = 1 WHERE id = 't1';
INSERT INTO tasks(id, title) VALUES ('t3', 'Call Bob');

-- Offline on A: rename t1 (another column of the same row), drop t2.
.open walkthrough_a.db
.read pdb_params.sql
UPDATE tasks SET title = 'Buy oat milk' WHERE id = 't1';
DELETE FROM tasks WHERE id = 't2';

-- Back online: A syncs, then B (which rebases on A's work), then A again.
SELECT 'A sync: ' || pdb_sync();
.open walkthrough_b.db
.read pdb_params.sql
SELECT 'B sync: ' || pdb_sync();
.open walkthrough_a.db
.read pdb_params.sql
SELECT 'A sync: ' || pdb_sync();

-- Both now hold the same rows and prove it against the same signed root.
SELECT 'A rows: ' || group_concat(id || '=' || title || '/' || done, ', ') FROM (SELECT * FROM tasks ORDER BY id);
SELECT 'A root: ' || json_extract(pdb_head(), '$.state_root') || ' verified=' || json_extract(pdb_verify(), '$.ok');
.open walkthrough_b.db
.read pdb_params.sql
SELECT 'B rows: ' || group_concat(id || '=' || title || '/' || done, ', ') FROM (SELECT * FROM tasks ORDER BY id);
SELECT 'B root: ' || json_extract(pdb_head(), '$.state_root') || ' verified=' || json_extract(pdb_verify(), '$.ok');
