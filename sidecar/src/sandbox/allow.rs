//! Checking admin SQL when it is defined, against allow-lists.
//!
//! Two checks, both on the compiled statement rather than on its text:
//!
//! 1. SQLite's authorizer, while the statement is prepared: it reports
//!    every function called and every table read (a table referenced
//!    without reading a column too, as a read with an empty column name).
//!    Only the functions in [`FUNCTIONS`], and reads of the allowed tables,
//!    pass; every other action (PRAGMA, writes, ATTACH, ...) is refused.
//! 2. The compiled program (`EXPLAIN`): every b-tree it opens must be one
//!    of the allowed tables or their indexes, in the main database, opened
//!    for reading; no virtual table (table-valued pragmas, `dbstat`,
//!    `json_each`) may be opened at all. This catches whatever a name can
//!    hide, such as a common table expression named like a table.
//!
//! The statement must also be read-only (`sqlite3_stmt_readonly`).

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The functions admin SQL may call: deterministic, touching nothing but
/// their arguments, and making nothing much larger than their input
/// (no `randomblob`, `zeroblob`, `printf`/`format`, `random`, nothing
/// about the database or the library). Operators `->` and `->>` are JSON
/// functions to SQLite.
pub const FUNCTIONS: &[&str] = &[
    // scalar
    "abs",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "glob",
    "hex",
    "ifnull",
    "iif",
    "instr",
    "length",
    "like",
    "likelihood",
    "likely",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "quote",
    "replace",
    "round",
    "rtrim",
    "sign",
    "substr",
    "substring",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "unlikely",
    "upper",
    // date and time
    "date",
    "datetime",
    "julianday",
    "strftime",
    "time",
    "timediff",
    "unixepoch",
    // aggregate
    "avg",
    "count",
    "group_concat",
    "string_agg",
    "sum",
    "total",
    // JSON values (not the table-valued json_each / json_tree)
    "json",
    "json_array",
    "json_array_length",
    "json_extract",
    "json_object",
    "json_quote",
    "json_type",
    "json_valid",
    "->",
    "->>",
];

/// Names that are never a group's table: bookkeeping, SQLite's own, and
/// the virtual tables that read the database or the library's state.
fn reserved(table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    ["pdb_", "sqlite_", "pragma_", "fts", "rtree"]
        .iter()
        .any(|p| t.starts_with(p))
        || [
            "dbstat",
            "json_each",
            "json_tree",
            "generate_series",
            "carray",
        ]
        .contains(&t.as_str())
}

/// Checks `sql` (one read-only statement) against the allow-lists, on
/// `conn`, a connection to the group's file used for nothing else while
/// this runs. `tables` are the tables it may read (the group's own, and
/// for a visibility rule its projection's). Returns the statement's
/// result column names, or why it is refused.
pub fn check(conn: &mut Connection, sql: &str, tables: &[&str]) -> Result<Vec<String>, String> {
    names(conn, sql)?;
    let allowed: HashSet<String> = tables.iter().map(|t| t.to_ascii_lowercase()).collect();
    let roots = root_pages(conn, &allowed).map_err(|e| format!("reading the schema: {e}"))?;
    let refused: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let record = refused.clone();
    let allowed_in_hook = allowed.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let why = match ctx.action {
            AuthAction::Select | AuthAction::Recursive => return Authorization::Allow,
            AuthAction::Function { function_name } => {
                if FUNCTIONS.contains(&function_name.to_ascii_lowercase().as_str()) {
                    return Authorization::Allow;
                }
                format!("function {function_name}() is not allowed")
            }
            AuthAction::Read {
                table_name,
                column_name,
            } => {
                let t = table_name.to_ascii_lowercase();
                if allowed_in_hook.contains(&t)
                    || (column_name.is_empty() && ctx.database_name.is_none() && !reserved(&t))
                {
                    // A name with no column read may be a common table
                    // expression; the compiled program is checked below.
                    return Authorization::Allow;
                }
                format!("{table_name:?} is not one of the group's tables")
            }
            other => format!("{other:?} is not allowed"),
        };
        let mut slot = record.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(why);
        Authorization::Deny
    }))
    .map_err(|e| e.to_string())?;
    let result = compile(conn, sql, &roots, &refused);
    let _ = conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    result
}

/// What the definition names, whether or not it survives compilation:
/// SQLite folds `(SELECT ... FROM pragma_table_list) > 0 OR 1` to a
/// constant before the authorizer sees the subquery, so the text is read
/// too. No name of its (outside string literals) may be a reserved table,
/// and none called like a function may be a function SQLite has that is
/// not allowed.
fn names(conn: &Connection, sql: &str) -> Result<(), String> {
    use pdb_protocol::sqltext::{tokenize, Token};
    let tokens = tokenize(sql).map_err(|e| format!("it cannot be read: {e}"))?;
    let mut known = conn
        .prepare_cached("SELECT 1 FROM pragma_function_list WHERE name = ?1")
        .map_err(|e| e.to_string())?;
    for (i, t) in tokens.iter().enumerate() {
        let (Token::Word(name) | Token::Quoted(name)) = t else {
            continue;
        };
        if reserved(name) {
            return Err(format!("{name:?} is not one of the group's tables"));
        }
        let lower = name.to_ascii_lowercase();
        if tokens.get(i + 1) == Some(&Token::Op("("))
            && !FUNCTIONS.contains(&lower.as_str())
            && known.exists([&lower]).map_err(|e| e.to_string())?
        {
            return Err(format!("function {name}() is not allowed"));
        }
    }
    Ok(())
}

