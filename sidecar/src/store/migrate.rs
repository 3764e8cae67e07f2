//! Schema migrations on the witness's side of the file: turning an admin's
//! DDL into a migration's operations (run in a scratch copy of the schema,
//! one statement at a time, each allowed to do one kind of change), and
//! applying a migration to a group's file with statements built from the
//! operations — never from the admin's text.

use super::schema::{create, read, MAX_DDL_BYTES};
use crate::sandbox::{Budget, Failure, Limits};
use pdb_protocol::migration::{Migration, SchemaOp};
use pdb_protocol::{Schema, Table};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// What one statement of a migration's DDL did, as the authorizer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Alter,
    CreateTable,
    DropTable,
    CreateIndex,
    DropIndex,
}

/// Units of the admin-SQL budget deriving one migration may take (as
/// many as filling a projection).
const DERIVE_BUDGETS: u32 = 10;

/// Turns an admin's DDL into the migration from `current` to `to_version`.
/// The statements, and the reading of the schema after each, run under
/// [`DERIVE_BUDGETS`] units of `limits`: a `SELECT` — alone, or in `CREATE
/// TABLE ... AS` — runs before anything can refuse it, and each statement
/// reads the whole schema back.
pub fn derive(
    current: &Schema,
    ddl: &str,
    to_version: u32,
    accepts_from: u32,
    limits: Limits,
) -> Result<Migration, String> {
    if ddl.len() > MAX_DDL_BYTES {
        return Err(format!(
            "migration SQL is larger than {MAX_DDL_BYTES} bytes"
        ));
    }
    if to_version <= current.version {
        return Err(format!(
            "the new schema version must be after the current one ({})",
            current.version
        ));
    }
    if to_version - current.version > MAX_VERSION_STEP {
        return Err(format!(
            "the new schema version may be at most {MAX_VERSION_STEP} after the current one ({})",
            current.version
        ));
    }
    if accepts_from > current.version {
        return Err(format!(
            "accepts_from can be at most the current version ({}): commits of the new version need no translation",
            current.version
        ));
    }
    let refused = |e: rusqlite::Error| {
        format!(
            "migration SQL was refused (allowed: ALTER TABLE ... ADD COLUMN / DROP COLUMN / RENAME COLUMN, CREATE TABLE, DROP TABLE, CREATE INDEX, DROP INDEX): {e}"
        )
    };
    let mut conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
    create(&conn, current)?;
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(|e| e.to_string())?;
    let budget = Budget::install(&mut conn, Arc::default()).map_err(|e| e.to_string())?;
    let scope = budget.scope(limits.times(DERIVE_BUDGETS));
    let over = |f: Failure| match f {
        Failure::Exceeded(e) => over_budget(e),
        Failure::Sql(e) => refused(e),
    };
    let seen: Arc<Mutex<Vec<Kind>>> = Arc::default();
    let log = seen.clone();
    // DROP TABLE deletes the dropped table's rows: allowed for it only.
    let dropping: Arc<Mutex<Option<String>>> = Arc::default();
    let dropped = dropping.clone();
    // Checks the admin's statements only, not the schema reads between them.
    let armed = Arc::new(AtomicBool::new(false));
    let on = armed.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        if !on.load(Relaxed) {
            return Authorization::Allow;
        }
        // ALTER TABLE rewrites the schema tables (the temporary one too,
        // for triggers there: there are none).
        let schema_table = |t: &str| {
            matches!(
                t,
                "sqlite_master" | "sqlite_schema" | "sqlite_temp_master" | "sqlite_temp_schema"
            )
        };
        let main = ctx.database_name == Some("main");
        let note = |k| {
            log.lock().unwrap_or_else(|p| p.into_inner()).push(k);
            Authorization::Allow
        };
        match ctx.action {
            AuthAction::AlterTable {
                database_name: "main",
                ..
            } => note(Kind::Alter),
            AuthAction::CreateTable { .. } if main => note(Kind::CreateTable),
            AuthAction::DropTable { table_name } if main => {
                *dropped.lock().unwrap_or_else(|p| p.into_inner()) = Some(table_name.to_string());
                note(Kind::DropTable)
            }
            AuthAction::Delete { table_name }
                if dropped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case(table_name)) =>
            {
                Authorization::Allow
            }
            // ADD COLUMN on a STRICT table or one with a CHECK verifies
            // the rows with pragma_quick_check: on this scratch copy,
            // which holds none.
            AuthAction::Pragma {
                pragma_name: "quick_check",
                ..
            } if main
                && log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&Kind::Alter) =>
            {
                Authorization::Allow
            }
            AuthAction::CreateIndex { .. } if main => note(Kind::CreateIndex),
            AuthAction::DropIndex { .. } if main => note(Kind::DropIndex),
            AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name } => {
                if schema_table(table_name) {
                    Authorization::Allow
                } else {
                    Authorization::Deny
                }
            }
            AuthAction::Read { .. }
            | AuthAction::Select
            | AuthAction::Function { .. }
            | AuthAction::Reindex { .. }
            | AuthAction::Analyze { .. } => Authorization::Allow,
            _ => Authorization::Deny,
        }
    }))
    .map_err(|e| e.to_string())?;
    let mut ops = Vec::new();
    let mut before = current.clone();
    let mut batch = rusqlite::Batch::new(&conn, ddl);
    loop {
        seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *dropping.lock().unwrap_or_else(|p| p.into_inner()) = None;
        armed.store(true, Relaxed);
        let Some(mut st) = batch.next().map_err(refused)? else {
            break;
        };
        scope.run(&conn, || st.raw_execute()).map_err(over)?;
        armed.store(false, Relaxed);
        let kinds = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        let after = scope
            .run(&conn, || Ok(read(&conn, to_version)))
            .map_err(over)??;
        ops.push(infer(&before, &after, &kinds)?);
        before = after;
    }
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .map_err(|e| e.to_string())?;
    if ops.is_empty() {
        return Err("the migration SQL holds no statement".into());
    }
    let mut m = Migration {
        from_version: current.version,
        to_version,
        ops,
        tables: Vec::new(),
        accepts_from,
        ddl: ddl.to_string(),
    };
    let target = m.apply_to(current)?;
    if target.tables != before.tables {
        return Err("the migration's operations do not give the schema its SQL gives".into());
    }
    // Built from the operations on a fresh copy, it must read back the same.
    let check = Connection::open_in_memory().map_err(|e| e.to_string())?;
    create(&check, current)?;
    for op in &m.ops {
        for sql in op.ddl() {
            check
                .execute_batch(&sql)
                .map_err(|e| format!("the migration cannot be built from its operations: {e}"))?;
        }
    }
    if read(&check, to_version)? != target {
        return Err(
            "the migration uses something its structured form cannot express exactly".into(),
        );
    }
    check_size(&target)?;
    check_expressions(&target, Some(current))?;
    m.tables = target.tables;
    Ok(m)
}

