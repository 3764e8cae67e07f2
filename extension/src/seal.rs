//! Sealing: the net change of pending rows into the outbox commit (a SQLite
//! changeset with a fresh idempotency key, built on the verified head),
//! within what one request to the witness may carry.
//!
//! Rows go in key order, table by table, until the commit's budget is
//! reached; the rest go in later commits (each commit is atomic on the
//! witness; a batch larger than one request is several commits). Rows that
//! can never go as they are — a NULL in a key column, a row larger than a
//! request — and rows held back (`hold`) stay pending and visible; the
//! others go regardless.

use crate::db::transaction;
use crate::error::{Error, Result};
use crate::hold::{Hold, Seen, NULL_KEY, ROW_TOO_LARGE};
use crate::merge::diff;
use crate::pending::{self, Outbox};
use crate::state::{self, Local};
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::LimitsJson;
use pdb_protocol::{hex, now_ms, Change, Changeset, TableChanges, Value};
use serde_json::{json, Value as Json};

/// Bytes of a commit request besides its base64 changeset (JSON fields,
/// headers), kept free under the witness's body limit.
const REQUEST_OVERHEAD: u64 = 16 * 1024;

/// How big the next commit may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Changeset bytes.
    pub bytes: usize,
    /// Rows.
    pub rows: usize,
    /// The largest change of one row that can ever go (what one request
    /// may carry): a larger row is held back.
    pub max_row: usize,
}

impl Budget {
    /// The most one request to this witness may carry: its body limit,
    /// less the request's own fields, as changeset bytes before base64.
    pub fn of(limits: &LimitsJson) -> Budget {
        let bytes = limits.max_body_bytes.saturating_sub(REQUEST_OVERHEAD) / 4 * 3;
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX).max(1024);
        Budget {
            bytes,
            rows: usize::MAX,
            max_row: bytes,
        }
    }

    /// Half of this one (at least one row): to find the row the witness
    /// refused without naming it, or to fit a smaller limit.
    pub fn halved(self, rows_sent: usize, bytes_sent: usize) -> Budget {
        Budget {
            bytes: (bytes_sent / 2).max(1),
            rows: rows_sent.div_ceil(2).max(1),
            max_row: self.max_row,
        }
    }

    /// This budget, no larger than `limit`.
    pub fn within(self, limit: Budget) -> Budget {
        Budget {
            bytes: self.bytes.min(limit.bytes),
            rows: self.rows,
            max_row: limit.max_row,
        }
    }
}

/// Which pending rows a seal takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Rows that are not held.
    Fresh,
    /// Held rows due a retry (edited, or the head moved), on their own.
    Retry,
}

/// `pdb_commit()`: seals pending changes into the outbox (no network).
pub fn commit(db: crate::db::Db) -> Result<Json> {
    let l = state::load(db)?;
    let budget = Budget::of(&l.limits);
    let o = transaction(&db, || {
        let mut hold = Hold::load(&l)?;
        seal(&l, &mut hold, Scope::Fresh, budget)
    })?;
    Ok(match o {
        Some(o) => {
            json!({ "sealed": true, "idempotency_key": o.key, "rows": o.rows, "base_seq": o.base_seq })
        }
        None => json!({ "sealed": false, "rows": 0 }),
    })
}

/// The encoded size of one row's change in a changeset.
fn change_size(c: &Change) -> usize {
    2 + c
        .old
        .iter()
        .chain(&c.new)
        .map(|v| v.as_ref().map_or(1, Value::encoded_len))
        .sum::<usize>()
}

fn fresh_key() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
    Ok(format!("pdb-{}", hex(&b)))
}

