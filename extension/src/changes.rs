//! `pdb_changes`: what each applied remote commit changed, so an app
//! refreshes only that (sql/extension/004_live.sql). Rows are written in
//! the pull's own transaction, so they appear exactly when the changes
//! do; the table is trimmed to its newest [`KEEP`] rows, and one page
//! lists at most [`PER_PAGE`] rows one by one (beyond that, one `many`
//! row per table and commit), so a large catch-up costs little here.

use crate::error::Result;
use crate::state::Local;
use pdb_protocol::wire::value_json;
use pdb_protocol::{Op, Value};
use std::collections::HashSet;

/// Rows kept in `pdb_changes`.
pub const KEEP: i64 = 10_000;
/// Rows listed one by one per page.
const PER_PAGE: usize = 10_000;

/// The rows of one page's changes.
#[derive(Default)]
pub struct Recorder {
    listed: usize,
    many: HashSet<(u64, usize)>,
}

impl Recorder {
    /// A remote change of `key` in table `ti` by commit `seq`.
    pub fn row(&mut self, l: &Local, seq: u64, ti: usize, key: &[Value], op: Op) -> Result<()> {
        let Some(t) = l.tables.get(ti) else {
            return Ok(());
        };
        if self.listed >= PER_PAGE {
            if self.many.insert((seq, ti)) {
                add(l, seq, Some(&t.name), None, "many")?;
            }
            return Ok(());
        }
        self.listed += 1;
        let key: Vec<_> = key.iter().map(value_json).collect();
        let key = serde_json::Value::Array(key).to_string();
        let op = match op {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        };
        add(l, seq, Some(&t.name), Some(&key), op)
    }
}

/// A change to everything at `seq` (a migration, a snapshot).
pub fn all(l: &Local, seq: u64, op: &str) -> Result<()> {
    add(l, seq, None, None, op)
}

fn add(l: &Local, seq: u64, tbl: Option<&str>, key: Option<&str>, op: &str) -> Result<()> {
    let text = |v: Option<&str>| v.map_or(Value::Null, Value::text);
    l.sql.run(
        "INSERT INTO pdb_changes(seq, tbl, key, op) VALUES (?1, ?2, ?3, ?4)",
        &[
            Value::Integer(seq as i64),
            text(tbl),
            text(key),
            Value::text(op),
        ],
    )
}

/// Keeps the newest [`KEEP`] rows.
pub fn trim(l: &Local) -> Result<()> {
    l.sql.run(
        "DELETE FROM pdb_changes WHERE id <= (SELECT max(id) FROM pdb_changes) - ?1",
        &[Value::Integer(KEEP)],
    )
}
