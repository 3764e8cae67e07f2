//! Starting from a snapshot: for an empty database, or one whose head is
//! older than the log the witness still keeps.
//!
//! The manifest is verified before any byte is used; the data is fetched
//! in byte ranges into a file next to the database (a broken download
//! resumes where it stopped), checked against the signed digest, then
//! installed chunk by chunk in one local transaction, in bounded memory.
//! The rows must give the signed state root. Local changes are never
//! dropped: with any pending, bootstrapping refuses.

use crate::client::{CallError, Client};
use crate::db::{as_text, Error, Result};
use crate::local::{self, transaction, Head, Local};
use pdb_protocol::records::chunks_digest;
use pdb_protocol::wire::SnapshotJson;
use pdb_protocol::{hex, Changeset, SnapshotRecord, StateRoot, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Bytes asked for per range request.
const RANGE: u64 = 1024 * 1024;

fn db_file(l: &Local) -> Result<PathBuf> {
    let rows = l.db.rows(
        "SELECT file FROM pragma_database_list WHERE name = 'main'",
        &[],
    )?;
    let file = rows
        .first()
        .and_then(|r| as_text(&r[0]))
        .unwrap_or_default();
    Ok(if file.is_empty() {
        std::env::temp_dir().join(format!("pdb-{}-{}", l.group, std::process::id()))
    } else {
        PathBuf::from(file)
    })
}

fn with_suffix(p: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Where a long download or install reports progress, readable by any
/// connection (the install's own transaction is invisible to them).
pub fn progress_path(l: &Local) -> Result<PathBuf> {
    Ok(with_suffix(&db_file(l)?, "-pdb-progress.json"))
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
pub fn newer_snapshot(l: &Local, client: &Client, seq: u64) -> Result<Option<SnapshotJson>> {
    match client.get(&format!("/v1/groups/{}/snapshots/latest", l.group)) {
        Ok(v) => {
            let m: SnapshotJson = serde_json::from_value(v)
                .map_err(|_| Error("the witness sent a malformed snapshot manifest".into()))?;
            Ok((m.seq > seq).then_some(m))
        }
        Err(CallError::Rejected { code, .. }) if code == "not_found" => Ok(None),
        Err(e) => Err(Error(e.to_string())),
    }
}

fn verify_manifest(l: &Local, m: &SnapshotJson) -> Result<SnapshotRecord> {
    let rec = m
        .signed
        .to_signed()
        .ok_or_else(|| Error("malformed snapshot manifest".into()))?
        .snapshot(&l.key)
        .map_err(|e| Error(format!("the snapshot manifest was rejected ({e})")))?;
    let ok = rec.group == l.group
        && rec.schema_hash == l.schema_hash
        && rec.schema_version == l.schema.version
        && chunks_digest(&m.chunks) == rec.chunks_digest
        && m.chunks.first().copied().unwrap_or(0) == 0
        && m.chunks.windows(2).all(|w| w[0] < w[1])
        && m.chunks.last().is_none_or(|last| *last < rec.size);
    if !ok {
        return Err(Error(
            "the snapshot manifest does not match its signed record or this group".into(),
        ));
    }
    Ok(rec)
}

/// Downloads, verifies and installs the snapshot `m`; returns its head.
pub fn bootstrap(l: &Local, client: &Client, m: &SnapshotJson) -> Result<u64> {
    let rec = verify_manifest(l, m)?;
    if crate::seal::outbox(l)?.is_some() || crate::seal::pending_rows_total(l)? > 0 {
        return Err(Error(
            "snapshot_required: this database must restart from a snapshot, but it holds local changes that are not synced; they were kept (nothing was discarded) — copy them out, or open a fresh database".into(),
        ));
    }
    let file = with_suffix(&db_file(l)?, "-pdb-snapshot");
    let progress = progress_path(l)?;
    download(l, client, &rec, &file, &progress)?;
    install(l, &rec, &m.chunks, &file, &progress)?;
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&progress);
    l.db.run("DELETE FROM pdb_state WHERE k = 'snapshot_download'", &[])?;
    Ok(rec.seq)
}

fn download(
    l: &Local,
    client: &Client,
    rec: &SnapshotRecord,
    file: &std::path::Path,
    progress: &std::path::Path,
) -> Result<()> {
    let marker = hex(&rec.digest);
    let resuming = local::get_text(&l.db, "snapshot_download")?.as_deref() == Some(marker.as_str());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| Error(format!("opening {}: {e}", file.display())))?;
    if !resuming {
        f.set_len(0).map_err(|e| Error(e.to_string()))?;
        local::set(&l.db, "snapshot_download", Value::text(&marker))?;
    }
    let mut have = f.metadata().map_err(|e| Error(e.to_string()))?.len();
    if have > rec.size {
        f.set_len(0).map_err(|e| Error(e.to_string()))?;
        have = 0;
    }
    while have < rec.size {
        report(progress, "download", have, rec.size, 0, rec.rows);
        let end = (have + RANGE).min(rec.size) - 1;
        let bytes = client
            .get_range(
                &format!("/v1/groups/{}/snapshots/{}/data", l.group, rec.seq),
                have,
                end,
            )
            .map_err(|e| {
                Error(format!(
                    "download stopped at {have} of {} bytes ({e}); call again to resume",
                    rec.size
                ))
            })?;
        if bytes.is_empty() || have + bytes.len() as u64 > rec.size {
            return Err(Error("the witness sent a wrong byte range".into()));
        }
        f.write_all(&bytes).map_err(|e| Error(e.to_string()))?;
        have += bytes.len() as u64;
    }
    f.sync_all().map_err(|e| Error(e.to_string()))?;
    report(progress, "verify", have, rec.size, 0, rec.rows);
    let mut hasher = Sha256::new();
    let mut r = std::fs::File::open(file).map_err(|e| Error(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if <[u8; 32]>::from(hasher.finalize()) != rec.digest {
        // Start over next time: these bytes are not the signed ones.
        let _ = std::fs::remove_file(file);
        l.db.run("DELETE FROM pdb_state WHERE k = 'snapshot_download'", &[])?;
        return Err(Error(
            "the snapshot's bytes do not match its signed digest; nothing was installed".into(),
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
    let mut f = std::fs::File::open(file).map_err(|e| Error(e.to_string()))?;
    transaction(&l.db, || {
        l.without_capture(|| {
            for t in &l.tables {
                l.db.exec(&format!("DELETE FROM {}", crate::db::ident(&t.name)))?;
                l.db.exec(&format!("DELETE FROM {}", t.base))?;
            }
            let mut root = StateRoot::empty();
            let mut rows = 0u64;
            for (i, start) in chunks.iter().enumerate() {
                let end = chunks.get(i + 1).copied().unwrap_or(rec.size);
                let mut bytes = vec![0u8; (end - start) as usize];
                f.seek(SeekFrom::Start(*start))
                    .and_then(|_| f.read_exact(&mut bytes))
                    .map_err(|e| Error(e.to_string()))?;
                let cs = Changeset::decode(&bytes)
                    .map_err(|e| Error(format!("snapshot chunk {i}: {e}")))?;
                cs.validate(&l.schema)
                    .map_err(|e| Error(format!("snapshot chunk {i}: {e}")))?;
                for t in &cs.tables {
                    let ti = l
                        .schema
                        .table_index(&t.name)
                        .ok_or_else(|| Error("snapshot names an unknown table".into()))?;
                    let st = &l.tables[ti];
                    for c in &t.changes {
                        let row: Vec<Value> = c
                            .new
                            .iter()
                            .map(|v| v.clone().unwrap_or(Value::Null))
                            .collect();
                        let stored = crate::apply::insert_row(l, st, &row)?;
                        root.add_row(&st.name, &stored);
                        rows += 1;
                    }
                }
                report(progress, "install", rec.size, rec.size, rows, rec.rows);
            }
            if root.digest() != rec.state_root || rows != rec.rows {
                return Err(Error(
                    "the snapshot's rows do not give its signed state root; nothing was installed"
                        .into(),
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
