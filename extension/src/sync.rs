//! The sync operations behind the SQL functions: open, commit, push,
//! pull, verify. Network calls happen outside local transactions; every
//! local change happens inside one, so a process killed at any point
//! leaves either the old state or the new one.

use crate::apply::apply_entry;
use crate::client::{CallError, Client};
use crate::db::{as_i64, as_text, Db, Error, Result};
use crate::local::{self, now_ms, transaction, Head, Local, Policy};
use crate::seal;
use crate::tables::{read_local, SyncTable};
use ed25519_dalek::VerifyingKey;
use pdb_protocol::wire::{
    b64, unb64, BaseRef, CommitRequest, HeadJson, LogEntryJson, Policy as WirePolicy,
};
use pdb_protocol::{genesis_hash, hex, sha256, unhex32, HeadRecord, StateRoot, Value};
use serde_json::{json, Value as Json};

const PAGE: u32 = 500;
const MAX_ROUNDS: usize = 8;

fn record_error(db: &Db, e: &str) {
    let _ = local::set(db, "last_error", Value::text(e));
}

fn clear_error(db: &Db) -> Result<()> {
    db.run("DELETE FROM pdb_state WHERE k = 'last_error'", &[])
}

fn verify_head(key: &VerifyingKey, group: &str, h: &HeadJson) -> Result<HeadRecord> {
    let signed = h
        .signed
        .to_signed()
        .ok_or_else(|| Error("the witness sent a malformed signed head".into()))?;
    let rec = signed
        .head(key)
        .map_err(|e| Error(format!("the witness's signed head was rejected ({e})")))?;
    if rec.group != group {
        return Err(Error("the signed head is for another group".into()));
    }
    Ok(rec)
}

fn network(e: CallError) -> Error {
    Error(e.to_string())
}

pub struct OpenOptions {
    pub token: String,
    pub public_key: Option<String>,
    pub policy: Policy,
}

pub fn parse_options(s: Option<&str>) -> Result<OpenOptions> {
    let v: Json = match s {
        None => json!({}),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error(format!("options must be a JSON object: {e}")))?,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| Error("options must be a JSON object".into()))?;
    for k in obj.keys() {
        if !["token", "public_key", "policy"].contains(&k.as_str()) {
            return Err(Error(format!(
                "unknown option {k:?} (expected token, public_key, policy)"
            )));
        }
    }
    let policy = match obj.get("policy") {
        None => Policy::RemoteWins,
        Some(p) => p
            .as_str()
            .and_then(Policy::parse)
            .ok_or_else(|| Error("policy must be remote_wins, local_wins or keep_both".into()))?,
    };
    Ok(OpenOptions {
        token: obj
            .get("token")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string(),
        public_key: obj
            .get("public_key")
            .and_then(Json::as_str)
            .map(str::to_string),
        policy,
    })
}

