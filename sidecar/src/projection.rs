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
//! Every admin-written piece (query, `where`, visibility) is checked when
//! defined against the allow-lists of `crate::sandbox::allow` and only ever
//! runs as a read-only statement under a budget; the witness writes the
//! rows it selects itself. When a piece fails at run time (its budget ran
//! out, or an error), the projection is marked broken at that commit and
//! reads of it say so until it is defined again; commits go on. The
//! visibility rule is a boolean over the projection's columns, `:caller`
//! and `:role`, bound per read, never spliced.

use crate::error::ApiError;
use crate::sandbox::{allow, Failure, Scope};
use crate::store::value::{from_ref, named, Bind};
use crate::store::{GroupInfo, TableSql};
use pdb_protocol::wire::{ProjectionInfo, ProjectionList};
use pdb_protocol::{quote_ident as ident, Value};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;

pub const MAX_SQL: usize = 8192;
/// A projection page ends once its values pass this many bytes (at least
/// one row is always returned).
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// A projection ready to maintain and read.
pub struct Projection {
    pub name: String,
    pub columns: Vec<String>,
    /// The materialised table (quoted).
    pub store: String,
    pub visibility: String,
    pub kind: Kind,
    /// Why it is no longer maintained, when it is not.
    pub broken: Option<String>,
}

pub enum Kind {
    /// Source table (schema name), its key width, and the admin SQL that
    /// selects projected rows (with the key columns after them): of one
    /// key, and of the whole table.
    Incremental {
        source: String,
        keys: usize,
        select_key: String,
        select_all: String,
    },
    /// The admin's query, recomputed per batch.
    Recompute { select_all: String },
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

/// Builds a projection from its definition (no SQL is run).
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
        return Ok(Projection {
            name: name.into(),
            kind: Kind::Recompute {
                select_all: format!("SELECT * FROM ({query})"),
            },
            columns: columns.unwrap_or_default(),
            store,
            visibility,
            broken: None,
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
    let list: Vec<String> = cols.iter().map(|c| ident(c)).collect();
    let select = format!(
        "SELECT {}, {} FROM {}",
        list.join(", "),
        keys.join(", "),
        ident(&ts.name)
    );
    Ok(Projection {
        name: name.into(),
        kind: Kind::Incremental {
            source: ts.name.clone(),
            keys: keys.len(),
            select_key: format!("{select} WHERE {} AND ({filter})", key_cond.join(" AND ")),
            select_all: format!("{select} WHERE ({filter})"),
        },
        columns: cols,
        store,
        visibility,
        broken: None,
    })
}

impl Projection {
    fn select_all(&self) -> &str {
        match &self.kind {
            Kind::Incremental { select_all, .. } | Kind::Recompute { select_all } => select_all,
        }
    }

    /// Columns of the materialised table: the projected ones, then the
    /// source key (`pdb_k0`, ...) for the table form.
    fn width(&self) -> usize {
        self.columns.len()
            + match self.kind {
                Kind::Incremental { keys, .. } => keys,
                Kind::Recompute { .. } => 0,
            }
    }

    fn insert_row(&self) -> String {
        let marks: Vec<String> = (1..=self.width()).map(|i| format!("?{i}")).collect();
        format!("INSERT INTO {} VALUES ({})", self.store, marks.join(", "))
    }

    /// The visibility rule over a stand-in for the projection's rows, to
    /// check it at definition before the table exists.
    fn visibility_check_sql(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("NULL AS {}", ident(c)))
            .collect();
        format!(
            "SELECT 1 FROM (SELECT {}) WHERE ({})",
            cols.join(", "),
            self.visibility
        )
    }

    /// What the API shows of a definition.
    pub fn info(&self) -> ProjectionInfo {
        ProjectionInfo {
            name: self.name.clone(),
            columns: self.columns.clone(),
            incremental: matches!(self.kind, Kind::Incremental { .. }),
            broken: self.broken.clone(),
        }
    }
}

/// Checks a definition against the allow-lists on `conn` (a connection
/// to the group's file used for nothing else meanwhile) and returns the
/// projection it defines, with its columns.
pub fn check(
    conn: &mut Connection,
    info: &GroupInfo,
    name: &str,
    def: &Json,
) -> Result<Projection, ApiError> {
    let tables: Vec<&str> = info.schema.tables.iter().map(|t| t.name.as_str()).collect();
    let refused = |what: &str, why: String| bad(format!("the {what} is refused: {why}"));
    let probe = build(info, name, def, None)?;
    let columns = match &probe.kind {
        Kind::Recompute { select_all } => {
            let names = allow::check(conn, select_all, &tables).map_err(|e| refused("query", e))?;
            let mut seen = std::collections::HashSet::new();
            if names.iter().any(|n| !seen.insert(n.to_ascii_lowercase())) {
                return Err(bad("the query's result columns must have distinct names"));
            }
            if names
                .iter()
                .any(|n| n.to_ascii_lowercase().starts_with("pdb_"))
            {
                return Err(bad("the query's result columns may not start with pdb_"));
            }
            names
        }
        Kind::Incremental { select_all, .. } => {
            allow::check(conn, select_all, &tables).map_err(|e| refused("where clause", e))?;
            probe.columns.clone()
        }
    };
    let p = build(info, name, def, Some(columns))?;
    allow::check(conn, &p.visibility_check_sql(), &tables)
        .map_err(|e| refused("visibility rule", e))?;
    Ok(p)
}

/// Creates (or replaces) the projection's table, inside the caller's
/// write transaction.
pub fn create(conn: &Connection, p: &Projection) -> Result<(), ApiError> {
    let mut ddl: Vec<String> = p.columns.iter().map(|c| ident(c)).collect();
    if let Kind::Incremental { keys, .. } = p.kind {
        ddl.extend((0..keys).map(|n| format!("pdb_k{n}")));
    }
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {store}; CREATE TABLE {store} ({})",
        ddl.join(", "),
        store = p.store
    ))
    .map_err(|e| bad(format!("cannot create the projection: {e}")))?;
    if let Kind::Incremental { keys, .. } = p.kind {
        let cols: Vec<String> = (0..keys).map(|n| format!("pdb_k{n}")).collect();
        conn.execute_batch(&format!(
            "CREATE INDEX {} ON {} ({})",
            ident(&format!("pdb_proj_{}_key", p.name)),
            p.store,
            cols.join(", ")
        ))
        .map_err(|e| ApiError::sqlite("indexing a projection", e))?;
    }
    Ok(())
}

