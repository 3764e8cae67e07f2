//! The UNIQUE constraints of a synced table (from the group's schema), and
//! the local rows a row would collide with on them. Used when a write is
//! refused, so the rows in the way can be named.

use crate::db::Cache;
use crate::error::Result;
use crate::merge::Row;
use crate::tables::SyncTable;
use pdb_protocol::{quote_ident, Value};

/// One query per UNIQUE constraint: the rows holding given values in its
/// columns (compared under its collations), and the columns bound.
pub struct Uniques {
    queries: Vec<(String, Vec<usize>)>,
}

impl Uniques {
    pub fn of(t: &SyncTable) -> Uniques {
        let queries = t
            .uniques
            .iter()
            .map(|cols| {
                let conds: Vec<String> = cols
                    .iter()
                    .enumerate()
                    .filter_map(|(n, (i, coll))| {
                        let c = t.columns.get(*i)?;
                        Some(format!(
                            "{} = ?{} COLLATE {}",
                            quote_ident(c),
                            n + 1,
                            quote_ident(coll)
                        ))
                    })
                    .collect();
                (
                    format!(
                        "SELECT * FROM {} WHERE {}",
                        t.rows.table,
                        conds.join(" AND ")
                    ),
                    cols.iter().map(|(i, _)| *i).collect(),
                )
            })
            .collect();
        Uniques { queries }
    }

    /// The local rows, other than the one with `row`'s key, that hold the
    /// same values as `row` in all columns of some UNIQUE constraint (a
    /// NULL never collides).
    pub fn colliders(&self, sql: &Cache, t: &SyncTable, row: &Row) -> Result<Vec<Row>> {
        let key = t.key_of(row);
        let mut out: Vec<Row> = Vec::new();
        for (q, positions) in &self.queries {
            let values: Vec<Value> = positions
                .iter()
                .map(|i| row.get(*i).cloned().unwrap_or(Value::Null))
                .collect();
            if values.contains(&Value::Null) {
                continue;
            }
            for r in sql.rows(q, &values)? {
                if t.key_of(&r) != key && !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}