/// The largest schema a migration may make, as its structured JSON: each
/// version is kept, sent to every device that migrates, and held in
/// memory while its commits are accepted.
pub const MAX_SCHEMA_BYTES: usize = 2 * 1024 * 1024;

/// Most versions one migration may skip ahead.
pub const MAX_VERSION_STEP: u32 = 1000;

/// Most columns a table of a new schema may have: a device reads a row
/// beside its base row in one statement, which SQLite bounds at 2,000
/// columns by default.
pub const MAX_NEW_COLUMNS: usize = 900;

/// Refuses a new schema (a group's first, or one a migration makes) larger
/// than [`MAX_SCHEMA_BYTES`] or with a table wider than
/// [`MAX_NEW_COLUMNS`].
pub fn check_size(s: &Schema) -> Result<(), String> {
    if let Some(t) = s.tables.iter().find(|t| t.columns.len() > MAX_NEW_COLUMNS) {
        return Err(format!(
            "table {:?} would have {} columns; at most {MAX_NEW_COLUMNS} are allowed",
            t.name,
            t.columns.len()
        ));
    }
    let n = serde_json::to_vec(&s.tables).map_or(usize::MAX, |v| v.len());
    if n > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema would take {n} bytes as structured data; at most {MAX_SCHEMA_BYTES} are allowed"
        ));
    }
    Ok(())
}

/// Refuses a new schema whose CHECK constraints could not be evaluated
/// in time and memory proportional to the row they read
/// (`sqltext::budget_check`): a CHECK runs on every row written, inside
/// the group's writer, outside any budget of admin SQL. Only tables with
/// a CHECK that `before` does not have are checked, so a group defined
/// before these bounds can still migrate.
pub fn check_expressions(s: &Schema, before: Option<&Schema>) -> Result<(), String> {
    use pdb_protocol::sqltext::{budget_check, MAX_CHECK_COST};
    for t in &s.tables {
        let old = before.and_then(|b| b.table(&t.name));
        if t.checks
            .iter()
            .all(|c| old.is_some_and(|o| o.checks.contains(c)))
        {
            continue;
        }
        let mut cost = 0;
        for c in &t.checks {
            cost += budget_check(c).map_err(|e| format!("table {:?}, CHECK ({c}): {e}", t.name))?;
        }
        if cost > MAX_CHECK_COST {
            return Err(format!(
                "table {:?}: its CHECK constraints read the row's values {cost} times in all (hex counts twice); at most {MAX_CHECK_COST}",
                t.name
            ));
        }
    }
    Ok(())
}