/// Why maintaining a projection stopped: its own SQL failed (the
/// projection is then broken), or the witness's did.
pub enum MaintainError {
    Broken(Failure),
    Witness(ApiError),
}

fn witness(e: rusqlite::Error) -> MaintainError {
    MaintainError::Witness(ApiError::sqlite("maintaining a projection", e))
}

/// Runs `select` (admin SQL, under `scope`, with `binds`) and writes each
/// row it gives into the projection.
fn copy_rows(
    conn: &Connection,
    scope: &Scope<'_>,
    p: &Projection,
    select: &str,
    binds: &[Bind<'_>],
) -> Result<(), MaintainError> {
    let width = p.width();
    let mut insert = conn.prepare_cached(&p.insert_row()).map_err(witness)?;
    let mut failed = None;
    let selected = scope.run(conn, || {
        let mut st = conn.prepare_cached(select)?;
        if st.column_count() != width {
            return Err(rusqlite::Error::InvalidColumnIndex(st.column_count()));
        }
        let mut rows = st.query(rusqlite::params_from_iter(binds.iter()))?;
        while let Some(r) = rows.next()? {
            let row: Vec<Value> = (0..width)
                .map(|i| r.get_ref(i).map(from_ref))
                .collect::<rusqlite::Result<_>>()?;
            let b: Vec<Bind<'_>> = row.iter().map(Bind).collect();
            let written = scope.paused(|| insert.execute(rusqlite::params_from_iter(b.iter())));
            if let Err(e) = written {
                failed = Some(e);
                break;
            }
        }
        Ok(())
    });
    if let Some(e) = failed {
        return Err(witness(e));
    }
    selected.map_err(MaintainError::Broken)
}

/// Recomputes a projection from the replica.
pub fn refill(conn: &Connection, scope: &Scope<'_>, p: &Projection) -> Result<(), MaintainError> {
    conn.execute(&format!("DELETE FROM {}", p.store), [])
        .map_err(witness)?;
    copy_rows(conn, scope, p, p.select_all(), &[])
}

/// Re-selects the projected row of one source key (table form).
pub fn maintain_key(
    conn: &Connection,
    scope: &Scope<'_>,
    p: &Projection,
    key: &[Value],
) -> Result<(), MaintainError> {
    let Kind::Incremental {
        keys, select_key, ..
    } = &p.kind
    else {
        return Ok(());
    };
    let cond: Vec<String> = (0..*keys)
        .map(|n| format!("pdb_k{n} = ?{}", n + 1))
        .collect();
    let binds: Vec<Bind<'_>> = key.iter().map(Bind).collect();
    conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE {}",
        p.store,
        cond.join(" AND ")
    ))
    .and_then(|mut st| st.execute(rusqlite::params_from_iter(binds.iter())))
    .map_err(witness)?;
    copy_rows(conn, scope, p, select_key, &binds)
}

/// Records that a projection is no longer maintained (inside the batch's
/// transaction).
pub fn mark_broken(conn: &Connection, name: &str, why: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE pdb_projections SET broken = ?2 WHERE name = ?1",
        params![name, why],
    )
    .map(|_| ())
}

fn from_row(
    info: &GroupInfo,
    name: &str,
    def: &str,
    cols: &str,
    broken: Option<String>,
) -> Option<Projection> {
    let def: Json = serde_json::from_str(def).ok()?;
    let cols: Vec<String> = serde_json::from_str(cols).ok()?;
    let mut p = build(info, name, &def, Some(cols)).ok()?;
    p.broken = broken;
    Some(p)
}

