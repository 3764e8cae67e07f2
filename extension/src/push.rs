//! Pushing: sending the outbox commit to the witness and checking the
//! certificate that answers it. What a refusal means for sync is decided
//! by its class (`sync`).

use crate::client::WitnessApi;
use crate::error::{Error, Result};
use crate::pending::Outbox;
use crate::state::Local;
use pdb_protocol::wire::{b64, BaseRef, CommitRequest, Policy as WirePolicy};
use pdb_protocol::{hex, now_ms, sha256, CommitRecord, HeadRecord, Signed, Value};

/// The size of the request that carries a commit, as sent.
pub fn request_bytes(o: &Outbox) -> u64 {
    o.changeset.len().div_ceil(3) as u64 * 4 + 1024
}

/// Marks the outbox commit as sent (before it is: from then on it may
/// have landed, so it is only ever resent byte for byte).
pub fn mark_sent(l: &Local, o: &Outbox) -> Result<()> {
    l.db.run(
        "UPDATE pdb_outbox SET attempts = attempts + 1 WHERE id = ?1",
        &[Value::Integer(o.id)],
    )?;
    Ok(())
}

/// What the witness certified for the outbox commit: the record, its
/// signed bytes, and the signed head when the answer says the group's head
/// is this commit.
pub struct Accepted {
    pub rec: CommitRecord,
    pub cert: Signed,
    pub head: Option<HeadRecord>,
}

impl Accepted {
    /// Whether the witness certified exactly the bytes sent (not a
    /// translation of them to a later schema).
    pub fn as_sent(&self, o: &Outbox) -> bool {
        self.rec.changeset_digest == sha256(&o.changeset)
    }
}

/// Sends the outbox commit and verifies the certificate that answers it
/// (accepted now or before: a replay), and the head that may come with
/// it. A refusal is returned as the witness gave it.
pub fn send(l: &Local, w: &dyn WitnessApi, o: &Outbox) -> Result<Accepted> {
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
    let cert = resp
        .certificate
        .signed
        .to_signed()
        .ok_or_else(|| Error::invalid("the witness sent a malformed certificate"))?;
    let rec = cert
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
    // The head, when it is this commit: its record is the certificate's
    // fields at the head's time, under the witness's signature.
    let head = match resp.head.as_ref().and_then(|h| h.record(&cert, &rec)) {
        Some(signed) => Some(signed.head(&l.key).map_err(|e| {
            Error::untrusted(format!("the witness's signed head was rejected ({e})"))
        })?),
        None => None,
    };
    Ok(Accepted { rec, cert, head })
}
