//! Schema migrations attacked as a hostile group admin and a careless one
//! would; each test failed before its fix:
//!
//! - migration SQL ran with no budget: a `SELECT` (alone, or in `CREATE
//!   TABLE ... AS`) ran to its end on the witness before anything refused
//!   it — hours of work, or a gigabyte value, for one request;
//! - a migration that would break both a write rule and a projection named
//!   only the rule: the admin fixed it and only then learnt of the other;
//!   a table named `pdb_...` got "write one schema change per statement".
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

fn message(r: &Reply) -> String {
    r.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn version(w: &Witness, g: &str) -> Json {
    w.get(&format!("/v1/groups/{g}")).body["schema"]["version"].clone()
}

#[test]
fn migration_sql_runs_under_the_budget_of_admin_sql() {
    let dir = TempDir::new("redm-budget");
    // A short time budget, and steps enough that time runs out first.
    let w = Witness::start_with(
        dir.path(),
        0,
        &["--sql-millis", "100", "--sql-steps", "1000000000"],
    );
    w.create_group("g", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    let hundred = format!(
        "(VALUES {})",
        (0..100)
            .map(|i| format!("({i})"))
            .collect::<Vec<_>>()
            .join(",")
    );
    // 100^6 rows: without a budget this runs for days.
    let join = (0..6)
        .map(|i| format!("{hundred} AS v{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    for ddl in [
        format!("SELECT count(*) FROM {join}"),
        format!("CREATE TABLE x AS SELECT count(*) AS n FROM {join}"),
        "ALTER TABLE t ADD COLUMN n TEXT; SELECT length(randomblob(200000000))".to_string(),
    ] {
        let r = migrate(&w, "g", &ddl);
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{r:?}");
        assert!(message(&r).contains("budget"), "{r:?}");
    }
    assert_eq!(version(&w, "g"), 1, "nothing changed");
    let r = migrate(&w, "g", "ALTER TABLE t ADD COLUMN n TEXT");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(version(&w, "g"), 2);
}

#[test]
fn a_refused_migration_names_everything_that_must_change() {
    let dir = TempDir::new("redm-names");
    let w = Witness::start(dir.path());
    w.create_group(
        "g",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT);
         CREATE TABLE links(id INTEGER PRIMARY KEY, note INTEGER)",
    );
    let r = w.request(
        "PUT",
        "/v1/groups/g/rules/links",
        Some(TOKEN),
        Some(&json!({"expr": "new.note IN (SELECT id FROM notes)"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = w.request(
        "PUT",
        "/v1/groups/g/projections/titles",
        Some(TOKEN),
        Some(&json!({"query": "SELECT id, title FROM notes"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = migrate(&w, "g", "DROP TABLE notes");
    assert_eq!(r.status, 400, "{r:?}");
    let m = message(&r);
    assert!(m.contains("rule of table \"links\""), "{m}");
    assert!(m.contains("projection \"titles\""), "{m}");

    // A reserved name is refused as such, not as "one change per statement".
    for ddl in [
        "CREATE TABLE pdb_notes(id INTEGER PRIMARY KEY)",
        "CREATE TABLE \"PDB_x\"(id INTEGER PRIMARY KEY)",
    ] {
        let r = migrate(&w, "g", ddl);
        assert_eq!(r.status, 400, "{r:?}");
        assert!(message(&r).contains("reserved"), "{ddl}: {r:?}");
    }
    assert_eq!(version(&w, "g"), 1, "nothing changed");
}
