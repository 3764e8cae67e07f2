//! Projections: server-side views of a group with per-caller visibility.
//!
//! Two forms. The table form `{"table", "columns", "where", "visibility"}`
//! is maintained incrementally: for each row a commit touches, its
//! projected row is deleted and re-selected by key. The query form
//! `{"query", "visibility"}` (any read-only SELECT over the group's tables:
//! joins, aggregates) falls back to recomputing the whole projection once
//! per batch of commits. Either way the projection is updated in the same
//! transaction as the commits, so a read states exactly the head it shows.
//!
//! All SQL pieces are checked when defined, under an authorizer that allows
//! only reads of the group's tables. The visibility rule is a boolean
//! expression over the projection's columns, `:caller` and `:role`; they
//! are bound, never spliced.

use crate::error::ApiError;
use crate::store::value::{from_ref, named, Bind};
use crate::store::{GroupInfo, TableSql};
use pdb_protocol::{quote_ident as ident, Value};
use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value as Json};

pub const MAX_SQL: usize = 8192;

/// A projection ready to maintain and read.
pub struct Projection {
    pub name: String,
    pub columns: Vec<String>,
    /// The materialised table (quoted).
    pub store: String,
    pub visibility: String,
    pub kind: Kind,
}

pub enum Kind {
    /// Source table (schema name), and per-key SQL.
    Incremental {
        source: String,
        delete_key: String,
        insert_key: String,
        fill_all: String,
    },
    Recompute {
        refill: String,
    },
}

pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::BadRequest(m.into())
}

fn text<'a>(def: &'a Json, k: &str) -> Result<Option<&'a str>, ApiError> {
    match def.get(k) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.len() <= MAX_SQL && !s.contains(';') => Ok(Some(s)),
        _ => Err(bad(format!(
            "{k} must be SQL text of at most {MAX_SQL} bytes, without ';'"
        ))),
    }
}

/// Builds a projection from its stored definition.
pub fn build(
    info: &GroupInfo,
    name: &str,
    def: &Json,
    columns: Option<Vec<String>>,
) -> Result<Projection, ApiError> {
    let obj = def
        .as_object()
        .ok_or_else(|| bad("a projection is a JSON object"))?;
    for k in obj.keys() {
        if !["table", "columns", "where", "query", "visibility"].contains(&k.as_str()) {
            return Err(bad(format!("unknown field {k:?}")));
        }
    }
    let visibility = text(def, "visibility")?.unwrap_or("1").to_string();
    let store = ident(&format!("pdb_proj_{name}"));
    if let Some(query) = text(def, "query")? {
        if def.get("table").is_some() || def.get("columns").is_some() || def.get("where").is_some()
        {
            return Err(bad("give either query, or table/columns/where"));
        }
        let columns = columns.unwrap_or_default();
        return Ok(Projection {
            name: name.into(),
            kind: Kind::Recompute {
                refill: format!("INSERT INTO {store} SELECT * FROM ({query})"),
            },
            columns,
            store,
            visibility,
        });
    }
    let table = text(def, "table")?.ok_or_else(|| bad("give query, or table and columns"))?;
    let ts: &TableSql = info
        .table_sql(table)
        .ok_or_else(|| bad(format!("no table {table:?} in the group")))?;
    let cols: Vec<String> = def
        .get("columns")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("columns must be a list of column names"))?
        .iter()
        .map(|c| {
            c.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("columns must be names"))
        })
        .collect::<Result<_, _>>()?;
    if cols.is_empty() {
        return Err(bad("columns must not be empty"));
    }
    for c in &cols {
        if !ts.columns.iter().any(|x| x.eq_ignore_ascii_case(c)) {
            return Err(bad(format!("table {table:?} has no column {c:?}")));
        }
    }
    let filter = text(def, "where")?.unwrap_or("1");
    let keys: Vec<String> = ts.pk_cols.iter().map(|i| ident(&ts.columns[*i])).collect();
    let key_cond: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(n, k)| format!("{k} = ?{}", n + 1))
        .collect();
    let store_cond: Vec<String> = (0..keys.len())
        .map(|n| format!("pdb_k{n} = ?{}", n + 1))
        .collect();
    let list: Vec<String> = cols.iter().map(|c| ident(c)).collect();
    Ok(Projection {
        name: name.into(),
        kind: Kind::Incremental {
            source: ts.name.clone(),
            delete_key: format!("DELETE FROM {store} WHERE {}", store_cond.join(" AND ")),
            insert_key: format!(
                "INSERT INTO {store} SELECT {}, {} FROM {} WHERE {} AND ({filter})",
                list.join(", "),
                keys.join(", "),
                ident(&ts.name),
                key_cond.join(" AND ")
            ),
            fill_all: format!(
                "INSERT INTO {store} SELECT {}, {} FROM {} WHERE ({filter})",
                list.join(", "),
                keys.join(", "),
                ident(&ts.name)
            ),
        },
        columns: cols,
        store,
        visibility,
    })
}

