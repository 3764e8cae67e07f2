//! Schema migrations attacked as a hostile group admin and a careless one
//! would; each test failed before its fix:
//!
//! - migration SQL ran with no budget: a `SELECT` (alone, or in `CREATE
//!   TABLE ... AS`) ran to its end on the witness before anything refused
//!   it — hours of work, or a gigabyte value, for one request.
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
