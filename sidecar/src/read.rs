//! The read path: heads and log pages, from reader connections that never
//! wait for the writer (WAL snapshots).

use crate::error::ApiError;
use ed25519_dalek::SigningKey;
use pdb_protocol::records::{HeadRecord, Signed};
use pdb_protocol::wire::{b64, CertificateJson, HeadJson, LogEntryJson};
use pdb_protocol::{hex, sha256, CommitRecord, StateRoot};
use rusqlite::{Connection, OptionalExtension};

/// Largest page a catch-up request may ask for, and the default.
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;

#[derive(Clone, Debug)]
pub struct HeadState {
    pub seq: u64,
    pub hash: [u8; 32],
    pub root: StateRoot,
    pub time_ms: u64,
}

pub fn head(conn: &Connection) -> rusqlite::Result<HeadState> {
    conn.query_row(
        "SELECT seq, head_hash, root, time_ms FROM pdb_head WHERE id = 1",
        [],
        |r| {
            let hash: Vec<u8> = r.get(1)?;
            let root: Vec<u8> = r.get(2)?;
            let bad = |what: &str| {
                rusqlite::Error::InvalidColumnType(0, what.to_string(), rusqlite::types::Type::Blob)
            };
            Ok(HeadState {
                seq: r.get::<_, i64>(0)? as u64,
                hash: hash.try_into().map_err(|_| bad("head_hash"))?,
                root: StateRoot::from_bytes(&root).ok_or_else(|| bad("root"))?,
                time_ms: r.get::<_, i64>(3)? as u64,
            })
        },
    )
}

/// Signs the head as of now.
pub fn sign_head(
    key: &SigningKey,
    group: &str,
    schema_version: u32,
    schema_hash: &[u8; 32],
    head: &HeadState,
) -> HeadJson {
    let rec = HeadRecord {
        group: group.to_string(),
        seq: head.seq,
        head_hash: head.hash,
        state_root: head.root.digest(),
        schema_version,
        schema_hash: *schema_hash,
        time_ms: now_ms(),
    };
    let signed = Signed::sign(key, rec.encode());
    HeadJson {
        group: rec.group,
        seq: rec.seq,
        head_hash: hex(&rec.head_hash),
        state_root: hex(&rec.state_root),
        schema_version,
        schema_hash: hex(schema_hash),
        time_ms: rec.time_ms,
        signed: (&signed).into(),
    }
}

pub fn certificate_json(record: Vec<u8>, signature: Vec<u8>) -> Result<CertificateJson, ApiError> {
    let rec = CommitRecord::decode(&record)
        .map_err(|e| ApiError::internal("decoding a stored certificate", e))?;
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| ApiError::internal("reading a stored signature", "wrong length"))?;
    let head_hash = sha256(&record);
    let signed = Signed {
        bytes: record,
        signature,
    };
    Ok(CertificateJson {
        seq: rec.seq,
        head_hash: hex(&head_hash),
        prev_head: hex(&rec.prev_head),
        state_root: hex(&rec.state_root),
        changeset_digest: hex(&rec.changeset_digest),
        author: rec.author,
        idempotency_key: rec.idempotency_key,
        time_ms: rec.time_ms,
        signed: (&signed).into(),
    })
}

/// The certificate of an accepted commit by its idempotency key, with the
/// digest of the changeset it certified.
pub fn by_idempotency_key(
    conn: &Connection,
    key: &str,
) -> Result<Option<(CertificateJson, [u8; 32])>, ApiError> {
    let row: Option<(Vec<u8>, Vec<u8>)> = conn
        .prepare_cached("SELECT record, signature FROM pdb_log WHERE idem_key = ?1")
        .and_then(|mut s| {
            s.query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| ApiError::internal("looking up an idempotency key", e))?;
    match row {
        None => Ok(None),
        Some((record, sig)) => {
            let digest = CommitRecord::decode(&record)
                .map_err(|e| ApiError::internal("decoding a stored certificate", e))?
                .changeset_digest;
            Ok(Some((certificate_json(record, sig)?, digest)))
        }
    }
}

/// Head hash after `seq` (`None` if the log has no such entry).
pub fn head_hash_at(conn: &Connection, seq: u64) -> Result<Option<[u8; 32]>, ApiError> {
    let h: Option<Vec<u8>> = conn
        .prepare_cached("SELECT head_hash FROM pdb_log WHERE seq = ?1")
        .and_then(|mut s| s.query_row([seq as i64], |r| r.get(0)).optional())
        .map_err(|e| ApiError::internal("reading the log", e))?;
    Ok(h.and_then(|h| h.try_into().ok()))
}

/// The last commit whose changeset was pruned (0 when none was).
pub fn pruned_through(conn: &Connection) -> Result<u64, ApiError> {
    conn.query_row(
        "SELECT v FROM pdb_meta WHERE k = 'pruned_through'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0).max(0) as u64)
    .map_err(|e| ApiError::internal("reading the retention point", e))
}

/// Commits with `seq > after`, at most `limit`, never past `upto`.
pub fn log_page(
    conn: &Connection,
    after: u64,
    limit: u32,
    upto: u64,
) -> Result<Vec<LogEntryJson>, ApiError> {
    let mut st = conn
        .prepare_cached(
            "SELECT seq, changeset, record, signature FROM pdb_log
              WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(|e| ApiError::internal("reading the log", e))?;
    let rows = st
        .query_map([after as i64, upto as i64, i64::from(limit)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .map_err(|e| ApiError::internal("reading the log", e))?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, cs, record, sig) = row.map_err(|e| ApiError::internal("reading the log", e))?;
        out.push(LogEntryJson {
            seq: seq as u64,
            changeset: b64(&cs),
            certificate: certificate_json(record, sig)?,
        });
    }
    Ok(out)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
