//! The codec against changesets SQLite itself produced: rusqlite's session
//! API and Debian's `sqldiff --changeset`. Decoding then re-encoding must
//! give back the same bytes, and decoded values must be the stored ones.

use pdb_protocol::{Changeset, Op, Value};
use rusqlite::session::Session;
use rusqlite::Connection;

const DDL: &str = "
    CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n);
    CREATE TABLE kv(a TEXT, b INTEGER, v, PRIMARY KEY(b, a)) WITHOUT ROWID;
";

fn session_changeset(setup: &str, work: &str) -> Vec<u8> {
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch(DDL).unwrap();
    db.execute_batch(setup).unwrap();
    let mut s = Session::new(&db).unwrap();
    s.attach::<&str>(None).unwrap();
    db.execute_batch(work).unwrap();
    let mut out = Vec::new();
    s.changeset_strm(&mut out).unwrap();
    out
}

#[test]
fn session_inserts_round_trip_with_every_value_type() {
    let bytes = session_changeset(
        "",
        "INSERT INTO t VALUES (1, 9223372036854775807, -1.25e-300, 'héllo ✓', x'', NULL);
         INSERT INTO t VALUES (2, -9223372036854775808, 1e308, '', x'00ff', 3.5);
         INSERT INTO t VALUES (3, 0, 2.5, 'x', zeroblob(300), 'long');
         INSERT INTO kv VALUES ('k', 7, x'01');",
    );
    let cs = Changeset::decode(&bytes).unwrap();
    assert_eq!(cs.encode(), bytes);
    assert_eq!(cs.len(), 4);
    let t = cs.tables.iter().find(|t| t.name == "t").unwrap();
    assert_eq!(t.pk_flags.iter().filter(|f| **f != 0).count(), 1);
    let row1 = t
        .changes
        .iter()
        .find(|c| c.new[0] == Some(Value::Integer(1)))
        .unwrap();
    assert_eq!(row1.op, Op::Insert);
    assert_eq!(row1.new[1], Some(Value::Integer(i64::MAX)));
    assert_eq!(row1.new[2], Some(Value::Real(-1.25e-300)));
    assert_eq!(row1.new[3], Some(Value::text("héllo ✓")));
    assert_eq!(row1.new[4], Some(Value::Blob(vec![])));
    assert_eq!(row1.new[5], Some(Value::Null));
    let kv = cs.tables.iter().find(|t| t.name == "kv").unwrap();
    assert_eq!(kv.pk_flags, vec![2, 1, 0], "key flags are key positions");
}

#[test]
fn session_updates_and_deletes_round_trip() {
    let bytes = session_changeset(
        "INSERT INTO t VALUES (1, 1, 1.0, 'a', x'01', NULL);
         INSERT INTO t VALUES (2, 2, 2.0, 'b', x'02', NULL);
         INSERT INTO kv VALUES ('k', 7, 1);",
        "UPDATE t SET s = 'changed', n = 5 WHERE id = 1;
         DELETE FROM t WHERE id = 2;
         UPDATE kv SET v = 'two' WHERE a = 'k';",
    );
    let cs = Changeset::decode(&bytes).unwrap();
    assert_eq!(cs.encode(), bytes);
    let t = cs.tables.iter().find(|t| t.name == "t").unwrap();
    let upd = t.changes.iter().find(|c| c.op == Op::Update).unwrap();
    assert_eq!(upd.old[0], Some(Value::Integer(1)));
    assert_eq!(upd.old[1], None, "unchanged columns are undefined");
    assert_eq!(upd.old[3], Some(Value::text("a")));
    assert_eq!(upd.new[3], Some(Value::text("changed")));
    assert_eq!(upd.new[0], None, "key is not repeated in new values");
    let del = t.changes.iter().find(|c| c.op == Op::Delete).unwrap();
    assert!(del.old.iter().all(Option::is_some));
}

#[test]
fn session_applies_what_the_codec_encodes() {
    // Build a changeset with the codec, let SQLite apply it, and check
    // SQLite stored exactly those values.
    let bytes = session_changeset("", "INSERT INTO t VALUES (5, 42, 0.1, 'z', x'beef', NULL);");
    let cs = Changeset::decode(&bytes).unwrap();
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch(DDL).unwrap();
    let encoded = cs.encode();
    db.apply_strm(&mut &encoded[..], None::<fn(&str) -> bool>, |_, _| {
        rusqlite::session::ConflictAction::SQLITE_CHANGESET_ABORT
    })
    .unwrap();
    let row: (i64, f64, String, Vec<u8>) = db
        .query_row("SELECT i, r, s, b FROM t WHERE id = 5", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    assert_eq!(row, (42, 0.1, "z".into(), vec![0xbe, 0xef]));
}

#[test]
fn sqldiff_changesets_round_trip() {
    let Ok(out) = std::process::Command::new("sqldiff").arg("--help").output() else {
        panic!("sqldiff is missing: install Debian's sqlite3-tools (scripts/setup.sh does)");
    };
    let _ = out;
    let dir = std::env::temp_dir().join(format!("pdb-sqldiff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, out) = (dir.join("a.db"), dir.join("b.db"), dir.join("cs.bin"));
    for (path, rows) in [
        (&a, "INSERT INTO t VALUES (1, 1, 1.5, 'same', x'01', NULL), (2, 2, 2.5, 'old', x'02', 1), (3, 3, 3.5, 'gone', NULL, NULL);"),
        (&b, "INSERT INTO t VALUES (1, 1, 1.5, 'same', x'01', NULL), (2, 20, 2.5, 'new ✓', x'0203', 1), (4, -4, -0.0, '', x'', 'added');"),
    ] {
        let _ = std::fs::remove_file(path);
        let db = Connection::open(path).unwrap();
        db.execute_batch(DDL).unwrap();
        db.execute_batch(rows).unwrap();
    }
    let status = std::process::Command::new("sqldiff")
        .arg("--changeset")
        .arg(&out)
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    let cs = Changeset::decode(&bytes).unwrap();
    assert_eq!(cs.encode(), bytes);
    let ops: Vec<Op> = cs
        .tables
        .iter()
        .flat_map(|t| t.changes.iter().map(|c| c.op))
        .collect();
    assert!(ops.contains(&Op::Insert) && ops.contains(&Op::Update) && ops.contains(&Op::Delete));
    // Applying sqldiff's changeset to a makes it equal b.
    let db = Connection::open(&a).unwrap();
    db.apply_strm(&mut &bytes[..], None::<fn(&str) -> bool>, |_, _| {
        rusqlite::session::ConflictAction::SQLITE_CHANGESET_ABORT
    })
    .unwrap();
    let dump = |db: &Connection| -> Vec<String> {
        let mut st = db.prepare("SELECT quote(id)||quote(i)||quote(r)||quote(s)||quote(b)||quote(n) FROM t ORDER BY id").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(dump(&db), dump(&Connection::open(&b).unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();
}
