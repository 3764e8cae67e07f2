//! Turning captured changes into a commit: the net change of every row
//! touched since the verified head (base values vs current values), as a
//! SQLite changeset, sealed into the outbox with a fresh idempotency key.

use crate::db::{as_i64, Result};
use crate::local::{now_ms, Local};
use crate::tables::SyncTable;
use pdb_protocol::{hex, Change, Changeset, Op, TableChanges, Value};

/// The net change of one row, or None when base and current agree.
pub fn diff(t: &SyncTable, base: Option<&[Value]>, cur: Option<&[Value]>) -> Option<Change> {
    let change = |op, old: Vec<Option<Value>>, new: Vec<Option<Value>>| Change {
        op,
        indirect: false,
        old,
        new,
    };
    match (base, cur) {
        (None, None) => None,
        (None, Some(c)) => Some(change(
            Op::Insert,
            vec![],
            c.iter().cloned().map(Some).collect(),
        )),
        (Some(b), None) => Some(change(
            Op::Delete,
            b.iter().cloned().map(Some).collect(),
            vec![],
        )),
        (Some(b), Some(c)) => {
            let mut old = vec![None; b.len()];
            let mut new = vec![None; b.len()];
            let mut changed = false;
            for i in 0..b.len() {
                if t.pk_cols.contains(&i) {
                    old[i] = Some(b[i].clone());
                } else if b[i] != c[i] {
                    old[i] = Some(b[i].clone());
                    new[i] = Some(c[i].clone());
                    changed = true;
                }
            }
            changed.then(|| change(Op::Update, old, new))
        }
    }
}

/// A pending row: its key, its base row (if it existed at the verified
/// head) and its current row (if it exists now).
pub struct Pending {
    /// The base entry's pdb_seq.
    pub seq: i64,
    pub key: Vec<Value>,
    pub base: Option<Vec<Value>>,
    pub cur: Option<Vec<Value>>,
}

pub fn pending_rows(l: &Local, t: &SyncTable) -> Result<Vec<Pending>> {
    let n = t.columns.len();
    let rows = l.db.rows(&t.pending, &[])?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let existed = as_i64(&r[1]) == Some(1);
            let present = as_i64(&r[n + 2]) == Some(1);
            Pending {
                seq: as_i64(&r[0]).unwrap_or(0),
                key: t.key_of(&r[2..n + 2]),
                base: existed.then(|| r[2..n + 2].to_vec()),
                cur: present.then(|| r[n + 3..2 * n + 3].to_vec()),
            }
        })
        .collect())
}

/// How many rows are pending in all tables.
pub fn pending_rows_total(l: &Local) -> Result<usize> {
    let mut n = 0;
    for t in &l.tables {
        n += pending_rows(l, t)?.len();
    }
    Ok(n)
}

/// The changeset of all pending rows; rows whose net change is nothing
/// (inserted then deleted, changed then changed back) stop being pending.
/// Call inside a transaction: it compacts the base log.
pub fn pending_changeset(l: &Local) -> Result<(Changeset, usize)> {
    let mut cs = Changeset::default();
    let mut n = 0;
    for t in &l.tables {
        l.db.run(&t.compact_base, &[])?;
        let mut changes = Vec::new();
        for p in pending_rows(l, t)? {
            match diff(t, p.base.as_deref(), p.cur.as_deref()) {
                Some(c) => changes.push(c),
                None => l.sql.run(&t.delete_base, &[Value::Integer(p.seq)])?,
            }
        }
        if !changes.is_empty() {
            n += changes.len();
            cs.tables.push(TableChanges {
                name: t.name.clone(),
                pk_flags: t.pk_flags.clone(),
                changes,
            });
        }
    }
    Ok((cs, n))
}

pub struct Outbox {
    pub id: i64,
    pub key: String,
    pub base_seq: u64,
    pub base_hash: [u8; 32],
    pub changeset: Vec<u8>,
    pub rows: i64,
    pub attempts: i64,
}

pub fn outbox(l: &Local) -> Result<Option<Outbox>> {
    let r = l.db.row(
        "SELECT id, idem_key, base_seq, base_hash, changeset, rows, attempts FROM pdb_outbox ORDER BY id LIMIT 1",
        &[],
    )?;
    Ok(r.map(|r| Outbox {
        id: as_i64(&r[0]).unwrap_or(0),
        key: crate::db::as_text(&r[1]).unwrap_or_default(),
        base_seq: as_i64(&r[2]).unwrap_or(0) as u64,
        base_hash: crate::db::as_blob(&r[3])
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .unwrap_or([0; 32]),
        changeset: crate::db::as_blob(&r[4])
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        rows: as_i64(&r[5]).unwrap_or(0),
        attempts: as_i64(&r[6]).unwrap_or(0),
    }))
}

fn fresh_key() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| crate::db::Error(format!("no randomness: {e}")))?;
    Ok(format!("pdb-{}", hex(&b)))
}

/// The outbox commit to push: the one already sealed, else a new seal.
pub fn next_commit(l: &Local) -> Result<Option<Outbox>> {
    match outbox(l)? {
        Some(o) => Ok(Some(o)),
        None => seal(l),
    }
}

/// Seals pending changes into the outbox (call inside a transaction). An
/// outbox commit that was already sent stays as it is, byte for byte, so
/// its retry replays; one never sent is replaced by a fresh seal.
pub fn seal(l: &Local) -> Result<Option<Outbox>> {
    if let Some(o) = outbox(l)? {
        if o.attempts > 0 {
            return Ok(Some(o));
        }
        l.db.run(
            "DELETE FROM pdb_outbox WHERE id = ?1",
            &[Value::Integer(o.id)],
        )?;
    }
    let (cs, rows) = pending_changeset(l)?;
    if rows == 0 {
        return Ok(None);
    }
    let head = l.head()?;
    l.db.run(
        "INSERT INTO pdb_outbox(idem_key, base_seq, base_hash, changeset, rows, sealed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        &[
            Value::text(&fresh_key()?),
            Value::Integer(head.seq as i64),
            Value::Blob(head.hash.to_vec()),
            Value::Blob(cs.encode()),
            Value::Integer(rows as i64),
            Value::Integer(now_ms()),
        ],
    )?;
    outbox(l)
}