fn compile(
    conn: &Connection,
    sql: &str,
    roots: &HashSet<i64>,
    refused: &Mutex<Option<String>>,
) -> Result<Vec<String>, String> {
    let why = |e: rusqlite::Error| {
        refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| e.to_string())
    };
    let columns = {
        let st = conn.prepare(sql).map_err(why)?;
        if !st.readonly() {
            return Err("it is not a read-only statement".into());
        }
        st.column_names().map(str::to_string).collect::<Vec<_>>()
    };
    let mut st = conn.prepare(&format!("EXPLAIN {sql}")).map_err(why)?;
    // Parameters stay unbound: EXPLAIN lists the program, it runs none of it.
    let mut rows = st.raw_query();
    while let Some(r) = rows.next().map_err(why)? {
        let opcode: String = r.get(1).map_err(why)?;
        let (p2, p3, p5): (i64, i64, i64) = (
            r.get(3).map_err(why)?,
            r.get(4).map_err(why)?,
            r.get(6).map_err(why)?,
        );
        let ok = match opcode.as_str() {
            // P5 bit 0x10 (OPFLAG_P2ISREG): the root page comes from a
            // register, so it cannot be checked here.
            "OpenRead" | "ReopenIdx" => p3 == 0 && p5 & 0x10 == 0 && roots.contains(&p2),
            "OpenWrite" => false,
            o if o.starts_with('V') && o != "Variable" => false,
            _ => true,
        };
        if !ok {
            return Err(format!(
                "it reads storage other than the group's tables ({opcode})"
            ));
        }
    }
    Ok(columns)
}

/// Root pages of the allowed tables and their indexes.
fn root_pages(conn: &Connection, allowed: &HashSet<String>) -> rusqlite::Result<HashSet<i64>> {
    let mut st = conn.prepare(
        "SELECT lower(tbl_name), rootpage FROM sqlite_schema WHERE type IN ('table', 'index')",
    )?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = HashSet::new();
    for row in rows {
        let (t, root) = row?;
        if allowed.contains(&t) && root > 0 {
            out.insert(root);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE tasks(id INTEGER PRIMARY KEY, owner TEXT, note TEXT);
             CREATE INDEX tasks_owner ON tasks(owner);
             CREATE TABLE pdb_members(identity TEXT PRIMARY KEY, role TEXT);
             CREATE TABLE pdb_log(seq INTEGER PRIMARY KEY, x BLOB);",
        )
        .unwrap();
        c
    }

    #[test]
    fn reads_of_the_groups_tables_pass() {
        let mut c = group();
        for ok in [
            "SELECT owner = 'a' FROM tasks",
            "SELECT count(*) FROM tasks",
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE owner = 'x')",
            "SELECT json_extract('{}', '$.a'), '{}' ->> 'a', lower(note) FROM tasks",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            "WITH t(x) AS (SELECT owner FROM tasks) SELECT count(*) FROM t",
        ] {
            check(&mut c, ok, &["tasks"]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let cols = check(
            &mut c,
            "SELECT owner, count(*) AS n FROM tasks GROUP BY owner",
            &["tasks"],
        )
        .unwrap();
        assert_eq!(cols, ["owner", "n"]);
    }

    #[test]
    fn everything_outside_the_allow_lists_is_refused() {
        let mut c = group();
        for bad in [
            "SELECT EXISTS (SELECT 1 FROM pdb_members)",
            "SELECT count(*) FROM pdb_log",
            "SELECT count(*) FROM sqlite_schema",
            "SELECT count(*) FROM sqlite_master",
            "SELECT * FROM pragma_table_list",
            "SELECT name FROM pragma_database_list",
            "SELECT count(*) FROM pragma_database_list",
            "SELECT count(*) FROM dbstat",
            "SELECT count(*) FROM json_each('[1,2]')",
            "SELECT randomblob(900000000)",
            "SELECT zeroblob(10)",
            "SELECT printf('%.*c', 100000000, 'x')",
            "SELECT format('%d', 1)",
            "SELECT random()",
            "SELECT load_extension('x')",
            "SELECT sqlite_version()",
            "SELECT changes()",
            "WITH pdb_log(x) AS (SELECT 1) SELECT (SELECT count(*) FROM pdb_members)",
            "SELECT (WITH pdb_members(x) AS (SELECT 1) SELECT 1) + (SELECT count(*) FROM pdb_members)",
            "DELETE FROM tasks",
            "PRAGMA table_list",
            "SELECT count(*) FROM temp.sqlite_temp_master",
            "SELECT x FROM main.pdb_log",
            // Folded away by SQLite before the authorizer sees them.
            "SELECT (SELECT count(*) FROM pragma_table_list) > 0 OR 1",
            "SELECT 1 OR (SELECT count(*) FROM pdb_members) > 0",
            "SELECT 1 OR length(randomblob(10)) > 0",
            "SELECT 0 AND sqlite_version() > ''",
        ] {
            assert!(check(&mut c, bad, &["tasks"]).is_err(), "accepted: {bad}");
        }
        // Refusals say why.
        let e = check(&mut c, "SELECT randomblob(9)", &["tasks"]).unwrap_err();
        assert!(e.contains("randomblob"), "{e}");
        let e = check(&mut c, "SELECT count(*) FROM pdb_members", &["tasks"]).unwrap_err();
        assert!(e.contains("pdb_members"), "{e}");
        // The connection is left without the authorizer.
        c.prepare("SELECT count(*) FROM pdb_members").unwrap();
    }
}