fn over_budget(e: crate::sandbox::Exceeded) -> String {
    format!(
        "migration SQL went over the budget of admin SQL: it {e} (a migration's statements only change the schema)"
    )
}

/// The one operation a statement made, from the schemas before and after
/// it and what the authorizer saw.
fn infer(before: &Schema, after: &Schema, kinds: &[Kind]) -> Result<SchemaOp, String> {
    let only = |k: Kind| kinds.iter().all(|x| *x == k) && !kinds.is_empty();
    let added: Vec<&Table> = after
        .tables
        .iter()
        .filter(|t| before.table(&t.name).is_none())
        .collect();
    let gone: Vec<&Table> = before
        .tables
        .iter()
        .filter(|t| after.table(&t.name).is_none())
        .collect();
    let changed: Vec<(&Table, &Table)> = before
        .tables
        .iter()
        .filter_map(|b| after.table(&b.name).filter(|a| *a != b).map(|a| (b, a)))
        .collect();
    let one_statement = "write one schema change per statement";
    if added.is_empty() && gone.is_empty() && changed.is_empty() {
        return Err(
            "a statement changed none of the group's tables (a migration holds schema changes only; names starting with \"pdb_\" are reserved)"
                .into(),
        );
    }
    // A table's own constraints create its automatic indexes with it.
    if kinds.contains(&Kind::CreateTable)
        && kinds
            .iter()
            .all(|k| matches!(k, Kind::CreateTable | Kind::CreateIndex))
    {
        return match (added.as_slice(), gone.len(), changed.len()) {
            ([t], 0, 0) => Ok(SchemaOp::CreateTable {
                table: (*t).clone(),
            }),
            _ => Err(one_statement.into()),
        };
    }
    if only(Kind::DropTable) {
        return match (gone.as_slice(), added.len(), changed.len()) {
            ([t], 0, 0) => Ok(SchemaOp::DropTable {
                table: t.name.clone(),
            }),
            _ => Err(one_statement.into()),
        };
    }
    let [(b, a)] = changed.as_slice() else {
        if !added.is_empty() || !gone.is_empty() {
            return Err(
                "renaming a table is not supported: create the new one and drop the old".into(),
            );
        }
        return Err(one_statement.into());
    };
    if !added.is_empty() || !gone.is_empty() {
        return Err(one_statement.into());
    }
    let table = b.name.clone();
    if only(Kind::CreateIndex) {
        let new: Vec<_> = a
            .indexes
            .iter()
            .filter(|i| {
                !b.indexes
                    .iter()
                    .any(|x| x.name.eq_ignore_ascii_case(&i.name))
            })
            .collect();
        return match new.as_slice() {
            [i] => Ok(SchemaOp::CreateIndex {
                table,
                index: (*i).clone(),
            }),
            _ => Err(one_statement.into()),
        };
    }
    if only(Kind::DropIndex) {
        let old: Vec<_> = b
            .indexes
            .iter()
            .filter(|i| {
                !a.indexes
                    .iter()
                    .any(|x| x.name.eq_ignore_ascii_case(&i.name))
            })
            .collect();
        return match old.as_slice() {
            [i] => Ok(SchemaOp::DropIndex {
                table,
                index: i.name.clone(),
            }),
            _ => Err(one_statement.into()),
        };
    }
    if !kinds.contains(&Kind::Alter) {
        return Err(one_statement.into());
    }
    let (bn, an) = (b.columns.len(), a.columns.len());
    if an == bn + 1 && a.columns[..bn] == b.columns[..] {
        if a.checks != b.checks {
            return Err(format!(
                "ADD COLUMN with a CHECK constraint is not supported (a CHECK cannot be added to the rows devices already hold): add column {:?} without it, and check its values with a write rule (PUT /v1/groups/<g>/rules/{})",
                a.columns[bn].name, b.name
            ));
        }
        return Ok(SchemaOp::AddColumn {
            table,
            column: a.columns[bn].clone(),
        });
    }
    if an + 1 == bn {
        let gone: Vec<_> = b
            .columns
            .iter()
            .filter(|c| !a.columns.iter().any(|x| x.name == c.name))
            .collect();
        if let [c] = gone.as_slice() {
            return Ok(SchemaOp::DropColumn {
                table,
                column: c.name.clone(),
            });
        }
    }
    if an == bn {
        let renamed: Vec<_> = b
            .columns
            .iter()
            .zip(&a.columns)
            .filter(|(x, y)| x.name != y.name)
            .collect();
        if let [(x, y)] = renamed.as_slice() {
            return Ok(SchemaOp::RenameColumn {
                table,
                from: x.name.clone(),
                to: y.name.clone(),
            });
        }
    }
    Err("this ALTER TABLE is not supported (ADD COLUMN, DROP COLUMN and RENAME COLUMN are)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> Schema {
        super::super::schema::parse(
            "CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT NOT NULL, old TEXT);
             CREATE INDEX notes_title ON notes(title);",
            1,
        )
        .unwrap()
    }

    #[test]
    fn each_statement_becomes_one_operation() {
        let m = derive(
            &v1(),
            "ALTER TABLE notes ADD COLUMN done INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE notes DROP COLUMN old;
             ALTER TABLE notes RENAME COLUMN title TO body;
             CREATE TABLE tags(note TEXT, tag TEXT, PRIMARY KEY(note, tag)) WITHOUT ROWID;
             CREATE INDEX tags_tag ON tags(tag);
             DROP INDEX notes_title;",
            2,
            1,
            Limits::default(),
        )
        .unwrap();
        let kinds: Vec<&str> = m
            .ops
            .iter()
            .map(|o| match o {
                SchemaOp::AddColumn { .. } => "add",
                SchemaOp::DropColumn { .. } => "drop",
                SchemaOp::RenameColumn { .. } => "rename",
                SchemaOp::CreateTable { .. } => "create",
                SchemaOp::DropTable { .. } => "drop table",
                SchemaOp::CreateIndex { .. } => "index",
                SchemaOp::DropIndex { .. } => "drop index",
            })
            .collect();
        assert_eq!(
            kinds,
            ["add", "drop", "rename", "create", "index", "drop index"]
        );
        let s = m.schema();
        assert_eq!(s.table("notes").unwrap().columns.len(), 3);
        assert!(s.table("tags").is_some());
        // Applied with statements built from the operations, a copy of v1
        // reads back as the migration's schema.
        let c = Connection::open_in_memory().unwrap();
        create(&c, &v1()).unwrap();
        for op in &m.ops {
            for sql in op.ddl() {
                c.execute_batch(&sql).unwrap();
            }
        }
        assert_eq!(read(&c, 2).unwrap(), s);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "INSERT INTO notes VALUES ('x', 'y', 'z')",
            "ALTER TABLE notes RENAME TO notes2",
            "CREATE VIEW v AS SELECT * FROM notes",
            "CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END",
            "ALTER TABLE notes ADD COLUMN n INTEGER NOT NULL",
            "ALTER TABLE notes ADD COLUMN at TEXT DEFAULT CURRENT_TIMESTAMP",
            "ALTER TABLE notes ADD COLUMN c TEXT REFERENCES notes(id)",
            "ALTER TABLE notes DROP COLUMN id",
            "ALTER TABLE notes DROP COLUMN title",
            "CREATE TABLE pdb_x(id INTEGER PRIMARY KEY)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v \"TEXT); DROP TABLE notes; --\")",
            "PRAGMA writable_schema = 1",
            "ATTACH ':memory:' AS x",
            "",
        ] {
            assert!(
                derive(&v1(), bad, 2, 1, Limits::default()).is_err(),
                "accepted: {bad}"
            );
        }
        let drop = derive(
            &v1(),
            "CREATE TABLE x(id INTEGER PRIMARY KEY); DROP TABLE notes",
            2,
            1,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(drop.tables.len(), 1);
        assert!(derive(&v1(), "DROP TABLE notes", 2, 1, Limits::default())
            .unwrap_err()
            .contains("no table"));
        assert!(
            derive(&v1(), "DROP TABLE notes", 1, 1, Limits::default()).is_err(),
            "same version"
        );
        assert!(
            derive(&v1(), "DROP TABLE notes", 2, 2, Limits::default()).is_err(),
            "window past current"
        );
    }
}
