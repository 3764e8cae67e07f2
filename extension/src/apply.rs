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
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::value_json;
use pdb_protocol::{sha256, Change, Changeset, Op, StateRoot, Value};

type Row = Vec<Value>;

/// The pending rows of every table, by (table index, encoded key): the
/// base entry's pdb_seq and the base row (None if the row did not exist
/// at the verified head). Built once per page, kept in step with the log.
pub type PendingMap = std::collections::HashMap<(usize, Vec<u8>), (i64, Option<Row>)>;

/// Compacts every base log and loads the pending rows.
pub fn load_pending(l: &Local) -> Result<PendingMap> {
    let mut map = PendingMap::new();
    for (i, t) in l.tables.iter().enumerate() {
        l.db.run(&t.compact_base, &[])?;
        for p in crate::seal::pending_rows(l, t)? {
            map.insert((i, encode_values(&p.key)), (p.seq, p.base));
        }
    }
    Ok(map)
}

/// Verifies a log entry against the pinned key and the current head, then
/// applies it; returns the conflicts met. Call inside a transaction with
/// capture off.
pub fn apply_entry(
    l: &Local,
    pending: &mut PendingMap,
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
        let ti = l
            .schema
            .table_index(&t.name)
            .ok_or_else(|| fail("unknown table"))?;
        let st = &l.tables[ti];
        for c in &t.changes {
            conflicts +=
                apply_change(l, pending, ti, st, c, own, seq, &mut root).map_err(|e| fail(&e.0))?;
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

#[allow(clippy::too_many_arguments)]
fn apply_change(
    l: &Local,
    pending_map: &mut PendingMap,
    ti: usize,
    st: &SyncTable,
    c: &Change,
    own: bool,
    seq: u64,
    root: &mut StateRoot,
) -> Result<usize> {
    let key = c.pk(&st.pk_flags);
    let map_key = (ti, encode_values(&key));
    let pending = pending_map.get(&map_key).cloned();
    // A row nobody changed here is the server's row: an insert of it needs
    // no lookup (if it exists, the INSERT's key constraint says so).
    let local = if c.op == Op::Insert && pending.is_none() {
        None
    } else {
        l.sql.row(&st.select_row, &key)?
    };
    let old_server: Option<Row> = match &pending {
        Some((_, base)) => base.clone(),
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
    let entry = pending.as_ref().map(|(s, _)| *s).unwrap_or(0);
    l.sql.run(&st.delete_base, &[Value::Integer(entry)])?;
    if own && local == new_server {
        // Our own commit, and the row has not changed since: the server now
        // holds exactly the local row (as read), and nothing is pending.
        if let Some(r) = &local {
            root.add_row(&st.name, r);
        }
        pending_map.remove(&map_key);
        return Ok(0);
    }
    let (new_entry, stored_base) = write_base(l, st, &key, new_server.as_ref())?;
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
        l.sql.run(&st.delete_base, &[Value::Integer(new_entry)])?;
        pending_map.remove(&map_key);
    } else {
        pending_map.insert(map_key, (new_entry, stored_base));
    }
    for cf in &conflicts {
        record_conflict(l, st, seq, &key, cf)?;
    }
    Ok(conflicts.len())
}

/// Inserts a row that is not there yet; returns it as stored.
pub fn insert_row(l: &Local, st: &SyncTable, row: &[Value]) -> Result<Row> {
    let key = st.key_of(row);
    write_row(l, st, &key, None, Some(&row.to_vec()))?.ok_or_else(|| {
        Error(format!(
            "table {:?}: an inserted row cannot be read back",
            st.name
        ))
    })
}

/// Moves the row from `current` to `target` and returns it as stored: read
/// back, because column affinity may have changed a value (and some SQLite
/// versions give REAL columns' integral values as integers via RETURNING).
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
            l.sql.run(&st.delete_row, key)?;
            Ok(None)
        }
        (None, Some(t)) => {
            l.sql.run(&st.insert_row, t)?;
            if st.keeps(t.iter().cloned().enumerate()) {
                return Ok(Some(t.clone()));
            }
            l.sql.row(&st.select_row, key)
        }
        (Some(c), Some(t)) => {
            let changed: Vec<usize> = (0..t.len()).filter(|i| c.get(*i) != t.get(*i)).collect();
            if changed.is_empty() {
                return Ok(Some(c.clone()));
            }
            let mut params: Vec<Value> = changed.iter().map(|i| t[*i].clone()).collect();
            params.extend(key.iter().cloned());
            l.sql.run(&st.update_sql(&changed), &params)?;
            if st.keeps(changed.iter().map(|i| (*i, t[*i].clone()))) {
                return Ok(Some(t.clone()));
            }
            l.sql.row(&st.select_row, key)
        }
    }
}

/// Logs the server's new value as a pending row's base; returns the
/// entry's pdb_seq and the row as stored (same column affinities).
fn write_base(
    l: &Local,
    st: &SyncTable,
    key: &[Value],
    row: Option<&Row>,
) -> Result<(i64, Option<Row>)> {
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
    l.sql.run(&st.insert_base, &params)?;
    let stored = l
        .sql
        .row(&st.last_base, &[])?
        .ok_or_else(|| Error("a logged base row cannot be read back".into()))?;
    let entry = as_i64(&stored[0]).unwrap_or(0);
    Ok((entry, row.is_some().then(|| stored[1..].to_vec())))
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