/// The changeset of the pending rows in `scope`, within `budget`. Rows
/// whose net change is nothing (inserted then deleted, changed then changed
/// back) stop being pending; rows that can never go are held. Call inside
/// a transaction: it compacts the base logs.
fn pending_changeset(
    l: &Local,
    hold: &mut Hold,
    scope: Scope,
    budget: Budget,
) -> Result<(Changeset, usize)> {
    let mut cs = Changeset::default();
    let (mut bytes, mut rows, mut full) = (0usize, 0usize, false);
    for (ti, t) in l.tables.iter().enumerate() {
        if full {
            break;
        }
        pending::compact(l, t)?;
        bytes += 64 + t.name.len() + t.columns.len();
        let mut changes = Vec::new();
        let (mut taken, mut nothing, mut null_keys, mut too_large) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Read first, write after: the log is not written while it is read.
        pending::each(l, t, |p| {
            if p.key.contains(&Value::Null) {
                null_keys.push(p);
                return Ok(true);
            }
            let wanted = match hold.seen(ti, &encode_values(&p.key)) {
                Seen::Free => scope == Scope::Fresh,
                Seen::Due => scope == Scope::Retry,
                Seen::Held => false,
            };
            if !wanted {
                return Ok(true);
            }
            let Some(c) = diff(&t.key, p.base.as_deref(), p.cur.as_deref()) else {
                nothing.push(p.seqs);
                return Ok(true);
            };
            let size = change_size(&c);
            if size > budget.max_row {
                too_large.push((p.key, size));
                return Ok(true);
            }
            if rows > 0 && (bytes + size > budget.bytes || rows >= budget.rows) {
                full = true;
                return Ok(false);
            }
            bytes += size;
            rows += 1;
            taken.push(p.key);
            changes.push(c);
            Ok(true)
        })?;
        for seqs in nothing {
            pending::drop_entries(l, t, &seqs)?;
        }
        for key in &taken {
            hold.release(l, ti, key)?;
        }
        for p in null_keys {
            // The witness never has such a row, so its base is always "did
            // not exist": once no row with this key is left, nothing is.
            let n = l
                .sql
                .row(&t.count_key_is, &p.key)?
                .and_then(|r| r.first().and_then(crate::db::as_i64))
                .unwrap_or(0);
            if n == 0 {
                pending::drop_entries(l, t, &p.seqs)?;
                hold.release(l, ti, &p.key)?;
                continue;
            }
            let cols: Vec<&str> = t
                .key
                .iter()
                .zip(&p.key)
                .filter(|(_, v)| **v == Value::Null)
                .filter_map(|(i, _)| t.columns.get(*i).map(String::as_str))
                .collect();
            hold.block(
                l,
                ti,
                &p.key,
                NULL_KEY,
                &format!(
                    "{n} row(s) of table {:?} have NULL in key column(s) {cols:?}; the witness never accepts a NULL key",
                    t.name
                ),
                "give each such row a key (UPDATE it, or delete it); it syncs on the next pdb_sync",
            )?;
        }
        for (key, size) in too_large {
            hold.block(
                l,
                ti,
                &key,
                ROW_TOO_LARGE,
                &format!(
                    "this row's change is {size} bytes; one request to the witness carries at most {} bytes of changes",
                    budget.max_row
                ),
                "make the row smaller, or raise the witness's --max-body-bytes; it syncs on the next pdb_sync",
            )?;
        }
        if !changes.is_empty() {
            cs.tables.push(TableChanges {
                name: t.name.clone(),
                pk_flags: t.pk_flags.clone(),
                changes,
            });
        }
    }
    Ok((cs, rows))
}

/// Seals pending changes into the outbox (call inside a transaction). An
/// outbox commit that was already sent stays as it is, byte for byte, so
/// its retry replays; one never sent is replaced by a fresh seal.
pub fn seal(l: &Local, hold: &mut Hold, scope: Scope, budget: Budget) -> Result<Option<Outbox>> {
    if let Some(o) = pending::outbox(&l.db)? {
        if o.attempts > 0 {
            return Ok(Some(o));
        }
        unseal(l, &o)?;
    }
    let (cs, rows) = pending_changeset(l, hold, scope, budget)?;
    if rows == 0 {
        return Ok(None);
    }
    let head = l.head()?;
    l.db.run(
        "INSERT INTO pdb_outbox(idem_key, base_seq, base_hash, changeset, rows, sealed_ms, schema_version, schema_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        &[
            Value::text(&fresh_key()?),
            Value::Integer(head.seq as i64),
            Value::Blob(head.hash.to_vec()),
            Value::Blob(cs.encode()),
            Value::Integer(rows as i64),
            Value::Integer(now_ms() as i64),
            Value::Integer(l.schema.version.into()),
            Value::text(&hex(&l.schema_hash)),
        ],
    )?;
    pending::outbox(&l.db)
}

/// Drops an outbox commit the witness did not accept; its rows stay
/// pending and go into the next seal.
pub fn unseal(l: &Local, o: &Outbox) -> Result<()> {
    l.db.run(
        "DELETE FROM pdb_outbox WHERE id = ?1",
        &[Value::Integer(o.id)],
    )
}