/// Creates (or replaces) the projection's table and fills it from the
/// current replica, on `conn` inside the caller's transaction. Every SQL
/// piece is first compiled under a read-only authorizer.
pub fn install(
    conn: &mut Connection,
    info: &GroupInfo,
    name: &str,
    def: &Json,
) -> Result<Projection, ApiError> {
    let sql_err = |what: &str, e: rusqlite::Error| {
        bad(format!("{what} does not compile as a read-only query: {e}"))
    };
    // Column names: the given ones, or the query's result columns.
    let probe = build(info, name, def, None)?;
    let columns = match &probe.kind {
        Kind::Recompute { .. } => {
            let query = text(def, "query")?.unwrap_or_default();
            conn.authorizer(Some(crate::store::schema::read_only(None)))
                .map_err(|e| ApiError::internal("checking a projection", e))?;
            let names = conn
                .prepare(&format!("SELECT * FROM ({query})"))
                .map(|st| st.column_names().map(str::to_string).collect::<Vec<_>>());
            conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
                .map_err(|e| ApiError::internal("checking a projection", e))?;
            let names = names.map_err(|e| sql_err("query", e))?;
            let mut seen = std::collections::HashSet::new();
            if names.iter().any(|n| !seen.insert(n.to_ascii_lowercase())) {
                return Err(bad("the query's result columns must have distinct names"));
            }
            names
        }
        Kind::Incremental { .. } => probe.columns.clone(),
    };
    let p = build(info, name, def, Some(columns.clone()))?;
    let mut ddl: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    if let Kind::Incremental { source, .. } = &p.kind {
        let ts = info.table_sql(source).ok_or_else(|| bad("no such table"))?;
        ddl.extend((0..ts.pk_cols.len()).map(|n| format!("pdb_k{n}")));
    }
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {store}; CREATE TABLE {store} ({})",
        ddl.join(", "),
        store = p.store
    ))
    .map_err(|e| bad(format!("cannot create the projection: {e}")))?;
    if let Kind::Incremental { source, .. } = &p.kind {
        let ts = info.table_sql(source).ok_or_else(|| bad("no such table"))?;
        let keys: Vec<String> = (0..ts.pk_cols.len()).map(|n| format!("pdb_k{n}")).collect();
        conn.execute_batch(&format!(
            "CREATE INDEX {} ON {} ({})",
            ident(&format!("pdb_proj_{name}_key")),
            p.store,
            keys.join(", ")
        ))
        .map_err(|e| ApiError::internal("indexing a projection", e))?;
    }
    // Check every piece read-only, then fill.
    let store_name = format!("pdb_proj_{name}");
    conn.authorizer(Some(crate::store::schema::read_only(Some(
        store_name.clone(),
    ))))
    .map_err(|e| ApiError::internal("checking a projection", e))?;
    let checks = (|| -> Result<(), ApiError> {
        match &p.kind {
            Kind::Incremental { fill_all, .. } => {
                let select = fill_all
                    .split_once(" SELECT ")
                    .map(|(_, s)| format!("SELECT {s}"))
                    .unwrap_or_default();
                conn.prepare(&select).map_err(|e| sql_err("where", e))?;
            }
            Kind::Recompute { .. } => {}
        }
        conn.prepare(&read_sql(&p))
            .map_err(|e| sql_err("visibility", e))?;
        Ok(())
    })();
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .map_err(|e| ApiError::internal("checking a projection", e))?;
    checks?;
    refill(conn, &p)?;
    Ok(p)
}

/// Recomputes a projection from the replica.
pub fn refill(conn: &Connection, p: &Projection) -> Result<(), ApiError> {
    conn.execute(&format!("DELETE FROM {}", p.store), [])
        .map_err(|e| ApiError::internal("refilling a projection", e))?;
    let sql = match &p.kind {
        Kind::Recompute { refill } => refill,
        Kind::Incremental { fill_all, .. } => fill_all,
    };
    conn.execute(sql, [])
        .map_err(|e| ApiError::internal("refilling a projection", e))?;
    Ok(())
}

