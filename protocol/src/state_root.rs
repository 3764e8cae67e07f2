//! The state root: a digest of every row of every synced table that both
//! sides maintain incrementally.
//!
//! It is LtHash16 (Bellare–Micciancio's lattice multiset hash in the form
//! Lewi et al. describe): each row maps to a vector of 1024 16-bit lanes by
//! a BLAKE3 extendable output, and the state is the lane-wise sum mod 2^16
//! over all rows. Adding and removing a row are one vector add/subtract, so
//! an update costs two row hashes whatever the table size, and the sum is
//! order-independent. Unlike a 256-bit sum of hashes it is not open to
//! generalised-birthday collisions. The 32-byte root that gets signed is a
//! SHA-256 of the lanes.

use crate::hash::Hasher;
use crate::value::Value;
use crate::varint;

pub const LANES: usize = 1024;
pub const STATE_BYTES: usize = LANES * 2;
const ROW_CONTEXT: &str = "PersonalDB state-root row v1";
const ROOT_TAG: &[u8] = b"personaldb/state-root";
const FORMAT: u8 = 1;

#[derive(Clone, PartialEq, Eq)]
pub struct StateRoot {
    lanes: Box<[u16; LANES]>,
}

impl std::fmt::Debug for StateRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateRoot({})", crate::hex(&self.digest()))
    }
}

impl Default for StateRoot {
    fn default() -> Self {
        Self::empty()
    }
}

/// The bytes a row hashes from: table name, column count, then every
/// value in column order in the changeset value encoding.
pub fn row_bytes(table: &str, row: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + table.len() + row.len() * 9);
    varint::put(&mut out, table.len() as u64);
    out.extend_from_slice(table.as_bytes());
    varint::put(&mut out, row.len() as u64);
    for v in row {
        v.encode(&mut out);
    }
    out
}

fn row_lanes(table: &str, row: &[Value]) -> [u16; LANES] {
    let mut bytes = [0u8; STATE_BYTES];
    let mut h = blake3::Hasher::new_derive_key(ROW_CONTEXT);
    h.update(&row_bytes(table, row));
    h.finalize_xof().fill(&mut bytes);
    let mut lanes = [0u16; LANES];
    for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
        *lane = u16::from_le_bytes([pair[0], pair[1]]);
    }
    lanes
}

impl StateRoot {
    /// The root of a database with no rows.
    pub fn empty() -> StateRoot {
        StateRoot {
            lanes: Box::new([0; LANES]),
        }
    }

    pub fn add_row(&mut self, table: &str, row: &[Value]) {
        let r = row_lanes(table, row);
        for (a, b) in self.lanes.iter_mut().zip(r.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    pub fn remove_row(&mut self, table: &str, row: &[Value]) {
        let r = row_lanes(table, row);
        for (a, b) in self.lanes.iter_mut().zip(r.iter()) {
            *a = a.wrapping_sub(*b);
        }
    }

    /// Adds another multiset (union of row sets).
    pub fn add(&mut self, other: &StateRoot) {
        for (a, b) in self.lanes.iter_mut().zip(other.lanes.iter()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Removes another multiset.
    pub fn subtract(&mut self, other: &StateRoot) {
        for (a, b) in self.lanes.iter_mut().zip(other.lanes.iter()) {
            *a = a.wrapping_sub(*b);
        }
    }

    /// The 32-byte root that signed records carry.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Hasher::tagged(ROOT_TAG, FORMAT);
        h.bytes(&self.to_bytes());
        h.finish()
    }

    /// The full state (2048 bytes, lanes little-endian), for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lanes.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<StateRoot> {
        if bytes.len() != STATE_BYTES {
            return None;
        }
        let mut lanes = Box::new([0u16; LANES]);
        for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(StateRoot { lanes })
    }
}