/// Opens (or re-opens) a database for sync with a group.
pub fn open(db: Db, url: &str, group: &str, opts: OpenOptions) -> Result<Json> {
    if !url.starts_with("http://") {
        return Err(Error("url must start with http://".into()));
    }
    db.exec(local::MIGRATION)?;
    if let (Some(u), Some(g)) = (local::get_text(&db, "url")?, local::get_text(&db, "group")?) {
        if g != group {
            return Err(Error(format!(
                "this database is already open for group {g:?} at {u}"
            )));
        }
    }
    let client = Client::new(url, &opts.token);
    let info = client.get("/v1/witness").map_err(network)?;
    let served = info["public_key"]
        .as_str()
        .ok_or_else(|| Error("the witness did not send its public key".into()))?
        .to_string();
    let expected = opts
        .public_key
        .clone()
        .or(local::get_text(&db, "public_key")?);
    if let Some(pinned) = expected {
        if pinned != served {
            return Err(Error(format!(
                "the witness's key {served} is not the pinned key {pinned}; refusing to sync"
            )));
        }
    }
    let key = unhex32(&served)
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| Error("the witness's public key is malformed".into()))?;
    let g = client
        .get(&format!("/v1/groups/{group}"))
        .map_err(|e| match e {
            CallError::Rejected { code, message, .. } => Error(format!("{code}: {message}")),
            other => network(other),
        })?;
    let head: HeadJson = serde_json::from_value(g["head"].clone())
        .map_err(|_| Error("malformed group head".into()))?;
    let head_rec = verify_head(&key, group, &head)?;
    let version = g["schema"]["version"].as_u64().unwrap_or(0) as u32;
    let schema_hash = unhex32(g["schema"]["hash"].as_str().unwrap_or(""))
        .ok_or_else(|| Error("malformed schema hash".into()))?;
    if head_rec.schema_hash != schema_hash || head_rec.schema_version != version {
        return Err(Error(
            "the signed head names another schema than the group info".into(),
        ));
    }
    let sql = g["schema"]["sql"].as_str().unwrap_or("").to_string();
    let names: Vec<String> =
        serde_json::from_value(g["schema"]["tables"].clone()).unwrap_or_default();
    if names.is_empty() {
        return Err(Error("the witness sent no table list".into()));
    }

    transaction(&db, || {
        let created = match read_local(&db, &names, version)? {
            Some(s) if s.hash() == schema_hash => false,
            Some(_) => {
                return Err(Error(format!(
                    "schema_mismatch: the local tables {names:?} differ from the group's schema (version {version}); migrate them or use another database"
                )))
            }
            None => {
                db.exec(&sql)?;
                true
            }
        };
        let schema = read_local(&db, &names, version)?
            .ok_or_else(|| Error("creating the group's tables failed".into()))?;
        if schema.hash() != schema_hash {
            return Err(Error(
                "schema_mismatch: the group's DDL does not give the group's schema here".into(),
            ));
        }
        let fresh = local::get(&db, "head_seq")?.is_none();
        for (k, v) in [
            ("url", Value::text(url)),
            ("group", Value::text(group)),
            ("token", Value::text(&opts.token)),
            ("public_key", Value::text(&served)),
            ("policy", Value::text(opts.policy.name())),
            ("schema_version", Value::Integer(version.into())),
            ("schema_hash", Value::text(&hex(&schema_hash))),
            ("schema_sql", Value::text(&sql)),
            (
                "tables",
                Value::text(&serde_json::to_string(&names).unwrap_or_default()),
            ),
        ] {
            local::set(&db, k, v)?;
        }
        for t in &schema.tables {
            let st = SyncTable::new(t);
            db.exec(&st.base_ddl(t))?;
            for ddl in st.trigger_ddl() {
                db.exec(&ddl)?;
            }
            if fresh && !created {
                // Rows that were here before sync started are local inserts.
                let pk: Vec<String> = st
                    .pk_cols
                    .iter()
                    .map(|i| crate::db::ident(&st.columns[*i]))
                    .collect();
                db.exec(&format!(
                    "INSERT INTO {} ({}, {}) SELECT 0, {} FROM {}",
                    st.base,
                    crate::tables::EXISTED,
                    pk.join(", "),
                    pk.join(", "),
                    crate::db::ident(&st.name)
                ))?;
            }
        }
        if fresh {
            local::set(&db, "head_seq", Value::Integer(0))?;
            local::set(
                &db,
                "head_hash",
                Value::Blob(genesis_hash(group, version, &schema_hash).to_vec()),
            )?;
            local::set(&db, "root", Value::Blob(StateRoot::empty().to_bytes()))?;
        }
        Ok(())
    })?;
    let l = local::load(db)?;
    // An empty database starts from the newest snapshot, if there is one.
    let mut bootstrapped = None;
    if l.head()?.seq == 0 && seal::outbox(&l)?.is_none() && seal::pending_rows_total(&l)? == 0 {
        if let Some(m) = crate::bootstrap::newer_snapshot(&l, &client, 0)? {
            bootstrapped = Some(
                crate::bootstrap::bootstrap(&l, &client, &m)
                    .inspect_err(|e| record_error(&db, &e.0))?,
            );
        }
    }
    let (pulled, conflicts) = pull(&l, &client)?;
    clear_error(&db)?;
    Ok(json!({
        "group": group, "pulled": pulled, "conflicts": conflicts,
        "bootstrapped_from": bootstrapped, "head": head_json(&l)?,
    }))
}

fn client_of(l: &Local) -> Client {
    Client::new(&l.url, &l.token)
}

