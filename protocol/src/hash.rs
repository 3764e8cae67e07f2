//! SHA-256, and a tagged hasher over length-prefixed fields (u32 big-endian
//! lengths) for the digests that are not signed records — the schema hash
//! and the state root's digest — so no two different field lists hash
//! alike. Signed records have their own byte layout (`records.rs`).

use sha2::{Digest, Sha256};

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub struct Hasher(Sha256);

impl Hasher {
    /// Starts with the purpose tag and format version (domain separation).
    pub fn tagged(tag: &[u8], format: u8) -> Hasher {
        let mut h = Hasher(Sha256::new());
        h.bytes(tag);
        h.u8(format);
        h
    }
    pub fn u8(&mut self, v: u8) {
        self.0.update([v]);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.update(v.to_be_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.update(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}