pub fn read_sql(p: &Projection) -> String {
    let list: Vec<String> = p.columns.iter().map(|c| ident(c)).collect();
    format!(
        "SELECT rowid, {} FROM {} WHERE rowid > :after AND ({}) ORDER BY rowid LIMIT :limit",
        list.join(", "),
        p.store,
        p.visibility
    )
}

/// Every projection of the group.
pub fn load_all(conn: &Connection, info: &GroupInfo) -> rusqlite::Result<Vec<Projection>> {
    let mut st =
        conn.prepare_cached("SELECT name, definition, columns FROM pdb_projections ORDER BY name")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, def, cols) = row?;
        let def: Json = serde_json::from_str(&def).unwrap_or_default();
        let cols: Vec<String> = serde_json::from_str(&cols).unwrap_or_default();
        if let Ok(p) = build(info, &name, &def, Some(cols)) {
            out.push(p);
        }
    }
    Ok(out)
}

pub fn load(
    conn: &Connection,
    info: &GroupInfo,
    name: &str,
) -> Result<Option<Projection>, ApiError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT definition, columns FROM pdb_projections WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| ApiError::internal("reading a projection", e))?;
    match row {
        None => Ok(None),
        Some((def, cols)) => {
            let def: Json = serde_json::from_str(&def).unwrap_or_default();
            let cols: Vec<String> = serde_json::from_str(&cols).unwrap_or_default();
            build(info, name, &def, Some(cols)).map(Some)
        }
    }
}

/// One page of the rows visible to the caller.
pub fn read_page(
    conn: &Connection,
    p: &Projection,
    caller: &str,
    role: &str,
    after: i64,
    limit: u32,
) -> Result<(Vec<Json>, Option<i64>), ApiError> {
    let mut st = conn
        .prepare_cached(&read_sql(p))
        .map_err(|e| ApiError::internal("reading a projection", e))?;
    let (after_v, limit_v) = (Value::Integer(after), Value::Integer(i64::from(limit)));
    let mut binds: Vec<(&str, Bind<'_>)> =
        vec![(":after", Bind(&after_v)), (":limit", Bind(&limit_v))];
    let optional = [
        (":caller", Value::text(caller)),
        (":role", Value::text(role)),
    ];
    binds.extend(named(&st, &optional).map_err(|e| ApiError::internal("reading a projection", e))?);
    let params: Vec<(&str, &dyn rusqlite::ToSql)> = binds
        .iter()
        .map(|(n, b)| (*n, b as &dyn rusqlite::ToSql))
        .collect();
    let n = st.column_count();
    let mut rows = st
        .query(params.as_slice())
        .map_err(|e| ApiError::internal("reading a projection", e))?;
    let mut out = Vec::new();
    let mut last = None;
    while let Some(r) = rows
        .next()
        .map_err(|e| ApiError::internal("reading a projection", e))?
    {
        last = r.get::<_, i64>(0).ok();
        let vals: Vec<Json> = (1..n)
            .map(|i| {
                r.get_ref(i)
                    .map(from_ref)
                    .map(|v| pdb_protocol::wire::value_json(&v))
            })
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| ApiError::internal("reading a projection", e))?;
        out.push(Json::Array(vals));
    }
    let next = if out.len() as u32 == limit {
        last
    } else {
        None
    };
    Ok((out, next))
}

impl Projection {
    /// What the API shows of a definition: `{name, columns, incremental}`.
    pub fn summary_json(&self) -> Json {
        json!({
            "name": self.name,
            "columns": self.columns,
            "incremental": matches!(self.kind, Kind::Incremental { .. }),
        })
    }
}

pub fn list_json(conn: &Connection, info: &GroupInfo) -> Result<Json, ApiError> {
    let all = load_all(conn, info).map_err(|e| ApiError::internal("reading projections", e))?;
    Ok(json!({ "projections": all.iter().map(Projection::summary_json).collect::<Vec<_>>() }))
}

/// Records a definition (inside the caller's transaction).
pub fn store(conn: &Connection, p: &Projection, def: &Json, version: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO pdb_projections(name, definition, columns, version) VALUES (?1, ?2, ?3, ?4)",
        params![p.name, def.to_string(), serde_json::to_string(&p.columns).unwrap_or_default(), version],
    )
    .map(|_| ())
}
