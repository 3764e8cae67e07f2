//! The records the witness signs: commit certificates and heads, plus the
//! unsigned genesis record that anchors each group's hash chain.
//!
//! Every record starts with a purpose tag and a format version, so a
//! signature over one kind can never be taken for another. Byte layout:
//!
//! ```text
//! record := u8 tag_len, tag, u8 format, fields
//! str    := u16 big-endian length, UTF-8 bytes
//! u32/u64 big-endian; hashes are 32 raw bytes
//! ```
//!
//! docs/protocol.md lists the fields of each record in order, and
//! `tests/vectors.rs` pins their bytes.

use crate::hash::sha256;
use crate::DecodeError;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

pub const COMMIT_TAG: &str = "personaldb/commit-certificate";
pub const HEAD_TAG: &str = "personaldb/head";
pub const GENESIS_TAG: &str = "personaldb/genesis";
pub const SNAPSHOT_TAG: &str = "personaldb/snapshot-manifest";
pub const ROTATION_TAG: &str = "personaldb/key-rotation";
pub const MIGRATION_TAG: &str = "personaldb/migration";
pub const FORMAT: u8 = 1;

/// What the witness certifies about one accepted commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub group: String,
    pub seq: u64,
    pub prev_head: [u8; 32],
    /// SHA-256 of the changeset bytes.
    pub changeset_digest: [u8; 32],
    /// State root after the commit.
    pub state_root: [u8; 32],
    pub schema_version: u32,
    pub schema_hash: [u8; 32],
    pub author: String,
    pub idempotency_key: String,
    /// Witness clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// What the witness certifies about a migration: the log entry at `seq`
/// that takes the group from `from_version` to `schema_version` (the
/// schema whose hash is `schema_hash`), with the migration's canonical
/// bytes (`migration::Migration::encode`) digested, the state root after
/// it, and the oldest version whose commits are still accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRecord {
    pub group: String,
    pub seq: u64,
    pub prev_head: [u8; 32],
    /// SHA-256 of the migration's canonical bytes.
    pub migration_digest: [u8; 32],
    pub state_root: [u8; 32],
    pub from_version: u32,
    pub schema_version: u32,
    pub schema_hash: [u8; 32],
    pub accepts_from: u32,
    pub author: String,
    pub time_ms: u64,
}

/// One entry of a group's log, as its certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Commit(CommitRecord),
    Migration(MigrationRecord),
}

impl Entry {
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Commit(c) => c.seq,
            Entry::Migration(m) => m.seq,
        }
    }
    pub fn prev_head(&self) -> [u8; 32] {
        match self {
            Entry::Commit(c) => c.prev_head,
            Entry::Migration(m) => m.prev_head,
        }
    }
    pub fn state_root(&self) -> [u8; 32] {
        match self {
            Entry::Commit(c) => c.state_root,
            Entry::Migration(m) => m.state_root,
        }
    }
    pub fn group(&self) -> &str {
        match self {
            Entry::Commit(c) => &c.group,
            Entry::Migration(m) => &m.group,
        }
    }
    pub fn time_ms(&self) -> u64 {
        match self {
            Entry::Commit(c) => c.time_ms,
            Entry::Migration(m) => m.time_ms,
        }
    }
    /// The schema version in force after the entry.
    pub fn schema_version(&self) -> u32 {
        match self {
            Entry::Commit(c) => c.schema_version,
            Entry::Migration(m) => m.schema_version,
        }
    }
    pub fn schema_hash(&self) -> [u8; 32] {
        match self {
            Entry::Commit(c) => c.schema_hash,
            Entry::Migration(m) => m.schema_hash,
        }
    }
    /// The head hash after the entry (the hash of its record's bytes).
    pub fn head_hash(&self) -> [u8; 32] {
        match self {
            Entry::Commit(c) => c.head_hash(),
            Entry::Migration(m) => m.head_hash(),
        }
    }
}

/// A group's head at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadRecord {
    pub group: String,
    pub seq: u64,
    pub head_hash: [u8; 32],
    pub state_root: [u8; 32],
    pub schema_version: u32,
    pub schema_hash: [u8; 32],
    pub time_ms: u64,
}

