//! What a group admin defines — schemas, migrations, CHECK constraints,
//! rules — attacked as a hostile admin and a careless one would (issue 19,
//! the witness side of "Trust, third round"); each test failed before its
//! fix:
//!
//! - `verify` failed on every group with a `DROP TABLE` migration
//!   ("internal error while migrating the replica"), so no such group
//!   could pass the restore procedure;
//! - a migration refused after burning its budget cost no migration turn,
//!   so an admin could keep several running per group indefinitely.
//!
//! No timing thresholds: loops are bounded by counts.

use pdb_e2e::*;
use serde_json::{json, Value as Json};

fn migrate(w: &Witness, g: &str, ddl: &str) -> Reply {
    w.post(
        &format!("/v1/groups/{g}/migrations"),
        &json!({ "ddl": ddl }),
    )
}

fn version(w: &Witness, g: &str) -> Json {
    w.get(&format!("/v1/groups/{g}")).body["schema"]["version"].clone()
}

#[test]
fn verify_passes_after_every_migration_operation_and_still_catches_tampering() {
    let dir = TempDir::new("reda-verify");
    let mut w = Witness::start_with(dir.path(), 0, &["--migration-burst", "50"]);
    w.create_group(
        "g",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, old TEXT);
         CREATE TABLE drafts(id TEXT PRIMARY KEY, body TEXT);",
    );
    let d = Device::new(&dir.path().join("d.db"));
    d.open(&w, "g", "remote_wins").expect("pdb_open");
    d.exec("INSERT INTO notes VALUES (1, 'a', 'x'); INSERT INTO drafts VALUES ('d1', 'b');");
    d.sync().expect("sync");
    let steps = [
        (
            "add column",
            "ALTER TABLE notes ADD COLUMN n INTEGER NOT NULL DEFAULT 0",
            "UPDATE notes SET n = n + 1",
        ),
        (
            "rename column",
            "ALTER TABLE notes RENAME COLUMN title TO heading",
            "UPDATE notes SET heading = heading || '!'",
        ),
        (
            "drop column",
            "ALTER TABLE notes DROP COLUMN old",
            "UPDATE notes SET n = n + 1",
        ),
        (
            "create table",
            "CREATE TABLE tags(note INTEGER, tag TEXT, PRIMARY KEY(note, tag))",
            "INSERT INTO tags VALUES (1, 't')",
        ),
        (
            "create index",
            "CREATE INDEX tags_tag ON tags(tag)",
            "INSERT INTO tags VALUES (1, 'u')",
        ),
        (
            "drop index",
            "DROP INDEX tags_tag",
            "DELETE FROM tags WHERE tag = 'u'",
        ),
        (
            "drop table",
            "DROP TABLE drafts",
            "INSERT INTO notes(id, heading) VALUES (2, 'c')",
        ),
    ];
    let mut drop_seq = 0;
    for (i, (what, ddl, write)) in steps.iter().enumerate() {
        let r = migrate(&w, "g", ddl);
        assert_eq!(r.status, 201, "{what}: {r:?}");
        drop_seq = r.body["certificate"]["seq"].as_u64().expect("seq");
        d.sync().expect("the device migrates");
        d.exec(write);
        d.sync().expect("sync after the migration");
        assert_eq!(version(&w, "g"), i as u64 + 2);
        let (ok, out) = w.verify_cli();
        assert!(ok, "verify after {what}: {out}");
    }
    assert_eq!(
        d.dump(&["notes"]),
        vec!["notes|int:1|text:6121|int:2", "notes|int:2|text:63|int:0"],
        "the device followed every migration"
    );
    assert_eq!(w.terminate().code(), Some(0));
    let data = w.data_dir.clone();
    let (ok, out) = verify_cli(&data);
    assert!(ok, "{out}");
    // Tampering after a DROP TABLE is still caught: the migration entry...
    let db = rusqlite::Connection::open(data.join("groups/g.sqlite")).unwrap();
    let bytes: Vec<u8> = db
        .query_row(
            "SELECT migration FROM pdb_log WHERE seq = ?1",
            [drop_seq as i64],
            |r| r.get(0),
        )
        .unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains("drafts"), "{text}");
    let forged = text.replace("\"drafts\"", "\"tags\"");
    db.execute(
        "UPDATE pdb_log SET migration = ?1 WHERE seq = ?2",
        rusqlite::params![forged.as_bytes(), drop_seq as i64],
    )
    .unwrap();
    let (ok, out) = verify_cli(&data);
    assert!(!ok && out.contains("migration"), "{out}");
    db.execute(
        "UPDATE pdb_log SET migration = ?1 WHERE seq = ?2",
        rusqlite::params![bytes, drop_seq as i64],
    )
    .unwrap();
    assert!(verify_cli(&data).0);
    // ... and the replica's rows.
    db.execute("UPDATE tags SET tag = 'forged' WHERE tag = 't'", [])
        .unwrap();
    let (ok, out) = verify_cli(&data);
    assert!(!ok && out.contains("does not match"), "{out}");
}
