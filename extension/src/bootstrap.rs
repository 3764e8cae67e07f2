//! Starting from a snapshot: for an empty database, or one whose head is
//! older than the log the witness still keeps.
//!
//! The manifest is verified before any byte is used; the data is fetched
//! in byte ranges into a file next to the database (a broken download
//! resumes where it stopped), checked against the signed digest, then
//! installed chunk by chunk in one local transaction. The rows must give
//! the signed state root. Local changes are never dropped: pending rows
//! are re-based on the snapshot by three-way merge (their base, the
//! snapshot's value, their local value), as a pull would; the outbox
//! commit is sent first, so a commit the witness already accepted is
//! recognised by its certificate and never applied twice.

use crate::capture;
use crate::client::WitnessApi;
use crate::db::transaction;
use crate::error::{Class, Error, Result};
use crate::merge;
use crate::pending::{self, Outbox};
use crate::rebase::Rebase;
use crate::state::{self, Head, Local};
use crate::{push, seal};
use pdb_protocol::records::chunks_digest;
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::SnapshotJson;
use pdb_protocol::{hex, Changeset, SnapshotRecord, StateRoot, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Bytes asked for per range request.
const RANGE: u64 = 1024 * 1024;

fn db_file(l: &Local) -> Result<PathBuf> {
    Ok(match l.db.file()? {
        Some(f) => PathBuf::from(f),
        None => std::env::temp_dir().join(format!("pdb-{}-{}", l.group, std::process::id())),
    })
}

fn io(e: std::io::Error) -> Error {
    Error::invalid(e.to_string())
}

fn with_suffix(p: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Where a long download or install reports progress, readable by any
/// connection (the install's own transaction is invisible to them).
fn progress_path(l: &Local) -> Result<PathBuf> {
    Ok(with_suffix(&db_file(l)?, "-pdb-progress.json"))
}

/// The progress of a download or install under way, if any.
pub fn progress(l: &Local) -> Option<Json> {
    let text = std::fs::read_to_string(progress_path(l).ok()?).ok()?;
    serde_json::from_str(&text).ok()
}

fn report(path: &std::path::Path, phase: &str, done: u64, total: u64, rows: u64, total_rows: u64) {
    let v = serde_json::json!({
        "phase": phase, "bytes": done, "total_bytes": total, "rows": rows, "total_rows": total_rows,
    });
    let tmp = with_suffix(path, ".tmp");
    if std::fs::write(&tmp, v.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Whether the witness has a snapshot newer than `seq` (its manifest).
pub fn newer_snapshot(w: &dyn WitnessApi, seq: u64) -> Result<Option<SnapshotJson>> {
    Ok(w.latest_snapshot()?.filter(|m| m.seq > seq))
}

fn verify_manifest(l: &Local, m: &SnapshotJson) -> Result<SnapshotRecord> {
    let rec = m
        .signed
        .to_signed()
        .ok_or_else(|| Error::invalid("malformed snapshot manifest"))?
        .snapshot(&l.key)
        .map_err(|e| Error::untrusted(format!("the snapshot manifest was rejected ({e})")))?;
    let ok = rec.group == l.group
        && rec.schema_hash == l.schema_hash
        && rec.schema_version == l.schema.version
        && chunks_digest(&m.chunks) == rec.chunks_digest
        && m.chunks.first().copied().unwrap_or(0) == 0
        && m.chunks.windows(2).all(|w| w[0] < w[1])
        && m.chunks.last().is_none_or(|last| *last < rec.size);
    if !ok {
        return Err(Error::invalid(
            "the snapshot manifest does not match its signed record or this group",
        ));
    }
    Ok(rec)
}

/// The log before `after` is gone (`snapshot_required`): settles the
/// outbox commit's fate with the witness, then restarts from the newest
/// snapshot with pending rows re-based on it. Returns the snapshot's head.
pub fn catch_up(l: &Local, w: &dyn WitnessApi, after: u64) -> Result<u64> {
    let m = newer_snapshot(w, after)?.ok_or_else(|| {
        Error::invalid("snapshot_required, but the witness offers no newer snapshot")
    })?;
    // A commit sent before may have been accepted: resent, it replays with
    // its certificate (kept even where the log is pruned), or is refused.
    let own = match pending::outbox(&l.db)? {
        Some(o) if o.attempts > 0 => {
            match push::mark_sent(l, &o).and_then(|()| push::send(l, w, &o)) {
                Ok(a) => Some((o, a.rec.seq)),
                Err(e) if matches!(e.class(), Some(Class::Rebase | Class::FixRows)) => {
                    transaction(&l.db, || seal::unseal(l, &o))?;
                    None
                }
                Err(e) => return Err(e),
            }
        }
        Some(o) => {
            transaction(&l.db, || seal::unseal(l, &o))?;
            None
        }
        None => None,
    };
    bootstrap(l, w, &m, own)
}

/// Downloads, verifies and installs the snapshot `m`; returns its head.
/// `own`: the outbox commit and the sequence the witness accepted it at.
pub fn bootstrap(
    l: &Local,
    w: &dyn WitnessApi,
    m: &SnapshotJson,
    own: Option<(Outbox, u64)>,
) -> Result<u64> {
    // A snapshot made after migrations this database has not had: they
    // are applied first (pending rows carried across), then the snapshot.
    let version = m
        .signed
        .to_signed()
        .and_then(|s| s.snapshot(&l.key).ok())
        .map(|r| r.schema_version);
    if let Some(v) = version.filter(|v| *v > l.schema.version) {
        let migrated = crate::migrate::catch_up_schema(l, w, v)?;
        return bootstrap(&migrated, w, m, own);
    }
    let rec = verify_manifest(l, m)?;
    let file = with_suffix(&db_file(l)?, "-pdb-snapshot");
    let progress = progress_path(l)?;
    download(l, w, &rec, &file, &progress)?;
    // Our commit, accepted at or before the snapshot's head, is in it.
    let own = own.filter(|(_, seq)| *seq <= rec.seq).map(|(o, _)| o);
    install(l, &rec, &m.chunks, &file, &progress, own.as_ref())?;
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&progress);
    state::delete(&l.db, "snapshot_download")?;
    Ok(rec.seq)
}

fn download(
    l: &Local,
    w: &dyn WitnessApi,
    rec: &SnapshotRecord,
    file: &std::path::Path,
    progress: &std::path::Path,
) -> Result<()> {
    let marker = hex(&rec.digest);
    let resuming = state::get_text(&l.db, "snapshot_download")?.as_deref() == Some(marker.as_str());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| Error::invalid(format!("opening {}: {e}", file.display())))?;
    if !resuming {
        f.set_len(0).map_err(io)?;
        state::set(&l.db, "snapshot_download", Value::text(&marker))?;
    }
    let mut have = f.metadata().map_err(io)?.len();
    if have > rec.size {
        f.set_len(0).map_err(io)?;
        have = 0;
    }
    while have < rec.size {
        report(progress, "download", have, rec.size, 0, rec.rows);
        let end = (have + RANGE).min(rec.size) - 1;
        let bytes = w.snapshot_range(rec.seq, have, end).map_err(|e| {
            e.context(|m| {
                format!(
                    "download stopped at {have} of {} bytes ({m}); call again to resume",
                    rec.size
                )
            })
        })?;
        if bytes.is_empty() || have + bytes.len() as u64 > rec.size {
            return Err(Error::invalid("the witness sent a wrong byte range"));
        }
        f.write_all(&bytes).map_err(io)?;
        have += bytes.len() as u64;
    }
    f.sync_all().map_err(io)?;
    report(progress, "verify", have, rec.size, 0, rec.rows);
    let mut hasher = Sha256::new();
    let mut r = std::fs::File::open(file).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if <[u8; 32]>::from(hasher.finalize()) != rec.digest {
        // Start over next time: these bytes are not the signed ones.
        let _ = std::fs::remove_file(file);
        state::delete(&l.db, "snapshot_download")?;
        return Err(Error::invalid(
            "the snapshot's bytes do not match its signed digest; nothing was installed",
        ));
    }
    Ok(())
}

/// The bases of pending rows that our own commit `o` (now in the
/// snapshot) changed become the values it committed.
fn with_own(l: &Local, rebase: &mut Rebase, o: &Outbox) -> Result<()> {
    let cs = pdb_protocol::Changeset::decode(&o.changeset)
        .map_err(|_| Error::invalid("the outbox commit does not decode"))?;
    for t in &cs.tables {
        let Some(ti) = l.schema.table_index(&t.name) else {
            continue;
        };
        for c in &t.changes {
            let k = (ti, encode_values(&c.pk(&t.pk_flags)));
            if let Some(e) = rebase.pending.get_mut(&k) {
                if let Ok(after) = merge::apply(c, e.base.as_deref()) {
                    e.base = after;
                }
            }
        }
    }
    l.db.run(
        "DELETE FROM pdb_outbox WHERE id = ?1",
        &[pdb_protocol::Value::Integer(o.id)],
    )
}

fn install(
    l: &Local,
    rec: &SnapshotRecord,
    chunks: &[u64],
    file: &std::path::Path,
    progress: &std::path::Path,
    own: Option<&Outbox>,
) -> Result<()> {
    let mut f = std::fs::File::open(file).map_err(io)?;
    transaction(&l.db, || {
        capture::paused(l, || {
            // Local work first, before the tables are emptied: each pending
            // row's base and local value.
            let mut rebase = Rebase::new(l)?;
            if let Some(o) = own {
                with_own(l, &mut rebase, o)?;
            }
            let mut locals = Vec::new();
            for ((ti, pk), e) in &rebase.pending {
                let Some(st) = l.tables.get(*ti) else {
                    continue;
                };
                let key = match pdb_protocol::value::decode_values(pk) {
                    Some(k) => k,
                    None => continue,
                };
                locals.push((
                    *ti,
                    pk.clone(),
                    key.clone(),
                    st.select(&l.sql, &key)?,
                    e.clone(),
                ));
            }
            // In key order, so a re-base goes the same way every time.
            locals.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            for t in &l.tables {
                l.db.exec(&format!("DELETE FROM {}", t.rows.table))?;
                l.db.exec(&format!("DELETE FROM {}", t.log.table))?;
            }
            // The snapshot's rows; those of pending keys are kept aside to
            // be merged with the local ones.
            let mut snap: HashMap<(usize, Vec<u8>), merge::Row> = HashMap::new();
            let mut root = StateRoot::empty();
            let mut rows = 0u64;
            for (i, start) in chunks.iter().enumerate() {
                let end = chunks.get(i + 1).copied().unwrap_or(rec.size);
                let mut bytes = vec![0u8; (end - start) as usize];
                f.seek(SeekFrom::Start(*start))
                    .and_then(|_| f.read_exact(&mut bytes))
                    .map_err(io)?;
                let cs = Changeset::decode(&bytes)
                    .map_err(|e| Error::invalid(format!("snapshot chunk {i}: {e}")))?;
                cs.validate(&l.schema)
                    .map_err(|e| Error::invalid(format!("snapshot chunk {i}: {e}")))?;
                for t in &cs.tables {
                    let (ti, st) = l
                        .schema
                        .table_index(&t.name)
                        .and_then(|ti| l.tables.get(ti).map(|st| (ti, st)))
                        .ok_or_else(|| Error::invalid("snapshot names an unknown table"))?;
                    for c in &t.changes {
                        let row = c.row_after(None).ok_or_else(|| {
                            Error::invalid(format!("snapshot chunk {i}: a change is not an insert"))
                        })?;
                        let k = (ti, encode_values(&st.key_of(&row)));
                        if rebase.pending.contains_key(&k) {
                            root.add_row(&st.name, &row);
                            snap.insert(k, row);
                        } else {
                            let stored = st.insert(&l.sql, &row)?;
                            root.add_row(&st.name, &stored);
                        }
                        rows += 1;
                    }
                }
                report(progress, "install", rec.size, rec.size, rows, rec.rows);
            }
            if root.digest() != rec.state_root || rows != rec.rows {
                return Err(Error::invalid(
                    "the snapshot's rows do not give its signed state root; nothing was installed",
                ));
            }
            // Pending rows on top, merged as a pull merges them.
            for (ti, pk, key, local, mut entry) in locals {
                // Its log entries went with the emptied log (and their
                // pdb_seq numbers are being reused by new ones).
                entry.seqs.clear();
                let server = snap.remove(&(ti, pk));
                rebase.settle(ti, &key, None, local, Some(entry), server, false, rec.seq)?;
            }
            l.set_head(&Head {
                seq: rec.seq,
                hash: rec.head_hash,
                root,
            })
        })
    })
}
