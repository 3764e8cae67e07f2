//! `pdb_projection`: a witness projection as a read-only virtual table.
//!
//!     CREATE VIRTUAL TABLE temp.open_tasks USING pdb_projection('open_tasks');
//!     SELECT * FROM open_tasks WHERE title LIKE '%milk%';
//!
//! The columns come from the projection's definition. Each scan fetches the
//! rows visible to this database's identity (its token), page by page, and
//! checks the signed head each page states against the pinned key.

use crate::client::Client;
use crate::db::{Db, Error};
use crate::local;
use ed25519_dalek::VerifyingKey;
use pdb_protocol::wire::HeadJson;
use serde_json::Value as Json;
use sqlite_loadable::api;
use sqlite_loadable::ext::{
    sqlite3, sqlite3_context, sqlite3_value, sqlite3_vtab, sqlite3_vtab_cursor,
};
use sqlite_loadable::table::{BestIndexError, IndexInfo, VTab, VTabArguments, VTabCursor};
use std::ffi::c_int;

fn fail(e: impl std::fmt::Display) -> sqlite_loadable::Error {
    sqlite_loadable::Error::new_message(format!("pdb_projection: {e}"))
}

#[derive(Clone)]
struct Source {
    url: String,
    token: String,
    group: String,
    key: VerifyingKey,
    name: String,
}

#[repr(C)]
pub struct ProjectionTable {
    /// Must be first (SQLite's base struct).
    base: sqlite3_vtab,
    source: Source,
    columns: usize,
}

impl<'vtab> VTab<'vtab> for ProjectionTable {
    type Aux = ();
    type Cursor = ProjectionCursor;

    fn connect(
        db: *mut sqlite3,
        _aux: Option<&()>,
        args: VTabArguments,
    ) -> sqlite_loadable::Result<(String, Self)> {
        let name = args
            .arguments
            .first()
            .map(|a| a.trim().trim_matches('\'').trim_matches('"').to_string())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| fail("usage: USING pdb_projection('<projection name>')"))?;
        let l = local::load(Db::new(db)).map_err(fail)?;
        let source = Source {
            url: l.url.clone(),
            token: l.token.clone(),
            group: l.group.clone(),
            key: l.key,
            name: name.clone(),
        };
        let list = Client::new(&source.url, &source.token)
            .get(&format!("/v1/groups/{}/projections", source.group))
            .map_err(fail)?;
        let columns: Vec<String> = list["projections"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == Json::String(name.clone())))
            .and_then(|p| p["columns"].as_array())
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| fail(format!("the group has no projection {name:?}")))?;
        let decl: Vec<String> = columns.iter().map(|c| crate::db::ident(c)).collect();
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

    fn best_index(&self, mut info: IndexInfo) -> Result<(), BestIndexError> {
        // Every scan reads the whole visible projection; SQLite filters.
        info.set_estimated_cost(1_000_000.0);
        Ok(())
    }

    fn open(&mut self) -> sqlite_loadable::Result<ProjectionCursor> {
        Ok(ProjectionCursor {
            // SAFETY: an all-zero cursor base is its documented initial state.
            base: unsafe { std::mem::zeroed() },
            source: self.source.clone(),
            columns: self.columns,
            rows: Vec::new(),
            at: 0,
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
    fn fetch(&mut self) -> Result<(), Error> {
        let s = &self.source;
        let client = Client::new(&s.url, &s.token);
        let mut after = 0i64;
        self.rows.clear();
        loop {
            let page = client
                .get(&format!(
                    "/v1/groups/{}/projections/{}?after={after}&limit=1000",
                    s.group, s.name
                ))
                .map_err(|e| Error(e.to_string()))?;
            let head: HeadJson = serde_json::from_value(page["head"].clone())
                .map_err(|_| Error("malformed page".into()))?;
            let signed = head
                .signed
                .to_signed()
                .ok_or_else(|| Error("malformed signed head".into()))?;
            let rec = signed
                .head(&s.key)
                .map_err(|e| Error(format!("the page's signed head was rejected ({e})")))?;
            if rec.group != s.group {
                return Err(Error("the page is for another group".into()));
            }
            for r in page["rows"].as_array().into_iter().flatten() {
                let row = r.as_array().cloned().unwrap_or_default();
                if row.len() != self.columns {
                    return Err(Error(
                        "a row does not match the projection's columns".into(),
                    ));
                }
                self.rows.push(row);
            }
            match page["next_after"].as_i64() {
                Some(n) => after = n,
                None => return Ok(()),
            }
        }
    }
}

impl VTabCursor for ProjectionCursor {
    fn filter(
        &mut self,
        _idx_num: c_int,
        _idx_str: Option<&str>,
        _values: &[*mut sqlite3_value],
    ) -> sqlite_loadable::Result<()> {
        self.at = 0;
        self.fetch().map_err(fail)
    }

    fn next(&mut self) -> sqlite_loadable::Result<()> {
        self.at += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.at >= self.rows.len()
    }

    fn column(&self, ctx: *mut sqlite3_context, i: c_int) -> sqlite_loadable::Result<()> {
        let v = self
            .rows
            .get(self.at)
            .and_then(|r| r.get(i.max(0) as usize))
            .unwrap_or(&Json::Null);
        match v {
            Json::Null => api::result_null(ctx),
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
            Json::Array(_) => api::result_null(ctx),
        }
        Ok(())
    }

    fn rowid(&self) -> sqlite_loadable::Result<i64> {
        Ok(self.at as i64)
    }
}
