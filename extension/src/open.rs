//! `pdb_open(url, group, options)`: pins the witness's key, creates the
//! group's tables (or checks the local ones match its schema), starts
//! capture, stores the settings, then catches up (from a snapshot when
//! the database is empty, then by pulling).

use crate::client::{HttpWitness, WitnessApi};
use crate::db::{transaction, Db};
use crate::error::{Error, Result};
use crate::merge::Policy;
use crate::state::{self, Head};
use crate::tables::{read_local, SyncTable};
use crate::{bootstrap, capture, pending, pull, signed, status};
use ed25519_dalek::VerifyingKey;
use pdb_protocol::{genesis_hash, hex, unhex32, StateRoot, Value};
use serde_json::{json, Value as Json};

pub struct OpenOptions {
    pub token: String,
    pub public_key: Option<String>,
    pub policy: Policy,
}

pub fn parse_options(s: Option<&str>) -> Result<OpenOptions> {
    let v: Json = match s {
        None => json!({}),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error::invalid(format!("options must be a JSON object: {e}")))?,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid("options must be a JSON object"))?;
    for k in obj.keys() {
        if !["token", "public_key", "policy"].contains(&k.as_str()) {
            return Err(Error::invalid(format!(
                "unknown option {k:?} (expected token, public_key, policy)"
            )));
        }
    }
    let policy = match obj.get("policy") {
        None => Policy::RemoteWins,
        Some(p) => p
            .as_str()
            .and_then(Policy::parse)
            .ok_or_else(|| Error::invalid("policy must be remote_wins, local_wins or keep_both"))?,
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
        return Err(Error::invalid("url must start with http://"));
    }
    open_with(
        db,
        &HttpWitness::new(url, &opts.token, group),
        url,
        group,
        opts,
    )
}

/// [`open`] against the witness `w` (serving `url`).
pub fn open_with(
    db: Db,
    w: &dyn WitnessApi,
    url: &str,
    group: &str,
    opts: OpenOptions,
) -> Result<Json> {
    db.exec(state::MIGRATION)?;
    if let (Some(u), Some(g)) = (state::get_text(&db, "url")?, state::get_text(&db, "group")?) {
        if g != group {
            return Err(Error::invalid(format!(
                "this database is already open for group {g:?} at {u}"
            )));
        }
    }
    let served = w.witness()?.public_key;
    let expected = opts
        .public_key
        .clone()
        .or(state::get_text(&db, "public_key")?);
    if let Some(pinned) = expected {
        if pinned != served {
            return Err(Error::invalid(format!(
                "the witness's key {served} is not the pinned key {pinned}; refusing to sync"
            )));
        }
    }
    let key = unhex32(&served)
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| Error::invalid("the witness's public key is malformed"))?;
    let g = w.group()?;
    let head_rec = signed::verify_head(&key, group, &g.head)?;
    let version = g.schema.version;
    let schema_hash =
        unhex32(&g.schema.hash).ok_or_else(|| Error::invalid("malformed schema hash"))?;
    if head_rec.schema_hash != schema_hash || head_rec.schema_version != version {
        return Err(Error::invalid(
            "the signed head names another schema than the group info",
        ));
    }
    let sql = g.schema.sql;
    let names = g.schema.tables;
    if names.is_empty() {
        return Err(Error::invalid("the witness sent no table list"));
    }

    transaction(&db, || {
        let created = match read_local(&db, &names, version)? {
            Some(s) if s.hash() == schema_hash => false,
            Some(_) => {
                return Err(Error::invalid(format!(
                    "schema_mismatch: the local tables {names:?} differ from the group's schema (version {version}); migrate them or use another database"
                )))
            }
            None => {
                db.exec(&sql)?;
                true
            }
        };
        let schema = read_local(&db, &names, version)?
            .ok_or_else(|| Error::invalid("creating the group's tables failed"))?;
        if schema.hash() != schema_hash {
            return Err(Error::invalid(
                "schema_mismatch: the group's DDL does not give the group's schema here",
            ));
        }
        let fresh = state::get(&db, "head_seq")?.is_none();
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
            state::set(&db, k, v)?;
        }
        for t in &schema.tables {
            // Rows that were here before sync started are local inserts.
            capture::install(&db, t, &SyncTable::new(t), fresh && !created)?;
        }
        if fresh {
            state::set_head(
                &db,
                &Head {
                    seq: 0,
                    hash: genesis_hash(group, version, &schema_hash),
                    root: StateRoot::empty(),
                },
            )?;
        }
        Ok(())
    })?;
    let l = state::load(db)?;
    // An empty database starts from the newest snapshot, if there is one.
    let mut bootstrapped = None;
    if l.head()?.seq == 0 && pending::outbox(&db)?.is_none() && pending::count(&l)? == 0 {
        if let Some(m) = bootstrap::newer_snapshot(w, 0)? {
            bootstrapped =
                Some(bootstrap::bootstrap(&l, w, &m).inspect_err(|e| state::record_error(&db, e))?);
        }
    }
    let pulled = pull::pull(&l, w)?;
    state::clear_error(&db)?;
    Ok(json!({
        "group": group, "pulled": pulled.commits, "conflicts": pulled.conflicts,
        "bootstrapped_from": bootstrapped, "head": status::head_json(&l)?,
    }))
}
