//! The log and the head row: reading heads, certificates and catch-up
//! pages, looking up idempotency keys, and pruning changesets.

use crate::error::ApiError;
use pdb_protocol::records::Entry;
use pdb_protocol::records::Signed;
use pdb_protocol::wire::{b64, CertificateJson, LogEntryJson};
use pdb_protocol::{hex, sha256, StateRoot};
use rusqlite::{Connection, OptionalExtension};

/// Largest page a catch-up request may ask for, and the default.
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;
/// The default byte bound of a catch-up page (`--max-page-bytes`).
pub const DEFAULT_PAGE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct HeadState {
    pub seq: u64,
    pub hash: [u8; 32],
    pub root: StateRoot,
    pub time_ms: u64,
    /// The schema in force at this head.
    pub schema_version: u32,
    pub schema_hash: [u8; 32],
}

pub fn head(conn: &Connection) -> rusqlite::Result<HeadState> {
    conn.query_row(
        "SELECT seq, head_hash, root, time_ms, schema_version, schema_hash FROM pdb_head WHERE id = 1",
        [],
        |r| {
            let hash: Vec<u8> = r.get(1)?;
            let root: Vec<u8> = r.get(2)?;
            let schema_hash: Vec<u8> = r.get(5)?;
            let bad = |what: &str| {
                rusqlite::Error::InvalidColumnType(0, what.to_string(), rusqlite::types::Type::Blob)
            };
            Ok(HeadState {
                seq: r.get::<_, i64>(0)? as u64,
                hash: hash.try_into().map_err(|_| bad("head_hash"))?,
                root: StateRoot::from_bytes(&root).ok_or_else(|| bad("root"))?,
                time_ms: r.get::<_, i64>(3)? as u64,
                schema_version: u32::try_from(r.get::<_, i64>(4)?)
                    .map_err(|_| bad("schema_version"))?,
                schema_hash: schema_hash.try_into().map_err(|_| bad("schema_hash"))?,
            })
        },
    )
}

/// Writes the head row (once per batch, and after a migration).
pub fn set_head(conn: &Connection, head: &HeadState) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE pdb_head SET seq = ?1, head_hash = ?2, root = ?3, time_ms = ?4,
                schema_version = ?5, schema_hash = ?6 WHERE id = 1",
    )?
    .execute(rusqlite::params![
        head.seq as i64,
        head.hash.to_vec(),
        head.root.to_bytes(),
        head.time_ms as i64,
        head.schema_version,
        head.schema_hash.to_vec()
    ])
    .map(|_| ())
}

/// A stored certificate as the API shows it. For a migration entry,
/// `changeset_digest` is the digest of the migration's bytes and
/// `idempotency_key` is empty.
pub fn certificate_json(record: Vec<u8>, signature: Vec<u8>) -> Result<CertificateJson, ApiError> {
    let bad = |e| ApiError::internal("decoding a stored certificate", e);
    let rec = if pdb_protocol::records::is_migration(&record) {
        Entry::Migration(pdb_protocol::MigrationRecord::decode(&record).map_err(bad)?)
    } else {
        Entry::Commit(pdb_protocol::CommitRecord::decode(&record).map_err(bad)?)
    };
    let (digest, author, idempotency_key) = match &rec {
        Entry::Commit(c) => (
            c.changeset_digest,
            c.author.clone(),
            c.idempotency_key.clone(),
        ),
        Entry::Migration(m) => (m.migration_digest, m.author.clone(), String::new()),
    };
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| ApiError::internal("reading a stored signature", "wrong length"))?;
    let head_hash = sha256(&record);
    let signed = Signed {
        bytes: record,
        signature,
    };
    Ok(CertificateJson {
        seq: rec.seq(),
        head_hash: hex(&head_hash),
        prev_head: hex(&rec.prev_head()),
        state_root: hex(&rec.state_root()),
        changeset_digest: hex(&digest),
        author,
        idempotency_key,
        time_ms: rec.time_ms(),
        signed: (&signed).into(),
    })
}

/// An accepted commit found by its idempotency key: its certificate, and
/// the digests a retry may match — of the changeset it certified, and (for
/// a commit translated from an older schema version) of the bytes sent.
pub struct Accepted {
    pub certificate: CertificateJson,
    pub digests: Vec<[u8; 32]>,
}

