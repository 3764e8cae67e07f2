//! A head the witness signed, checked against the pinned key and the
//! group before anything it states is used (a page of commits, the group
//! info, a page of a projection).

use crate::error::{Error, Result};
use ed25519_dalek::VerifyingKey;
use pdb_protocol::wire::HeadJson;
use pdb_protocol::HeadRecord;

pub fn verify_head(key: &VerifyingKey, group: &str, h: &HeadJson) -> Result<HeadRecord> {
    let signed = h
        .signed
        .to_signed()
        .ok_or_else(|| Error::invalid("the witness sent a malformed signed head"))?;
    let rec = signed
        .head(key)
        .map_err(|e| Error::invalid(format!("the witness's signed head was rejected ({e})")))?;
    if rec.group != group {
        return Err(Error::invalid("the signed head is for another group"));
    }
    Ok(rec)
}
