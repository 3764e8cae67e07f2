//! The write path: validating one commit, applying it to the replica,
//! certifying it and appending it to the log. Runs on the group's writer
//! thread inside a savepoint of the current batch transaction; any error
//! rolls that savepoint back, so a rejected commit changes nothing.

use crate::apply;
use crate::error::ApiError;
use crate::group::GroupInfo;
use crate::read::{self, HeadState};
use ed25519_dalek::SigningKey;
use pdb_protocol::records::Signed;
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::{CommitResponse, Policy};
use pdb_protocol::{genesis_hash, sha256, Changeset, CommitRecord, Invalid, Value};
use rusqlite::{params, Connection, OptionalExtension};

/// What every commit of one batch is checked and maintained against:
/// loaded once per batch, inside its transaction.
pub struct Batch {
    /// Write rules by lower-cased table.
    pub rules: std::collections::HashMap<String, String>,
    pub projections: Vec<crate::projection::Projection>,
}

impl Batch {
    pub fn load(conn: &Connection, info: &GroupInfo) -> rusqlite::Result<Batch> {
        Ok(Batch {
            rules: crate::access::load_rules(conn, info)?,
            projections: crate::projection::load_all(conn, info)?,
        })
    }
}

pub struct CommitInput {
    pub author: String,
    pub base_seq: u64,
    pub base_hash: [u8; 32],
    pub schema_version: u32,
    pub schema_hash: [u8; 32],
    pub idempotency_key: String,
    pub changeset: Vec<u8>,
    pub policy: Policy,
    pub client_time: Option<i64>,
}

fn invalid(e: Invalid) -> ApiError {
    ApiError::InvalidChangeset {
        table: e.table,
        key: e.key,
        message: e.message,
    }
}

fn stale(info: &GroupInfo, key: &SigningKey, head: &HeadState, message: String) -> ApiError {
    ApiError::StaleHead {
        head: Box::new(read::sign_head(
            key,
            &info.id,
            info.schema.version,
            &info.schema_hash,
            head,
        )),
        message,
    }
}

fn db(context: &'static str) -> impl Fn(rusqlite::Error) -> ApiError {
    move |e| ApiError::internal(context, e)
}

/// Validates and applies one commit in the order DESIGN.md fixes:
/// schema, idempotency, head, then the changeset itself.
pub fn process(
    conn: &Connection,
    info: &GroupInfo,
    key: &SigningKey,
    head: &mut HeadState,
    input: &CommitInput,
    batch: &Batch,
) -> Result<CommitResponse, ApiError> {
    if input.schema_version != info.schema.version || input.schema_hash != info.schema_hash {
        return Err(ApiError::SchemaMismatch {
            expected: info.schema_json(),
        });
    }

    let digest = sha256(&input.changeset);
    if let Some((certificate, certified)) = read::by_idempotency_key(conn, &input.idempotency_key)?
    {
        if certified == digest {
            return Ok(CommitResponse {
                replay: true,
                certificate,
            });
        }
        return Err(ApiError::IdempotencyConflict(format!(
            "idempotency key {:?} was already used for a different changeset (commit {})",
            input.idempotency_key, certificate.seq
        )));
    }

    let at_head = input.base_seq == head.seq && input.base_hash == head.hash;
    if !at_head {
        let known = input.base_seq < head.seq
            && if input.base_seq == 0 {
                input.base_hash == genesis_hash(&info.id, info.schema.version, &info.schema_hash)
            } else {
                read::head_hash_at(conn, input.base_seq)? == Some(input.base_hash)
            };
        if !known {
            return Err(stale(
                info,
                key,
                head,
                format!(
                    "base head {} is not on this group's chain; the head is {}",
                    input.base_seq, head.seq
                ),
            ));
        }
        if input.policy == Policy::Strict {
            return Err(stale(
                info,
                key,
                head,
                format!(
                    "{} commits were accepted after base {}; pull, rebase and resubmit",
                    head.seq - input.base_seq,
                    input.base_seq
                ),
            ));
        }
    }

    let cs = Changeset::decode(&input.changeset).map_err(|e| ApiError::InvalidChangeset {
        table: None,
        key: None,
        message: format!("malformed changeset: {e}"),
    })?;
    cs.validate(&info.schema).map_err(invalid)?;
    let touched = touched_keys(info, &cs);

    if !at_head {
        for (table, row_key) in &touched {
            if let Some(seq) = row_version(conn, table, row_key)? {
                if seq > input.base_seq {
                    return Err(stale(
                        info,
                        key,
                        head,
                        format!(
                            "table {table:?}: a row this commit touches was changed by commit {seq}, after base {}",
                            input.base_seq
                        ),
                    ));
                }
            }
        }
    }

    let mut root = head.root.clone();
    let who = apply::Writer {
        caller: &input.author,
        rules: &batch.rules,
    };
    apply::apply(conn, info, &cs, &mut root, &who)?;
    crate::projection::maintain(conn, &batch.projections, &touched)?;

    let seq = head.seq + 1;
    let record = CommitRecord {
        group: info.id.clone(),
        seq,
        prev_head: head.hash,
        changeset_digest: digest,
        state_root: root.digest(),
        schema_version: info.schema.version,
        schema_hash: info.schema_hash,
        author: input.author.clone(),
        idempotency_key: input.idempotency_key.clone(),
        time_ms: read::now_ms(),
    };
    let signed = Signed::sign(key, record.encode());
    let head_hash = sha256(&signed.bytes);
    conn.prepare_cached(
        "INSERT INTO pdb_log(seq, idem_key, head_hash, changeset, record, signature, client_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq as i64,
            input.idempotency_key,
            head_hash.to_vec(),
            input.changeset,
            signed.bytes,
            signed.signature.to_vec(),
            input.client_time
        ])
    })
    .map_err(db("appending to the log"))?;
    {
        let mut st = conn
            .prepare_cached(
                "INSERT OR REPLACE INTO pdb_row_version(tbl, pk, seq) VALUES (?1, ?2, ?3)",
            )
            .map_err(db("recording row versions"))?;
        for (table, row_key) in &touched {
            st.execute(params![table, encode_values(row_key), seq as i64])
                .map_err(db("recording row versions"))?;
        }
    }
    let certificate = read::certificate_json(signed.bytes, signed.signature.to_vec())?;
    *head = HeadState {
        seq,
        hash: head_hash,
        root,
        time_ms: record.time_ms,
    };
    Ok(CommitResponse {
        replay: false,
        certificate,
    })
}

/// (schema table name, primary key) of every row a validated changeset
/// touches; validation guarantees each appears once.
pub fn touched_keys(info: &GroupInfo, cs: &Changeset) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::with_capacity(cs.len());
    for t in &cs.tables {
        let name = info
            .table_sql(&t.name)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| t.name.clone());
        for c in &t.changes {
            out.push((name.clone(), c.pk(&t.pk_flags)));
        }
    }
    out
}

fn row_version(conn: &Connection, table: &str, key: &[Value]) -> Result<Option<u64>, ApiError> {
    conn.prepare_cached("SELECT seq FROM pdb_row_version WHERE tbl = ?1 AND pk = ?2")
        .and_then(|mut st| {
            st.query_row(params![table, encode_values(key)], |r| r.get::<_, i64>(0))
                .optional()
        })
        .map(|s| s.map(|s| s as u64))
        .map_err(db("reading row versions"))
}
