//! JSON bodies of the witness's HTTP API. Binary fields travel as standard
//! base64 (changesets, record bytes, signatures) or lowercase hex (hashes,
//! keys). Requests reject unknown fields.

use crate::records::{Rotation, Signed};
use crate::schema::{Schema, Table};
use crate::value::Value;
use base64::Engine;
use serde::{Deserialize, Serialize};

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// A signed record on the wire. Clients verify `signature` over the
/// decoded `record` bytes and read fields only from those bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignedJson {
    pub record: String,
    pub signature: String,
}

impl From<&Signed> for SignedJson {
    fn from(s: &Signed) -> Self {
        SignedJson {
            record: b64(&s.bytes),
            signature: b64(&s.signature),
        }
    }
}

impl SignedJson {
    pub fn to_signed(&self) -> Option<Signed> {
        let bytes = unb64(&self.record)?;
        let signature: [u8; 64] = unb64(&self.signature)?.try_into().ok()?;
        Some(Signed { bytes, signature })
    }
}

/// The head a client builds on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BaseRef {
    pub seq: u64,
    /// Head hash, hex.
    pub hash: String,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Accept only if `base` is the current head.
    #[default]
    Strict,
    /// Also accept on a newer head when no row the commit touches changed
    /// since `base`.
    RebaseIfClean,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub base: BaseRef,
    pub schema_version: u32,
    /// Canonical schema hash, hex.
    pub schema_hash: String,
    pub idempotency_key: String,
    /// The SQLite changeset, base64.
    pub changeset: String,
    #[serde(default)]
    pub policy: Policy,
    /// The client's own clock or logical time; stored, not trusted.
    #[serde(default)]
    pub client_time: Option<i64>,
}

/// Decoded head fields, for people and logs. Clients trust `signed`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeadJson {
    pub group: String,
    pub seq: u64,
    pub head_hash: String,
    pub state_root: String,
    pub schema_version: u32,
    pub schema_hash: String,
    pub time_ms: u64,
    pub signed: SignedJson,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateJson {
    pub seq: u64,
    pub head_hash: String,
    pub prev_head: String,
    pub state_root: String,
    pub changeset_digest: String,
    pub author: String,
    pub idempotency_key: String,
    pub time_ms: u64,
    pub signed: SignedJson,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitResponse {
    /// True when this answers a retry of an already accepted commit.
    pub replay: bool,
    pub certificate: CertificateJson,
    /// The group's signed head when the answer was sent, when that head
    /// is this commit (nothing was accepted after it): the client is then
    /// current without asking for the log. Absent otherwise, and from
    /// witnesses that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadJson>,
}

impl CommitResponse {
    /// The answer to `Prefer: return=minimal`: what a client verifies and
    /// keeps, nothing decoded for people.
    pub fn minimal(&self) -> MinimalCommitResponse {
        MinimalCommitResponse {
            replay: self.replay,
            certificate: SignedCertificateJson {
                signed: self.certificate.signed.clone(),
            },
            head: self
                .head
                .as_ref()
                .filter(|h| h.seq == self.certificate.seq)
                .map(|h| HeadProofJson {
                    time_ms: h.time_ms,
                    signature: h.signed.signature.clone(),
                }),
        }
    }
}

/// `POST /v1/groups/<g>/commits` with `Prefer: return=minimal`: the
/// certificate's signed record only, and, when the group's head is this
/// commit, the head's time and signature (the rest of the head record is
/// the certificate's: see [`HeadProofJson::record`]). Reads the full
/// answer too (its decoded fields are ignored; a full `head` is no proof).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MinimalCommitResponse {
    pub replay: bool,
    pub certificate: SignedCertificateJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadProofJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedCertificateJson {
    pub signed: SignedJson,
}

/// The witness's signature over the head record whose fields are the
/// certified commit's (group, seq, its head hash, state root, schema) and
/// whose time is `time_ms`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeadProofJson {
    pub time_ms: u64,
    /// Base64 (empty when read from a full answer's head).
    #[serde(default)]
    pub signature: String,
}

