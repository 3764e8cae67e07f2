//! The write path: validating one commit, applying it to the replica,
//! certifying it and appending it to the log. Runs on the group's writer
//! thread inside a savepoint of the current batch transaction; any error
//! rolls that savepoint back, so a rejected commit changes nothing.

use super::apply;
use super::batch::Batch;
use crate::error::ApiError;
use crate::store::log::{self, HeadState};
use crate::store::{GroupInfo, SchemaVersion};
use ed25519_dalek::SigningKey;
use pdb_protocol::records::Signed;
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::{CommitResponse, Policy};
use pdb_protocol::{now_ms, sha256, Changeset, CommitRecord, Invalid, Migration, Schema, Value};
use rusqlite::{params, Connection, OptionalExtension};

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
        head: Box::new(info.sign_head(key, head)),
        message,
    }
}

/// Why a head a caller names is not in the group's history.
pub fn unknown_head(seq: u64, head: u64) -> String {
    format!(
        "head {seq} (with its hash) is not in this group's history, whose head is {head}: the witness \
         may have been restored from a backup taken before it, or your history forked; rebasing \
         cannot help (see docs/operations.md)"
    )
}

fn db(context: &'static str) -> impl Fn(rusqlite::Error) -> ApiError {
    move |e| ApiError::sqlite(context, e)
}

/// Most migrations a `schema_mismatch` answer lists.
const MISMATCH_MIGRATIONS: usize = 16;

/// The schema version a commit was sealed on, when it is an older one
/// the group still accepts (its commits are translated); `None` for the
/// version in force. Any other is `schema_mismatch`, with the migrations
/// a client needs to catch up.
fn sealed_on<'a>(info: &'a GroupInfo, input: &CommitInput) -> Result<Option<&'a Schema>, ApiError> {
    if input.schema_version == info.schema.version && input.schema_hash == info.schema_hash {
        return Ok(None);
    }
    let accepts_from = info.accepts_from();
    let old = info
        .version(input.schema_version)
        .filter(|v| v.hash == input.schema_hash);
    match old {
        Some(SchemaVersion {
            version,
            schema: Some(schema),
            ..
        }) if *version >= accepts_from && *version < info.schema.version => Ok(Some(schema)),
        _ => Err(ApiError::SchemaMismatch {
            expected: info.schema_json(),
            accepts_from,
            // The first few, without their DDL, so the answer stays small
            // however long the history: the client reads the migrations
            // themselves from GET .../migrations.
            migrations: info
                .since(input.schema_version)
                .iter()
                .take(MISMATCH_MIGRATIONS)
                .map(|v| pdb_protocol::wire::SchemaVersionJson {
                    ddl: String::new(),
                    ..v.json()
                })
                .collect(),
            message: match old {
                Some(_) => format!(
                    "the commit was sealed on schema version {}, which this group no longer accepts (it accepts versions {accepts_from} to {}): apply the migrations since, then seal it again",
                    input.schema_version, info.schema.version
                ),
                None => format!(
                    "the commit was made against a schema this group never had; the group is at version {}",
                    info.schema.version
                ),
            },
        }),
    }
}

/// Carries a changeset sealed on the older version `old` into the schema
/// in force: renamed columns follow, dropped ones go, added ones take
/// their defaults (`pdb_protocol::migration::translate`).
fn translate(
    conn: &Connection,
    info: &GroupInfo,
    old: &Schema,
    cs: &Changeset,
) -> Result<Changeset, ApiError> {
    let migrations: Vec<Migration> = info
        .since(old.version)
        .iter()
        .filter_map(|v| v.migration.clone())
        .collect();
    let out = pdb_protocol::migration::translate(
        cs,
        old,
        &migrations,
        &info.schema,
        &mut |d| pdb_protocol::migration::literal_value(d.as_deref()),
        &mut |table, key| match info.table_sql(table) {
            Some(t) => t.fetch(conn, key).map_err(|e| e.to_string()),
            None => Ok(None),
        },
    )
    .map_err(|u| ApiError::InvalidChangeset {
        table: Some(u.table),
        key: None,
        message: format!(
            "sealed on schema version {}, it cannot be carried to version {}: {}",
            old.version, info.schema.version, u.message
        ),
    })?;
    out.validate(&info.schema).map_err(invalid)?;
    Ok(out)
}