/// What the witness signs about a snapshot: the group's content at one
/// head, as a file of `size` bytes with SHA-256 `digest`, made of chunks
/// starting at the offsets whose digest is `chunks_digest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub group: String,
    pub seq: u64,
    pub head_hash: [u8; 32],
    pub state_root: [u8; 32],
    pub schema_version: u32,
    pub schema_hash: [u8; 32],
    pub size: u64,
    pub digest: [u8; 32],
    pub rows: u64,
    pub chunks_digest: [u8; 32],
    pub time_ms: u64,
}

/// Digest of a snapshot's chunk offsets (each as u64 big-endian).
pub fn chunks_digest(offsets: &[u64]) -> [u8; 32] {
    let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_be_bytes()).collect();
    sha256(&bytes)
}

impl SnapshotRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(SNAPSHOT_TAG);
        w.str(&self.group);
        w.u64(self.seq);
        w.hash(&self.head_hash);
        w.hash(&self.state_root);
        w.u32(self.schema_version);
        w.hash(&self.schema_hash);
        w.u64(self.size);
        w.hash(&self.digest);
        w.u64(self.rows);
        w.hash(&self.chunks_digest);
        w.u64(self.time_ms);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotRecord, DecodeError> {
        let mut r = RecordReader::new(bytes, SNAPSHOT_TAG)?;
        let rec = SnapshotRecord {
            group: r.str()?,
            seq: r.u64()?,
            head_hash: r.hash()?,
            state_root: r.hash()?,
            schema_version: r.u32()?,
            schema_hash: r.hash()?,
            size: r.u64()?,
            digest: r.hash()?,
            rows: r.u64()?,
            chunks_digest: r.hash()?,
            time_ms: r.u64()?,
        };
        r.finish()?;
        Ok(rec)
    }
}

/// A record's bytes and the witness's signature over exactly those bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub bytes: Vec<u8>,
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    BadSignature,
    Malformed(DecodeError),
    /// Signed by a key of the chain, but for a time outside that key's
    /// period (a retired key cannot sign for later times).
    OutsideKeyPeriod,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::BadSignature => f.write_str("signature does not verify"),
            VerifyError::Malformed(e) => write!(f, "malformed record: {e}"),
            VerifyError::OutsideKeyPeriod => {
                f.write_str("signed by a witness key outside the period it was in force")
            }
        }
    }
}

impl Signed {
    pub fn sign(key: &SigningKey, bytes: Vec<u8>) -> Signed {
        let signature = key.sign(&bytes).to_bytes();
        Signed { bytes, signature }
    }

    /// Strict Ed25519 verification (rejects small-order keys and
    /// non-canonical signatures).
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), VerifyError> {
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.bytes, &sig)
            .map_err(|_| VerifyError::BadSignature)
    }

    /// A commit certificate, verified by `keys`: the signature first, then
    /// (for a key chain) that the record's time is in the signing key's
    /// period.
    pub fn commit(&self, keys: &impl Verifier) -> Result<CommitRecord, VerifyError> {
        let period = keys.verify_signed(self)?;
        let rec = CommitRecord::decode(&self.bytes).map_err(VerifyError::Malformed)?;
        in_period(rec.time_ms, period)?;
        Ok(rec)
    }

    /// A migration's certificate, verified as `commit` verifies one.
    pub fn migration(&self, keys: &impl Verifier) -> Result<MigrationRecord, VerifyError> {
        let period = keys.verify_signed(self)?;
        let rec = MigrationRecord::decode(&self.bytes).map_err(VerifyError::Malformed)?;
        in_period(rec.time_ms, period)?;
        Ok(rec)
    }

    /// A log entry's certificate, whichever kind its tag says it is.
    pub fn entry(&self, keys: &impl Verifier) -> Result<Entry, VerifyError> {
        if is_migration(&self.bytes) {
            self.migration(keys).map(Entry::Migration)
        } else {
            self.commit(keys).map(Entry::Commit)
        }
    }

    pub fn head(&self, keys: &impl Verifier) -> Result<HeadRecord, VerifyError> {
        let period = keys.verify_signed(self)?;
        let rec = HeadRecord::decode(&self.bytes).map_err(VerifyError::Malformed)?;
        in_period(rec.time_ms, period)?;
        Ok(rec)
    }

    pub fn snapshot(&self, keys: &impl Verifier) -> Result<SnapshotRecord, VerifyError> {
        let period = keys.verify_signed(self)?;
        let rec = SnapshotRecord::decode(&self.bytes).map_err(VerifyError::Malformed)?;
        in_period(rec.time_ms, period)?;
        Ok(rec)
    }
}

