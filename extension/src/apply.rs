//! Applying one verified commit from the log to the local database.
//!
//! Rows nobody changed locally take the commit's values directly. Rows
//! with local changes (pending) get a three-way merge at column level —
//! base (the verified head's value), remote (the commit's), local — and
//! their base moves to the commit's value. The client's own commit, seen
//! again in the log, only moves the base: it is never applied twice.
//! The state root moves by the server-side values of each row and must
//! equal the certificate's root, or the whole page is rolled back.

use crate::db::{as_i64, Error, Result};
use crate::local::{now_ms, Head, Local, Policy};
use crate::tables::SyncTable;
use pdb_protocol::records::Signed;
use pdb_protocol::wire::value_json;
use pdb_protocol::{sha256, Change, Changeset, Op, StateRoot, Value};

type Row = Vec<Value>;

/// Verifies a log entry against the pinned key and the current head, then
/// applies it; returns the conflicts met. Call inside a transaction with
/// capture off.
pub fn apply_entry(
    l: &Local,
    head: &mut Head,
    seq: u64,
    changeset: &[u8],
    cert: &Signed,
) -> Result<usize> {
    let fail = |m: &str| Error(format!("commit {seq}: {m}; nothing was applied"));
    let rec = cert
        .commit(&l.key)
        .map_err(|e| fail(&format!("certificate rejected ({e})")))?;
    let checks = [
        (
            rec.seq == seq && seq == head.seq + 1,
            "it does not follow the verified head",
        ),
        (rec.group == l.group, "the certificate names another group"),
        (
            rec.prev_head == head.hash,
            "the certificate does not chain to the verified head",
        ),
        (
            rec.changeset_digest == sha256(changeset),
            "the changeset does not match its certificate",
        ),
        (
            rec.schema_hash == l.schema_hash && rec.schema_version == l.schema.version,
            "the certificate names another schema",
        ),
    ];
    if let Some((_, m)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(fail(m));
    }
    let cs =
        Changeset::decode(changeset).map_err(|e| fail(&format!("malformed changeset ({e})")))?;
    cs.validate(&l.schema)
        .map_err(|e| fail(&format!("invalid changeset ({e})")))?;
    let own = crate::seal::outbox(l)?.is_some_and(|o| o.key == rec.idempotency_key);
    let mut root = head.root.clone();
    let mut conflicts = 0;
    for t in &cs.tables {
        let st = l.table(&t.name).ok_or_else(|| fail("unknown table"))?;
        for c in &t.changes {
            conflicts += apply_change(l, st, c, own, seq, &mut root).map_err(|e| fail(&e.0))?;
        }
    }
    if root.digest() != rec.state_root {
        return Err(fail(
            "the state root after applying differs from the certified one (tampered response or diverged copy)",
        ));
    }
    l.db.run(
        "INSERT OR REPLACE INTO pdb_certificates(seq, idem_key, author, mine, head_hash, state_root, time_ms, record, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        &[
            Value::Integer(seq as i64),
            Value::text(&rec.idempotency_key),
            Value::text(&rec.author),
            Value::Integer(i64::from(own)),
            Value::Blob(sha256(&cert.bytes).to_vec()),
            Value::Blob(rec.state_root.to_vec()),
            Value::Integer(rec.time_ms as i64),
            Value::Blob(cert.bytes.clone()),
            Value::Blob(cert.signature.to_vec()),
        ],
    )?;
    if own {
        l.db.run(
            "DELETE FROM pdb_outbox WHERE idem_key = ?1",
            &[Value::text(&rec.idempotency_key)],
        )?;
    }
    *head = Head {
        seq,
        hash: sha256(&cert.bytes),
        root,
    };
    Ok(conflicts)
}

fn apply_change(
    l: &Local,
    st: &SyncTable,
    c: &Change,
    own: bool,
    seq: u64,
    root: &mut StateRoot,
) -> Result<usize> {
    let key = c.pk(&st.pk_flags);
    let pending = l.db.row(&st.select_base, &key)?;
    let local = l.db.row(&st.select_row, &key)?;
    let old_server: Option<Row> = match &pending {
        Some(p) => (as_i64(&p[0]) == Some(1)).then(|| p[1..].to_vec()),
        None => local.clone(),
    };
    let diverged = || {
        Error(format!(
            "table {:?}: the change does not fit the verified local copy",
            st.name
        ))
    };
    let new_server: Option<Row> = match (c.op, &old_server) {
        (Op::Insert, None) => Some(
            c.new
                .iter()
                .map(|v| v.clone().unwrap_or(Value::Null))
                .collect(),
        ),
        (Op::Update, Some(o)) | (Op::Delete, Some(o)) => {
            for (i, want) in c.old.iter().enumerate() {
                if let Some(w) = want {
                    if o.get(i) != Some(w) {
                        return Err(diverged());
                    }
                }
            }
            (c.op == Op::Update).then(|| {
                o.iter()
                    .zip(&c.new)
                    .map(|(old, new)| new.clone().unwrap_or_else(|| old.clone()))
                    .collect()
            })
        }
        _ => return Err(diverged()),
    };
    if let Some(o) = &old_server {
        root.remove_row(&st.name, o);
    }
    if pending.is_none() {
        let stored = write_row(l, st, &key, local.as_ref(), new_server.as_ref())?;
        if let Some(s) = &stored {
            root.add_row(&st.name, s);
        }
        return Ok(0);
    }
    let stored_base = write_base(l, st, &key, new_server.as_ref())?;
    if let Some(s) = &stored_base {
        root.add_row(&st.name, s);
    }
    let (merged, conflicts) = if own {
        (local.clone(), Vec::new())
    } else {
        merge(
            st,
            l.policy,
            old_server.as_ref(),
            stored_base.as_ref(),
            local.as_ref(),
        )
    };
    let now = if merged != local {
        write_row(l, st, &key, local.as_ref(), merged.as_ref())?
    } else {
        local
    };
    if now == stored_base {
        l.db.run(&st.delete_base, &key)?;
    }
    for cf in &conflicts {
        record_conflict(l, st, seq, &key, cf)?;
    }
    Ok(conflicts.len())
}