impl HeadProofJson {
    /// The signed head this proof stands for, given the certificate it
    /// came with (`cert` is the certificate's signed record).
    pub fn record(&self, cert: &Signed, rec: &crate::CommitRecord) -> Option<Signed> {
        let head = crate::HeadRecord {
            group: rec.group.clone(),
            seq: rec.seq,
            head_hash: crate::sha256(&cert.bytes),
            state_root: rec.state_root,
            schema_version: rec.schema_version,
            schema_hash: rec.schema_hash,
            time_ms: self.time_ms,
        };
        let signature: [u8; 64] = unb64(&self.signature)?.try_into().ok()?;
        Some(Signed {
            bytes: head.encode(),
            signature,
        })
    }
}

/// The answer to a migration: its log entry's certificate (a replay when
/// the same migration was already in force), the schema it made, its
/// operations, and what it did to the group's definitions: projections
/// rebuilt on the new schema, write rules removed with their table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrationResponse {
    pub replay: bool,
    pub certificate: CertificateJson,
    pub schema: SchemaJson,
    pub accepts_from: u32,
    pub ops: Vec<crate::migration::SchemaOp>,
    #[serde(default)]
    pub projections_rebuilt: Vec<String>,
    #[serde(default)]
    pub rules_removed: Vec<String>,
}

/// `GET /v1/groups/<g>/migrations?after_version=V`: the log entries of
/// the migrations to versions after V, oldest first (each with its
/// canonical bytes and signed certificate), and the first schema version
/// (whose structure `first_schema` gives when asked with after_version=0).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrationsPage {
    pub migrations: Vec<LogEntryJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_schema: Option<SchemaJson>,
    /// More migrations follow: ask again with `after_version` this (a page
    /// holds about `max_page_bytes` of migrations, at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after_version: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntryJson {
    pub seq: u64,
    /// A commit's changeset, base64 (empty for a migration).
    #[serde(default)]
    pub changeset: String,
    /// A migration's canonical bytes (`Migration::encode`), base64; its
    /// signed record is in `certificate.signed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    pub certificate: CertificateJson,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitsPage {
    pub commits: Vec<LogEntryJson>,
    /// The head when the page was read; the page never goes past it.
    pub head: HeadJson,
    /// Pass as `after` for the next page; absent when caught up.
    pub next_after: Option<u64>,
}

/// A group's schema as structured data: the only form it travels in.
/// Clients check `hash` against the hash they compute from `tables` and
/// against the signed head's schema hash before using any of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SchemaJson {
    pub version: u32,
    pub hash: String,
    pub tables: Vec<Table>,
}

impl SchemaJson {
    pub fn new(schema: &Schema) -> SchemaJson {
        SchemaJson {
            version: schema.version,
            hash: crate::hex(&schema.hash()),
            tables: schema.tables.clone(),
        }
    }

    /// The schema, if it passes the grammar and its hash is `hash`.
    pub fn schema(&self) -> Result<Schema, String> {
        let s = Schema {
            version: self.version,
            tables: self.tables.clone(),
        };
        s.validate()?;
        if crate::hex(&s.hash()) != self.hash {
            return Err("the schema does not have the hash it states".into());
        }
        Ok(s)
    }
}

/// `POST /v1/groups`: the schema as DDL (`CREATE TABLE` / `CREATE INDEX`
/// only), which the witness turns into structured data.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub group: String,
    pub schema_sql: String,
    #[serde(default)]
    pub schema_version: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupJson {
    pub group: String,
    pub schema: SchemaJson,
    pub head: HeadJson,
    /// Every schema version the group has had, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_history: Vec<SchemaVersionJson>,
}

/// One schema version of a group: the log entry that made it (0 for the
/// group's creation), its hash, the oldest version whose commits it still
/// accepted, and the DDL it was made from (for people).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SchemaVersionJson {
    pub version: u32,
    pub seq: u64,
    pub hash: String,
    pub accepts_from: u32,
    /// The DDL it was made from, for the versions still inside the window
    /// (every migration's is in `GET .../migrations`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ddl: String,
}

