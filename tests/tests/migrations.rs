//! Schema evolution end to end: a migration is an entry of the group's
//! log; devices migrate as they pull (offline across several, with
//! pending writes), apps pinned to old versions stop and resume, commits
//! sealed on older versions are carried across while the window allows,
//! snapshots after migrations bootstrap new devices, and the verifier
//! replays it all. Real witness, real extension.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::{json, Value as Json};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, old TEXT);
                   CREATE TABLE drafts(id TEXT PRIMARY KEY, body TEXT);";

struct Setup {
    dir: TempDir,
    w: Witness,
}

fn setup(label: &str) -> Setup {
    setup_with(label, &[])
}

/// With extra `serve` flags.
fn setup_with(label: &str, extra: &[&str]) -> Setup {
    let dir = TempDir::new(label);
    let w = Witness::start_with(dir.path(), 0, extra);
    w.create_group("g", DDL);
    Setup { dir, w }
}

impl Setup {
    fn device(&self, name: &str) -> Device {
        let d = Device::new(&self.dir.path().join(format!("{name}.db")));
        d.open(&self.w, "g", "remote_wins").expect("pdb_open");
        d
    }

    /// A device whose app understands schema versions `range`.
    fn pinned(&self, name: &str, range: &str) -> (Device, Result<Json, String>) {
        let d = Device::new(&self.dir.path().join(format!("{name}.db")));
        let r = open_pinned(&d, &self.w, range);
        (d, r)
    }

    fn migrate(&self, ddl: &str, accepts_from: Option<u32>) -> Reply {
        let mut body = json!({ "ddl": ddl });
        if let Some(a) = accepts_from {
            body["accepts_from"] = json!(a);
        }
        self.w.post("/v1/groups/g/migrations", &body)
    }
}

fn open_pinned(d: &Device, w: &Witness, range: &str) -> Result<Json, String> {
    d.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{TOKEN}', 'schema_versions', json('{range}')))",
        w.url
    ))
}

fn status(d: &Device) -> Json {
    d.call("pdb_status()").unwrap()
}

fn verified(d: &Device) {
    let v = d.call("pdb_verify()").unwrap();
    assert_eq!(v["ok"], Json::Bool(true), "{v}");
}

