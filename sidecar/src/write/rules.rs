//! Row-level write rules, as the write path checks them on every row.
//!
//! A rule is a SQL boolean expression over `new.<column>`, `old.<column>`
//! (NULLs where the row does not exist), `:caller` (the identity) and `:op`
//! (`insert`, `update`, `delete`). It runs as
//! `SELECT CASE WHEN (<rule>) THEN 1 ELSE 0 END FROM (SELECT :n0 AS c0, ...)
//! AS new, (SELECT :o0 AS c0, ...) AS old` with every value bound. Defining
//! and removing rules is admin work (`crate::access`).

use crate::error::ApiError;
use crate::store::value::{named, Bind};
use crate::store::{GroupInfo, TableSql};
use pdb_protocol::{quote_ident, Change, Op, Value};
use rusqlite::Connection;
use std::collections::HashMap;

/// The statement a rule runs as, for a table of the group.
pub fn rule_sql(info: &GroupInfo, table: &str, expr: &str) -> Option<String> {
    let t = info.schema.table(table)?;
    let side = |prefix: &str| -> String {
        t.columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!(":{prefix}{i} AS {}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "SELECT CASE WHEN ({expr}) THEN 1 ELSE 0 END FROM (SELECT {}) AS new, (SELECT {}) AS old",
        side("n"),
        side("o")
    ))
}

/// The rules in force, by lower-cased table, as ready-to-run statements.
pub fn load(conn: &Connection, info: &GroupInfo) -> rusqlite::Result<HashMap<String, String>> {
    let mut st = conn.prepare_cached("SELECT tbl, expr FROM pdb_rules")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (t, expr) = row?;
        if let Some(sql) = rule_sql(info, &t, &expr) {
            out.insert(t.to_ascii_lowercase(), sql);
        }
    }
    Ok(out)
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
    }
}

/// Checks a table's rule (`sql`, from [`load`]) for one row change by
/// `caller`; `current` is the row as stored before the change.
pub fn check(
    conn: &Connection,
    sql: &str,
    caller: &str,
    ts: &TableSql,
    key: &[Value],
    c: &Change,
    current: Option<&[Value]>,
) -> Result<(), ApiError> {
    let new = c.row_after(current);
    let op = op_name(c.op);
    let ok = allows(
        conn,
        sql,
        caller,
        op,
        current,
        new.as_deref(),
        ts.columns.len(),
    )
    .map_err(|e| ApiError::internal("running a write rule", e))?;
    if ok {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        table: Some(ts.name.clone()),
        key: Some(key.to_vec()),
        message: format!(
            "the write rule of table {:?} refuses this {op} by {caller:?}",
            ts.name
        ),
    })
}

/// Whether the rule allows this row change.
fn allows(
    conn: &Connection,
    sql: &str,
    caller: &str,
    op: &str,
    old: Option<&[Value]>,
    new: Option<&[Value]>,
    n_cols: usize,
) -> rusqlite::Result<bool> {
    let mut st = conn.prepare_cached(sql)?;
    let null = Value::Null;
    let names: Vec<(String, String)> = (0..n_cols)
        .map(|i| (format!(":n{i}"), format!(":o{i}")))
        .collect();
    let mut binds: Vec<(&str, Bind<'_>)> = Vec::with_capacity(2 * n_cols + 2);
    for (i, (n, o)) in names.iter().enumerate() {
        binds.push((n, Bind(new.and_then(|r| r.get(i)).unwrap_or(&null))));
        binds.push((o, Bind(old.and_then(|r| r.get(i)).unwrap_or(&null))));
    }
    let optional = [(":caller", Value::text(caller)), (":op", Value::text(op))];
    binds.extend(named(&st, &optional)?);
    let params: Vec<(&str, &dyn rusqlite::ToSql)> = binds
        .iter()
        .map(|(n, b)| (*n, b as &dyn rusqlite::ToSql))
        .collect();
    st.query_row(params.as_slice(), |r| r.get::<_, i64>(0))
        .map(|v| v == 1)
}
