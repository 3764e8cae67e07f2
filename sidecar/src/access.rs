//! Group access administration: members and their roles (kept in the
//! directory, `crate::directory`, with their own numbered log), and
//! row-level write rules (how the write path runs them:
//! `crate::write::rules`; changes numbered in the group's
//! `pdb_access_log` with projection changes). On definition
//! a rule must pass the allow-lists of `crate::sandbox::allow`: reads of
//! the group's own tables and a short list of functions only.

use crate::auth::{valid_identity, Caller, Role};
use crate::directory::Directory;
use crate::error::ApiError;
use crate::grant::Grant;
use crate::group::Group;
use crate::projection::valid_name;
use crate::sandbox::allow;
use crate::store::GroupInfo;
use crate::write::rules::{parse_ops, rule_sql, OPS};
use rusqlite::{params, Connection};
use serde_json::{json, Value as Json};
use std::sync::Arc;

const MAX_RULE: usize = 4096;

/// `{"members": [{identity, role, projections?}], "version"}` from the
/// directory (`version`: the group's last member change).
pub fn members_json(d: &Directory, g: &Group) -> Result<Json, ApiError> {
    let (members, version) = d.members(&g.id)?;
    let items: Vec<Json> = members
        .into_iter()
        .map(|(who, grant)| {
            let mut m = json!({"identity": who, "role": grant.role.name()});
            if let Some(names) = grant.projections {
                m["projections"] = json!(names);
            }
            m
        })
        .collect();
    Ok(json!({"members": items, "version": version}))
}

pub fn rules_json(_: &Directory, g: &Group) -> Result<Json, ApiError> {
    g.read("reading access", |c| {
        let rows = (|| -> rusqlite::Result<Vec<Json>> {
            let mut st = c.prepare("SELECT tbl, expr, ops FROM pdb_rules ORDER BY tbl")?;
            let items = st.query_map([], |r| {
                let (t, expr, ops) = (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                );
                let mut rule = json!({"table": t});
                match ops {
                    None => rule["expr"] = json!(expr),
                    Some(ops) => {
                        for (op, e) in OPS.iter().zip(parse_ops(&ops)) {
                            rule[*op] = json!(e);
                        }
                    }
                }
                Ok(rule)
            })?;
            items.collect()
        })();
        let items = rows.map_err(read_err)?;
        Ok(json!({"rules": items, "version": access_version(c)?}))
    })
}

fn access_version(c: &Connection) -> Result<i64, ApiError> {
    c.query_row(
        "SELECT coalesce(max(version), 0) FROM pdb_access_log",
        [],
        |r| r.get(0),
    )
    .map_err(read_err)
}

fn read_err(e: rusqlite::Error) -> ApiError {
    ApiError::internal("reading access", e)
}

fn bad(m: &str) -> ApiError {
    ApiError::BadRequest(m.to_string())
}

fn sql(e: rusqlite::Error) -> ApiError {
    ApiError::sqlite("changing access", e)
}

/// The fields of a body that may have only `allowed` (at least one).
fn fields<'a>(
    body: &'a Json,
    allowed: &[&str],
) -> Result<&'a serde_json::Map<String, Json>, ApiError> {
    let shape = || {
        ApiError::BadRequest(format!(
            "body must be a JSON object with {}",
            allowed.join(" / ")
        ))
    };
    let obj = body.as_object().ok_or_else(shape)?;
    if obj.is_empty() || obj.keys().any(|k| !allowed.contains(&k.as_str())) {
        return Err(shape());
    }
    Ok(obj)
}

/// `{"role": "viewer" | "reader" | "writer" | "admin"}`, and for a viewer
/// optionally `"projections": [names]` (the only ones it may read).
/// Recorded in the directory.
pub fn grant(
    d: &Directory,
    g: &Arc<Group>,
    by: &Caller,
    who: &str,
    body: &Json,
) -> Result<Json, ApiError> {
    if !valid_identity(who) {
        return Err(bad(
            "identity must be 1-256 printable characters without spaces",
        ));
    }
    let obj = fields(body, &["role", "projections"])?;
    let role = obj
        .get("role")
        .and_then(Json::as_str)
        .and_then(Role::parse)
        .ok_or_else(|| bad("role must be viewer, reader, writer or admin"))?;
    let names: Option<Vec<String>> = match obj.get("projections") {
        None | Some(Json::Null) => None,
        Some(_) if role != Role::Viewer => {
            return Err(bad("projections may only be given with the viewer role"))
        }
        Some(v) => {
            let list: Vec<String> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().filter(|n| valid_name(n)).map(str::to_string))
                        .collect()
                })
                .filter(|l: &Vec<String>| l.len() == v.as_array().map_or(0, Vec::len))
                .filter(|l| l.len() <= 256)
                .ok_or_else(|| bad("projections must be a list of at most 256 projection names"))?;
            Some(list)
        }
    };
    let grant = Grant {
        role,
        projections: names,
    };
    let v = d.set(&g.id, who, Some(&grant), &by.identity)?;
    let mut out = json!({"identity": who, "role": role.name(), "version": v});
    if let Some(n) = grant.projections {
        out["projections"] = json!(n);
    }
    Ok(out)
}