/// Pulls and applies every commit after the verified head, a page per
/// local transaction. Returns (commits applied, conflicts met).
fn pull(l: &Local, client: &Client) -> Result<(usize, usize)> {
    let mut applied = 0;
    let mut conflicts = 0;
    loop {
        let after = l.head()?.seq;
        let path = format!("/v1/groups/{}/commits?after={after}&limit={PAGE}", l.group);
        let page = match client.get(&path) {
            Ok(p) => p,
            Err(CallError::Rejected { code, .. }) if code == "snapshot_required" => {
                // The log before our head is gone: restart from a snapshot
                // (refused, keeping everything, if local changes are pending).
                let m = crate::bootstrap::newer_snapshot(l, client, after)?.ok_or_else(|| {
                    Error("snapshot_required, but the witness offers no newer snapshot".into())
                })?;
                crate::bootstrap::bootstrap(l, client, &m)
                    .inspect_err(|e| record_error(&l.db, &e.0))?;
                continue;
            }
            Err(e) => return Err(classify(&l.db, e)),
        };
        let head: HeadJson = serde_json::from_value(page["head"].clone())
            .map_err(|_| Error("the witness sent a malformed page".into()))?;
        let signed_head = verify_head(&l.key, &l.group, &head)?;
        let entries: Vec<LogEntryJson> = serde_json::from_value(page["commits"].clone())
            .map_err(|_| Error("the witness sent a malformed page".into()))?;
        local::set(&l.db, "remote_seq", Value::Integer(signed_head.seq as i64))?;
        if signed_head.seq < after {
            return Err(Error(format!(
                "the witness's head ({}) is behind this database's verified head ({after})",
                signed_head.seq
            )));
        }
        let (n, c) = transaction(&l.db, || {
            l.without_capture(|| {
                let mut pending = crate::apply::load_pending(l)?;
                let mut h = l.head()?;
                let mut n = 0;
                let mut c = 0;
                for e in &entries {
                    if e.seq <= h.seq {
                        continue;
                    }
                    let cs = unb64(&e.changeset).ok_or_else(|| Error(format!("commit {}: changeset is not base64", e.seq)))?;
                    let cert = e
                        .certificate
                        .signed
                        .to_signed()
                        .ok_or_else(|| Error(format!("commit {}: malformed certificate", e.seq)))?;
                    c += apply_entry(l, &mut pending, &mut h, e.seq, &cs, &cert)?;
                    n += 1;
                }
                if h.seq == signed_head.seq && (h.hash != signed_head.head_hash || h.root.digest() != signed_head.state_root) {
                    return Err(Error("the local copy does not match the witness's signed head; nothing was applied".into()));
                }
                l.set_head(&h)?;
                Ok((n, c))
            })
        })?;
        applied += n;
        conflicts += c;
        if page["next_after"].is_null() || entries.is_empty() {
            return Ok((applied, conflicts));
        }
    }
}

/// Turns a failed call into the error the caller sees, keeping it for
/// pdb_status. Access and schema problems say to stop.
fn classify(db: &Db, e: CallError) -> Error {
    let msg = match &e {
        CallError::Network(m) => format!("witness unreachable: {m}"),
        CallError::Rejected { code, message, .. } => match code.as_str() {
            "unauthorized" => format!(
                "unauthorized: {message} (sync stopped: fix the token or the caller's role)"
            ),
            "schema_mismatch" => {
                format!("schema_mismatch: {message} (sync stopped: migrate this database)")
            }
            _ => format!("{code}: {message}"),
        },
    };
    record_error(db, &msg);
    Error(msg)
}

/// Seals pending changes into the outbox.
pub fn commit(db: Db) -> Result<Json> {
    let l = local::load(db)?;
    let o = transaction(&db, || seal::seal(&l))?;
    Ok(match o {
        Some(o) => {
            json!({ "sealed": true, "idempotency_key": o.key, "rows": o.rows, "base_seq": o.base_seq })
        }
        None => json!({ "sealed": false, "rows": 0 }),
    })
}

/// Push the outbox, pull, rebase, repeat until nothing is pending. A
/// failure is kept for pdb_status; nothing local is lost by it.
pub fn sync(db: Db) -> Result<Json> {
    let l = local::load(db)?;
    sync_rounds(&l).inspect_err(|e| record_error(&db, &e.0))
}

