//! Pushing: sending the outbox commit to the witness and checking the
//! certificate that answers it. What a refusal means for sync is decided
//! by its class (`sync`).

use crate::client::WitnessApi;
use crate::error::{Error, Result};
use crate::pending::Outbox;
use crate::state::Local;
use pdb_protocol::wire::{b64, BaseRef, CommitRequest, Policy as WirePolicy};
use pdb_protocol::{hex, now_ms, sha256, Value};

/// The size of the request that carries a commit, as sent.
pub fn request_bytes(o: &Outbox) -> u64 {
    o.changeset.len().div_ceil(3) as u64 * 4 + 1024
}

/// Sends the outbox commit and verifies the certificate that answers it:
/// the commit's sequence number, accepted now or before (a replay). A
/// refusal is returned as the witness gave it.
pub fn send(l: &Local, w: &dyn WitnessApi, o: &Outbox) -> Result<u64> {
    l.db.run(
        "UPDATE pdb_outbox SET attempts = attempts + 1 WHERE id = ?1",
        &[Value::Integer(o.id)],
    )?;
    let req = CommitRequest {
        base: BaseRef {
            seq: o.base_seq,
            hash: hex(&o.base_hash),
        },
        // The schema it was sealed on: a migration pulled since does not
        // change the bytes sent (a retry must replay).
        schema_version: o.schema.as_ref().map_or(l.schema.version, |s| s.0),
        schema_hash: o
            .schema
            .as_ref()
            .map_or_else(|| hex(&l.schema_hash), |s| s.1.clone()),
        idempotency_key: o.key.clone(),
        changeset: b64(&o.changeset),
        policy: WirePolicy::RebaseIfClean,
        client_time: Some(now_ms() as i64),
    };
    let resp = w.commit(&req)?;
    let rec = resp
        .certificate
        .signed
        .to_signed()
        .ok_or_else(|| Error::invalid("the witness sent a malformed certificate"))?
        .commit(&l.key)
        .map_err(|e| Error::untrusted(format!("the witness's certificate was rejected ({e})")))?;
    // Sealed on an older schema version, it was carried to the group's
    // (the witness certifies the translated changeset, which the pull
    // checks against the certificate like any other).
    let translated = rec.schema_version != req.schema_version;
    if (rec.changeset_digest != sha256(&o.changeset) && !translated)
        || rec.idempotency_key != o.key
        || rec.group != l.group
    {
        return Err(Error::invalid(
            "the witness certified something other than this commit",
        ));
    }
    Ok(rec.seq)
}
