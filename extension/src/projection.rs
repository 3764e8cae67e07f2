//! `pdb_projection`: a witness projection as a read-only virtual table.
//!
//!     CREATE VIRTUAL TABLE temp.open_tasks USING pdb_projection('open_tasks');
//!     SELECT * FROM open_tasks WHERE title LIKE '%milk%';
//!
//! The columns come from the projection's definition. Each scan fetches the
//! rows visible to this database's identity (its token), page by page, and
//! checks the signed head each page states against the pinned key. Every
//! method runs behind the panic guard.

use crate::client::{HttpWitness, WitnessApi};
use crate::db::Db;
use crate::error::guard;
use crate::error::{Error, Result};
use crate::signed::verify_head;
use crate::state;
use pdb_protocol::quote_ident;
use pdb_protocol::KeyChain;
use serde_json::Value as Json;
use sqlite_loadable::api;
use sqlite_loadable::ext::{
    sqlite3, sqlite3_context, sqlite3_value, sqlite3_vtab, sqlite3_vtab_cursor,
};
use sqlite_loadable::table::{BestIndexError, IndexInfo, VTab, VTabArguments, VTabCursor};
use std::ffi::c_int;

const NAME: &str = "pdb_projection";

/// Rows asked for per page.
const PAGE: u32 = 1000;
/// Rows of one projection read into memory at most (a bound on what one
/// answer chain can make this process hold).
const MAX_ROWS: usize = 1_000_000;
/// Bytes of rows of one projection held in memory at most (values as
/// their JSON text would take).
const MAX_BYTES: usize = 256 << 20;

/// About how many bytes `v` takes as JSON text.
fn json_bytes(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) | Json::Number(_) => 8,
        Json::String(s) => s.len() + 2,
        Json::Array(a) => 2 + a.iter().map(json_bytes).sum::<usize>(),
        Json::Object(o) => {
            2 + o
                .iter()
                .map(|(k, v)| k.len() + 3 + json_bytes(v))
                .sum::<usize>()
        }
    }
}

/// Where a projection's rows come from.
#[derive(Clone)]
struct Source {
    witness: HttpWitness,
    group: String,
    key: KeyChain,
    name: String,
}

#[repr(C)]
pub struct ProjectionTable {
    /// Must be first (SQLite's base struct).
    base: sqlite3_vtab,
    source: Source,
    columns: usize,
}

fn connect(db: *mut sqlite3, args: &VTabArguments) -> Result<(String, ProjectionTable)> {
    let name = args
        .arguments
        .first()
        .map(|a| a.trim().trim_matches('\'').trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::invalid("usage: USING pdb_projection('<projection name>')"))?;
    let l = state::load(Db::new(db))?;
    let source = Source {
        witness: l.witness()?,
        group: l.group,
        key: l.key,
        name,
    };
    let columns = source
        .witness
        .projections()?
        .projections
        .into_iter()
        .find(|p| p.name == source.name)
        .map(|p| p.columns)
        .ok_or_else(|| Error::invalid(format!("the group has no projection {:?}", source.name)))?;
    let decl: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    // SAFETY: an all-zero sqlite3_vtab is its documented initial state.
    let base: sqlite3_vtab = unsafe { std::mem::zeroed() };
    Ok((
        format!("CREATE TABLE x({})", decl.join(", ")),
        ProjectionTable {
            base,
            source,
            columns: columns.len(),
        },
    ))
}

impl<'vtab> VTab<'vtab> for ProjectionTable {
    type Aux = ();
    type Cursor = ProjectionCursor;

    fn connect(
        db: *mut sqlite3,
        _aux: Option<&()>,
        args: VTabArguments,
    ) -> sqlite_loadable::Result<(String, Self)> {
        guard(NAME, || connect(db, &args))
    }

    fn best_index(&self, mut info: IndexInfo) -> std::result::Result<(), BestIndexError> {
        // Every scan reads the whole visible projection; SQLite filters.
        guard(NAME, || -> Result<()> {
            info.set_estimated_cost(1_000_000.0);
            Ok(())
        })
        .map_err(|_| BestIndexError::Error)
    }