fn sync_rounds(l: &Local) -> Result<Json> {
    let db = l.db;
    let client = client_of(l);
    let mut pushed = 0;
    let mut pulled = 0;
    let mut conflicts = 0;
    for _ in 0..MAX_ROUNDS {
        let Some(o) = transaction(&db, || seal::next_commit(l))? else {
            let (p, c) = pull(l, &client)?;
            pulled += p;
            conflicts += c;
            // A pull can leave changes to push (local_wins); go round again.
            if transaction(&db, || seal::next_commit(l))?.is_none() {
                break;
            }
            continue;
        };
        db.run(
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
            client_time: Some(now_ms()),
        };
        let body = serde_json::to_value(&req).map_err(|e| Error(e.to_string()))?;
        match client.post(&format!("/v1/groups/{}/commits", l.group), &body) {
            Ok(resp) => {
                let cert = resp["certificate"]["signed"].clone();
                let cert: pdb_protocol::wire::SignedJson = serde_json::from_value(cert)
                    .map_err(|_| Error("the witness sent a malformed certificate".into()))?;
                let rec = cert
                    .to_signed()
                    .ok_or_else(|| Error("the witness sent a malformed certificate".into()))?
                    .commit(&l.key)
                    .map_err(|e| Error(format!("the witness's certificate was rejected ({e})")))?;
                if rec.changeset_digest != sha256(&o.changeset)
                    || rec.idempotency_key != o.key
                    || rec.group != l.group
                {
                    return Err(Error(
                        "the witness certified something other than this commit".into(),
                    ));
                }
                let (p, c) = pull(l, &client)?;
                pulled += p;
                conflicts += c;
                if seal::outbox(l)?.is_some_and(|x| x.key == o.key) {
                    return Err(Error(format!(
                        "commit {} was certified but is not in the log the witness serves",
                        rec.seq
                    )));
                }
                pushed += 1;
            }
            Err(CallError::Rejected { code, .. }) if code == "stale_head" => {
                // Not accepted (a replay would have answered): pull, then
                // seal again from the merged state with a new key.
                let (p, c) = pull(l, &client)?;
                pulled += p;
                conflicts += c;
                db.run(
                    "DELETE FROM pdb_outbox WHERE id = ?1",
                    &[Value::Integer(o.id)],
                )?;
            }
            Err(e) => return Err(classify(&db, e)),
        }
    }
    clear_error(&db)?;
    local::set(&db, "last_sync_ms", Value::Integer(now_ms()))?;
    Ok(json!({ "pushed": pushed, "pulled": pulled, "conflicts": conflicts, "head": head_json(l)? }))
}

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
    head_json(&local::load(db)?)
}

pub fn status(db: Db) -> Result<Json> {
    if !local::is_open(&db)? {
        return Ok(json!({ "open": false }));
    }
    let l = local::load(db)?;
    let mut pending = 0i64;
    for t in &l.tables {
        let n = db.row(&format!("SELECT count(*) FROM ({})", t.pending), &[])?;
        pending += n.and_then(|r| as_i64(&r[0])).unwrap_or(0);
    }
    let o = seal::outbox(&l)?;
    let h = l.head()?;
    let remote = local::get(&db, "remote_seq")?
        .as_ref()
        .and_then(as_i64)
        .unwrap_or(h.seq as i64);
    let conflicts = db
        .row("SELECT count(*) FROM pdb_conflicts", &[])?
        .and_then(|r| as_i64(&r[0]))
        .unwrap_or(0);
    Ok(json!({
        "open": true,
        "group": l.group,
        "url": l.url,
        "policy": l.policy.name(),
        "head_seq": h.seq,
        "pending_rows": pending,
        "outbox": o.map(|o| json!({"idempotency_key": o.key, "rows": o.rows, "attempts": o.attempts, "base_seq": o.base_seq})),
        "last_error": local::get(&db, "last_error")?.as_ref().and_then(as_text),
        "last_sync_ms": local::get(&db, "last_sync_ms")?.as_ref().and_then(as_i64),
        "lag": (remote - h.seq as i64).max(0),
        "bootstrap": crate::bootstrap::progress_path(&l)
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<Json>(&t).ok()),
        "conflicts": conflicts,
    }))
}

/// Recomputes the state root from scratch: every local row, with pending
/// rows swapped for their base values, must give the verified root.
pub fn verify(db: Db) -> Result<Json> {
    let l = local::load(db)?;
    let h: Head = l.head()?;
    let mut root = StateRoot::empty();
    let mut rows = 0;
    for t in &l.tables {
        let list: Vec<String> = t.columns.iter().map(|c| crate::db::ident(c)).collect();
        for r in db.rows(
            &format!(
                "SELECT {} FROM {}",
                list.join(", "),
                crate::db::ident(&t.name)
            ),
            &[],
        )? {
            root.add_row(&t.name, &r);
            rows += 1;
        }
        for p in seal::pending_rows(&l, t)? {
            if let Some(c) = p.cur {
                root.remove_row(&t.name, &c);
            }
            if let Some(b) = p.base {
                root.add_row(&t.name, &b);
            }
        }
    }
    let ok = root == h.root;
    Ok(
        json!({ "ok": ok, "rows": rows, "head_seq": h.seq, "state_root": hex(&root.digest()), "verified_root": hex(&h.root.digest()) }),
    )
}
