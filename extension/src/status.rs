//! What the local copy is and how sync is doing: `pdb_head()`,
//! `pdb_status()` and `pdb_verify()`. Local reads only.

use crate::db::{as_i64, Db};
use crate::error::Result;
use crate::state::{self, Local};
use crate::{hold, pending};
use pdb_protocol::{hex, now_ms, StateRoot};
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
        return Ok(json!({ "open": false, "worker": crate::worker::status(&db)? }));
    }
    let l = state::load(db)?;
    let o = pending::outbox(&db)?;
    let h = l.head()?;
    let remote = state::get_i64(&db, "remote_seq")?.unwrap_or(h.seq as i64);
    let count = |sql: &str| -> Result<i64> {
        Ok(db
            .row(sql, &[])?
            .and_then(|r| r.first().and_then(as_i64))
            .unwrap_or(0))
    };
    let conflicts = count("SELECT count(*) FROM pdb_conflicts")?;
    let open_conflicts = count("SELECT count(*) FROM pdb_conflicts WHERE kept = 'open'")?;
    let blocked = hold::list(&db)?;
    let last_error = state::get_text(&db, "last_error")?;
    let detail: Option<Json> =
        state::get_text(&db, "last_error_json")?.and_then(|t| serde_json::from_str(&t).ok());
    let (sync_state, reason) = at_a_glance(last_error.as_deref(), detail, &blocked);
    let verified_at = state::get_i64(&db, "verified_at_ms")?;
    Ok(json!({
        "open": true,
        "state": sync_state,
        "reason": reason,
        "blocked": blocked,
        "open_conflicts": open_conflicts,
        // How long ago this device last verified a signed head.
        "verified_ago_ms": verified_at.map(|t| (now_ms() as i64 - t).max(0)),
        "group": l.group,
        "url": l.url,
        "policy": l.policy.name(),
        "head_seq": h.seq,
        "schema_version": l.schema.version,
        "app_schema_versions": match crate::migrate::app_range(&db)? {
            (0, u32::MAX) => Json::Null,
            (min, max) => json!([min, max]),
        },
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
        // What the last unknown_head showed (the witness restored from an
        // older backup), and which pdb_recover to run; null otherwise.
        "restored": crate::recover::status(&db)?,
        "conflicts": conflicts,
        // This process's background worker for the file, if one runs.
        "worker": crate::worker::status(&db)?,
    }))
}

/// Whether sync is healthy, waiting (on the network or the witness: it
/// retries by itself), or blocked (something must change: access, schema,
/// a row) — and on what.
fn at_a_glance(
    last_error: Option<&str>,
    detail: Option<Json>,
    blocked: &[Json],
) -> (&'static str, Json) {
    if let Some(message) = last_error {
        let d = detail.unwrap_or_else(|| json!({}));
        let class = d["class"].as_str().unwrap_or("local");
        let code = d["code"].as_str().unwrap_or("");
        let (state, advice) = match (class, code) {
            (_, "response_too_large") => (
                "waiting",
                "an answer was larger than its endpoint ever needs (a broken proxy or witness): nothing of it was used; the next pdb_sync asks again",
            ),
            (_, "no_progress") => (
                "waiting",
                "the witness's pages did not move forward (a replayed or broken answer): nothing was applied; the next pdb_sync asks again",
            ),
            (_, "local_table_exists") => (
                "blocked",
                "a migration of the group creates a table this database has of its own: rename or drop that table, or call pdb_adopt(name) to make it the group's; sync resumes",
            ),
            (_, "clock_skew") => (
                "waiting",
                "the witness's signed time and this device's clock are far apart: check this device's clock (and ask the witness's operator to check theirs); sync resumes by itself once they agree",
            ),
            (_, "key_fork") => (
                "blocked",
                "the witness's key rotations fork from the chain this database trusts: ask the witness's operator (docs/operations.md, \"Key rotation\"); sync resumes once the witness serves a chain that extends the trusted one",
            ),
            ("retry", _) => (
                "waiting",
                "nothing to do: the next pdb_sync retries and resumes by itself (after retry_after_s, if given)",
            ),
            (_, "unauthorized") => (
                "blocked",
                "fix the token (pdb_open again with a valid one) or the caller's role on the witness; sync resumes once it is allowed",
            ),
            (_, "unknown_head") => ("blocked", crate::recover::advice()),
            (_, "schema_mismatch") => (
                "blocked",
                "this database's schema is not one the group ever had: open a fresh database for the group",
            ),
            (_, "app_upgrade_required") => (
                "blocked",
                "upgrade the app, then call pdb_open with schema_versions including the group's version; local reads and writes go on meanwhile, and sync resumes where it stopped",
            ),
            (_, "schema_too_old") => (
                "blocked",
                "the group's admin must migrate the group to a version this app understands",
            ),
            ("local", _) => (
                "blocked",
                "nothing from that answer was applied; the next pdb_sync tries again (if it keeps failing, the witness or a proxy is not answering honestly)",
            ),
            _ => ("blocked", "see the message; the next pdb_sync tries again"),
        };
        let mut reason = json!({
            "message": message, "class": class, "code": d["code"], "table": d["table"],
            "key": d["key"], "retry_after_s": d["retry_after_s"], "since_ms": d["at_ms"],
            "advice": advice,
        });
        if reason["code"].is_null() && class == "local" {
            reason["code"] = json!("local_error");
        }
        return (state, reason);
    }
    match blocked.first() {
        Some(b) => ("blocked", b.clone()),
        None => ("healthy", Json::Null),
    }
}

/// Recomputes the state root from scratch: every local row, with pending
/// rows swapped for their base values, must give the verified root.
pub fn verify(db: Db) -> Result<Json> {
    let l = state::load(db)?;
    let h = l.head()?;
    let mut root = StateRoot::empty();
    let mut rows = 0;
    let mut null_keys = 0;
    for t in &l.tables {
        for r in db.rows(&t.rows.scan, &[])? {
            // A row with a NULL key never reaches the witness (sync holds
            // it back and pdb_status says so): it is not in the root.
            if t.key_of(&r).contains(&pdb_protocol::Value::Null) {
                null_keys += 1;
                continue;
            }
            root.add_row(&t.name, &r);
            rows += 1;
        }
        for p in pending::rows(&l, t)? {
            if p.key.contains(&pdb_protocol::Value::Null) {
                continue;
            }
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
        "ok": ok, "rows": rows, "rows_with_null_key": null_keys, "head_seq": h.seq,
        "state_root": hex(&root.digest()), "verified_root": hex(&h.root.digest()),
    }))
}