/// The time a verifying key is in force: `[from, until)`.
pub type Period = (u64, u64);

fn in_period(time_ms: u64, period: Option<Period>) -> Result<(), VerifyError> {
    match period {
        Some((from, until)) if time_ms < from || time_ms >= until => {
            Err(VerifyError::OutsideKeyPeriod)
        }
        _ => Ok(()),
    }
}

/// What checks a signed record's signature: one key (in force always), or
/// a chain of keys each in force for a period.
pub trait Verifier {
    /// Verifies the signature; the period of the key that verified it
    /// (`None`: any time).
    fn verify_signed(&self, signed: &Signed) -> Result<Option<Period>, VerifyError>;
}

impl Verifier for VerifyingKey {
    fn verify_signed(&self, signed: &Signed) -> Result<Option<Period>, VerifyError> {
        signed.verify(self).map(|()| None)
    }
}

/// A change of the witness's signing key: the `index`-th rotation, from
/// `prev_key` to `new_key`, in force from `start_ms`. Both keys sign it:
/// the old one vouches for the new (a device that pinned the old key
/// follows it), the new one for the old (a device that pinned the new key
/// can still check what the old one signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationRecord {
    pub index: u32,
    pub prev_key: [u8; 32],
    pub new_key: [u8; 32],
    pub start_ms: u64,
}

impl RotationRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(ROTATION_TAG);
        w.u32(self.index);
        w.hash(&self.prev_key);
        w.hash(&self.new_key);
        w.u64(self.start_ms);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<RotationRecord, DecodeError> {
        let mut r = RecordReader::new(bytes, ROTATION_TAG)?;
        let rec = RotationRecord {
            index: r.u32()?,
            prev_key: r.hash()?,
            new_key: r.hash()?,
            start_ms: r.u64()?,
        };
        r.finish()?;
        Ok(rec)
    }
}

/// A rotation record with both signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub bytes: Vec<u8>,
    /// By the previous key.
    pub old_signature: [u8; 64],
    /// By the new key.
    pub new_signature: [u8; 64],
}

impl Rotation {
    /// Makes the rotation from `old` to `new`, signed by both.
    pub fn sign(index: u32, old: &SigningKey, new: &SigningKey, start_ms: u64) -> Rotation {
        let bytes = RotationRecord {
            index,
            prev_key: old.verifying_key().to_bytes(),
            new_key: new.verifying_key().to_bytes(),
            start_ms,
        }
        .encode();
        Rotation {
            old_signature: old.sign(&bytes).to_bytes(),
            new_signature: new.sign(&bytes).to_bytes(),
            bytes,
        }
    }

    /// The record, once both named keys' signatures verify.
    pub fn verify(&self) -> Result<RotationRecord, VerifyError> {
        let rec = RotationRecord::decode(&self.bytes).map_err(VerifyError::Malformed)?;
        for (key, sig) in [
            (&rec.prev_key, &self.old_signature),
            (&rec.new_key, &self.new_signature),
        ] {
            let key = VerifyingKey::from_bytes(key).map_err(|_| VerifyError::BadSignature)?;
            Signed {
                bytes: self.bytes.clone(),
                signature: *sig,
            }
            .verify(&key)?;
        }
        Ok(rec)
    }
}

impl CommitRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(COMMIT_TAG);
        w.str(&self.group);
        w.u64(self.seq);
        w.hash(&self.prev_head);
        w.hash(&self.changeset_digest);
        w.hash(&self.state_root);
        w.u32(self.schema_version);
        w.hash(&self.schema_hash);
        w.str(&self.author);
        w.str(&self.idempotency_key);
        w.u64(self.time_ms);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<CommitRecord, DecodeError> {
        let mut r = RecordReader::new(bytes, COMMIT_TAG)?;
        let rec = CommitRecord {
            group: r.str()?,
            seq: r.u64()?,
            prev_head: r.hash()?,
            changeset_digest: r.hash()?,
            state_root: r.hash()?,
            schema_version: r.u32()?,
            schema_hash: r.hash()?,
            author: r.str()?,
            idempotency_key: r.str()?,
            time_ms: r.u64()?,
        };
        r.finish()?;
        Ok(rec)
    }

    /// The head hash after this commit: SHA-256 of the record bytes, which
    /// bind the previous head, so the log is a hash chain.
    pub fn head_hash(&self) -> [u8; 32] {
        sha256(&self.encode())
    }
}

