//! The API's one error type. Each variant knows its HTTP status, its
//! stable code, whether a retry can help, and what the client needs to
//! recover. Internal causes are logged, never sent.

use hyper::StatusCode;
use pdb_protocol::wire::{
    value_json, ErrorBody, ErrorJson, HeadJson, SchemaJson, SchemaVersionJson, SnapshotJson,
};
use pdb_protocol::Value;

#[derive(Clone, Debug)]
pub enum ApiError {
    /// No valid identity (401).
    Unauthorized(String),
    /// A known identity without the right (403): no role, too small a
    /// role, or a row its write rules refuse (then with table and key).
    Forbidden {
        table: Option<String>,
        key: Option<Vec<Value>>,
        message: String,
    },
    NotFound(String),
    BadRequest(String),
    BodyTooLarge(usize),
    MethodNotAllowed,
    GroupExists(String),
    /// A commit sealed on a schema the group does not accept (any more):
    /// the schema in force, the oldest version accepted, and the schema
    /// versions (migrations) since the commit's.
    SchemaMismatch {
        expected: SchemaJson,
        accepts_from: u32,
        migrations: Vec<SchemaVersionJson>,
        message: String,
    },
    /// A migration made for a schema that has moved on, or to a version
    /// the group already has (with other content).
    MigrationConflict(String),
    IdempotencyConflict(String),
    StaleHead {
        head: Box<HeadJson>,
        message: String,
    },
    /// The caller names a head (a base, or a catch-up position) that is not
    /// in this group's history: past the head, or with another hash. The
    /// witness was restored from a backup, or the caller's history forked
    /// from it; rebasing cannot help.
    UnknownHead {
        head: Box<HeadJson>,
        message: String,
    },
    ChangesetConflict {
        table: String,
        key: Vec<Value>,
        message: String,
    },
    InvalidChangeset {
        table: Option<String>,
        key: Option<Vec<Value>>,
        message: String,
    },
    /// Catch-up from before the retained log: start from this snapshot.
    SnapshotRequired {
        pruned_through: u64,
        snapshot: Option<Box<SnapshotJson>>,
    },
    RangeNotSatisfiable(u64),
    /// An admin-defined rule failed at run time (its budget ran out, or a
    /// runtime error): the commit is refused, naming table, key and rule.
    /// A projection whose SQL failed reads as this too.
    RuleError {
        table: Option<String>,
        key: Option<Vec<Value>>,
        message: String,
    },
    /// Over a limit on concurrent work: 429 when it is the caller's own
    /// limit, 503 when it is the group's or the witness's.
    Overloaded {
        caller: bool,
        message: String,
    },
    /// A group's admin is migrating faster than the group allows: 429
    /// `overloaded`, with the seconds until the next migration may go.
    MigrationTooSoon {
        message: String,
        retry_after: u32,
    },
    /// The witness's disk is full (or below its reserve): retry later.
    StorageFull(String),
    Unavailable(String),
    /// The cause is logged where it happens; the caller sees a generic text.
    Internal(String),
}

impl ApiError {
    pub fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "{context}");
        ApiError::Internal(context.to_string())
    }

    /// A SQLite failure: a full disk is `storage_full`, anything else is
    /// internal (logged).
    pub fn sqlite(context: &str, e: rusqlite::Error) -> ApiError {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            tracing::error!(error = %e, "{context}: the disk is full");
            return ApiError::StorageFull(format!(
                "the witness's disk is full while {context}; retry later"
            ));
        }
        ApiError::internal(context, e)
    }

    /// Seconds the client should wait before retrying (`Retry-After`),
    /// for the answers that are only about load or space.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::Overloaded { .. } => Some(1),
            ApiError::MigrationTooSoon { retry_after, .. } => Some(*retry_after),
            ApiError::StorageFull(_) => Some(30),
            ApiError::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::GroupExists(_)
            | ApiError::SchemaMismatch { .. }
            | ApiError::MigrationConflict(_)
            | ApiError::IdempotencyConflict(_)
            | ApiError::StaleHead { .. }
            | ApiError::UnknownHead { .. }
            | ApiError::ChangesetConflict { .. } => StatusCode::CONFLICT,
            ApiError::InvalidChangeset { .. } | ApiError::RuleError { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Overloaded { caller: true, .. } | ApiError::MigrationTooSoon { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Overloaded { caller: false, .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::SnapshotRequired { .. } => StatusCode::GONE,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) | ApiError::Forbidden { .. } => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::GroupExists(_) => "group_exists",
            ApiError::SchemaMismatch { .. } => "schema_mismatch",
            ApiError::MigrationConflict(_) => "migration_conflict",
            ApiError::IdempotencyConflict(_) => "idempotency_conflict",
            ApiError::StaleHead { .. } => "stale_head",
            ApiError::UnknownHead { .. } => "unknown_head",
            ApiError::ChangesetConflict { .. } => "changeset_conflict",
            ApiError::InvalidChangeset { .. } => "invalid_changeset",
            ApiError::SnapshotRequired { .. } => "snapshot_required",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::RuleError { .. } => "rule_error",
            ApiError::Overloaded { .. } | ApiError::MigrationTooSoon { .. } => "overloaded",
            ApiError::StorageFull(_) => "storage_full",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let mut e = ErrorJson {
            code: self.code().to_string(),
            retryable: self.retry_after().is_some() || matches!(self, ApiError::Internal(_)),
            ..ErrorJson::default()
        };
        e.message = match self {
            ApiError::Unauthorized(m)
            | ApiError::NotFound(m)
            | ApiError::BadRequest(m)
            | ApiError::IdempotencyConflict(m)
            | ApiError::MigrationConflict(m)
            | ApiError::StorageFull(m)
            | ApiError::Overloaded { message: m, .. }
            | ApiError::MigrationTooSoon { message: m, .. }
            | ApiError::Unavailable(m) => m.clone(),
            ApiError::BodyTooLarge(limit) => {
                format!("request body is larger than the {limit}-byte limit")
            }
            ApiError::MethodNotAllowed => "method not allowed on this path".into(),
            ApiError::GroupExists(g) => format!("group {g:?} already exists"),
            ApiError::SchemaMismatch {
                expected,
                accepts_from,
                migrations,
                message,
            } => {
                e.expected_schema = Some(expected.clone());
                e.accepts_from = Some(*accepts_from);
                e.migrations = migrations.clone();
                message.clone()
            }
            ApiError::StaleHead { head, message } | ApiError::UnknownHead { head, message } => {
                e.head = Some((**head).clone());
                message.clone()
            }
            ApiError::ChangesetConflict {
                table,
                key,
                message,
            } => {
                e.table = Some(table.clone());
                e.key = Some(key.iter().map(value_json).collect());
                message.clone()
            }
            ApiError::InvalidChangeset {
                table,
                key,
                message,
            }
            | ApiError::Forbidden {
                table,
                key,
                message,
            }
            | ApiError::RuleError {
                table,
                key,
                message,
            } => {
                e.table = table.clone();
                e.key = key.as_ref().map(|k| k.iter().map(value_json).collect());
                message.clone()
            }
            ApiError::SnapshotRequired {
                pruned_through,
                snapshot,
            } => {
                e.snapshot = snapshot.as_deref().cloned();
                format!(
                    "the log up to commit {pruned_through} is no longer kept; start from the snapshot"
                )
            }
            ApiError::RangeNotSatisfiable(size) => {
                format!("the range is outside the snapshot's {size} bytes")
            }
            ApiError::Internal(context) => format!("internal error while {context}; retry later"),
        };
        ErrorBody { error: e }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.body().error.message)
    }
}

impl std::error::Error for ApiError {}
