//! The extension's one error type. It keeps what went wrong as data —
//! SQLite's result code, the stage at which a call to the witness broke
//! off, the witness's typed rejection — so callers act on kinds and
//! codes, never on message text. `Display` is the message users see.

use pdb_protocol::wire::ErrorJson;
use std::fmt::{self, Display};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// A call into SQLite failed.
    Sqlite {
        /// The extended result code (`code & 0xff` is the primary one).
        code: i32,
        message: String,
    },
    /// A call to the witness broke off before a usable answer arrived.
    Network { stage: Stage, message: String },
    /// The witness answered with a typed error.
    Rejected(Box<Rejection>),
    /// Something the extension will not accept: a bad argument, corrupt
    /// sync state, an answer that breaks the protocol.
    Invalid(String),
    /// An answer whose signature does not verify with the keys this
    /// database trusts, or that a trusted record contradicts (a tampered or
    /// replayed answer; or a key rotation not yet seen): nothing of it was
    /// used.
    Untrusted(String),
    /// Sync cannot go on until something outside it changes, found on
    /// this side (the group's schema moved past what the app understands):
    /// a code, like a witness's, and what to do.
    Stopped { code: &'static str, message: String },
    /// An answer this side refused, with a code of its own (too large, no
    /// progress, a head from too far in the future, a key chain that
    /// forks from the trusted one): nothing of it was used. `class` says
    /// what sync does about it (retry later, or stop until it changes).
    Refused {
        code: &'static str,
        class: Class,
        message: String,
    },
    /// An error of any kind above, told with what was being done: the
    /// message is the whole text shown, the cause keeps the kind.
    Context { message: String, cause: Box<Error> },
}

/// How far a call to the witness got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// No connection was made: nothing was sent.
    Connect,
    /// The request may have arrived; its answer was lost.
    Answer,
    /// An answer arrived but is not what HTTP or JSON allow.
    Unreadable,
}

/// A typed error the witness answered with.
#[derive(Debug)]
pub struct Rejection {
    /// The URL the request went to.
    pub endpoint: String,
    pub status: u16,
    /// The error body: `code`, `message`, and the fields that help to
    /// recover (`head`, `table`, `key`, `snapshot`, ...).
    pub body: ErrorJson,
    /// Seconds the witness asked the caller to wait (`Retry-After`).
    pub retry_after: Option<u64>,
}

/// What a failed call to the witness means for sync: every failure falls
/// in one class and sync acts on the class (docs/extension.md, "Never
/// stuck").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The witness could not be reached or answer now (network, answer
    /// lost, 5xx, overloaded, storage_full): keep everything, retry later.
    Retry,
    /// `stale_head`: pull, re-seal from the current state, resubmit.
    Rebase,
    /// The witness will never accept these rows as they are: unseal, hold
    /// the rows it names back (visible in `pdb_status`), sync the rest.
    FixRows,
    /// `snapshot_required`: restart from a snapshot, pending rows re-based.
    CatchUp,
    /// Nothing sync can do until something outside it changes (access,
    /// schema, a bug): stop and say what.
    Stop,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Retry => "retry",
            Class::Rebase => "rebase",
            Class::FixRows => "fix_rows",
            Class::CatchUp => "catch_up",
            Class::Stop => "stop",
        }
    }
}

