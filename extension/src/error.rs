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
}

impl Rejection {
    /// A 5xx answer: the witness could not do it now; a retry may.
    pub fn is_server_trouble(&self) -> bool {
        self.status >= 500
    }
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid(message.into())
    }

    pub fn untrusted(message: impl Into<String>) -> Error {
        Error::Untrusted(message.into())
    }

    /// Whether an answer failed verification.
    pub fn is_untrusted(&self) -> bool {
        matches!(self.root(), Error::Untrusted(_))
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

    /// How far a call to the witness got, if it broke off.
    #[cfg_attr(not(test), allow(dead_code))] // the sync classes of issue 9 read it
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

    /// What a failed call to the witness means for the caller, as the
    /// message shown: unreachable (retry later), stopped (access or schema
    /// must change), or the witness's own words. Errors that did not come
    /// from the call are returned as they are.
    pub fn classified(self) -> Error {
        let message = match self.root() {
            Error::Network { .. } => format!("witness unreachable: {self}"),
            Error::Rejected(r) if r.is_server_trouble() => format!("witness unreachable: {self}"),
            Error::Rejected(r) => match r.body.code.as_str() {
                "unauthorized" => format!(
                    "unauthorized: {} (sync stopped: fix the token or the caller's role)",
                    r.body.message
                ),
                "schema_mismatch" => format!(
                    "schema_mismatch: {} (sync stopped: migrate this database)",
                    r.body.message
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
            | Error::Context { message, .. } => f.write_str(message),
            Error::Rejected(r) if r.is_server_trouble() => {
                write!(f, "{}: {}: {}", r.endpoint, r.body.code, r.body.message)
            }
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
        Err(_) => format!("{name}: internal error (a bug; nothing was changed by the failed step)"),
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
        }))
    }

    #[test]
    fn classification_acts_on_kinds_and_codes() {
        let lost = Error::Network {
            stage: Stage::Answer,
            message: "reading response from http://w/x: reset".into(),
        };
        let e = lost.classified();
        assert_eq!(
            e.to_string(),
            "witness unreachable: reading response from http://w/x: reset"
        );
        assert_eq!(e.stage(), Some(Stage::Answer));
        assert_eq!(
            rejected(503, "unavailable").classified().to_string(),
            "witness unreachable: http://w/v1/groups/g/commits: unavailable: why"
        );
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
