//! Pushing: sealing the net change of every pending row into the outbox
//! as one commit (a SQLite changeset with a fresh idempotency key, built
//! on the verified head), and sending the outbox commit to the witness.

use crate::client::WitnessApi;
use crate::db::{transaction, Db};
use crate::error::{Error, Result};
use crate::merge::diff;
use crate::pending::{self, Outbox};
use crate::state::{self, Local};
use pdb_protocol::wire::{b64, BaseRef, CommitRequest, Policy as WirePolicy};
use pdb_protocol::{hex, now_ms, sha256, Changeset, TableChanges, Value};
use serde_json::{json, Value as Json};

/// `pdb_commit()`: seals pending changes into the outbox.
pub fn commit(db: Db) -> Result<Json> {
    let l = state::load(db)?;
    let o = transaction(&db, || seal(&l))?;
    Ok(match o {
        Some(o) => {
            json!({ "sealed": true, "idempotency_key": o.key, "rows": o.rows, "base_seq": o.base_seq })
        }
        None => json!({ "sealed": false, "rows": 0 }),
    })
}

/// The changeset of all pending rows; rows whose net change is nothing
/// (inserted then deleted, changed then changed back) stop being pending.
/// Call inside a transaction: it compacts the base logs.
fn pending_changeset(l: &Local) -> Result<(Changeset, usize)> {
    let mut cs = Changeset::default();
    let mut n = 0;
    for t in &l.tables {
        pending::compact(l, t)?;
        let mut changes = Vec::new();
        for p in pending::rows(l, t)? {
            match diff(&t.key, p.base.as_deref(), p.cur.as_deref()) {
                Some(c) => changes.push(c),
                None => pending::drop_entries(l, t, &p.seqs)?,
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

fn fresh_key() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| Error::invalid(format!("no randomness: {e}")))?;
    Ok(format!("pdb-{}", hex(&b)))
}

/// The outbox commit to push: the one already sealed, else a new seal.
pub fn next_commit(l: &Local) -> Result<Option<Outbox>> {
    match pending::outbox(&l.db)? {
        Some(o) => Ok(Some(o)),
        None => seal(l),
    }
}

/// Seals pending changes into the outbox (call inside a transaction). An
/// outbox commit that was already sent stays as it is, byte for byte, so
/// its retry replays; one never sent is replaced by a fresh seal.
pub fn seal(l: &Local) -> Result<Option<Outbox>> {
    if let Some(o) = pending::outbox(&l.db)? {
        if o.attempts > 0 {
            return Ok(Some(o));
        }
        unseal(l, &o)?;
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
            Value::Integer(now_ms() as i64),
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

/// What the witness did with a commit sent.
pub enum Sent {
    /// Accepted (or accepted before: a replay) as commit `seq`; the
    /// certificate verified.
    Certified { seq: u64 },
    /// Not accepted: other commits came first and touch its rows.
    Stale,
}

/// Sends the outbox commit and verifies the certificate that answers it.
/// A failed call is classified and kept for `pdb_status`.
pub fn send(l: &Local, w: &dyn WitnessApi, o: &Outbox) -> Result<Sent> {
    l.db.run(
        "UPDATE pdb_outbox SET attempts = attempts + 1 WHERE id = ?1",
        &[Value::Integer(o.id)],
    )?;
    let req = CommitRequest {
        base: BaseRef {
            seq: o.base_seq,
            hash: hex(&o.base_hash),
        },
        schema_version: l.schema.version,
        schema_hash: hex(&l.schema_hash),
        idempotency_key: o.key.clone(),
        changeset: b64(&o.changeset),
        policy: WirePolicy::RebaseIfClean,
        client_time: Some(now_ms() as i64),
    };
    let resp = match w.commit(&req) {
        Ok(resp) => resp,
        Err(e) if e.is_rejection("stale_head") => return Ok(Sent::Stale),
        Err(e) => return Err(state::call_failed(&l.db, e)),
    };
    let rec = resp
        .certificate
        .signed
        .to_signed()
        .ok_or_else(|| Error::invalid("the witness sent a malformed certificate"))?
        .commit(&l.key)
        .map_err(|e| Error::untrusted(format!("the witness's certificate was rejected ({e})")))?;
    if rec.changeset_digest != sha256(&o.changeset)
        || rec.idempotency_key != o.key
        || rec.group != l.group
    {
        return Err(Error::invalid(
            "the witness certified something other than this commit",
        ));
    }
    Ok(Sent::Certified { seq: rec.seq })
}