impl MigrationRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(MIGRATION_TAG);
        w.str(&self.group);
        w.u64(self.seq);
        w.hash(&self.prev_head);
        w.hash(&self.migration_digest);
        w.hash(&self.state_root);
        w.u32(self.from_version);
        w.u32(self.schema_version);
        w.hash(&self.schema_hash);
        w.u32(self.accepts_from);
        w.str(&self.author);
        w.u64(self.time_ms);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<MigrationRecord, DecodeError> {
        let mut r = RecordReader::new(bytes, MIGRATION_TAG)?;
        let rec = MigrationRecord {
            group: r.str()?,
            seq: r.u64()?,
            prev_head: r.hash()?,
            migration_digest: r.hash()?,
            state_root: r.hash()?,
            from_version: r.u32()?,
            schema_version: r.u32()?,
            schema_hash: r.hash()?,
            accepts_from: r.u32()?,
            author: r.str()?,
            time_ms: r.u64()?,
        };
        r.finish()?;
        Ok(rec)
    }

    /// The head hash after this migration, as for a commit.
    pub fn head_hash(&self) -> [u8; 32] {
        sha256(&self.encode())
    }
}

/// Whether a record's bytes are a migration's (by their tag).
pub fn is_migration(bytes: &[u8]) -> bool {
    record_tag(bytes) == Some(MIGRATION_TAG.as_bytes())
}

/// The purpose tag a record starts with, if it has one.
fn record_tag(bytes: &[u8]) -> Option<&[u8]> {
    let n = *bytes.first()? as usize;
    bytes.get(1..1 + n)
}

impl HeadRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(HEAD_TAG);
        w.str(&self.group);
        w.u64(self.seq);
        w.hash(&self.head_hash);
        w.hash(&self.state_root);
        w.u32(self.schema_version);
        w.hash(&self.schema_hash);
        w.u64(self.time_ms);
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Result<HeadRecord, DecodeError> {
        let mut r = RecordReader::new(bytes, HEAD_TAG)?;
        let rec = HeadRecord {
            group: r.str()?,
            seq: r.u64()?,
            head_hash: r.hash()?,
            state_root: r.hash()?,
            schema_version: r.u32()?,
            schema_hash: r.hash()?,
            time_ms: r.u64()?,
        };
        r.finish()?;
        Ok(rec)
    }
}

/// Head hash of sequence 0: binds the group id and its schema, so chains of
/// different groups (or schemas) never share a prefix.
pub fn genesis_hash(group: &str, schema_version: u32, schema_hash: &[u8; 32]) -> [u8; 32] {
    let mut w = Writer::new(GENESIS_TAG);
    w.str(group);
    w.u32(schema_version);
    w.hash(schema_hash);
    w.hash(&crate::StateRoot::empty().digest());
    sha256(&w.0)
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(tag: &str) -> Writer {
        let mut v = Vec::with_capacity(160);
        v.push(tag.len() as u8);
        v.extend_from_slice(tag.as_bytes());
        v.push(FORMAT);
        Writer(v)
    }
    fn str(&mut self, s: &str) {
        // Callers bound every string far below 64 KiB; clamp defensively.
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.0.extend_from_slice(&(b.len() as u16).to_be_bytes());
        self.0.extend_from_slice(b);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn hash(&mut self, h: &[u8; 32]) {
        self.0.extend_from_slice(h);
    }
}

struct RecordReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> RecordReader<'a> {
    fn new(bytes: &'a [u8], tag: &str) -> Result<Self, DecodeError> {
        let mut r = RecordReader { bytes, pos: 0 };
        let len = r.take(1)?[0] as usize;
        if r.take(len)? != tag.as_bytes() {
            return Err(r.err(&format!("not a {tag} record")));
        }
        if r.take(1)?[0] != FORMAT {
            return Err(r.err("unsupported record format version"));
        }
        Ok(r)
    }
    fn err(&self, m: &str) -> DecodeError {
        DecodeError {
            offset: self.pos,
            message: m.to_string(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let s = self
            .bytes
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.err("record is truncated"))?;
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn hash(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        let n = u16::from_be_bytes(a) as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.bytes.len() {
            return Err(self.err("trailing bytes after the record"));
        }
        Ok(())
    }
}
