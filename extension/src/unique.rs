//! The UNIQUE constraints of a synced table, as the local database
//! declares them, and the local rows a row would collide with on them.
//! Read when a write is refused, so the rows in the way can be named.

use crate::db::{as_i64, as_text, Cache, Db};
use crate::error::Result;
use crate::merge::Row;
use crate::tables::SyncTable;
use pdb_protocol::{quote_ident, Value};

/// One query per UNIQUE index: the rows holding given values in its
/// columns (compared under the index's collations).
pub struct Uniques {
    indexes: Vec<(String, Vec<usize>)>,
}

impl Uniques {
    /// Reads the table's UNIQUE indexes (the primary key aside). An index
    /// on an expression is skipped: its values cannot be bound.
    pub fn of(db: &Db, t: &SyncTable) -> Result<Uniques> {
        let mut indexes = Vec::new();
        let names = db.rows(
            "SELECT name FROM pragma_index_list(?1) WHERE \"unique\" AND origin <> 'pk'",
            &[Value::text(&t.name)],
        )?;
        'index: for n in names {
            let Some(name) = n.first().and_then(as_text) else {
                continue;
            };
            let cols = db.rows(
                "SELECT cid, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
                &[Value::text(&name)],
            )?;
            let mut conds = Vec::new();
            let mut positions = Vec::new();
            for (i, c) in cols.iter().enumerate() {
                let cid = c.first().and_then(as_i64).unwrap_or(-2);
                let Some(col) = usize::try_from(cid).ok().and_then(|i| t.columns.get(i)) else {
                    continue 'index;
                };
                let coll = c
                    .get(1)
                    .and_then(as_text)
                    .unwrap_or_else(|| "BINARY".into());
                conds.push(format!(
                    "{} = ?{} COLLATE {}",
                    quote_ident(col),
                    i + 1,
                    quote_ident(&coll)
                ));
                positions.push(cid as usize);
            }
            if conds.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT * FROM {} WHERE {}",
                quote_ident(&t.name),
                conds.join(" AND ")
            );
            indexes.push((sql, positions));
        }
        Ok(Uniques { indexes })
    }

    /// The local rows, other than the one with `row`'s key, that hold the
    /// same values as `row` in all columns of some UNIQUE index (a NULL
    /// never collides).
    pub fn colliders(&self, sql: &Cache, t: &SyncTable, row: &Row) -> Result<Vec<Row>> {
        let key = t.key_of(row);
        let mut out: Vec<Row> = Vec::new();
        for (q, positions) in &self.indexes {
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
