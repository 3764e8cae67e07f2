//! Local work the witness has not got yet: pending rows, read from the
//! base logs capture appends to, and the sealed commit in the outbox.
//! The one place that reads them; seal and pull both come here.
//!
//! A row is pending when its key has entries in its table's base log;
//! the earliest entry holds its base (its value at the verified head, or
//! `pdb_existed = 0`: it did not exist there). Later entries of the same
//! key add nothing. Seal compacts the logs (keeps only the earliest entry
//! per key), so they stay small; pull does not need to, because whenever
//! it moves a row's base it drops every entry of that key first.

use crate::db::{as_blob, as_i64, as_text, Db};
use crate::error::{Error, Result};
use crate::merge::Row;
use crate::state::Local;
use crate::tables::SyncTable;
use pdb_protocol::value::encode_values;
use pdb_protocol::Value;
use std::collections::HashMap;

/// A pending row: its key, its base row (if it existed at the verified
/// head) and its current row (if it exists now).
pub struct Pending {
    /// Its entries in the base log.
    pub seqs: Vec<i64>,
    pub key: Vec<Value>,
    pub base: Option<Row>,
    pub cur: Option<Row>,
}

fn corrupt() -> Error {
    Error::invalid("the base log is corrupt")
}

/// The pending rows of one table.
pub fn rows(l: &Local, t: &SyncTable) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    each(l, t, |p| {
        out.push(p);
        Ok(true)
    })?;
    Ok(out)
}

/// The pending rows of one table one at a time, until `f` returns false
/// (bounded memory however many are pending). `f` must not write to the
/// base log.
pub fn each(l: &Local, t: &SyncTable, mut f: impl FnMut(Pending) -> Result<bool>) -> Result<()> {
    let n = t.columns.len();
    l.db.each(&t.log.pending, &[], |r| {
        let (Some(seqs), Some(existed), Some(base), Some(present), Some(cur)) = (
            r.first().and_then(as_text),
            r.get(1).and_then(as_i64),
            r.get(2..n + 2),
            r.get(n + 2).and_then(as_i64),
            r.get(n + 3..2 * n + 3),
        ) else {
            return Err(corrupt());
        };
        let seqs = seqs
            .split(',')
            .map(|s| s.parse::<i64>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| corrupt())?;
        f(Pending {
            seqs,
            key: t.key_of(base),
            base: (existed == 1).then(|| base.to_vec()),
            cur: (present == 1).then(|| cur.to_vec()),
        })
    })
}

/// The newest base-log entry of the row with this key, if it is pending.
pub fn newest(l: &Local, t: &SyncTable, key: &[Value]) -> Result<Option<i64>> {
    Ok(l.sql
        .row(&t.log.newest, key)?
        .and_then(|r| r.first().and_then(as_i64)))
}

/// How many rows are pending in all tables.
pub fn count(l: &Local) -> Result<u64> {
    let mut n = 0;
    for t in &l.tables {
        let r = l.db.row(&t.log.count, &[])?;
        n += r
            .as_ref()
            .and_then(|r| r.first())
            .and_then(as_i64)
            .unwrap_or(0) as u64;
    }
    Ok(n)
}

/// Keeps only each key's earliest entry (its base) in a table's log.
pub fn compact(l: &Local, t: &SyncTable) -> Result<()> {
    l.db.run(&t.log.compact, &[])
}

/// Drops these entries: with all of a key's entries, the row stops
/// being pending.
pub fn drop_entries(l: &Local, t: &SyncTable, seqs: &[i64]) -> Result<()> {
    for s in seqs {
        l.sql.run(&t.log.delete, &[Value::Integer(*s)])?;
    }
    Ok(())
}

/// Logs `row` (None: the row does not exist) as the base of the row with
/// this key; returns the entry's pdb_seq and the row as stored (same
/// column affinities as the table).
pub fn log_base(
    l: &Local,
    t: &SyncTable,
    key: &[Value],
    row: Option<&Row>,
) -> Result<(i64, Option<Row>)> {
    let mut params: Vec<Value> = match row {
        Some(r) => r.clone(),
        None => {
            let mut r = vec![Value::Null; t.columns.len()];
            for (k, i) in key.iter().zip(&t.key) {
                if let Some(slot) = r.get_mut(*i) {
                    *slot = k.clone();
                }
            }
            r
        }
    };
    params.push(Value::Integer(i64::from(row.is_some())));
    l.sql.run(&t.log.insert, &params)?;
    let stored = l
        .sql
        .row(&t.log.last, &[])?
        .ok_or_else(|| Error::invalid("a logged base row cannot be read back"))?;
    let (Some(seq), Some(values)) = (stored.first().and_then(as_i64), stored.get(1..)) else {
        return Err(corrupt());
    };
    Ok((seq, row.is_some().then(|| values.to_vec())))
}

/// A pending row as pull keeps it: its log entries and its base.
#[derive(Clone)]
pub struct Entry {
    pub seqs: Vec<i64>,
    pub base: Option<Row>,
}

/// The pending rows of every table by (table index, encoded key).
pub type ByKey = HashMap<(usize, Vec<u8>), Entry>;

/// Every pending row, by key.
pub fn by_key(l: &Local) -> Result<ByKey> {
    let mut map = ByKey::new();
    for (i, t) in l.tables.iter().enumerate() {
        for p in rows(l, t)? {
            map.insert(
                (i, encode_values(&p.key)),
                Entry {
                    seqs: p.seqs,
                    base: p.base,
                },
            );
        }
    }
    Ok(map)
}

/// The sealed commit waiting to be pushed, exactly as sent.
pub struct Outbox {
    pub id: i64,
    pub key: String,
    pub base_seq: u64,
    pub base_hash: [u8; 32],
    pub changeset: Vec<u8>,
    pub rows: i64,
    pub attempts: i64,
    /// The schema version and hash (hex) it was sealed on (`None`: sealed
    /// before migrations existed, on the schema in force).
    pub schema: Option<(u32, String)>,
}

pub fn outbox(db: &Db) -> Result<Option<Outbox>> {
    let Some(r) = db.row(
        "SELECT id, idem_key, base_seq, base_hash, changeset, rows, attempts, schema_version, schema_hash FROM pdb_outbox ORDER BY id LIMIT 1",
        &[],
    )?
    else {
        return Ok(None);
    };
    let int = |i: usize| r.get(i).and_then(as_i64);
    let blob = |i: usize| r.get(i).and_then(as_blob);
    let o = (|| {
        Some(Outbox {
            id: int(0)?,
            key: r.get(1).and_then(as_text)?,
            base_seq: u64::try_from(int(2)?).ok()?,
            base_hash: blob(3)?.try_into().ok()?,
            changeset: blob(4)?.to_vec(),
            rows: int(5)?,
            attempts: int(6)?,
            schema: match (int(7), r.get(8).and_then(as_text)) {
                (Some(v), Some(h)) => Some((u32::try_from(v).ok()?, h)),
                _ => None,
            },
        })
    })();
    o.map(Some)
        .ok_or_else(|| Error::invalid("the outbox is corrupt"))
}
