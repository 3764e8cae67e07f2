//! Row-level write rules, as the write path checks them on every row.
//!
//! A table's rule has one of two forms: one expression for every operation
//! (`{"expr": ...}`), or one per operation (`{"insert", "update",
//! "delete"}`; an operation without one is refused). Each expression is a
//! SQL boolean over `new.<column>`, `old.<column>` (NULLs where the row
//! does not exist), `:caller` (the identity) and `:op` (`insert`,
//! `update`, `delete`). It runs as `SELECT CASE WHEN (<rule>) THEN 1 ELSE
//! 0 END FROM (SELECT :n0 AS c0, ...) AS new, (SELECT :o0 AS c0, ...) AS
//! old` with every value bound, under the commit's budget
//! (`crate::sandbox`): a rule that runs out of it, or fails, refuses the
//! commit with `rule_error`. Defining rules is admin work (`crate::access`).

use crate::error::ApiError;
use crate::sandbox::{Exceeded, Failure, Scope};
use crate::store::value::{named, Bind};
use crate::store::{GroupInfo, TableSql};
use pdb_protocol::{quote_ident, Change, Op, Value};
use rusqlite::Connection;
use std::collections::HashMap;

/// The operations a per-operation rule names, in the order stored.
pub const OPS: [&str; 3] = ["insert", "update", "delete"];

/// A table's rule, as ready-to-run statements.
pub enum Rule {
    /// One expression for every operation.
    All(String),
    /// One per operation (`None`: that operation is refused).
    PerOp([Option<String>; 3]),
}

impl Rule {
    fn sql(&self, op: Op) -> Option<&str> {
        match self {
            Rule::All(sql) => Some(sql),
            Rule::PerOp(each) => each[op_index(op)].as_deref(),
        }
    }

    /// How messages name the rule that decided.
    fn name(&self, op: Op, table: &str) -> String {
        match self {
            Rule::All(_) => format!("the write rule of table {table:?}"),
            Rule::PerOp(_) => format!("the {} rule of table {table:?}", OPS[op_index(op)]),
        }
    }
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
    }
}

/// The statement a rule expression runs as, for a table of the group.
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

/// The per-operation expressions stored in `pdb_rules.ops`.
pub fn parse_ops(ops: &str) -> [Option<String>; 3] {
    let v: serde_json::Value = serde_json::from_str(ops).unwrap_or_default();
    OPS.map(|op| v.get(op).and_then(|e| e.as_str()).map(str::to_string))
}

/// The rules in force, by lower-cased table.
pub fn load(conn: &Connection, info: &GroupInfo) -> rusqlite::Result<HashMap<String, Rule>> {
    let mut st = conn.prepare_cached("SELECT tbl, expr, ops FROM pdb_rules")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (t, expr, ops) = row?;
        let rule = match ops {
            None => rule_sql(info, &t, &expr).map(Rule::All),
            Some(ops) => Some(Rule::PerOp(
                parse_ops(&ops).map(|e| e.and_then(|e| rule_sql(info, &t, &e))),
            )),
        };
        if let Some(rule) = rule {
            out.insert(t.to_ascii_lowercase(), rule);
        }
    }
    Ok(out)
}

/// Checks a table's rule for one row change by `caller`, under `scope`;
/// `current` is the row as stored before the change.
#[allow(clippy::too_many_arguments)]
pub fn check(
    conn: &Connection,
    scope: &Scope<'_>,
    rule: &Rule,
    caller: &str,
    ts: &TableSql,
    key: &[Value],
    c: &Change,
    current: Option<&[Value]>,
) -> Result<(), ApiError> {
    let op = OPS[op_index(c.op)];
    let name = rule.name(c.op, &ts.name);
    let refused = |message: String| ApiError::Forbidden {
        table: Some(ts.name.clone()),
        key: Some(key.to_vec()),
        message,
    };
    let Some(sql) = rule.sql(c.op) else {
        return Err(refused(format!(
            "table {:?} has no {op} rule, so every {op} is refused",
            ts.name
        )));
    };
    let new = c.row_after(current);
    let n_cols = ts.columns.len();
    let ok = scope.run(conn, || {
        allows(conn, sql, caller, op, current, new.as_deref(), n_cols)
    });
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused(format!("{name} refuses this {op} by {caller:?}"))),
        Err(Failure::Exceeded(Exceeded::Stopping)) => Err(ApiError::Unavailable(
            "the witness is shutting down; retry".into(),
        )),
        Err(f) => Err(ApiError::RuleError {
            table: Some(ts.name.clone()),
            key: Some(key.to_vec()),
            message: format!("{name} {f} while checking this {op} by {caller:?}"),
        }),
    }
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