/// `POST /v1/groups/<g>/migrations`: DDL (`ALTER TABLE ... ADD COLUMN /
/// DROP COLUMN / RENAME COLUMN`, `CREATE TABLE`, `DROP TABLE`,
/// `CREATE INDEX`, `DROP INDEX`) taking the group to its next version.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationRequest {
    pub ddl: String,
    /// The version it makes (default: the current one + 1).
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// The oldest version whose commits stay accepted (default: the
    /// current one, so devices not yet migrated can still push).
    #[serde(default)]
    pub accepts_from: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessJson {
    /// Ed25519 public key, hex.
    pub public_key: String,
    pub version: String,
    /// What one request may carry and one answer holds; absent from
    /// witnesses that predate it (clients then assume the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsJson>,
    /// Every rotation of the witness's signing key, in order: the chain
    /// from its first key to `public_key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<RotationJson>,
}

/// A key rotation on the wire: the record's bytes and both signatures,
/// base64.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RotationJson {
    pub record: String,
    pub old_signature: String,
    pub new_signature: String,
}

impl From<&Rotation> for RotationJson {
    fn from(r: &Rotation) -> Self {
        RotationJson {
            record: b64(&r.bytes),
            old_signature: b64(&r.old_signature),
            new_signature: b64(&r.new_signature),
        }
    }
}

impl RotationJson {
    pub fn to_rotation(&self) -> Option<Rotation> {
        Some(Rotation {
            bytes: unb64(&self.record)?,
            old_signature: unb64(&self.old_signature)?.try_into().ok()?,
            new_signature: unb64(&self.new_signature)?.try_into().ok()?,
        })
    }
}

/// The limits a witness advertises in `GET /v1/witness`, so clients size
/// what they send to them. Unknown fields are ignored (more may come).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitsJson {
    /// Largest request body accepted (a commit's JSON, base64 changeset
    /// included).
    pub max_body_bytes: u64,
    /// A catch-up page stops once its changesets reach this many bytes (it
    /// always holds at least one commit, however large).
    pub max_page_bytes: u64,
    /// Most commits one catch-up page holds.
    pub max_page_commits: u32,
    /// Commits kept in the log before the newest snapshot when the log is
    /// pruned (absent: the whole log is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_log_commits: Option<u64>,
    /// The longest wait `GET /v1/groups/<g>/head?after=&wait=` grants, in
    /// seconds (absent: the witness cannot watch heads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_seconds: Option<u64>,
}

/// `{"error": {...}}` for every failed call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorJson,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ErrorJson {
    /// Stable machine-readable code, e.g. `stale_head`.
    pub code: String,
    pub message: String,
    /// Whether sending the same request again may succeed.
    pub retryable: bool,
    /// Current head, on `stale_head`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head: Option<HeadJson>,
    /// The group's schema, on `schema_mismatch`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expected_schema: Option<SchemaJson>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub table: Option<String>,
    /// Primary key values of the row concerned.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<Vec<serde_json::Value>>,
    /// The snapshot to start from, on `snapshot_required`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot: Option<SnapshotJson>,
    /// On `schema_mismatch`: the oldest version whose commits are still
    /// accepted, and the migrations (log entries) between the commit's
    /// version and the group's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accepts_from: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub migrations: Vec<SchemaVersionJson>,
}

/// A value as JSON: numbers, strings (lossy for non-UTF-8 text), null,
/// and `{"blob": hex}` for blobs.
pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        Value::Blob(b) => serde_json::json!({ "blob": crate::hex(b) }),
    }
}

/// A snapshot's signed manifest and where its chunks start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotJson {
    pub group: String,
    pub seq: u64,
    pub head_hash: String,
    pub state_root: String,
    pub size: u64,
    pub digest: String,
    pub rows: u64,
    /// Byte offset of each chunk (each a changeset of INSERTs on its own).
    pub chunks: Vec<u64>,
    pub time_ms: u64,
    pub signed: SignedJson,
}

/// One projection in `GET /v1/groups/<g>/projections`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProjectionInfo {
    pub name: String,
    /// Its result columns, in order.
    pub columns: Vec<String>,
    /// Kept up to date commit by commit (else computed on each read).
    pub incremental: bool,
    /// Why it stopped being maintained (its SQL went over its budget or
    /// failed); redefine it to repair it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProjectionList {
    pub projections: Vec<ProjectionInfo>,
}

/// A page of `GET /v1/groups/<g>/projections/<name>`: the rows visible to
/// the caller, each as JSON values (see [`value_json`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProjectionPage {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<i64>,
    /// The head the page reflects.
    pub head: HeadJson,
}
