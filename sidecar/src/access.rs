//! Group access administration: members and their roles, and row-level
//! write rules. Every change is versioned and logged (`pdb_access_log`).
//!
//! A write rule is a SQL boolean expression over `new.<column>`,
//! `old.<column>` (NULLs where the row does not exist), `:caller` (the
//! identity) and `:op` ('insert', 'update', 'delete'). It runs as
//! `SELECT CASE WHEN (<rule>) THEN 1 ELSE 0 END FROM (SELECT :n0 AS c0, ...)
//! AS new, (SELECT :o0 AS c0, ...) AS old` with every value bound, checked
//! for every row of every changeset before the commit is accepted. On
//! definition it must compile under an authorizer that allows only reads
//! of the group's own tables.

use crate::auth::{valid_identity, Caller, Role};
use crate::error::ApiError;
use crate::group::{open_conn, Group, GroupInfo};
use crate::sqlvalue::{ident, Bind};
use pdb_protocol::Value;
use rusqlite::{params, Connection};
use serde_json::{json, Value as Json};
use std::collections::HashMap;

const MAX_RULE: usize = 4096;

pub fn members_json(c: &Connection) -> rusqlite::Result<Json> {
    let mut st = c.prepare("SELECT identity, role FROM pdb_members ORDER BY identity")?;
    let members: Vec<Json> = st
        .query_map([], |r| {
            Ok(json!({"identity": r.get::<_, String>(0)?, "role": r.get::<_, String>(1)?}))
        })?
        .collect::<Result<_, _>>()?;
    Ok(json!({ "members": members, "version": version(c)? }))
}

pub fn rules_json(c: &Connection) -> rusqlite::Result<Json> {
    let mut st = c.prepare("SELECT tbl, expr FROM pdb_rules ORDER BY tbl")?;
    let rules: Vec<Json> = st
        .query_map([], |r| {
            Ok(json!({"table": r.get::<_, String>(0)?, "expr": r.get::<_, String>(1)?}))
        })?
        .collect::<Result<_, _>>()?;
    Ok(json!({ "rules": rules, "version": version(c)? }))
}

fn version(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT coalesce(max(version), 0) FROM pdb_access_log",
        [],
        |r| r.get(0),
    )
}

fn bad(m: &str) -> ApiError {
    ApiError::BadRequest(m.to_string())
}

fn sql(e: rusqlite::Error) -> ApiError {
    ApiError::internal("changing access", e)
}

/// The one field of a `{"<name>": ...}` body.
fn only_field<'a>(body: &'a Json, name: &str) -> Result<&'a Json, ApiError> {
    let shape = || ApiError::BadRequest(format!("body must be {{\"{name}\": ...}}"));
    let obj = body.as_object().ok_or_else(shape)?;
    if obj.keys().any(|k| k != name) {
        return Err(shape());
    }
    obj.get(name).ok_or_else(shape)
}

pub fn grant(g: &Group, by: &Caller, who: &str, body: &Json) -> Result<Json, ApiError> {
    if !valid_identity(who) {
        return Err(bad(
            "identity must be 1-256 printable characters without spaces",
        ));
    }
    let role = only_field(body, "role")?
        .as_str()
        .and_then(Role::parse)
        .ok_or_else(|| bad("role must be reader, writer or admin"))?;
    let (v, ()) = g.change_access("member", who, Some(role.name()), &by.identity, |c, v| {
        c.execute(
            "INSERT OR REPLACE INTO pdb_members(identity, role, version) VALUES (?1, ?2, ?3)",
            params![who, role.name(), v],
        )
        .map(|_| ())
        .map_err(sql)
    })?;
    Ok(json!({"identity": who, "role": role.name(), "version": v}))
}

pub fn revoke(g: &Group, by: &Caller, who: &str) -> Result<Json, ApiError> {
    let (v, ()) = g.change_access("member", who, None, &by.identity, |c, _| {
        c.execute("DELETE FROM pdb_members WHERE identity = ?1", [who])
            .map(|_| ())
            .map_err(sql)
    })?;
    Ok(json!({"identity": who, "role": null, "version": v}))
}

pub fn set_rule(g: &Group, by: &Caller, table: &str, body: &Json) -> Result<Json, ApiError> {
    let expr = only_field(body, "expr")?
        .as_str()
        .ok_or_else(|| bad("expr must be SQL text"))?;
    let t = table_name(g, table)?;
    validate(g, &t, expr)?;
    let (v, ()) = g.change_access("rule", &t, Some(expr), &by.identity, |c, v| {
        c.execute(
            "INSERT OR REPLACE INTO pdb_rules(tbl, expr, version) VALUES (?1, ?2, ?3)",
            params![t, expr, v],
        )
        .map(|_| ())
        .map_err(sql)
    })?;
    Ok(json!({"table": t, "expr": expr, "version": v}))
}

pub fn remove_rule(g: &Group, by: &Caller, table: &str) -> Result<Json, ApiError> {
    let t = table_name(g, table)?;
    let (v, ()) = g.change_access("rule", &t, None, &by.identity, |c, _| {
        c.execute("DELETE FROM pdb_rules WHERE tbl = ?1", [&t])
            .map(|_| ())
            .map_err(sql)
    })?;
    Ok(json!({"table": t, "expr": null, "version": v}))
}

/// The group's own spelling of a table name.
fn table_name(g: &Group, table: &str) -> Result<String, ApiError> {
    g.info
        .schema
        .table(table)
        .map(|t| t.name.clone())
        .ok_or_else(|| bad("no such table in the group"))
}

/// The statement a rule runs as.
pub fn rule_sql(info: &GroupInfo, table: &str, expr: &str) -> Option<String> {
    let t = info.schema.table(table)?;
    let side = |prefix: &str| -> String {
        t.columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!(":{prefix}{i} AS {}", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "SELECT CASE WHEN ({expr}) THEN 1 ELSE 0 END FROM (SELECT {}) AS new, (SELECT {}) AS old",
        side("n"),
        side("o")
    ))
}

fn validate(g: &Group, table: &str, expr: &str) -> Result<(), ApiError> {
    if expr.is_empty() || expr.len() > MAX_RULE || expr.contains(';') {
        return Err(bad("a rule is one SQL expression of at most 4096 bytes"));
    }
    let sql = rule_sql(&g.info, table, expr).ok_or_else(|| bad("no such table"))?;
    let mut conn =
        open_conn(&g.path, false).map_err(|e| ApiError::internal("opening the group", e))?;
    conn.authorizer(Some(crate::schema_ddl::read_only(None)))
        .map_err(|e| ApiError::internal("checking a rule", e))?;
    let prepared = conn.prepare(&sql).map(|_| ());
    prepared.map_err(|e| {
        ApiError::BadRequest(format!(
            "the rule does not compile as a read-only expression: {e}"
        ))
    })
}

/// The rules in force, by table, as ready-to-run statements.
pub fn load_rules(
    conn: &Connection,
    info: &GroupInfo,
) -> rusqlite::Result<HashMap<String, String>> {
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

/// Whether the rule allows this row change.
pub fn allows(
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
    let caller_v = Value::text(caller);
    let op_v = Value::text(op);
    for (name, v) in [(":caller", &caller_v), (":op", &op_v)] {
        if st.parameter_index(name)?.is_some() {
            binds.push((name, Bind(v)));
        }
    }
    let params: Vec<(&str, &dyn rusqlite::ToSql)> = binds
        .iter()
        .map(|(n, b)| (*n, b as &dyn rusqlite::ToSql))
        .collect();
    st.query_row(params.as_slice(), |r| r.get::<_, i64>(0))
        .map(|v| v == 1)
}