pub fn revoke(d: &Directory, g: &Arc<Group>, by: &Caller, who: &str) -> Result<Json, ApiError> {
    let v = d.set(&g.id, who, None, &by.identity)?;
    Ok(json!({"identity": who, "role": null, "version": v}))
}

/// `{"expr": E}` (one rule for every operation) or any of `{"insert": E,
/// "update": E, "delete": E}` (one per operation; one left out is
/// refused). Each expression is checked before anything is stored.
pub fn set_rule(
    _: &Directory,
    g: &Arc<Group>,
    by: &Caller,
    table: &str,
    body: &Json,
) -> Result<Json, ApiError> {
    let t = table_name(g, table)?;
    let obj = fields(body, &["expr", "insert", "update", "delete"])?;
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match obj.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(e)) => Ok(Some(e.clone())),
            Some(_) => Err(ApiError::BadRequest(format!("{k} must be SQL text"))),
        }
    };
    // Each expression, with what it is.
    let mut checks: Vec<(String, String)> = Vec::new();
    let (expr, ops) = match text("expr")? {
        Some(e) => {
            if obj.len() > 1 {
                return Err(bad(
                    "give either expr, or insert / update / delete, not both",
                ));
            }
            validate(g, &t, "rule", &e)?;
            checks.push(("rule".into(), e.clone()));
            (e, None)
        }
        None => {
            let mut each = serde_json::Map::new();
            for op in OPS {
                if let Some(e) = text(op)? {
                    let what = format!("{op} rule");
                    validate(g, &t, &what, &e)?;
                    checks.push((what, e.clone()));
                    each.insert(op.to_string(), Json::String(e));
                }
            }
            (String::new(), Some(Json::Object(each).to_string()))
        }
    };
    let logged = ops.clone().unwrap_or_else(|| expr.clone());
    let (v, ()) = g.change_access("rule", &t, Some(&logged), &by.identity, |c, _, v| {
        // Checked again on the schema in force now: a migration may have
        // gone before this write (it waited its turn behind it).
        let now =
            crate::store::load_info(c).map_err(|e| ApiError::internal("changing access", e))?;
        for (what, e) in &checks {
            check_rule(c, &now, &t, what, e)
                .map_err(|why| ApiError::BadRequest(format!("the {what} is refused: {why}")))?;
        }
        c.execute(
            "INSERT OR REPLACE INTO pdb_rules(tbl, expr, ops, version) VALUES (?1, ?2, ?3, ?4)",
            params![t, expr, ops, v],
        )
        .map(|_| ())
        .map_err(sql)
    })?;
    let mut out = json!({"table": t, "version": v});
    match &ops {
        None => out["expr"] = json!(expr),
        Some(ops) => {
            for (op, e) in OPS.iter().zip(parse_ops(ops)) {
                out[*op] = json!(e);
            }
        }
    }
    Ok(out)
}

pub fn remove_rule(
    _: &Directory,
    g: &Arc<Group>,
    by: &Caller,
    table: &str,
) -> Result<Json, ApiError> {
    let t = table_name(g, table)?;
    let (v, ()) = g.change_access("rule", &t, None, &by.identity, |c, _, _| {
        c.execute("DELETE FROM pdb_rules WHERE tbl = ?1", [&t])
            .map(|_| ())
            .map_err(sql)
    })?;
    Ok(json!({"table": t, "expr": null, "version": v}))
}

/// The group's own spelling of a table name.
fn table_name(g: &Group, table: &str) -> Result<String, ApiError> {
    g.info()
        .schema
        .table(table)
        .map(|t| t.name.clone())
        .ok_or_else(|| bad("no such table in the group"))
}

/// Checks one rule expression against the allow-lists.
fn validate(g: &Group, table: &str, what: &str, expr: &str) -> Result<(), ApiError> {
    if expr.trim().is_empty() || expr.len() > MAX_RULE || expr.contains(';') {
        return Err(ApiError::BadRequest(format!(
            "a {what} is one SQL expression of at most {MAX_RULE} bytes"
        )));
    }
    check_rule(&mut g.check_conn()?, &g.info(), table, what, expr)
        .map_err(|e| ApiError::BadRequest(format!("the {what} is refused: {e}")))
}

/// Checks one rule expression of `table` against the allow-lists, on
/// `conn` (a connection used for nothing else meanwhile) and the schema
/// of `info`; why it is refused.
pub fn check_rule(
    conn: &mut Connection,
    info: &GroupInfo,
    table: &str,
    what: &str,
    expr: &str,
) -> Result<(), String> {
    if expr.trim().is_empty() || expr.len() > MAX_RULE || expr.contains(';') {
        return Err(format!(
            "a {what} is one SQL expression of at most {MAX_RULE} bytes"
        ));
    }
    let sql = rule_sql(info, table, expr).ok_or("no such table")?;
    let tables: Vec<&str> = info.schema.tables.iter().map(|t| t.name.as_str()).collect();
    allow::check(conn, &sql, &tables).map(|_| ())
}
