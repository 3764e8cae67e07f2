//! Schema migrations attacked as a hostile group admin and a careless one
//! would; each test failed before its fix:
//!
//! - migration SQL ran with no budget: a `SELECT` (alone, or in `CREATE
//!   TABLE ... AS`) ran to its end on the witness before anything refused
//!   it — hours of work, or a gigabyte value, for one request;
//! - a migration that would break both a write rule and a projection named
//!   only the rule: the admin fixed it and only then learnt of the other;
//!   a table named `pdb_...` got "write one schema change per statement";
//! - a write rule defined while a migration was being applied was checked
//!   on the schema before it and stored after it: a rule naming a dropped
//!   column refused every later commit to its table.
//!
//! No timing thresholds: loops are bounded by counts.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::{json, Value as Json};
use std::sync::Arc;

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

#[test]
fn a_rule_defined_while_a_migration_lands_is_checked_on_the_schema_it_meets() {
    let dir = TempDir::new("redm-race");
    // Twelve migrations back to back: more than a group's default burst.
    let w = Arc::new(Witness::start_with(
        dir.path(),
        0,
        &["--migration-burst", "100"],
    ));
    let g = w.create_group(
        "g",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, owner TEXT, body TEXT)",
    );
    // Rows enough that a migration rewriting the table takes a while.
    for part in 0..4i64 {
        let rows = (0..100_000i64)
            .map(|i| {
                insert(vec![
                    Value::Integer(part * 100_000 + i),
                    Value::text("bob"),
                    Value::text("some text of a note"),
                ])
            })
            .collect();
        let cs = changeset("t", &[1, 0, 0], rows);
        let r = w.commit_at_head(&g, &format!("rows-{part}"), &cs, Policy::Strict);
        assert_eq!(r.status, 201, "{r:?}");
    }
    let mut raced = 0;
    for i in 0..6 {
        let col = format!("c{i}");
        let r = migrate(&w, "g", &format!("ALTER TABLE t ADD COLUMN {col} TEXT"));
        assert_eq!(r.status, 201, "{r:?}");
        // The column goes while a rule naming it is defined.
        let dropping = {
            let (w, col) = (w.clone(), col.clone());
            std::thread::spawn(move || {
                migrate(&w, "g", &format!("ALTER TABLE t DROP COLUMN {col}"))
            })
        };
        // Not a bound on anything: it lets the migration start first most
        // times, which is when the rule used to be checked on the old schema.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let rule = w.request(
            "PUT",
            "/v1/groups/g/rules/t",
            Some(TOKEN),
            Some(&json!({ "expr": format!("new.{col} IS NULL OR new.owner = :caller") })),
        );
        let dropped = dropping.join().expect("migration");
        if rule.status == 200 && dropped.status == 201 {
            raced += 1;
        }
        // Whatever the order, the group takes commits afterwards: no rule
        // names a column the table no longer has.
        let now = GroupRef::from_json(&w.get("/v1/groups/g").body);
        let n = now.schema.table("t").expect("table t").columns.len();
        let mut row = vec![Value::Integer(1_000_000 + i), Value::text("bob")];
        row.resize(n, Value::Null);
        let mut pk = vec![1u8];
        pk.resize(n, 0);
        let cs = changeset("t", &pk, vec![insert(row)]);
        let r = w.commit_at_head(&now, &format!("after-{i}"), &cs, Policy::Strict);
        assert_eq!(
            r.status, 201,
            "rule {rule:?}, migration {dropped:?}, then a commit: {r:?}"
        );
        let r = w.request("DELETE", "/v1/groups/g/rules/t", Some(TOKEN), None);
        assert_eq!(r.status, 200, "{r:?}");
    }
    eprintln!("rule and migration both accepted in {raced} of 6 rounds");
}