    fn open(&mut self) -> sqlite_loadable::Result<ProjectionCursor> {
        guard(NAME, || -> Result<_> {
            Ok(ProjectionCursor {
                // SAFETY: an all-zero cursor base is its documented initial state.
                base: unsafe { std::mem::zeroed() },
                source: self.source.clone(),
                columns: self.columns,
                rows: Vec::new(),
                at: 0,
            })
        })
    }
}

#[repr(C)]
pub struct ProjectionCursor {
    /// Must be first.
    base: sqlite3_vtab_cursor,
    source: Source,
    columns: usize,
    rows: Vec<Vec<Json>>,
    at: usize,
}

impl ProjectionCursor {
    fn fetch(&mut self) -> Result<()> {
        let s = &self.source;
        let mut after = 0i64;
        let mut held = 0usize;
        self.rows.clear();
        loop {
            let page = s.witness.projection_page(&s.name, after, PAGE)?;
            verify_head(&s.key, &s.group, &page.head)?;
            // A page that says more follows holds rows: an empty one would
            // have this loop ask forever (a replayed or broken answer).
            if page.rows.is_empty() && page.next_after.is_some() {
                return Err(Error::refused(
                    "no_progress",
                    format!("no_progress: the witness's projection page after {after} holds no rows but says more follow (a replayed or broken answer)"),
                ));
            }
            for row in page.rows {
                held += row.iter().map(json_bytes).sum::<usize>();
                if row.len() != self.columns {
                    return Err(Error::invalid(
                        "a row does not match the projection's columns",
                    ));
                }
                self.rows.push(row);
            }
            match page.next_after {
                // Each page must move forward, and what is kept in
                // memory is bounded.
                Some(n) if n <= after => {
                    return Err(Error::refused(
                        "no_progress",
                        format!("no_progress: the witness's projection page after {after} points back to {n} (a replayed or broken answer)"),
                    ))
                }
                Some(_) if self.rows.len() >= MAX_ROWS || held >= MAX_BYTES => {
                    return Err(Error::refused(
                        "response_too_large",
                        format!("response_too_large: projection {:?} has more than {MAX_ROWS} rows or {} MiB visible to this caller; read it in parts from the witness's HTTP API", s.name, MAX_BYTES >> 20),
                    ))
                }
                Some(n) => after = n,
                None => return Ok(()),
            }
        }
    }
}

/// Gives SQLite one projection value: JSON numbers, strings and null as
/// themselves, booleans as 0/1, `{"blob": hex}` as a blob.
fn result_json(ctx: *mut sqlite3_context, v: &Json) -> sqlite_loadable::Result<()> {
    match v {
        Json::Null | Json::Array(_) => api::result_null(ctx),
        Json::Bool(b) => api::result_int64(ctx, i64::from(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => api::result_int64(ctx, i),
            None => api::result_double(ctx, n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => api::result_text(ctx, s)?,
        Json::Object(o) => match o
            .get("blob")
            .and_then(Json::as_str)
            .and_then(pdb_protocol::unhex)
        {
            Some(b) => api::result_blob(ctx, &b),
            None => api::result_null(ctx),
        },
    }
    Ok(())
}

impl VTabCursor for ProjectionCursor {
    fn filter(
        &mut self,
        _idx_num: c_int,
        _idx_str: Option<&str>,
        _values: &[*mut sqlite3_value],
    ) -> sqlite_loadable::Result<()> {
        self.at = 0;
        guard(NAME, || self.fetch())
    }

    fn next(&mut self) -> sqlite_loadable::Result<()> {
        guard(NAME, || -> Result<()> {
            self.at = self.at.saturating_add(1);
            Ok(())
        })
    }

    fn eof(&self) -> bool {
        guard(NAME, || -> Result<bool> { Ok(self.at >= self.rows.len()) }).unwrap_or(true)
    }

    fn column(&self, ctx: *mut sqlite3_context, i: c_int) -> sqlite_loadable::Result<()> {
        guard(NAME, || {
            let v = usize::try_from(i)
                .ok()
                .and_then(|i| self.rows.get(self.at)?.get(i))
                .unwrap_or(&Json::Null);
            result_json(ctx, v)
        })
    }

    fn rowid(&self) -> sqlite_loadable::Result<i64> {
        guard(NAME, || -> Result<i64> { Ok(self.at as i64) })
    }
}