/// Moves the row from `current` to `target` and returns it as stored.
fn write_row(
    l: &Local,
    st: &SyncTable,
    key: &[Value],
    current: Option<&Row>,
    target: Option<&Row>,
) -> Result<Option<Row>> {
    match (current, target) {
        (None, None) => Ok(None),
        (Some(_), None) => {
            l.db.run(&st.delete_row, key)?;
            Ok(None)
        }
        (None, Some(t)) => l.db.row(&st.insert_row, t),
        (Some(c), Some(t)) => {
            let changed: Vec<usize> = (0..t.len()).filter(|i| c.get(*i) != t.get(*i)).collect();
            if changed.is_empty() {
                return Ok(Some(c.clone()));
            }
            let mut params: Vec<Value> = changed.iter().map(|i| t[*i].clone()).collect();
            params.extend(key.iter().cloned());
            l.db.row(&st.update_sql(&changed), &params)
        }
    }
}

/// Sets a pending row's base to the server's new value and returns it as
/// stored (the base table has the same column affinities).
fn write_base(l: &Local, st: &SyncTable, key: &[Value], row: Option<&Row>) -> Result<Option<Row>> {
    let mut params: Vec<Value> = match row {
        Some(r) => r.clone(),
        None => {
            let mut r = vec![Value::Null; st.columns.len()];
            for (k, i) in key.iter().zip(&st.pk_cols) {
                r[*i] = k.clone();
            }
            r
        }
    };
    params.push(Value::Integer(i64::from(row.is_some())));
    let stored = l.db.row(&st.upsert_base, &params)?;
    Ok(if row.is_some() { stored } else { None })
}

pub struct Conflict {
    pub column: Option<String>,
    pub base: Value,
    pub local: Value,
    pub remote: Value,
    pub kept: &'static str,
}

fn row_json(r: Option<&Row>) -> Value {
    match r {
        Some(r) => {
            Value::text(&serde_json::Value::Array(r.iter().map(value_json).collect()).to_string())
        }
        None => Value::Null,
    }
}

/// Three-way merge of one row. Columns changed on one side only take that
/// side; the same column changed differently on both is a conflict the
/// policy settles. A delete against a change is a row conflict.
pub fn merge(
    st: &SyncTable,
    policy: Policy,
    base: Option<&Row>,
    remote: Option<&Row>,
    local: Option<&Row>,
) -> (Option<Row>, Vec<Conflict>) {
    if remote == local {
        return (local.cloned(), vec![]);
    }
    if local == base {
        return (remote.cloned(), vec![]);
    }
    if remote == base {
        return (local.cloned(), vec![]);
    }
    let side = |remote_side: bool| if remote_side { "remote" } else { "local" };
    match (remote, local) {
        (Some(r), Some(lo)) => {
            let mut merged = lo.clone();
            let mut conflicts = Vec::new();
            for i in 0..lo.len() {
                if st.pk_cols.contains(&i) || lo[i] == r[i] {
                    continue;
                }
                let b = base.map(|b| &b[i]);
                if b == Some(&lo[i]) {
                    merged[i] = r[i].clone();
                } else if b == Some(&r[i]) {
                    // local change stands
                } else {
                    let take_remote = policy != Policy::LocalWins;
                    if take_remote {
                        merged[i] = r[i].clone();
                    }
                    conflicts.push(Conflict {
                        column: Some(st.columns[i].clone()),
                        base: b.cloned().unwrap_or(Value::Null),
                        local: lo[i].clone(),
                        remote: r[i].clone(),
                        kept: side(take_remote),
                    });
                }
            }
            (Some(merged), conflicts)
        }
        _ => {
            let take_remote = policy != Policy::LocalWins;
            let c = Conflict {
                column: None,
                base: row_json(base),
                local: row_json(local),
                remote: row_json(remote),
                kept: side(take_remote),
            };
            let merged = if take_remote {
                remote.cloned()
            } else {
                local.cloned()
            };
            (merged, vec![c])
        }
    }
}

fn record_conflict(l: &Local, st: &SyncTable, seq: u64, key: &[Value], c: &Conflict) -> Result<()> {
    let pk = serde_json::Value::Array(key.iter().map(value_json).collect()).to_string();
    l.db.run(
        "INSERT INTO pdb_conflicts(seq, tbl, pk, col, base_value, local_value, remote_value, kept, policy, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &[
            Value::Integer(seq as i64),
            Value::text(&st.name),
            Value::text(&pk),
            c.column.as_deref().map(Value::text).unwrap_or(Value::Null),
            c.base.clone(),
            c.local.clone(),
            c.remote.clone(),
            Value::text(c.kept),
            Value::text(l.policy.name()),
            Value::Integer(now_ms()),
        ],
    )
}
