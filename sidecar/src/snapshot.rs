//! Snapshots: a group's content at one head, for devices that start empty
//! or fell behind the retained log.
//!
//! A snapshot file is a sequence of chunks, each a SQLite changeset of
//! INSERTs of at most `ROWS_PER_CHUNK` rows (a client installs it chunk by
//! chunk, in bounded memory). It is made from one read transaction (a WAL
//! snapshot), so commits go on while it is written. The manifest records
//! head, state root, size, digest and chunk offsets, signed by the witness.
//! Files: `DATA/snapshots/<group>/<seq>.snap` and `<seq>.manifest.json`.

use crate::error::ApiError;
use crate::group::Group;
use crate::store::log;
use ed25519_dalek::SigningKey;
use pdb_protocol::records::{chunks_digest, Signed, SnapshotRecord};
use pdb_protocol::wire::SnapshotJson;
use pdb_protocol::{hex, now_ms, Change, Changeset, Op, StateRoot, TableChanges};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const ROWS_PER_CHUNK: usize = 4096;
/// Largest byte range one data request returns.
pub const MAX_RANGE: u64 = 8 * 1024 * 1024;
/// Snapshots kept per group (the newest ones).
const KEEP: usize = 2;

pub fn dir(data_dir: &Path, group: &str) -> PathBuf {
    data_dir.join("snapshots").join(group)
}

/// The snapshot file of the head at `seq`.
pub fn data_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.snap"))
}

pub fn manifest_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.manifest.json"))
}

/// Sequence numbers of the snapshots on disk, newest first.
pub fn list(dir: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".manifest.json"))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    seqs
}

pub fn manifest(dir: &Path, seq: u64) -> Result<Option<SnapshotJson>, ApiError> {
    match std::fs::read(manifest_path(dir, seq)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ApiError::internal("reading a snapshot manifest", e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::internal("reading a snapshot manifest", e)),
    }
}

/// The oldest snapshot kept whose head is at or after `seq`.
pub fn first_from(dir: &Path, seq: u64) -> Option<u64> {
    list(dir).into_iter().filter(|s| *s >= seq).min()
}

pub fn latest(dir: &Path) -> Result<Option<SnapshotJson>, ApiError> {
    match list(dir).first() {
        Some(seq) => manifest(dir, *seq),
        None => Ok(None),
    }
}

