//! Starting from a snapshot: for an empty database, or one whose head is
//! older than the log the witness still keeps.
//!
//! The manifest is verified before any byte is used; the data is fetched
//! in byte ranges into a file next to the database (a broken download
//! resumes where it stopped), checked against the signed digest, then
//! installed chunk by chunk in one local transaction, in bounded memory.
//! The rows must give the signed state root. Local changes are never
//! dropped: with any pending, bootstrapping refuses.

use crate::capture;
use crate::client::WitnessApi;
use crate::db::transaction;
use crate::error::{Error, Result};
use crate::pending;
use crate::state::{self, Head, Local};
use pdb_protocol::records::chunks_digest;
use pdb_protocol::wire::SnapshotJson;
use pdb_protocol::{hex, Changeset, SnapshotRecord, StateRoot, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
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

/// Downloads, verifies and installs the snapshot `m`; returns its head.
pub fn bootstrap(l: &Local, w: &dyn WitnessApi, m: &SnapshotJson) -> Result<u64> {
    let rec = verify_manifest(l, m)?;
    if pending::outbox(&l.db)?.is_some() || pending::count(l)? > 0 {
        return Err(Error::invalid(
            "snapshot_required: this database must restart from a snapshot, but it holds local changes that are not synced; they were kept (nothing was discarded) — copy them out, or open a fresh database",
        ));
    }
    let file = with_suffix(&db_file(l)?, "-pdb-snapshot");
    let progress = progress_path(l)?;
    download(l, w, &rec, &file, &progress)?;
    install(l, &rec, &m.chunks, &file, &progress)?;
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

fn install(
    l: &Local,
    rec: &SnapshotRecord,
    chunks: &[u64],
    file: &std::path::Path,
    progress: &std::path::Path,
) -> Result<()> {
    let mut f = std::fs::File::open(file).map_err(io)?;
    transaction(&l.db, || {
        capture::paused(l, || {
            for t in &l.tables {
                l.db.exec(&format!("DELETE FROM {}", t.rows.table))?;
                l.db.exec(&format!("DELETE FROM {}", t.log.table))?;
            }
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
                    let st = l
                        .schema
                        .table_index(&t.name)
                        .and_then(|ti| l.tables.get(ti))
                        .ok_or_else(|| Error::invalid("snapshot names an unknown table"))?;
                    for c in &t.changes {
                        let row = c.row_after(None).ok_or_else(|| {
                            Error::invalid(format!("snapshot chunk {i}: a change is not an insert"))
                        })?;
                        let stored = st.insert(&l.sql, &row)?;
                        root.add_row(&st.name, &stored);
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
            l.set_head(&Head {
                seq: rec.seq,
                hash: rec.head_hash,
                root,
            })
        })
    })
}
