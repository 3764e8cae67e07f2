//! Applying a validated changeset to the group's replica, row by row, with
//! every conflict an abort. This is the session extension's apply
//! semantics (NOTFOUND, DATA, CONFLICT, CONSTRAINT) done with cached
//! statements: SQLite's own `changeset_apply` sets a pragma that expires
//! every prepared statement of the connection on each call, which made it
//! the writer's largest cost. The verifier replays with SQLite's apply, so
//! the two are cross-checked on every verification.
//!
//! Old values are compared bit-exactly. The state root moves by the row as
//! it was before and as SQLite stored it after, both read by key (so
//! affinity conversions are what gets hashed).

use super::rules::Rule;
use crate::error::ApiError;
use crate::sandbox::Scope;
use crate::store::value::Bind;
use crate::store::{GroupInfo, TableSql};
use pdb_protocol::{Change, Changeset, Op, StateRoot, Value};
use rusqlite::{Connection, ErrorCode};

fn conflict(table: &str, key: &[Value], message: impl Into<String>) -> ApiError {
    ApiError::ChangesetConflict {
        table: table.to_string(),
        key: key.to_vec(),
        message: message.into(),
    }
}

/// Who is writing, the write rules in force (by lower-cased table), and
/// the budget they run under for this commit.
pub struct Writer<'a> {
    pub caller: &'a str,
    pub rules: &'a std::collections::HashMap<String, Rule>,
    pub scope: &'a Scope<'a>,
}

pub fn apply(
    conn: &Connection,
    info: &GroupInfo,
    cs: &Changeset,
    root: &mut StateRoot,
    who: &Writer<'_>,
) -> Result<(), ApiError> {
    for t in &cs.tables {
        let ts = info
            .table_sql(&t.name)
            .ok_or_else(|| ApiError::internal("finding a validated table", &t.name))?;
        let rule = who.rules.get(&ts.name.to_ascii_lowercase());
        for c in &t.changes {
            apply_one(conn, ts, &t.pk_flags, c, root, rule.map(|r| (r, who)))?;
        }
    }
    Ok(())
}

fn apply_one(
    conn: &Connection,
    ts: &TableSql,
    pk_flags: &[u8],
    c: &Change,
    root: &mut StateRoot,
    rule: Option<(&Rule, &Writer<'_>)>,
) -> Result<(), ApiError> {
    let key = c.pk(pk_flags);
    let current = ts
        .fetch(conn, &key)
        .map_err(|e| ApiError::sqlite("reading a replica row", e))?;
    if let Some((rule, who)) = rule {
        super::rules::check(
            conn,
            who.scope,
            rule,
            who.caller,
            ts,
            &key,
            c,
            current.as_deref(),
        )?;
    }
    let stored = match (c.op, &current) {
        (Op::Insert, Some(_)) => {
            return Err(conflict(
                &ts.name,
                &key,
                "a row with this primary key already exists",
            ))
        }
        (Op::Update | Op::Delete, None) => {
            return Err(conflict(&ts.name, &key, "the row does not exist"))
        }
        (Op::Insert, None) => {
            let values: Vec<&Value> = c.new.iter().flatten().collect();
            let expected = c.row_after(None).unwrap_or_default();
            write(conn, ts, &key, &ts.sql.insert, values, expected)?
        }
        (Op::Update, Some(row)) => {
            check_old(ts, &key, &c.old, row)?;
            let changed: Vec<usize> = (0..c.new.len()).filter(|i| c.new[*i].is_some()).collect();
            let mut values: Vec<&Value> = c.new.iter().flatten().collect();
            values.extend(key.iter());
            let expected = c.row_after(Some(row)).unwrap_or_default();
            write(conn, ts, &key, &ts.sql.update(&changed), values, expected)?
        }
        (Op::Delete, Some(row)) => {
            check_old(ts, &key, &c.old, row)?;
            let mut st = conn
                .prepare_cached(&ts.sql.delete_by_key)
                .map_err(|e| ApiError::internal("preparing a delete", e))?;
            let binds: Vec<Bind<'_>> = key.iter().map(Bind).collect();
            st.execute(rusqlite::params_from_iter(binds.iter()))
                .map_err(|e| sql_conflict(ts, &key, e))?;
            None
        }
    };
    if let Some(old) = &current {
        root.remove_row(&ts.name, old);
    }
    if let Some(new) = &stored {
        root.add_row(&ts.name, new);
    }
    Ok(())
}

/// Every old value the changeset states must be the stored one, exactly.
fn check_old(
    ts: &TableSql,
    key: &[Value],
    old: &[Option<Value>],
    row: &[Value],
) -> Result<(), ApiError> {
    for (i, (want, have)) in old.iter().zip(row).enumerate() {
        if let Some(want) = want {
            if want != have {
                return Err(conflict(
                    &ts.name,
                    key,
                    format!(
                        "column {:?} is no longer the changeset's old value (the row changed)",
                        ts.columns.get(i).map(String::as_str).unwrap_or("?")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Runs an INSERT or UPDATE and gives back the row as stored: `expected`
/// when every written value surely keeps its exact form under its
/// column's affinity, else read back by key (affinity may have changed a
/// value; and some SQLite versions give REAL columns' integral values as
/// integers through RETURNING, so that is not used).
fn write(
    conn: &Connection,
    ts: &TableSql,
    key: &[Value],
    sql: &str,
    values: Vec<&Value>,
    expected: Vec<Value>,
) -> Result<Option<Vec<Value>>, ApiError> {
    let mut st = conn
        .prepare_cached(sql)
        .map_err(|e| ApiError::internal("preparing a replica write", e))?;
    let binds: Vec<Bind<'_>> = values.into_iter().map(Bind).collect();
    st.execute(rusqlite::params_from_iter(binds.iter()))
        .map_err(|e| sql_conflict(ts, key, e))?;
    if expected.iter().zip(&ts.affinities).all(|(v, a)| a.keeps(v)) {
        return Ok(Some(expected));
    }
    ts.fetch(conn, key)
        .map_err(|e| ApiError::sqlite("reading a written row", e))
}

fn sql_conflict(ts: &TableSql, key: &[Value], e: rusqlite::Error) -> ApiError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => conflict(
            &ts.name,
            key,
            format!("the change violates a constraint: {e}"),
        ),
        Some(ErrorCode::TooBig) => conflict(
            &ts.name,
            key,
            format!("the row, or a value a CHECK constraint of the table makes from it, is larger than the witness allows ({e})"),
        ),
        _ => ApiError::sqlite("writing a replica row", e),
    }
}