/// Why writing a snapshot stopped while scanning rows.
enum Failure {
    Sql(rusqlite::Error),
    Io(std::io::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// Writes a snapshot of the group's current head (blocking; a read
/// transaction, so commits continue meanwhile). Returns the existing one
/// when the head has not moved since.
pub fn create(dir: &Path, g: &Group, key: &SigningKey) -> Result<SnapshotJson, ApiError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ApiError::internal("creating the snapshot directory", e))?;
    remove_leftovers(dir);
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let written = g.read("making a snapshot", |conn| {
        let head = log::head(conn).map_err(|e| ApiError::internal("reading the head", e))?;
        if let Some(m) = manifest(dir, head.seq)? {
            return Ok(Err(m));
        }
        let info = g.info_at(conn, &head)?;
        let write = |e: std::io::Error| ApiError::internal("writing a snapshot", e);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(write)?);
        let mut hasher = Sha256::new();
        let (mut size, mut rows, mut offsets) = (0u64, 0u64, Vec::new());
        let mut root = StateRoot::empty();
        for (ti, t) in info.tables.iter().enumerate() {
            let pk_flags = info.schema.tables[ti].pk_flags();
            let mut chunk = Vec::with_capacity(ROWS_PER_CHUNK);
            let mut flush = |chunk: &mut Vec<Change>| -> std::io::Result<()> {
                rows += chunk.len() as u64;
                let bytes = Changeset {
                    tables: vec![TableChanges {
                        name: t.name.clone(),
                        pk_flags: pk_flags.clone(),
                        changes: std::mem::take(chunk),
                    }],
                }
                .encode();
                offsets.push(size);
                hasher.update(&bytes);
                size += bytes.len() as u64;
                file.write_all(&bytes)
            };
            t.scan(conn, |row| -> Result<(), Failure> {
                root.add_row(&t.name, &row);
                chunk.push(Change {
                    op: Op::Insert,
                    indirect: false,
                    old: vec![],
                    new: row.into_iter().map(Some).collect(),
                });
                if chunk.len() == ROWS_PER_CHUNK {
                    flush(&mut chunk)?;
                }
                Ok(())
            })
            .map_err(|e| match e {
                Failure::Io(e) => write(e),
                Failure::Sql(e) => ApiError::internal("scanning a table", e),
            })?;
            if !chunk.is_empty() {
                flush(&mut chunk).map_err(write)?;
            }
        }
        if root != head.root {
            return Err(ApiError::internal(
                "making a snapshot",
                "the replica's content does not match its head's state root",
            ));
        }
        let f = file.into_inner().map_err(|e| write(e.into_error()))?;
        f.sync_all().map_err(write)?;
        Ok(Ok((
            info,
            head,
            size,
            rows,
            offsets,
            <[u8; 32]>::from(hasher.finalize()),
        )))
    })?;
    let (info, head, size, rows, offsets, digest) = match written {
        Err(existing) => return Ok(existing),
        Ok(w) => w,
    };
    let rec = SnapshotRecord {
        group: info.id.clone(),
        seq: head.seq,
        head_hash: head.hash,
        state_root: head.root.digest(),
        schema_version: head.schema_version,
        schema_hash: head.schema_hash,
        size,
        digest,
        rows,
        chunks_digest: chunks_digest(&offsets),
        time_ms: now_ms(),
    };
    let signed = Signed::sign(key, rec.encode());
    let json = SnapshotJson {
        group: rec.group.clone(),
        seq: rec.seq,
        head_hash: hex(&rec.head_hash),
        state_root: hex(&rec.state_root),
        size,
        digest: hex(&digest),
        rows,
        chunks: offsets,
        time_ms: rec.time_ms,
        signed: (&signed).into(),
    };
    std::fs::rename(&tmp, data_path(dir, head.seq))
        .map_err(|e| ApiError::internal("storing a snapshot", e))?;
    let mtmp = dir.join(format!(".{}.manifest.tmp", std::process::id()));
    std::fs::write(&mtmp, serde_json::to_vec(&json).unwrap_or_default())
        .and_then(|_| std::fs::File::open(&mtmp).and_then(|f| f.sync_all()))
        .and_then(|_| std::fs::rename(&mtmp, manifest_path(dir, head.seq)))
        .and_then(|_| std::fs::File::open(dir).and_then(|d| d.sync_all()))
        .map_err(|e| ApiError::internal("storing a snapshot manifest", e))?;
    for old in list(dir).into_iter().skip(KEEP) {
        let _ = std::fs::remove_file(manifest_path(dir, old));
        let _ = std::fs::remove_file(data_path(dir, old));
    }
    tracing::info!(group = %info.id, seq = head.seq, size, rows, "snapshot made");
    Ok(json)
}

/// Removes what an earlier process left half-written here (it was killed
/// while making a snapshot): temporary files of other process ids. Only
/// the witness holding the data directory writes snapshots, one at a time
/// per group, and its own temporary names carry its process id.
fn remove_leftovers(dir: &Path) {
    let mine = format!(".{}.", std::process::id());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') && name.ends_with(".tmp") && !name.starts_with(&mine) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed a snapshot left half-written")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a snapshot left half-written")
                }
            }
        }
    }
}

/// Reads `[start, end]` (inclusive, clamped to the file and `MAX_RANGE`)
/// of a snapshot's data: the bytes and the range actually returned.
pub fn read_range(
    dir: &Path,
    seq: u64,
    start: u64,
    end: Option<u64>,
) -> Result<(Vec<u8>, u64, u64, u64), ApiError> {
    let path = data_path(dir, seq);
    let mut f = std::fs::File::open(&path)
        .map_err(|_| ApiError::NotFound(format!("no snapshot at {seq}")))?;
    let size = f
        .metadata()
        .map_err(|e| ApiError::internal("reading a snapshot", e))?
        .len();
    if start >= size {
        return Err(ApiError::RangeNotSatisfiable(size));
    }
    let last = end
        .unwrap_or(size - 1)
        .min(size - 1)
        .min(start + MAX_RANGE - 1);
    if last < start {
        return Err(ApiError::RangeNotSatisfiable(size));
    }
    let mut buf = vec![0u8; (last - start + 1) as usize];
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| ApiError::internal("reading a snapshot", e))?;
    Ok((buf, start, last, size))
}