impl Rejection {
    /// The witness's class for this answer, from its status and code.
    fn class(&self) -> Class {
        let code = self.body.code.as_str();
        match code {
            "storage_full" | "overloaded" | "unavailable" | "internal" => Class::Retry,
            _ if self.status >= 500 || self.status == 429 => Class::Retry,
            "stale_head" => Class::Rebase,
            "changeset_conflict"
            | "invalid_changeset"
            | "rule_error"
            | "idempotency_conflict"
            | "body_too_large" => Class::FixRows,
            // A row-level write rule names its row; a caller without access
            // does not.
            "unauthorized" if self.body.table.is_some() => Class::FixRows,
            "snapshot_required" => Class::CatchUp,
            // Sealed on a schema the group no longer accepts: pull (which
            // migrates), seal again. Without migrations to apply, the
            // schema is one the group never had.
            "schema_mismatch" if !self.body.migrations.is_empty() => Class::Rebase,
            _ => Class::Stop,
        }
    }
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid(message.into())
    }

    pub fn untrusted(message: impl Into<String>) -> Error {
        Error::Untrusted(message.into())
    }

    /// An answer refused with this side's own `code`; sync retries later.
    pub fn refused(code: &'static str, message: impl Into<String>) -> Error {
        Error::Refused {
            code,
            class: Class::Retry,
            message: message.into(),
        }
    }

    /// An answer refused with this side's own `code`; sync stops until
    /// what the message names changes.
    pub fn refused_stop(code: &'static str, message: impl Into<String>) -> Error {
        Error::Refused {
            code,
            class: Class::Stop,
            message: message.into(),
        }
    }

    /// Whether an answer failed verification.
    pub fn is_untrusted(&self) -> bool {
        matches!(self.root(), Error::Untrusted(_))
    }

    /// Whether an answer was refused (failed verification, or refused by
    /// this side's own checks): nothing it states is kept.
    pub fn is_refused_answer(&self) -> bool {
        matches!(self.root(), Error::Untrusted(_) | Error::Refused { .. })
    }

    /// The code that names what stopped sync: the witness's rejection
    /// code, or this side's own.
    pub fn code(&self) -> Option<&str> {
        match self.root() {
            Error::Rejected(r) => Some(&r.body.code),
            Error::Stopped { code, .. } | Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The same error, its message rewritten by `f` (which gets the
    /// current message); the kind stays.
    pub fn context(self, f: impl FnOnce(&str) -> String) -> Error {
        Error::Context {
            message: f(&self.to_string()),
            cause: Box::new(self),
        }
    }

    /// The error under any context.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { cause, .. } => cause.root(),
            e => e,
        }
    }

    /// The witness's rejection, if that is what this is.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self.root() {
            Error::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the witness rejected the call with this code.
    pub fn is_rejection(&self, code: &str) -> bool {
        self.rejection().is_some_and(|r| r.body.code == code)
    }

    /// What a failed call to the witness means for sync; `None` for an
    /// error that did not come from a call (SQLite, a bad argument, an
    /// answer that does not verify).
    pub fn class(&self) -> Option<Class> {
        match self.root() {
            Error::Network { .. } => Some(Class::Retry),
            Error::Rejected(r) => Some(r.class()),
            Error::Stopped { .. } => Some(Class::Stop),
            Error::Refused { class, .. } => Some(*class),
            _ => None,
        }
    }

    /// Seconds the witness asked to wait before retrying, if it did.
    pub fn retry_after(&self) -> Option<u64> {
        self.rejection().and_then(|r| r.retry_after)
    }

    /// How far a call to the witness got, if it broke off.
    pub fn stage(&self) -> Option<Stage> {
        match self.root() {
            Error::Network { stage, .. } => Some(*stage),
            _ => None,
        }
    }

    /// SQLite's (primary, extended) result code, if SQLite failed: tells
    /// `SQLITE_BUSY` from a constraint failure without reading text.
    #[cfg_attr(not(test), allow(dead_code))] // the sync classes of issue 9 read it
    pub fn sqlite_code(&self) -> Option<(i32, i32)> {
        match self.root() {
            Error::Sqlite { code, .. } => Some((code & 0xff, *code)),
            _ => None,
        }
    }

    /// A failed call to the witness told by what happened, so the message
    /// says whether anything can have arrived and what to do: `witness
    /// unreachable` (nothing was sent), `answer lost` (it was sent; a commit
    /// may have landed), `unreadable answer` (with its HTTP status),
    /// `witness error` (5xx), `storage_full` / `overloaded` (with
    /// Retry-After), or the code of a rejection sync stops on. Errors that
    /// did not come from a call are returned as they are.
    pub fn classified(self) -> Error {
        let after = |r: &Rejection| {
            r.retry_after
                .map_or("retry later".to_string(), |s| format!("retry after {s} s"))
        };
        let message = match self.root() {
            Error::Network {
                stage: Stage::Connect,
                ..
            } => format!("witness unreachable: {self}"),
            Error::Network {
                stage: Stage::Answer,
                ..
            } => format!(
                "answer lost: {self} (a commit sent may have landed; the next pdb_sync finds out)"
            ),
            Error::Network {
                stage: Stage::Unreadable,
                ..
            } => format!("unreadable answer: {self}"),
            Error::Rejected(r) => match (r.class(), r.body.code.as_str()) {
                (_, "storage_full") => format!(
                    "storage_full: {} (the witness's disk is full; nothing was lost; {})",
                    r.body.message,
                    after(r)
                ),
                (Class::Retry, code) => format!(
                    "witness error: HTTP {} {code}: {} ({})",
                    r.status,
                    r.body.message,
                    after(r)
                ),
                (_, "unauthorized") if r.body.table.is_none() && r.status == 401 => format!(
                    "unauthorized: {} (sync stopped: the witness does not accept this token — give this device's own as pdb_open's token option, or with pdb_set_token)",
                    r.body.message
                ),
                (_, "unauthorized") if r.body.table.is_none() => format!(
                    "unauthorized: {} (sync stopped: check the group id given to pdb_open, or have the group's admin give this token's identity a role there)",
                    r.body.message
                ),
                (_, "unknown_head") => format!(
                    "unknown_head: {} (sync stopped: the witness's history does not hold this database's head — restored from an older backup? pdb_status().restored says what to do: pdb_recover('recommit') on the device that synced last, then pdb_recover('in_place') on the others; docs/operations.md)",
                    r.body.message
                ),
                (_, "schema_mismatch") => format!(
                    "schema_mismatch: {} (sync stopped: migrate this database or upgrade the app)",
                    r.body.message
                ),
                (Class::Stop, code) => format!(
                    "{code}: {} (HTTP {} from {}; sync stopped)",
                    r.body.message, r.status, r.endpoint
                ),
                _ => return self,
            },
            _ => return self,
        };
        self.context(|_| message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sqlite { message, .. }
            | Error::Network { message, .. }
            | Error::Invalid(message)
            | Error::Untrusted(message)
            | Error::Stopped { message, .. }
            | Error::Refused { message, .. }
            | Error::Context { message, .. } => f.write_str(message),
            Error::Rejected(r) => write!(f, "{}: {}", r.body.code, r.body.message),
        }
    }
}