fn count(d: &Device, sql: &str) -> i64 {
    d.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Every device has the same rows, bytes and verified head.
fn same(devices: &[&Device], tables: &[&str]) {
    let first = devices[0].dump(tables);
    let head = devices[0].call("pdb_head()").unwrap();
    for d in devices {
        assert_eq!(d.dump(tables), first, "same rows, same bytes");
        let h = d.call("pdb_head()").unwrap();
        assert_eq!(
            (
                &h["seq"],
                &h["state_root"],
                &h["schema_version"],
                &h["schema_hash"]
            ),
            (
                &head["seq"],
                &head["state_root"],
                &head["schema_version"],
                &head["schema_hash"]
            ),
            "same verified head"
        );
        verified(d);
    }
}

#[test]
fn a_device_offline_across_three_migrations_converges_with_its_pending_writes() {
    let s = setup("offline-three");
    let a = s.device("a");
    let b = s.device("b");
    a.exec(
        "INSERT INTO notes VALUES (1, 'one', 'o1'), (2, 'two', 'o2'), (3, 'three', 'o3');
         INSERT INTO drafts VALUES ('d1', 'draft one');",
    );
    a.sync().unwrap();
    b.sync().unwrap();
    // B goes offline and edits every table the migrations will touch:
    // a title (kept), a value of the column to be dropped (recorded), a
    // new row, a deleted row.
    b.exec(
        "UPDATE notes SET title = 'two, edited offline' WHERE id = 2;
         UPDATE notes SET old = 'o3, edited offline' WHERE id = 3;
         INSERT INTO notes VALUES (4, 'four, offline', 'o4');
         DELETE FROM notes WHERE id = 1;
         UPDATE drafts SET body = 'edited offline' WHERE id = 'd1';",
    );

    // v2: a column with a default.
    let r = s.migrate(
        "ALTER TABLE notes ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
        None,
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["schema"]["version"], 2);
    assert_eq!(r.body["ops"][0]["op"], "add_column");
    a.sync().unwrap();
    assert_eq!(a.call("pdb_head()").unwrap()["schema_version"], 2);
    a.exec(
        "UPDATE notes SET done = 1 WHERE id = 2; INSERT INTO notes VALUES (5, 'five', NULL, 1);",
    );
    a.sync().unwrap();

    // v3: a table.
    let r = s.migrate(
        "CREATE TABLE tags(note INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY(note, tag)) WITHOUT ROWID;
         CREATE INDEX tags_by_tag ON tags(tag);",
        None,
    );
    assert_eq!(r.status, 201, "{r:?}");
    a.sync().unwrap();
    a.exec("INSERT INTO tags VALUES (2, 'home'), (5, 'work');");
    a.sync().unwrap();

    // v4: a column dropped.
    let r = s.migrate("ALTER TABLE notes DROP COLUMN old", None);
    assert_eq!(r.status, 201, "{r:?}");
    a.sync().unwrap();
    a.exec("UPDATE notes SET title = 'three, by a' WHERE id = 3;");
    a.sync().unwrap();
    assert_eq!(a.call("pdb_head()").unwrap()["schema_version"], 4);

    // B comes back: it migrates three times, rebases, pushes, converges.
    let r = b.sync().expect("the offline device syncs");
    assert_eq!(r["migrations"], 3, "{r}");
    a.sync().unwrap();
    b.sync().unwrap();
    same(&[&a, &b], &["notes", "drafts", "tags"]);
    let rows: Vec<(i64, String, i64)> = {
        let mut st = b
            .conn
            .prepare("SELECT id, title, done FROM notes ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        rows,
        vec![
            (2, "two, edited offline".to_string(), 1),
            (3, "three, by a".to_string(), 0),
            (4, "four, offline".to_string(), 0),
            (5, "five".to_string(), 1),
        ],
        "B's offline edits, A's edits, the new column's default"
    );
    assert_eq!(
        count(
            &b,
            "SELECT count(*) FROM pragma_table_info('notes') WHERE name = 'old'"
        ),
        0,
        "the dropped column is gone here too"
    );
    assert_eq!(
        b.dump(&["drafts"]),
        vec![format!(
            "drafts|text:{}|text:{}",
            pdb_protocol::hex(b"d1"),
            pdb_protocol::hex(b"edited offline")
        )]
    );
    // B's edits to the dropped column are recorded, not lost.
    let recorded: Vec<(String, String, Json)> = {
        let mut st = b
            .conn
            .prepare(
                "SELECT pk, col, local_value FROM pdb_conflicts WHERE kind = 'schema' ORDER BY pk",
            )
            .unwrap();
        st.query_map([], |r| {
            let v: rusqlite::types::Value = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                match v {
                    rusqlite::types::Value::Text(t) => json!(t),
                    other => json!(format!("{other:?}")),
                },
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert_eq!(
        recorded,
        vec![
            (
                "[3]".to_string(),
                "old".to_string(),
                json!("o3, edited offline")
            ),
            ("[4]".to_string(), "old".to_string(), json!("o4")),
        ]
    );
    assert_eq!(status(&b)["pending_rows"], 0);
    let (ok, out) = s.w.verify_cli();
    assert!(ok, "{out}");
    assert!(out.contains("ok g:"), "{out}");
}

#[test]
fn a_dropped_table_records_the_rows_a_device_had_not_pushed() {
    let s = setup("drop-table");
    let a = s.device("a");
    let b = s.device("b");
    a.exec("INSERT INTO drafts VALUES ('x', 'shared');");
    a.sync().unwrap();
    b.sync().unwrap();
    b.exec("INSERT INTO drafts VALUES ('y', 'only on b'); UPDATE drafts SET body = 'changed' WHERE id = 'x';");
    let r = s.migrate("DROP TABLE drafts", None);
    assert_eq!(r.status, 201, "{r:?}");
    let r = b.sync().unwrap();
    assert_eq!(r["migrations"], 1, "{r}");
    assert_eq!(
        count(
            &b,
            "SELECT count(*) FROM sqlite_schema WHERE name IN ('drafts', 'pdb_base_drafts')"
        ),
        0
    );
    assert_eq!(
        count(&b, "SELECT count(*) FROM pdb_conflicts WHERE kind = 'schema' AND tbl = 'drafts' AND col IS NULL"),
        2,
        "both pending rows are recorded"
    );
    a.sync().unwrap();
    same(&[&a, &b], &["notes"]);
}

#[test]
fn an_app_pinned_to_an_old_version_stops_cleanly_and_resumes_after_upgrading() {
    let s = setup("pinned");
    let (old_app, r) = s.pinned("old", "[1, 1]");
    r.expect("pdb_open with the group at version 1");
    let other = s.device("other");
    old_app.exec("INSERT INTO notes VALUES (1, 'before', NULL);");
    old_app.sync().unwrap();

    let r = s.migrate(
        "ALTER TABLE notes ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
        None,
    );
    assert_eq!(r.status, 201, "{r:?}");
    other.sync().unwrap();
    other.exec("INSERT INTO notes VALUES (2, 'from v2', NULL, 1);");
    other.sync().unwrap();

    // The old app keeps writing; sync stops with its own code.
    old_app.exec("INSERT INTO notes VALUES (3, 'old app, after', 'x');");
    let e = old_app.sync().unwrap_err();
    assert!(e.contains("app_upgrade_required"), "{e}");
    assert!(
        e.contains("version 2") && e.contains("up to version 1"),
        "{e}"
    );
    let st = status(&old_app);
    assert_eq!(st["state"], "blocked", "{st}");
    assert_eq!(st["reason"]["code"], "app_upgrade_required", "{st}");
    assert_eq!(
        st["schema_version"], 1,
        "never moved past what the app knows"
    );
    // Local reads and writes go on.
    old_app.exec("UPDATE notes SET title = 'still writing' WHERE id = 3;");
    assert_eq!(count(&old_app, "SELECT count(*) FROM notes"), 2);
    // Again: the same stop, nothing applied past it.
    assert!(old_app.sync().unwrap_err().contains("app_upgrade_required"));
    assert_eq!(status(&old_app)["schema_version"], 1);

    // A new device of the old app is refused up front: nothing created.
    let (fresh, r) = s.pinned("fresh-old", "[1, 1]");
    assert!(r.unwrap_err().contains("app_upgrade_required"));
    assert_eq!(
        count(&fresh, "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'pdb%' AND name NOT LIKE 'sqlite%'"),
        0
    );

    // The upgraded app opens with the new range and resumes: nothing lost.
    let r = open_pinned(&old_app, &s.w, "[1, 2]").expect("re-open after the upgrade");
    assert_eq!(r["migrations"], 1, "{r}");
    old_app.sync().unwrap();
    other.sync().unwrap();
    same(&[&old_app, &other], &["notes"]);
    let titles: Vec<String> = {
        let mut st = other
            .conn
            .prepare("SELECT title FROM notes ORDER BY id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(titles, ["before", "from v2", "still writing"]);
    let st = status(&old_app);
    assert_eq!(st["state"], "healthy", "{st}");
    assert_eq!(st["schema_version"], 2);
}

#[test]
fn commits_sealed_on_an_older_version_are_carried_across_inside_the_window_and_refused_outside() {
    let s = setup("window");
    let g1 = s.w.create_group(
        "w",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, gone TEXT)",
    );
    let row = |id: i64| {
        changeset(
            "t",
            &[1, 0, 0],
            vec![insert(vec![
                Value::Integer(id),
                Value::text("v"),
                Value::text("g"),
            ])],
        )
    };
    assert_eq!(
        s.w.commit_at_head(&g1, "first", &row(1), Policy::Strict)
            .status,
        201
    );
    let before = s.w.head("w");
    let m = s.w.post(
        "/v1/groups/w/migrations",
        &json!({"ddl": "ALTER TABLE t ADD COLUMN n INTEGER DEFAULT 7; ALTER TABLE t DROP COLUMN gone", "accepts_from": 1}),
    );
    assert_eq!(m.status, 201, "{m:?}");
    assert_eq!(m.body["accepts_from"], 1);

    // Sealed on version 1, on a base before the migration: accepted and
    // carried to version 2 (the dropped column left out, the added one at
    // its default).
    let old = g1.commit_body(
        before.seq,
        &before.head_hash,
        "old-1",
        &row(2),
        Policy::RebaseIfClean,
    );
    let r = s.w.post("/v1/groups/w/commits", &old);
    assert_eq!(r.status, 201, "{r:?}");
    let rec = to_signed(&serde_json::from_value(r.body["certificate"]["signed"].clone()).unwrap())
        .commit(&s.w.public_key)
        .unwrap();
    assert_eq!(rec.schema_version, 2);
    let entries = s.w.all_commits("w");
    let last = entries.last().unwrap();
    let cs = pdb_protocol::Changeset::decode(
        &pdb_protocol::wire::unb64(last["changeset"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        cs.tables[0].changes[0].new,
        vec![
            Some(Value::Integer(2)),
            Some(Value::text("v")),
            Some(Value::Integer(7))
        ]
    );
    // The same bytes again: a replay with the same certificate.
    let again = s.w.post("/v1/groups/w/commits", &old);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["certificate"], r.body["certificate"]);

    // v3 accepts only from 2: a commit of version 1 is refused with what
    // the client needs to recover, and nothing changes.
    let m = s.w.post(
        "/v1/groups/w/migrations",
        &json!({"ddl": "CREATE INDEX t_v ON t(v)", "accepts_from": 2}),
    );
    assert_eq!(m.status, 201, "{m:?}");
    let head = s.w.head("w");
    let late = g1.commit_body(
        before.seq,
        &before.head_hash,
        "old-2",
        &row(3),
        Policy::RebaseIfClean,
    );
    let r = s.w.post("/v1/groups/w/commits", &late);
    assert_eq!((r.status, r.code()), (409, "schema_mismatch"), "{r:?}");
    assert_eq!(r.body["error"]["accepts_from"], 2);
    let versions: Vec<u64> = r.body["error"]["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);
    assert_eq!(r.body["error"]["expected_schema"]["version"], 3);
    assert_eq!(s.w.head("w").seq, head.seq, "nothing changed");
    // The group's history says it all.
    let g = s.w.get("/v1/groups/w");
    let history: Vec<(u64, u64)> = g.body["schema_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["accepts_from"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(history, [(1, 1), (2, 1), (3, 2)]);
    let (ok, out) = s.w.verify_cli();
    assert!(ok, "{out}");
}

#[test]
fn a_device_that_sealed_before_the_migration_pushes_it_translated_then_migrates() {
    let s = setup("sealed-before");
    let a = s.device("a");
    let b = s.device("b");
    b.exec("INSERT INTO notes VALUES (7, 'sealed on v1', 'x');");
    b.call("pdb_commit()").unwrap();
    let r = s.migrate(
        "ALTER TABLE notes ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
        None,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = b.sync().unwrap();
    assert_eq!(
        (r["pushed"].as_i64(), r["migrations"].as_i64()),
        (Some(1), Some(1)),
        "{r}"
    );
    a.sync().unwrap();
    same(&[&a, &b], &["notes", "drafts"]);
    assert_eq!(count(&a, "SELECT done FROM notes WHERE id = 7"), 0);
}

#[test]
fn a_fresh_device_starts_from_a_snapshot_taken_after_a_migration_or_replays_from_the_start() {
    let s = setup("fresh");
    let a = s.device("a");
    a.exec("INSERT INTO notes VALUES (1, 'one', 'o');");
    a.sync().unwrap();
    assert_eq!(
        s.migrate(
            "ALTER TABLE notes ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
            None
        )
        .status,
        201
    );
    assert_eq!(
        s.migrate(
            "CREATE TABLE tags(note INTEGER, tag TEXT, PRIMARY KEY(note, tag))",
            None
        )
        .status,
        201
    );
    a.sync().unwrap();
    a.exec("INSERT INTO notes VALUES (2, 'two', NULL, 1); INSERT INTO tags VALUES (2, 'x');");
    a.sync().unwrap();

    // No snapshot yet: a new device replays the log from the start,
    // migrations included.
    let replayed = s.device("replayed");
    assert_eq!(replayed.call("pdb_head()").unwrap()["schema_version"], 3);
    same(&[&a, &replayed], &["notes", "tags", "drafts"]);

    let snap = s.w.post("/v1/groups/g/snapshots", &json!({}));
    assert!(snap.status == 201 || snap.status == 200, "{snap:?}");
    let d = Device::new(&s.dir.path().join("from-snapshot.db"));
    let r = d.open(&s.w, "g", "remote_wins").unwrap();
    assert_eq!(r["bootstrapped_from"], snap.body["seq"], "{r}");
    same(&[&a, &replayed, &d], &["notes", "tags", "drafts"]);
    // And it goes on syncing on the new schema.
    d.exec("INSERT INTO tags VALUES (1, 'y');");
    d.sync().unwrap();
    a.sync().unwrap();
    same(&[&a, &d], &["notes", "tags", "drafts"]);
}

#[test]
fn a_migration_queued_behind_commits_takes_its_place_in_the_order() {
    let s = setup("queued");
    let g = GroupRef::from_json(&s.w.get("/v1/groups/g").body);
    let base = s.w.head("g");
    std::thread::scope(|scope| {
        let mut writers = Vec::new();
        for t in 0..4i64 {
            let (w, g, base) = (&s.w, &g, &base);
            writers.push(scope.spawn(move || {
                for i in 0..25i64 {
                    let id = t * 100 + i;
                    let cs = changeset(
                        "notes",
                        &[1, 0, 0],
                        vec![insert(vec![
                            Value::Integer(id),
                            Value::text("n"),
                            Value::Null,
                        ])],
                    );
                    let body = g.commit_body(
                        base.seq,
                        &base.head_hash,
                        &format!("c{id}"),
                        &cs,
                        Policy::RebaseIfClean,
                    );
                    let r = w.post("/v1/groups/g/commits", &body);
                    assert_eq!(r.status, 201, "{r:?}");
                }
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let r = s.migrate(
            "ALTER TABLE notes ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
            None,
        );
        assert_eq!(r.status, 201, "{r:?}");
        for w in writers {
            w.join().unwrap();
        }
    });
    // Every entry before the migration is certified on version 1, every
    // one after on version 2, in one chain.
    let entries = s.w.all_commits("g");
    assert_eq!(entries.len(), 101);
    let at = entries
        .iter()
        .position(|e| e.get("migration").is_some_and(|m| !m.is_null()))
        .expect("the migration entry");
    for (i, e) in entries.iter().enumerate() {
        let signed =
            to_signed(&serde_json::from_value(e["certificate"]["signed"].clone()).unwrap());
        let entry = signed.entry(&s.w.public_key).unwrap();
        let want = if i < at { 1 } else { 2 };
        assert_eq!(entry.schema_version(), want, "entry {}", i + 1);
    }
    let (ok, out) = s.w.verify_cli();
    assert!(ok, "{out}");
    let d = s.device("late");
    assert_eq!(count(&d, "SELECT count(*) FROM notes WHERE done = 0"), 100);
    verified(&d);
}

#[test]
fn bad_migrations_are_refused_clearly_and_change_nothing() {
    // Refused migrations take turns too: more than the default burst.
    let s = setup_with("refused", &["--migration-burst", "50"]);
    let a = s.device("a");
    a.exec("INSERT INTO notes VALUES (1, 'one', 'o');");
    a.sync().unwrap();
    let head = s.w.head("g");
    for (ddl, why) in [
        ("INSERT INTO notes VALUES (9, 'x', 'y')", "refused"),
        ("ALTER TABLE notes RENAME TO n2", "renaming a table"),
        (
            "ALTER TABLE notes ADD COLUMN n INTEGER NOT NULL",
            "needs a default",
        ),
        (
            "ALTER TABLE notes ADD COLUMN at TEXT DEFAULT CURRENT_TIMESTAMP",
            "literal",
        ),
        ("ALTER TABLE notes DROP COLUMN id", ""),
        (
            "CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END",
            "refused",
        ),
        ("CREATE TABLE pdb_x(id INTEGER PRIMARY KEY)", ""),
        ("ATTACH 'x.db' AS x", "refused"),
        ("", "no statement"),
    ] {
        let r = s.migrate(ddl, None);
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{ddl}: {r:?}");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(why),
            "{ddl}: {r:?}"
        );
    }
    // A migration that would break a projection is refused, naming it.
    let p = s.w.request(
        "PUT",
        "/v1/groups/g/projections/olds",
        Some(TOKEN),
        Some(&json!({"query": "SELECT id, old FROM notes"})),
    );
    assert!(p.status == 200 || p.status == 201, "{p:?}");
    let r = s.migrate("ALTER TABLE notes DROP COLUMN old", None);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("projection \"olds\""),
        "{r:?}"
    );
    assert_eq!(s.w.head("g").seq, head.seq, "nothing changed");
    assert_eq!(s.w.get("/v1/groups/g").body["schema"]["version"], 1);
    // The same migration again (a retry after a lost answer) replays;
    // another one to a version the group has is a conflict.
    let r = s.migrate("CREATE INDEX notes_title ON notes(title)", None);
    assert_eq!(r.status, 201, "{r:?}");
    let again = s.w.post(
        "/v1/groups/g/migrations",
        &json!({"ddl": "CREATE INDEX notes_title ON notes(title)", "schema_version": 2}),
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["replay"], true);
    assert_eq!(again.body["certificate"], r.body["certificate"]);
    let r2 = s.w.post(
        "/v1/groups/g/migrations",
        &json!({"ddl": "CREATE INDEX notes_old ON notes(old)", "schema_version": 2}),
    );
    assert_eq!(
        (r2.status, r2.code()),
        (409, "migration_conflict"),
        "{r2:?}"
    );
    a.sync().unwrap();
    verified(&a);
}

#[test]
fn the_command_line_migrates_a_stopped_witness_and_devices_follow() {
    let dir = TempDir::new("cli-migrate");
    let mut w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let d = Device::new(&dir.path().join("d.db"));
    d.open(&w, "g", "remote_wins").unwrap();
    d.exec("INSERT INTO notes VALUES (1, 'one', 'o');");
    d.sync().unwrap();
    let file = dir.path().join("v2.sql");
    std::fs::write(&file, "ALTER TABLE notes RENAME COLUMN title TO heading;\nALTER TABLE notes ADD COLUMN pinned INTEGER DEFAULT 0;").unwrap();
    let run = |data: &std::path::Path| {
        std::process::Command::new(target_binary("pdb-witness"))
            .arg("--data-dir")
            .arg(data)
            .args(["migrate", "--group", "g", "--file"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run(&w.data_dir);
    assert!(!out.status.success(), "refused while the witness runs");
    w.terminate();
    let out = run(&w.data_dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("schema version 1 -> 2"), "{text}");
    let (ok, report) = verify_cli(&w.data_dir);
    assert!(ok, "{report}");
    let w = Witness::start(dir.path());
    d.call(&format!(
        "pdb_open('{}', 'g', json_object('token', '{TOKEN}'))",
        w.url
    ))
    .unwrap();
    let cols: Vec<String> = {
        let mut st = d
            .conn
            .prepare("SELECT name FROM pragma_table_info('notes')")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(cols, ["id", "heading", "old", "pinned"]);
    d.exec("UPDATE notes SET heading = 'renamed', pinned = 1 WHERE id = 1;");
    d.sync().unwrap();
    verified(&d);
    let fresh = Device::new(&dir.path().join("fresh.db"));
    fresh.open(&w, "g", "remote_wins").unwrap();
    assert_eq!(fresh.dump(&["notes"]), d.dump(&["notes"]));
}

#[test]
fn pdb_migrate_submits_as_the_groups_admin_and_refuses_anyone_else() {
    let dir = TempDir::new("pdb-migrate");
    let wendy = add_token(&dir.path().join("data"), "wendy");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let r = w.request(
        "PUT",
        "/v1/groups/g/members/wendy",
        Some(TOKEN),
        Some(&json!({"role": "writer"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let admin = Device::new(&dir.path().join("admin.db"));
    admin.open(&w, "g", "remote_wins").unwrap();
    let writer = Device::new(&dir.path().join("writer.db"));
    writer
        .call(&format!(
            "pdb_open('{}', 'g', json_object('token', '{wendy}'))",
            w.url
        ))
        .unwrap();

    // Bad input: a clear error, and nothing reaches the witness.
    for (args, why) in [
        ("' '", "the migration is empty"),
        (
            "'CREATE INDEX i ON notes(title)', '{\"schema_version\": \"two\"}'",
            "schema_version must be a schema version",
        ),
        (
            "'CREATE INDEX i ON notes(title)', '{\"when\": 1}'",
            "unknown option \"when\"",
        ),
        (
            "'CREATE INDEX i ON notes(title)', 'nope'",
            "options must be a JSON object",
        ),
    ] {
        let e = admin.call(&format!("pdb_migrate({args})")).unwrap_err();
        assert!(e.contains(why), "{args}: {e}");
    }
    // The witness's refusals come back with their code: DDL it does not
    // take, and a caller who is not the group's admin.
    let e = admin
        .call("pdb_migrate('CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END')")
        .unwrap_err();
    assert!(e.contains("bad_request"), "{e}");
    let e = writer
        .call("pdb_migrate('CREATE INDEX i ON notes(title)')")
        .unwrap_err();
    assert!(e.contains("unauthorized"), "{e}");
    assert_eq!(w.get("/v1/groups/g").body["schema"]["version"], 1);
    assert_eq!(w.head("g").seq, 0, "nothing changed");

    // The admin's migration: nothing moves here until the next sync, then
    // every device follows.
    let m = admin
        .call("pdb_migrate('ALTER TABLE notes ADD COLUMN due TEXT DEFAULT ''soon''', json_object('accepts_from', 1))")
        .unwrap();
    assert_eq!(
        (
            &m["schema_version"],
            &m["seq"],
            &m["accepts_from"],
            &m["replay"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(false)),
        "{m}"
    );
    assert_eq!(status(&admin)["schema_version"], 1);
    writer.exec("INSERT INTO notes(id, title) VALUES (1, 'from wendy')");
    writer.sync().unwrap();
    admin.sync().unwrap();
    assert_eq!(
        count(&admin, "SELECT count(*) FROM notes WHERE due = 'soon'"),
        1
    );
    assert_eq!(status(&writer)["schema_version"], 2);
    same(&[&admin, &writer], &["notes"]);
}

/// What one admin can make a group's history cost stays bounded: versions
/// cannot jump far, a schema cannot grow past its bound, migrations come
/// at most ten at once, and the migrations are served in pages that a
/// fresh device follows.
#[test]
fn a_groups_schema_history_stays_bounded() {
    let dir = TempDir::new("bounded");
    let w = Witness::start_with(dir.path(), 0, &["--max-page-bytes", "4096"]);
    w.create_group("g", DDL);
    let migrate = |body: Json| w.post("/v1/groups/g/migrations", &body);
    for v in [1002u64, 4_294_967_295] {
        let r = migrate(json!({"ddl": "CREATE INDEX i ON notes(title)", "schema_version": v}));
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{v}: {r:?}");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 1000 after"),
            "{r:?}"
        );
    }

    // A table wider than devices can read is refused.
    let cols = |n: usize| (0..n).map(|c| format!("c{c} TEXT")).collect::<Vec<_>>();
    let r = migrate(
        json!({"ddl": format!("CREATE TABLE w(id INTEGER PRIMARY KEY, {})", cols(900).join(", "))}),
    );
    assert_eq!((r.status, r.code()), (400, "bad_request"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 900 are allowed"),
        "{}",
        r.body["error"]["message"]
    );
    // Wide tables, about half a megabyte of structure per migration: the
    // schema stops growing at its bound, saying so.
    let wide = |n: usize| {
        (0..25)
            .map(|t| {
                let cols = cols(800);
                format!(
                    "CREATE TABLE w{n}_{t}(id INTEGER PRIMARY KEY, {});",
                    cols.join(", ")
                )
            })
            .collect::<String>()
    };
    let mut made = 0;
    let refused = loop {
        let r = migrate(json!({"ddl": wide(made)}));
        if r.status != 201 {
            break r;
        }
        made += 1;
        assert!(made < 6, "the schema kept growing");
    };
    assert!(made >= 3, "{made}");
    assert_eq!((refused.status, refused.code()), (400, "bad_request"));
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2097152 are allowed"),
        "{}",
        refused.body["error"]["message"]
    );
    let version = w.get("/v1/groups/g").body["schema"]["version"]
        .as_u64()
        .unwrap();
    assert_eq!(version, 1 + made as u64);

    // Ten migration attempts at once (one more every ten seconds), then
    // the group must wait, told for how long. Refused attempts count too
    // (the four above at most: two versions, the wide table, the schema
    // past its bound), so at least ten less those were accepted.
    let mut n = 0;
    let busy = loop {
        let ddl = if n % 2 == 0 {
            "CREATE INDEX notes_t ON notes(title)"
        } else {
            "DROP INDEX notes_t"
        };
        let r = migrate(json!({ "ddl": ddl }));
        if r.status != 201 {
            break r;
        }
        n += 1;
        assert!(n < 40, "migrations were never held back");
    };
    let refused_attempts = 4;
    assert!(
        made + n + refused_attempts >= 10,
        "made {made}, then {n}: {busy:?}"
    );
    assert_eq!((busy.status, busy.code()), (429, "overloaded"), "{busy:?}");
    assert_eq!(busy.body["error"]["retryable"], true);
    assert!(
        busy.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may migrate again"),
        "{busy:?}"
    );
    let total = (made + n) as u64;

    // The migrations come in pages of about --max-page-bytes (at least
    // one each), every one of them once, in order.
    let mut after = 0u64;
    let mut versions = Vec::new();
    let mut pages = 0;
    loop {
        let p = w.get(&format!("/v1/groups/g/migrations?after_version={after}"));
        assert_eq!(p.status, 200, "{p:?}");
        let entries = p.body["migrations"].as_array().unwrap();
        assert!(!entries.is_empty());
        pages += 1;
        versions.extend(entries.iter().map(|e| e["seq"].as_u64().unwrap()));
        match p.body["next_after_version"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(versions, (1..=total).collect::<Vec<u64>>());
    assert!(pages > 1, "{pages}");

    // A fresh device starting from a snapshot taken now reaches its schema
    // through those pages, and holds the group's head.
    let s = w.post("/v1/groups/g/snapshots", &json!({}));
    assert_eq!(s.status, 201, "{s:?}");
    let d = Device::new(&dir.path().join("fresh.db"));
    d.open(&w, "g", "remote_wins").expect("pdb_open");
    assert_eq!(status(&d)["schema_version"], 1 + total);
    verified(&d);
}
