//! Turning an admin's DDL into a group's structured schema safely, creating
//! tables from the structure, and reading it back. (Admin-defined queries
//! are checked by `crate::sandbox::allow`.)
//!
//! An admin's DDL only ever runs in a scratch in-memory database, under an
//! authorizer that allows only CREATE TABLE and CREATE INDEX (no ATTACH,
//! PRAGMA, triggers, views, data changes), with ATTACH disabled outright.
//! The group's own tables — here and on every device — are created from the
//! structure (`Schema::ddl`), never from the admin's text.

use super::value::{from_ref, Bind};
use pdb_protocol::schema::{self, Catalog};
use pdb_protocol::{Schema, Value};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

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

/// Reads a database's catalog for the schema reader of the protocol.
pub struct SqliteCatalog<'a>(pub &'a Connection);

impl Catalog for SqliteCatalog<'_> {
    fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, String> {
        let mut st = self.0.prepare(sql).map_err(|e| e.to_string())?;
        let n = st.column_count();
        let binds: Vec<Bind<'_>> = params.iter().map(Bind).collect();
        let rows = st
            .query_map(rusqlite::params_from_iter(binds.iter()), |r| {
                (0..n).map(|i| r.get_ref(i).map(from_ref)).collect()
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
    }
}

/// Turns an admin's DDL into the group's schema: runs it in a scratch
/// database (only CREATE TABLE and CREATE INDEX allowed), reads the
/// structure back, checks it against the grammar, and checks that the DDL
/// built from the structure gives the very same structure — so every
/// device that builds it gets the tables the witness has.
pub fn parse(ddl: &str, version: u32) -> Result<Schema, String> {
    let mut conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
    run_ddl(&mut conn, ddl)?;
    let schema = read(&conn, version)?;
    schema.validate()?;
    let rebuilt = Connection::open_in_memory().map_err(|e| e.to_string())?;
    create(&rebuilt, &schema)?;
    if read(&rebuilt, version)? != schema {
        return Err("the schema uses something its structured form cannot express exactly".into());
    }
    Ok(schema)
}

/// Creates a validated schema's tables and indexes from its structure.
pub fn create(conn: &Connection, schema: &Schema) -> Result<(), String> {
    for sql in schema.ddl() {
        conn.execute_batch(&sql)
            .map_err(|e| format!("creating the group's tables: {e}"))?;
    }
    Ok(())
}

/// The group tables in `conn` (everything but `pdb_*` and `sqlite_*`), as
/// structured data.
pub fn read(conn: &Connection, version: u32) -> Result<Schema, String> {
    let mut cat = SqliteCatalog(conn);
    let names = schema::table_names(&mut cat)?;
    let tables = schema::read_tables(&mut cat, &names)?.unwrap_or_default();
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
            // Declared types are a strict grammar, whatever SQLite accepts.
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v \"TEXT); DROP TABLE app_secrets; SELECT load_extension('x'); --\")",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT CHECK (load_extension('x')))",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT DEFAULT (randomblob(1000000000)))",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT COLLATE evil)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, u INTEGER REFERENCES t(id))",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE ON CONFLICT REPLACE)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX i ON t(lower(v))",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX i ON t(v) WHERE v > 0",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX pdb_i ON t(v)",
        ] {
            assert!(parse(bad, 1).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn constraints_travel_as_data_and_rebuild_exactly() {
        let s = parse(
            "CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT NOT NULL COLLATE NOCASE
                CHECK (length(title) <= 200), email TEXT UNIQUE, at TEXT DEFAULT CURRENT_TIMESTAMP,
                n INTEGER DEFAULT (-1) CHECK (n >= -1)) WITHOUT ROWID;
             CREATE UNIQUE INDEX notes_email_title ON notes(email, title COLLATE BINARY DESC);",
            1,
        )
        .unwrap();
        let t = s.table("notes").unwrap();
        assert!(t.without_rowid);
        assert_eq!(t.columns[1].collation.as_deref(), Some("NOCASE"));
        assert_eq!(t.columns[3].default.as_deref(), Some("CURRENT_TIMESTAMP"));
        assert_eq!(t.columns[4].default.as_deref(), Some("- 1"));
        assert_eq!(
            t.checks,
            vec!["\"n\" >= - 1", "length ( \"title\" ) <= 200"]
        );
        assert_eq!(t.unique.len(), 1);
        assert_eq!(t.indexes[0].columns[1].collation.as_deref(), Some("BINARY"));
        assert!(t.indexes[0].columns[1].desc);
        // What the structure builds reads back as the same structure.
        let db = Connection::open_in_memory().unwrap();
        create(&db, &s).unwrap();
        assert_eq!(read(&db, 1).unwrap(), s);
    }
}
