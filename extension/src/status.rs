//! What the local copy is and how sync is doing: `pdb_head()`,
//! `pdb_status()` and `pdb_verify()`. Local reads only.

use crate::db::{as_i64, Db};
use crate::error::Result;
use crate::pending;
use crate::state::{self, Local};
use pdb_protocol::{hex, StateRoot};
use serde_json::{json, Value as Json};

pub fn head_json(l: &Local) -> Result<Json> {
    let h = l.head()?;
    Ok(json!({
        "group": l.group,
        "seq": h.seq,
        "head_hash": hex(&h.hash),
        "state_root": hex(&h.root.digest()),
        "schema_version": l.schema.version,
        "schema_hash": hex(&l.schema_hash),
    }))
}

pub fn head(db: Db) -> Result<Json> {
    head_json(&state::load(db)?)
}

pub fn status(db: Db) -> Result<Json> {
    if !state::is_open(&db)? {
        return Ok(json!({ "open": false }));
    }
    let l = state::load(db)?;
    let o = pending::outbox(&db)?;
    let h = l.head()?;
    let remote = state::get_i64(&db, "remote_seq")?.unwrap_or(h.seq as i64);
    let conflicts = db
        .row("SELECT count(*) FROM pdb_conflicts", &[])?
        .and_then(|r| r.first().and_then(as_i64))
        .unwrap_or(0);
    Ok(json!({
        "open": true,
        "group": l.group,
        "url": l.url,
        "policy": l.policy.name(),
        "head_seq": h.seq,
        "pending_rows": pending::count(&l)?,
        "outbox": o.map(|o| json!({"idempotency_key": o.key, "rows": o.rows, "attempts": o.attempts, "base_seq": o.base_seq})),
        "last_error": state::get_text(&db, "last_error")?,
        "last_sync_ms": state::get_i64(&db, "last_sync_ms")?,
        "lag": (remote - h.seq as i64).max(0),
        // The witness's time on the newest signed head this database
        // verified, and how long ago that was by this device's clock.
        "head_time_ms": state::get_i64(&db, "head_time_ms")?,
        "head_age_ms": state::get_i64(&db, "head_time_ms")?
            .map(|t| (pdb_protocol::now_ms() as i64 - t).max(0)),
        "bootstrap": crate::bootstrap::progress(&l),
        "conflicts": conflicts,
    }))
}

/// Recomputes the state root from scratch: every local row, with pending
/// rows swapped for their base values, must give the verified root.
pub fn verify(db: Db) -> Result<Json> {
    let l = state::load(db)?;
    let h = l.head()?;
    let mut root = StateRoot::empty();
    let mut rows = 0;
    for t in &l.tables {
        for r in db.rows(&t.rows.scan, &[])? {
            root.add_row(&t.name, &r);
            rows += 1;
        }
        for p in pending::rows(&l, t)? {
            if let Some(c) = p.cur {
                root.remove_row(&t.name, &c);
            }
            if let Some(b) = p.base {
                root.add_row(&t.name, &b);
            }
        }
    }
    let ok = root == h.root;
    Ok(json!({
        "ok": ok, "rows": rows, "head_seq": h.seq,
        "state_root": hex(&root.digest()), "verified_root": hex(&h.root.digest()),
    }))
}
