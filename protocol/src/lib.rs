//! PersonalDB's protocol: everything both the extension and the witness
//! must agree on, with no I/O. See docs/protocol.md for the byte layouts.

pub mod changeset;
mod hash;
pub mod keys;
pub mod migration;
pub mod records;
pub mod schema;
pub mod sql;
pub mod sqltext;
pub mod state_root;
pub mod value;
pub mod varint;
pub mod wire;

pub use changeset::{Change, Changeset, Invalid, Op, TableChanges};
pub use hash::sha256;
pub use keys::KeyChain;
pub use migration::{Migration, SchemaOp};
pub use records::{
    genesis_hash, CommitRecord, Entry, HeadRecord, MigrationRecord, Rotation, RotationRecord,
    Signed, SnapshotRecord, Verifier,
};
pub use schema::{Catalog, Column, Index, IndexColumn, Schema, Table};
pub use sql::{quote_ident, RowSql};
pub use state_root::StateRoot;
pub use value::Value;

/// Malformed bytes, with where decoding stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

impl std::error::Error for DecodeError {}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A 32-byte hash from lowercase hex.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

/// Milliseconds since the Unix epoch by the local clock (0 before 1970).
/// The one clock reading both sides use for the times they record; a
/// signed time is the witness's, a client's is never trusted.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