/// Validates and applies one commit in the order docs/witness.md gives:
/// idempotency (a retry replays, whatever has changed since), schema,
/// head, then the changeset itself.
pub fn process(
    conn: &Connection,
    info: &GroupInfo,
    key: &SigningKey,
    head: &mut HeadState,
    input: &CommitInput,
    batch: &Batch<'_>,
) -> Result<CommitResponse, ApiError> {
    let digest = sha256(&input.changeset);
    if let Some(done) = log::by_idempotency_key(conn, &input.idempotency_key)? {
        let certificate = done.certificate;
        if done.digests.contains(&digest) {
            return Ok(CommitResponse {
                replay: true,
                certificate,
                head: None,
            });
        }
        return Err(ApiError::IdempotencyConflict(format!(
            "idempotency key {:?} was already used for a different changeset (commit {})",
            input.idempotency_key, certificate.seq
        )));
    }
    let old = sealed_on(info, input)?;

    let at_head = input.base_seq == head.seq && input.base_hash == head.hash;
    if !at_head {
        let known = input.base_seq < head.seq
            && if input.base_seq == 0 {
                input.base_hash == info.genesis()
            } else {
                log::head_hash_at(conn, input.base_seq)? == Some(input.base_hash)
            };
        if !known {
            return Err(ApiError::UnknownHead {
                head: Box::new(info.sign_head(key, head)),
                message: unknown_head(input.base_seq, head.seq),
            });
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
    let (cs, translated) = match old {
        None => {
            cs.validate(&info.schema).map_err(invalid)?;
            (cs, None)
        }
        Some(old) => {
            cs.validate(old).map_err(invalid)?;
            let out = translate(conn, info, old, &cs)?;
            let bytes = out.encode();
            (out, Some(bytes))
        }
    };
    let touched = info.touched_keys(&cs);

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
    let seq = head.seq + 1;
    {
        let scope = batch.budget.scope(batch.limits);
        let who = apply::Writer {
            caller: &input.author,
            rules: &batch.rules,
            scope: &scope,
        };
        apply::apply(conn, info, &cs, &mut root, &who)?;
    }
    super::projections::maintain(conn, batch, seq, &touched)?;

    let stored = translated.as_deref().unwrap_or(&input.changeset);
    let record = CommitRecord {
        group: info.id.clone(),
        seq,
        prev_head: head.hash,
        changeset_digest: sha256(stored),
        state_root: root.digest(),
        schema_version: info.schema.version,
        schema_hash: info.schema_hash,
        author: input.author.clone(),
        idempotency_key: input.idempotency_key.clone(),
        // Times along the chain never go backwards, whatever the clock
        // does: a clock stepped back signs the time it already signed.
        time_ms: now_ms().max(head.time_ms),
    };
    let signed = Signed::sign(key, record.encode());
    let head_hash = sha256(&signed.bytes);
    conn.prepare_cached(
        "INSERT INTO pdb_log(seq, idem_key, head_hash, changeset, record, signature, client_time, submitted_digest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq as i64,
            input.idempotency_key,
            head_hash.to_vec(),
            stored,
            signed.bytes,
            signed.signature.to_vec(),
            input.client_time,
            translated.is_some().then(|| digest.to_vec())
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
    let certificate = log::certificate_json(signed.bytes, signed.signature.to_vec())?;
    *head = HeadState {
        seq,
        hash: head_hash,
        root,
        time_ms: record.time_ms,
        schema_version: info.schema.version,
        schema_hash: info.schema_hash,
    };
    Ok(CommitResponse {
        replay: false,
        certificate,
        head: None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Limits;
    use crate::store;
    use pdb_protocol::{Change, Op, TableChanges};
    use std::collections::BTreeMap;

    /// A group file in a fresh temporary directory, opened as the writer
    /// opens it: no thread, no `Group`.
    fn group(label: &str) -> (std::path::PathBuf, Connection, GroupInfo, HeadState) {
        let dir = std::env::temp_dir().join(format!(
            "pdb-commit-{label}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ddl = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";
        let schema = store::schema::parse(ddl, 1).unwrap();
        store::create(&dir, "g", ddl, &schema).unwrap();
        let (conn, info, head) = store::open(&dir.join(store::file_name("g"))).unwrap();
        (dir, conn, info, head)
    }

    fn insert(id: i64, v: &str) -> Vec<u8> {
        Changeset {
            tables: vec![TableChanges {
                name: "t".into(),
                pk_flags: vec![1, 0],
                changes: vec![Change {
                    op: Op::Insert,
                    indirect: false,
                    old: vec![],
                    new: vec![Some(Value::Integer(id)), Some(Value::text(v))],
                }],
            }],
        }
        .encode()
    }

    fn input(info: &GroupInfo, head: &HeadState, key: &str, cs: Vec<u8>) -> CommitInput {
        CommitInput {
            author: "alice".into(),
            base_seq: head.seq,
            base_hash: head.hash,
            schema_version: info.schema.version,
            schema_hash: info.schema_hash,
            idempotency_key: key.into(),
            changeset: cs,
            policy: Policy::Strict,
            client_time: None,
        }
    }

    #[test]
    fn accepts_replays_and_rejects_in_the_documented_order() {
        let (dir, conn, info, mut head) = group("order");
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut conn = conn;
        let budget = crate::sandbox::Sandbox::default()
            .budget(&mut conn)
            .unwrap();
        let batch = Batch::load(&conn, &info, &budget, Limits::default(), BTreeMap::new()).unwrap();
        let genesis = head.clone();

        let first = input(&info, &head, "k1", insert(1, "a"));
        let cert = process(&conn, &info, &key, &mut head, &first, &batch).unwrap();
        assert!(!cert.replay);
        assert_eq!((cert.certificate.seq, head.seq), (1, 1));
        let stored = info.tables[0].fetch(&conn, &[Value::Integer(1)]).unwrap();
        assert_eq!(stored, Some(vec![Value::Integer(1), Value::text("a")]));

        // The same key and bytes again: the original certificate.
        let again = process(&conn, &info, &key, &mut head, &first, &batch).unwrap();
        assert!(again.replay);
        assert_eq!(again.certificate, cert.certificate);

        // The same key, other bytes: a conflict, before the head is checked.
        let other = input(&info, &genesis, "k1", insert(2, "b"));
        let e = process(&conn, &info, &key, &mut head, &other, &batch).unwrap_err();
        assert_eq!(e.code(), "idempotency_conflict");

        // A new key on an old base (strict): stale, with the signed head.
        let stale = input(&info, &genesis, "k2", insert(2, "b"));
        let e = process(&conn, &info, &key, &mut head, &stale, &batch).unwrap_err();
        assert_eq!(e.code(), "stale_head");

        // Another schema is refused first of all.
        let mut wrong = input(&info, &head, "k3", insert(3, "c"));
        wrong.schema_hash = [0; 32];
        let e = process(&conn, &info, &key, &mut head, &wrong, &batch).unwrap_err();
        assert_eq!(e.code(), "schema_mismatch");

        // Inserting an existing key conflicts and names the row.
        let dup = input(&info, &head, "k4", insert(1, "z"));
        let e = process(&conn, &info, &key, &mut head, &dup, &batch).unwrap_err();
        assert_eq!(e.code(), "changeset_conflict");
        assert_eq!(head.seq, 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