/// Every projection of the group (broken ones too).
pub fn load_all(conn: &Connection, info: &GroupInfo) -> rusqlite::Result<Vec<Projection>> {
    let mut st = conn.prepare_cached(
        "SELECT name, definition, columns, broken FROM pdb_projections ORDER BY name",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, def, cols, broken) = row?;
        if let Some(p) = from_row(info, &name, &def, &cols, broken) {
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
    let row: Option<(String, String, Option<String>)> = conn
        .query_row(
            "SELECT definition, columns, broken FROM pdb_projections WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| ApiError::internal("reading a projection", e))?;
    Ok(row.and_then(|(def, cols, broken)| from_row(info, name, &def, &cols, broken)))
}

/// One page of a projection's rows visible to the caller, and where the
/// next page starts (`None` at the end).
pub struct Page {
    pub rows: Vec<Vec<Json>>,
    pub next_after: Option<i64>,
}

/// Reads one page: visible rows after `after`, at most `limit` of them and
/// about [`MAX_PAGE_BYTES`]; a page also ends early, with a cursor to go
/// on from, once half the budget is spent looking for visible rows, so a
/// selective visibility rule over a large projection still pages.
pub fn read_page(
    conn: &Connection,
    scope: &Scope<'_>,
    p: &Projection,
    caller: &str,
    role: &str,
    after: i64,
    limit: u32,
) -> Result<Page, ApiError> {
    if let Some(why) = &p.broken {
        return Err(ApiError::RuleError {
            table: None,
            key: None,
            message: format!(
                "projection {:?} is not maintained any more: {why}; an admin must define it again",
                p.name
            ),
        });
    }
    let visible_sql = format!(
        "SELECT rowid FROM {} WHERE rowid > :after AND ({}) ORDER BY rowid",
        p.store, p.visibility
    );
    let list: Vec<String> = p.columns.iter().map(|c| ident(c)).collect();
    let row_sql = format!(
        "SELECT {} FROM {} WHERE rowid = ?1",
        list.join(", "),
        p.store
    );
    let after_v = Value::Integer(after);
    let optional = [
        (":caller", Value::text(caller)),
        (":role", Value::text(role)),
    ];
    let page = scope.run(conn, || {
        let mut st = conn.prepare_cached(&visible_sql)?;
        let mut binds: Vec<(&str, Bind<'_>)> = vec![(":after", Bind(&after_v))];
        binds.extend(named(&st, &optional)?);
        let params: Vec<(&str, &dyn rusqlite::ToSql)> = binds
            .iter()
            .map(|(n, b)| (*n, b as &dyn rusqlite::ToSql))
            .collect();
        let mut one = conn.prepare_cached(&row_sql)?;
        let mut ids = st.query(params.as_slice())?;
        let (mut rows, mut bytes) = (Vec::new(), 0usize);
        let next_after = loop {
            let Some(r) = ids.next()? else {
                break None;
            };
            let id: i64 = r.get(0)?;
            let vals: Vec<Json> = scope
                .paused(|| {
                    one.query_row([id], |row| {
                        (0..p.columns.len())
                            .map(|i| row.get_ref(i).map(from_ref))
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                })?
                .iter()
                .map(|v| {
                    bytes += value_bytes(v);
                    pdb_protocol::wire::value_json(v)
                })
                .collect();
            rows.push(vals);
            if rows.len() as u32 >= limit || bytes >= MAX_PAGE_BYTES || scope.half_spent() {
                break Some(id);
            }
        };
        Ok(Page { rows, next_after })
    });
    page.map_err(|f| match f {
        Failure::Exceeded(crate::sandbox::Exceeded::Stopping) => {
            ApiError::Unavailable("the witness is shutting down; retry".into())
        }
        f => ApiError::RuleError {
            table: None,
            key: None,
            message: format!("reading projection {:?}: its visibility rule {f}", p.name),
        },
    })
}

/// About how many bytes a value takes in a JSON answer.
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(t) => t.len() + 2,
        Value::Blob(b) => 2 * b.len() + 12,
    }
}

/// What the projections listing shows, for the names `only` allows (all
/// when `None`).
pub fn list(
    conn: &Connection,
    info: &GroupInfo,
    only: Option<&[String]>,
) -> Result<ProjectionList, ApiError> {
    let all = load_all(conn, info).map_err(|e| ApiError::internal("reading projections", e))?;
    Ok(ProjectionList {
        projections: all
            .iter()
            .filter(|p| only.is_none_or(|names| names.contains(&p.name)))
            .map(Projection::info)
            .collect(),
    })
}

/// Records a definition (inside the caller's transaction); a definition
/// starts in step, whatever broke before.
pub fn store(conn: &Connection, p: &Projection, def: &Json, version: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO pdb_projections(name, definition, columns, version, broken) VALUES (?1, ?2, ?3, ?4, NULL)",
        params![p.name, def.to_string(), serde_json::to_string(&p.columns).unwrap_or_default(), version],
    )
    .map(|_| ())
}
