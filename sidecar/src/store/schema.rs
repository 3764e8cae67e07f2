//! Turning an admin's DDL into a group schema safely, reading a schema
//! back from a database, and the authorizer admin-defined queries run under.
//!
//! The DDL runs under an authorizer that allows only CREATE TABLE and
//! CREATE INDEX (no ATTACH, PRAGMA, triggers, views, data changes), with
//! ATTACH disabled outright, first in a scratch in-memory database.

use pdb_protocol::schema::COLUMNS_SQL;
use pdb_protocol::{Column, Schema, Table};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

/// Tables reserved for the witness's and the extension's bookkeeping.
pub const RESERVED_PREFIX: &str = "pdb_";
pub const MAX_DDL_BYTES: usize = 256 * 1024;

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    let schema_table = |t: &str| t == "sqlite_master" || t == "sqlite_schema";
    let ok = match ctx.action {
        AuthAction::CreateTable { .. } | AuthAction::CreateIndex { .. } => {
            ctx.database_name == Some("main")
        }
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => schema_table(table_name),
        AuthAction::Read { .. } | AuthAction::Select | AuthAction::Function { .. } => true,
        AuthAction::Reindex { .. } | AuthAction::Analyze { .. } => true,
        _ => false,
    };
    if ok {
        Authorization::Allow
    } else {
        Authorization::Deny
    }
}

/// An authorizer for SQL that may only read the group's own tables (and
/// `extra`, when given): write rules and projection queries.
pub fn read_only(
    extra: Option<String>,
) -> impl FnMut(AuthContext<'_>) -> Authorization + Send + 'static {
    move |ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Select | AuthAction::Function { .. } | AuthAction::Recursive => {
            Authorization::Allow
        }
        AuthAction::Read { table_name, .. }
            if (!table_name.starts_with("pdb_") && !table_name.starts_with("sqlite_"))
                || extra.as_deref() == Some(table_name) =>
        {
            Authorization::Allow
        }
        _ => Authorization::Deny,
    }
}

/// Runs `ddl` on `conn` with only table and index creation allowed.
pub fn run_ddl(conn: &mut Connection, ddl: &str) -> Result<(), String> {
    if ddl.len() > MAX_DDL_BYTES {
        return Err(format!("schema SQL is larger than {MAX_DDL_BYTES} bytes"));
    }
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(|e| e.to_string())?;
    conn.authorizer(Some(authorize))
        .map_err(|e| e.to_string())?;
    let result = conn.execute_batch(ddl).map_err(|e| {
        format!("schema SQL was refused (only CREATE TABLE and CREATE INDEX are allowed): {e}")
    });
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .map_err(|e| e.to_string())?;
    result
}

/// Validates DDL in a scratch database and returns the schema it defines.
pub fn parse(ddl: &str, version: u32) -> Result<Schema, String> {
    let mut conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
    run_ddl(&mut conn, ddl)?;
    let schema = read(&conn, version).map_err(|e| e.to_string())?;
    if schema.tables.is_empty() {
        return Err("schema SQL defines no table".into());
    }
    for t in &schema.tables {
        if t.name.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
            return Err(format!(
                "table {:?}: names starting with {RESERVED_PREFIX:?} are reserved",
                t.name
            ));
        }
        if !t.columns.iter().any(|c| c.pk > 0) {
            return Err(format!("table {:?} has no PRIMARY KEY", t.name));
        }
    }
    Ok(schema)
}

/// The group tables in `conn` (everything but `pdb_*` and `sqlite_*`).
pub fn read(conn: &Connection, version: u32) -> super::error::Result<Schema> {
    let mut names = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table'
           AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
           AND name NOT LIKE 'pdb\\_%' ESCAPE '\\'",
    )?;
    let names: Vec<String> = names
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut cols = conn.prepare(COLUMNS_SQL)?;
    let mut tables = Vec::new();
    for name in names {
        let mut columns = Vec::new();
        let mut rows = cols.query([&name])?;
        while let Some(r) = rows.next()? {
            columns.push(
                Column::from_xinfo(
                    &name,
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, i64>(2)? != 0,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                )
                .map_err(super::error::StoreError::Corrupt)?,
            );
        }
        tables.push(Table { name, columns });
    }
    Ok(Schema::new(version, tables))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tables_and_indexes() {
        let s = parse(
            "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INT DEFAULT 0);
             CREATE INDEX tasks_done ON tasks(done);
             CREATE TABLE tags(task INTEGER, tag TEXT, PRIMARY KEY(task, tag)) WITHOUT ROWID;",
            3,
        )
        .unwrap();
        assert_eq!(s.version, 3);
        assert_eq!(s.tables.len(), 2);
        assert_eq!(
            s.table("TASKS").unwrap().columns[2].default.as_deref(),
            Some("0")
        );
    }

    #[test]
    fn same_shape_same_hash_whatever_the_formatting() {
        let a = parse("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);", 1).unwrap();
        let b = parse(
            "create   table t (\n id integer primary key,\n v text\n)",
            1,
        )
        .unwrap();
        assert_eq!(a.hash(), b.hash());
        let c = parse("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);", 1).unwrap();
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "ATTACH '/tmp/x.db' AS x",
            "CREATE TABLE t(id INTEGER PRIMARY KEY); PRAGMA journal_mode=delete;",
            "CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);",
            "CREATE TABLE t(id INTEGER PRIMARY KEY); CREATE VIEW v AS SELECT * FROM t;",
            "CREATE TABLE t(id INTEGER PRIMARY KEY); CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; END;",
            "CREATE TEMP TABLE t(id INTEGER PRIMARY KEY)",
            "CREATE TABLE t(a, b)",
            "CREATE TABLE pdb_x(id INTEGER PRIMARY KEY)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, g AS (id * 2))",
            "",
            "not sql at all",
        ] {
            assert!(parse(bad, 1).is_err(), "accepted: {bad}");
        }
    }
}