pub fn by_idempotency_key(conn: &Connection, key: &str) -> Result<Option<Accepted>, ApiError> {
    type Row = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT record, signature, submitted_digest FROM pdb_log WHERE idem_key = ?1",
        )
        .and_then(|mut s| {
            s.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(|e| ApiError::internal("looking up an idempotency key", e))?;
    match row {
        None => Ok(None),
        Some((record, sig, submitted)) => {
            let certificate = certificate_json(record, sig)?;
            let mut digests = Vec::new();
            if let Some(d) = pdb_protocol::unhex(&certificate.changeset_digest) {
                digests.extend(<[u8; 32]>::try_from(d).ok());
            }
            digests.extend(submitted.and_then(|d| <[u8; 32]>::try_from(d).ok()));
            Ok(Some(Accepted {
                certificate,
                digests,
            }))
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

/// How big a catch-up page may grow.
#[derive(Clone, Copy, Debug)]
pub struct PageBound {
    /// Most commits.
    pub commits: u32,
    /// The page stops once its changesets reach this many bytes; the first
    /// commit is always included, however large, so every commit arrives.
    pub bytes: u64,
}

/// Commits with `seq > after` within `bound`, never past `upto`. Rows are
/// read one at a time and reading stops at the bound, so the memory a page
/// takes is bounded by its bytes, not by how far behind the caller is.
pub fn log_page(
    conn: &Connection,
    after: u64,
    bound: PageBound,
    upto: u64,
) -> Result<Vec<LogEntryJson>, ApiError> {
    let mut st = conn
        .prepare_cached(
            "SELECT seq, changeset, record, signature, migration FROM pdb_log
              WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(|e| ApiError::internal("reading the log", e))?;
    let mut rows = st
        .query([after as i64, upto as i64, i64::from(bound.commits)])
        .map_err(|e| ApiError::internal("reading the log", e))?;
    let mut out = Vec::new();
    let mut bytes = 0u64;
    while bytes < bound.bytes {
        let Some(r) = rows
            .next()
            .map_err(|e| ApiError::internal("reading the log", e))?
        else {
            break;
        };
        let read = |e| ApiError::internal("reading the log", e);
        let seq = r.get::<_, i64>(0).map_err(read)?;
        let cs = r
            .get_ref(1)
            .map_err(read)?
            .as_blob()
            .map_err(|e| read(e.into()))?;
        bytes += cs.len() as u64;
        let changeset = b64(cs);
        let (record, sig, migration) = (
            r.get::<_, Vec<u8>>(2).map_err(read)?,
            r.get::<_, Vec<u8>>(3).map_err(read)?,
            r.get::<_, Option<Vec<u8>>>(4).map_err(read)?,
        );
        bytes += migration.as_ref().map_or(0, |m| m.len() as u64);
        out.push(LogEntryJson {
            seq: seq as u64,
            changeset,
            migration: migration.map(|m| b64(&m)),
            certificate: certificate_json(record, sig)?,
        });
    }
    Ok(out)
}

/// Most migrations one answer lists.
pub const MAX_MIGRATIONS: u32 = 1000;

/// The log entries of the migrations to versions after `after_version`,
/// oldest first: at most [`MAX_MIGRATIONS`] and about `max_bytes` of
/// migrations (at least one), with the version to ask after next when more
/// follow.
pub fn migrations(
    conn: &Connection,
    after_version: u32,
    max_bytes: u64,
) -> Result<(Vec<LogEntryJson>, Option<u32>), ApiError> {
    let read = |e| ApiError::internal("reading the migrations", e);
    let mut st = conn
        .prepare_cached(
            "SELECT l.seq, l.record, l.signature, l.migration, s.version
               FROM pdb_schemas s JOIN pdb_log l ON l.seq = s.seq
              WHERE s.version > ?1 AND s.seq > 0 ORDER BY s.version LIMIT ?2",
        )
        .map_err(read)?;
    let mut rows = st
        .query(rusqlite::params![after_version, MAX_MIGRATIONS + 1])
        .map_err(read)?;
    let (mut out, mut bytes, mut last) = (Vec::new(), 0u64, after_version);
    while let Some(r) = rows.next().map_err(read)? {
        let migration: Vec<u8> = r.get(3).map_err(read)?;
        if !out.is_empty()
            && (out.len() as u32 >= MAX_MIGRATIONS || bytes + migration.len() as u64 > max_bytes)
        {
            return Ok((out, Some(last)));
        }
        bytes += migration.len() as u64;
        last = r.get(4).map_err(read)?;
        out.push(LogEntryJson {
            seq: r.get::<_, i64>(0).map_err(read)? as u64,
            changeset: String::new(),
            migration: Some(b64(&migration)),
            certificate: certificate_json(r.get(1).map_err(read)?, r.get(2).map_err(read)?)?,
        });
    }
    Ok((out, None))
}

/// Drops the changesets of commits up to `through` (a snapshot's head) and
/// records the retention point; certificates stay, so the chain still
/// verifies and retries still replay. Call inside a write transaction.
pub fn prune(conn: &Connection, through: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE pdb_log SET changeset = x'' WHERE seq <= ?1 AND length(changeset) > 0",
        [through as i64],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO pdb_meta(k, v) VALUES ('pruned_through', max(?1, coalesce((SELECT v FROM pdb_meta WHERE k = 'pruned_through'), 0)))",
        [through as i64],
    )?;
    Ok(())
}
