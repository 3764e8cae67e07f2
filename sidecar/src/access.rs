//! Group access administration: members and their roles, and row-level
//! write rules (how the write path runs them: `crate::write::rules`).
//! Every change is versioned and logged (`pdb_access_log`). On definition
//! a rule must compile under an authorizer that allows only reads of the
//! group's own tables.

use crate::auth::{valid_identity, Caller, Role};
use crate::error::ApiError;
use crate::group::Group;
use crate::store;
use crate::write::rules::rule_sql;
use rusqlite::params;
use serde_json::{json, Value as Json};

const MAX_RULE: usize = 4096;

pub fn members_json(g: &Group) -> Result<Json, ApiError> {
    listing(
        g,
        "SELECT identity, role FROM pdb_members ORDER BY identity",
        "members",
        ["identity", "role"],
    )
}

pub fn rules_json(g: &Group) -> Result<Json, ApiError> {
    listing(
        g,
        "SELECT tbl, expr FROM pdb_rules ORDER BY tbl",
        "rules",
        ["table", "expr"],
    )
}

/// `{"<list>": [{"<a>": .., "<b>": ..}], "version": <access version>}`
/// from a query of two text columns.
fn listing(g: &Group, query: &str, list: &str, [a, b]: [&str; 2]) -> Result<Json, ApiError> {
    g.read("reading access", |c| {
        let rows = (|| -> rusqlite::Result<Json> {
            let mut st = c.prepare(query)?;
            let items: Vec<Json> = st
                .query_map([], |r| {
                    Ok(json!({a: r.get::<_, String>(0)?, b: r.get::<_, String>(1)?}))
                })?
                .collect::<Result<_, _>>()?;
            let version: i64 = c.query_row(
                "SELECT coalesce(max(version), 0) FROM pdb_access_log",
                [],
                |r| r.get(0),
            )?;
            Ok(json!({ list: items, "version": version }))
        })();
        rows.map_err(sql)
    })
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

fn validate(g: &Group, table: &str, expr: &str) -> Result<(), ApiError> {
    if expr.is_empty() || expr.len() > MAX_RULE || expr.contains(';') {
        return Err(bad("a rule is one SQL expression of at most 4096 bytes"));
    }
    let sql = rule_sql(&g.info, table, expr).ok_or_else(|| bad("no such table"))?;
    let mut conn =
        store::open_conn(&g.path, false).map_err(|e| ApiError::internal("opening the group", e))?;
    conn.authorizer(Some(store::schema::read_only(None)))
        .map_err(|e| ApiError::internal("checking a rule", e))?;
    let prepared = conn.prepare(&sql).map(|_| ());
    prepared.map_err(|e| {
        ApiError::BadRequest(format!(
            "the rule does not compile as a read-only expression: {e}"
        ))
    })
}