impl std::error::Error for Error {}

/// Runs `f` for the SQL function or table `name`: its error, or a panic,
/// becomes an SQL error that starts with the name.
pub fn guard<T, E: Display>(
    name: &str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> sqlite_loadable::Result<T> {
    let message = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => format!("{name}: {e}"),
        Err(_) => format!("{name}: internal error (a bug; the failed step's unfinished transaction was rolled back)"),
    };
    Err(sqlite_loadable::Error::new_message(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, code: &str) -> Error {
        Error::Rejected(Box::new(Rejection {
            endpoint: "http://w/v1/groups/g/commits".into(),
            status,
            body: ErrorJson {
                code: code.into(),
                message: "why".into(),
                ..ErrorJson::default()
            },
            retry_after: None,
        }))
    }

    fn network(stage: Stage) -> Error {
        Error::Network {
            stage,
            message: "http://w/x: reset".into(),
        }
    }

    #[test]
    fn every_failure_of_a_call_has_a_class() {
        let class = |e: Error| e.class();
        assert_eq!(class(network(Stage::Connect)), Some(Class::Retry));
        assert_eq!(class(network(Stage::Answer)), Some(Class::Retry));
        assert_eq!(class(network(Stage::Unreadable)), Some(Class::Retry));
        for (status, code, want) in [
            (503, "unavailable", Class::Retry),
            (500, "internal", Class::Retry),
            (507, "storage_full", Class::Retry),
            (429, "overloaded", Class::Retry),
            (503, "overloaded", Class::Retry),
            (502, "http_error", Class::Retry),
            (409, "stale_head", Class::Rebase),
            (409, "changeset_conflict", Class::FixRows),
            (422, "invalid_changeset", Class::FixRows),
            (422, "rule_error", Class::FixRows),
            (413, "body_too_large", Class::FixRows),
            (409, "idempotency_conflict", Class::FixRows),
            (410, "snapshot_required", Class::CatchUp),
            (403, "unauthorized", Class::Stop),
            (401, "unauthorized", Class::Stop),
            (409, "schema_mismatch", Class::Stop),
            (409, "unknown_head", Class::Stop),
            (404, "not_found", Class::Stop),
            (400, "bad_request", Class::Stop),
        ] {
            assert_eq!(class(rejected(status, code)), Some(want), "{status} {code}");
        }
        // A row that a write rule refuses names its table: fix the row.
        let mut rule = rejected(403, "unauthorized");
        if let Error::Rejected(r) = &mut rule {
            r.body.table = Some("t".into());
        }
        assert_eq!(rule.class(), Some(Class::FixRows));
        // Not a call's failure: no class, even under a context.
        assert_eq!(Error::invalid("x").class(), None);
        let e = Error::Sqlite {
            code: 5,
            message: "busy".into(),
        }
        .context(|m| format!("pulling: {m}"));
        assert_eq!(e.class(), None);
    }

    #[test]
    fn messages_say_what_happened() {
        let e = network(Stage::Connect).classified();
        assert_eq!(e.to_string(), "witness unreachable: http://w/x: reset");
        let e = network(Stage::Answer).classified();
        assert!(e.to_string().starts_with("answer lost: "), "{e}");
        assert!(e.to_string().contains("may have landed"), "{e}");
        assert_eq!(e.stage(), Some(Stage::Answer));
        let e = network(Stage::Unreadable).classified();
        assert!(e.to_string().starts_with("unreadable answer: "), "{e}");
        assert_eq!(
            rejected(503, "unavailable").classified().to_string(),
            "witness error: HTTP 503 unavailable: why (retry later)"
        );
        let mut full = rejected(507, "storage_full");
        if let Error::Rejected(r) = &mut full {
            r.retry_after = Some(30);
        }
        let e = full.classified();
        assert!(
            e.to_string()
                .starts_with("storage_full: why (the witness's disk is full"),
            "{e}"
        );
        assert!(e.to_string().contains("retry after 30 s"), "{e}");
        assert_eq!(e.retry_after(), Some(30));
        let e = rejected(403, "unauthorized").classified();
        assert!(e.to_string().starts_with("unauthorized: why (sync stopped"));
        assert!(e.is_rejection("unauthorized"));
        assert!(rejected(409, "schema_mismatch")
            .classified()
            .to_string()
            .starts_with("schema_mismatch: why (sync stopped"));
        assert_eq!(
            rejected(409, "stale_head").classified().to_string(),
            "stale_head: why"
        );
        // Not a call's failure: left alone, even if its text looks like one.
        let e = Error::invalid("unauthorized: looks like one").classified();
        assert!(e.rejection().is_none());
        assert_eq!(e.to_string(), "unauthorized: looks like one");
    }

    #[test]
    fn context_rewrites_the_message_and_keeps_the_kind() {
        let e = Error::Sqlite {
            code: 2067, // SQLITE_CONSTRAINT_UNIQUE
            message: "UNIQUE constraint failed: t.x".into(),
        }
        .context(|m| format!("commit 3: {m}; nothing was applied"));
        assert_eq!(
            e.to_string(),
            "commit 3: UNIQUE constraint failed: t.x; nothing was applied"
        );
        assert_eq!(e.sqlite_code(), Some((19, 2067)));
        assert!(rejected(410, "snapshot_required")
            .context(|m| format!("pulling: {m}"))
            .is_rejection("snapshot_required"));
    }
}
