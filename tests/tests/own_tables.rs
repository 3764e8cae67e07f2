//! A migration never takes over a table the app made itself: a device
//! whose own, never-synced table has the name (and shape) of a table a
//! migration creates stops sync with `local_table_exists` and sends none
//! of its rows; the app renames or drops its table, or adopts it
//! explicitly with `pdb_adopt`, and sync resumes.

use pdb_e2e::*;
use serde_json::json;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);";
const PRIVATE: &str = "CREATE TABLE private_notes(id INTEGER PRIMARY KEY, secret TEXT)";

fn count(d: &Device, sql: &str) -> i64 {
    d.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Rows of `private_notes` in the witness's log.
fn private_rows_in_log(w: &Witness) -> usize {
    w.all_commits("g")
        .iter()
        .filter_map(|c| c["changeset"].as_str())
        .filter_map(pdb_protocol::wire::unb64)
        .filter_map(|b| pdb_protocol::Changeset::decode(&b).ok())
        .flat_map(|cs| cs.tables)
        .filter(|t| t.name == "private_notes")
        .map(|t| t.changes.len())
        .sum()
}

#[test]
fn a_migration_creating_a_table_the_app_has_of_its_own_stops_sync_and_sends_nothing() {
    let dir = TempDir::new("own-table");
    let w = Witness::start(dir.path());
    w.create_group("g", DDL);
    let a = Device::new(&dir.path().join("a.db"));
    a.open(&w, "g", "remote_wins").unwrap();
    let c = Device::new(&dir.path().join("c.db"));
    c.open(&w, "g", "remote_wins").unwrap();
    for d in [&a, &c] {
        d.exec(&format!(
            "{PRIVATE}; INSERT INTO private_notes VALUES (1, 'my diary'), (2, 'my pin');"
        ));
        d.sync().unwrap();
    }
    let b = Device::new(&dir.path().join("b.db"));
    b.open(&w, "g", "remote_wins").unwrap();
    b.exec("INSERT INTO notes VALUES (1, 'before the migration')");
    b.sync().unwrap();
    let r = w.post("/v1/groups/g/migrations", &json!({ "ddl": PRIVATE }));
    assert_eq!(r.status, 201, "{r:?}");
    let head = w.head("g").seq;

    // Sync stops just before the migration, says why, and sends nothing.
    for _ in 0..2 {
        let err = a.sync().unwrap_err();
        assert!(err.contains("local_table_exists"), "{err}");
        assert!(err.contains("pdb_adopt"), "{err}");
    }
    let s = a.call("pdb_status()").unwrap();
    assert_eq!(s["state"], "blocked", "{s}");
    assert_eq!(s["reason"]["code"], "local_table_exists", "{s}");
    assert_eq!(w.head("g").seq, head);
    assert_eq!(private_rows_in_log(&w), 0);
    // What came before the migration was applied; the app's table is as
    // it was, and still its own (writes to it are not captured).
    assert_eq!(count(&a, "SELECT count(*) FROM notes"), 1);
    assert_eq!(count(&a, "SELECT count(*) FROM private_notes"), 2);
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'pdb_base_private_notes'"
        ),
        0
    );

    // One app renames its table: sync resumes, the group's table is new
    // and empty, the app's rows stay with the app.
    c.exec("ALTER TABLE private_notes RENAME TO my_notes");
    let r = c.sync().unwrap();
    assert_eq!(r["migrations"], 1, "{r}");
    assert_eq!(count(&c, "SELECT count(*) FROM private_notes"), 0);
    assert_eq!(count(&c, "SELECT count(*) FROM my_notes"), 2);
    assert_eq!(private_rows_in_log(&w), 0);

    // The other chooses to adopt its table: only then do its rows go.
    let r = a.call("pdb_adopt('private_notes')").unwrap();
    assert_eq!(r["table"], "private_notes", "{r}");
    let r = a.sync().unwrap();
    assert_eq!(r["migrations"], 1, "{r}");
    assert_eq!(r["pushed"], 1, "{r}");
    assert_eq!(private_rows_in_log(&w), 2);
    c.sync().unwrap();
    assert_eq!(
        a.dump(&["notes", "private_notes"]),
        c.dump(&["notes", "private_notes"])
    );
    assert_eq!(a.call("pdb_status()").unwrap()["state"], "healthy");
    // Adopting needs a table of the app's own.
    assert!(a
        .call("pdb_adopt('notes')")
        .unwrap_err()
        .contains("already the group's"));
    assert!(a
        .call("pdb_adopt('nothing_here')")
        .unwrap_err()
        .contains("no table"));
}
