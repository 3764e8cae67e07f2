//! The witness as the extension sees it: one method per endpoint it
//! uses, in the `pdb_protocol::wire` types, behind a trait so pull, push
//! and bootstrap run against a fake witness in tests as well as the real
//! one. [`HttpWitness`] is the real one over HTTP; every URL path it uses
//! is in [`Endpoint`].
//!
//! Every failure says at which stage it happened: no connection, the
//! answer lost, the answer unreadable (`Error::Network`), or a typed
//! rejection with the witness's code (`Error::Rejected`).

use crate::error::{Error, Rejection, Result, Stage};
use crate::transport::Transport;
use pdb_protocol::wire::{
    CommitRequest, CommitsPage, ErrorBody, ErrorJson, GroupJson, LimitsJson, MigrationRequest,
    MigrationResponse, MigrationsPage, MinimalCommitResponse, ProjectionList, ProjectionPage,
    SnapshotJson, WitnessJson,
};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use std::sync::Arc;

/// What the extension asks of the witness about one group.
pub trait WitnessApi {
    /// The witness's public key and version.
    fn witness(&self) -> Result<WitnessJson>;
    /// The group's schema and signed head.
    fn group(&self) -> Result<GroupJson>;
    /// Log entries after `after`, at most `limit`, with the signed head;
    /// with `after_hash`, `unknown_head` when the witness's history does
    /// not hold that hash at `after`.
    fn commits(&self, after: u64, after_hash: Option<[u8; 32]>, limit: u32) -> Result<CommitsPage>;
    /// Submits a commit; a replay answers with the original certificate.
    /// Asks for the minimal answer (signed records only).
    fn commit(&self, req: &CommitRequest) -> Result<MinimalCommitResponse>;
    /// The migrations to schema versions after `after_version`, with
    /// their signed entries (kept however far the log is pruned), and the
    /// group's first schema when `after_version` is before it.
    fn migrations(&self, after_version: u32) -> Result<MigrationsPage>;
    /// The newest snapshot's manifest, if the witness keeps one.
    fn latest_snapshot(&self) -> Result<Option<SnapshotJson>>;
    /// Bytes `start..=end` of snapshot `seq`'s file (maybe fewer).
    fn snapshot_range(&self, seq: u64, start: u64, end: u64) -> Result<Vec<u8>>;
    /// The group's projections.
    fn projections(&self) -> Result<ProjectionList>;
    /// One page of a projection's rows visible to the caller.
    fn projection_page(&self, name: &str, after: i64, limit: u32) -> Result<ProjectionPage>;
}

/// Every path the extension calls, relative to the witness's URL.
enum Endpoint<'a> {
    Witness,
    Group,
    /// A head watch: answers once the head passes `after`, or after
    /// `wait` seconds.
    Head {
        after: u64,
        wait: u64,
    },
    Commits {
        after: u64,
        /// The hash this side holds at `after`: a witness whose history
        /// does not hold it answers `unknown_head`.
        after_hash: Option<[u8; 32]>,
        limit: u32,
    },
    Commit,
    Migrations {
        after_version: u32,
    },
    SubmitMigration,
    LatestSnapshot,
    SnapshotData {
        seq: u64,
    },
    Projections,
    Projection {
        name: &'a str,
        after: i64,
        limit: u32,
    },
}

impl Endpoint<'_> {
    fn path(&self, group: &str) -> String {
        let g = format!("/v1/groups/{group}");
        match self {
            Endpoint::Witness => "/v1/witness".into(),
            Endpoint::Group => g,
            Endpoint::Head { after, wait } => format!("{g}/head?after={after}&wait={wait}"),
            Endpoint::Commits {
                after,
                after_hash,
                limit,
            } => match after_hash {
                Some(h) => format!(
                    "{g}/commits?after={after}&after_hash={}&limit={limit}",
                    pdb_protocol::hex(h)
                ),
                None => format!("{g}/commits?after={after}&limit={limit}"),
            },
            Endpoint::Commit => format!("{g}/commits"),
            Endpoint::Migrations { after_version } => {
                format!("{g}/migrations?after_version={after_version}")
            }
            Endpoint::SubmitMigration => format!("{g}/migrations"),
            Endpoint::LatestSnapshot => format!("{g}/snapshots/latest"),
            Endpoint::SnapshotData { seq } => format!("{g}/snapshots/{seq}/data"),
            Endpoint::Projections => format!("{g}/projections"),
            Endpoint::Projection { name, after, limit } => {
                format!("{g}/projections/{name}?after={after}&limit={limit}")
            }
        }
    }
}

/// The most an answer may take, by what its endpoint needs: metadata is
/// small; pages are bounded by the limits the witness advertises (capped
/// here, so a witness cannot talk a device into holding more). An answer
/// past its bound is refused (`response_too_large`) before it is parsed.
const META_BYTES: u64 = 1 << 20;
/// A commit's answer (a `schema_mismatch` refusal carries the group's
/// schema: at most 2 MiB of structure).
const COMMIT_BYTES: u64 = 16 << 20;
/// The group's schema and its history.
const GROUP_BYTES: u64 = 32 << 20;
/// The largest request (commit) size believed from a witness.
const MAX_ADVERTISED_BODY: u64 = 256 << 20;
/// The largest page size believed from a witness.
const MAX_ADVERTISED_PAGE: u64 = 64 << 20;
/// The most entries a page can hold: the device never asks for more
/// (pull's and projection reads' page sizes are at most this).
const MAX_PAGE_ENTRIES: u64 = 1000;
/// The most one page answer may take, whatever the witness advertises:
/// room for one largest commit in base64 with its certificate.
const MAX_PAGE_ANSWER: u64 = 512 << 20;
/// An error body that is not the witness's typed error is read as loose
/// JSON only up to this size.
const LOOSE_ERROR_BYTES: usize = 64 << 10;

/// The bound on a page of commits, migrations or projection rows: the
/// page bytes the witness advertises plus one request's worth (a page
/// holds at least one entry), in base64 and JSON, with room per entry
/// for its certificate and for one schema.
/// The limits come unsigned from `/v1/witness`, so each is capped and so
/// is the sum: a hostile answer cannot talk a device into holding more
/// than [`MAX_PAGE_ANSWER`].
pub fn page_bound(limits: &LimitsJson) -> u64 {
    let page = limits.max_page_bytes.min(MAX_ADVERTISED_PAGE);
    let body = limits.max_body_bytes.min(MAX_ADVERTISED_BODY);
    let entries = u64::from(limits.max_page_commits).min(MAX_PAGE_ENTRIES);
    ((page + body) * 2 + entries * 4096 + GROUP_BYTES).min(MAX_PAGE_ANSWER)
}

type Response = ureq::http::Response<ureq::Body>;

/// The real witness, over HTTP(S) with a bearer token.
#[derive(Clone)]
pub struct HttpWitness {
    url: String,
    token: String,
    group: String,
    agent: Arc<ureq::Agent>,
    /// The bound on page answers ([`page_bound`]).
    page_bytes: u64,
}

/// The TLS failure inside an error, if the handshake is what failed (a
/// certificate not trusted, or not for this host name).
fn tls_failure(e: &ureq::Error) -> Option<String> {
    let advice = |t: &rustls::Error| {
        // What a plain-HTTP server answers a TLS hello with is no TLS
        // record at all.
        if matches!(
            t,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        ) {
            format!("{t} (the witness speaks plain HTTP here? then the URL starts with http://)")
        } else {
            format!("{t} (a private CA? give its certificate with the ca_file option)")
        }
    };
    match e {
        ureq::Error::Rustls(t) => Some(advice(t)),
        ureq::Error::Tls(t) => Some(t.to_string()),
        ureq::Error::Io(io) => rustls_in(io).map(advice),
        _ => None,
    }
}

/// A rustls error anywhere inside an I/O error (layers may wrap it).
fn rustls_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        return rustls_in(inner);
    }
    e.source().and_then(rustls_in)
}

/// How far a failed exchange got: whether anything can have been sent.
fn stage_of(e: &ureq::Error) -> Stage {
    if tls_failure(e).is_some() {
        return Stage::Connect;
    }
    use std::io::ErrorKind;
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::Tls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Timeout(ureq::Timeout::Resolve | ureq::Timeout::Connect) => Stage::Connect,
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable
            ) =>
        {
            Stage::Connect
        }
        _ => Stage::Answer,
    }
}

/// An answer's first bytes, printable, to show what came instead of JSON.
fn snippet(text: &str) -> String {
    let s: String = text.chars().take(120).collect();
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the witness).
fn retry_after(resp: &Response) -> Option<u64> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl HttpWitness {
    /// The witness at `url`, reached as `transport` says (which must allow
    /// the URL).
    pub fn new(url: &str, token: &str, group: &str, transport: &Transport) -> Result<HttpWitness> {
        transport.check_url(url)?;
        Ok(HttpWitness {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            group: group.to_string(),
            agent: transport.agent()?,
            page_bytes: page_bound(&crate::state::default_limits()),
        })
    }

    /// The same witness, its pages bounded by these advertised limits.
    pub fn with_limits(mut self, limits: &LimitsJson) -> HttpWitness {
        self.page_bytes = page_bound(limits);
        self
    }

    /// How many bytes an answer from endpoint `e` may take.
    fn bound(&self, e: &Endpoint) -> u64 {
        match e {
            Endpoint::Witness | Endpoint::Head { .. } | Endpoint::LatestSnapshot => META_BYTES,
            Endpoint::SnapshotData { .. } => META_BYTES,
            Endpoint::Commit => COMMIT_BYTES,
            Endpoint::Group | Endpoint::SubmitMigration | Endpoint::Projections => GROUP_BYTES,
            Endpoint::Commits { .. }
            | Endpoint::Migrations { .. }
            | Endpoint::Projection { .. } => self.page_bytes,
        }
    }

    fn url(&self, e: &Endpoint) -> String {
        format!("{}{}", self.url, e.path(&self.group))
    }

    /// Sends a request built by `build` for the endpoint's URL.
    fn send(
        &self,
        url: &str,
        build: impl FnOnce(&ureq::Agent, &str, &str) -> std::result::Result<Response, ureq::Error>,
    ) -> Result<Response> {
        build(&self.agent, url, &format!("Bearer {}", self.token)).map_err(|e| {
            let stage = stage_of(&e);
            let message = match (tls_failure(&e), stage) {
                (Some(t), _) => format!("TLS with {url} failed: {t}"),
                (None, Stage::Connect) => format!("connecting to {url}: {e}"),
                (None, _) => format!("the request to {url} was sent but its answer was lost ({e})"),
            };
            Error::Network { stage, message }
        })
    }

    /// An answer's bytes, at most `limit` of them.
    fn read(&self, url: &str, resp: &mut Response, limit: u64) -> Result<Vec<u8>> {
        let status = resp.status().as_u16();
        resp.body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(n) => too_large(url, status, n),
                ureq::Error::Io(io)
                    if io
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<ureq::Error>())
                        .is_some_and(|i| matches!(i, ureq::Error::BodyExceedsLimit(_))) =>
                {
                    too_large(url, status, limit)
                }
                e => Error::Network {
                    stage: Stage::Answer,
                    message: format!("the answer from {url} (HTTP {status}) broke off ({e})"),
                },
            })
    }

    /// An answer parsed as `T` (at most `limit` bytes, parsed straight
    /// into the type), or the witness's typed error. `malformed` is the
    /// error when it is JSON but not a `T`.
    fn answer<T: DeserializeOwned>(
        &self,
        url: &str,
        mut resp: Response,
        limit: u64,
        malformed: &str,
    ) -> Result<T> {
        let status = resp.status().as_u16();
        let wait = retry_after(&resp);
        let bytes = self.read(url, &mut resp, limit)?;
        let not_json = || Error::Network {
            stage: Stage::Unreadable,
            message: format!(
                "HTTP {status} from {url} is not JSON: {:?}",
                snippet(&String::from_utf8_lossy(&bytes[..bytes.len().min(240)]))
            ),
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice::<T>(&bytes).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => Error::invalid(malformed),
                _ => not_json(),
            });
        }
        let error = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => b.error,
            // Read leniently (when small): an error body missing fields
            // still tells its status, and its code and message where
            // present.
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                let body: Json = if bytes.len() <= LOOSE_ERROR_BYTES {
                    serde_json::from_slice(&bytes).unwrap_or_default()
                } else {
                    Json::Null
                };
                let fields = &body["error"];
                let mut error: ErrorJson =
                    serde_json::from_value(fields.clone()).unwrap_or_default();
                error.code = fields["code"].as_str().unwrap_or("http_error").to_string();
                error.message = fields["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}"));
                error
            }
            Err(_) => return Err(not_json()),
        };
        Err(Error::Rejected(Box::new(Rejection {
            endpoint: url.to_string(),
            status,
            body: error,
            retry_after: wait,
        })))
    }

    /// Submits a migration (the caller must be the group's admin). Not in
    /// [`WitnessApi`]: sync never submits one, `pdb_migrate` does.
    pub fn submit_migration(&self, req: &MigrationRequest) -> Result<MigrationResponse> {
        let url = self.url(&Endpoint::SubmitMigration);
        let resp = self.send(&url, |a, url, auth| {
            a.post(url).header("Authorization", auth).send_json(req)
        })?;
        self.answer(
            &url,
            resp,
            self.bound(&Endpoint::SubmitMigration),
            "the witness sent a malformed migration certificate",
        )
    }

    /// The group's signed head once it passes `after`, or when `wait`
    /// seconds have passed (the background worker's long poll; not in
    /// [`WitnessApi`]: sync never waits). The caller verifies it.
    pub fn watch_head(&self, after: u64, wait: u64) -> Result<pdb_protocol::wire::HeadJson> {
        self.get(Endpoint::Head { after, wait }, "malformed signed head")
    }

    /// GET an endpoint answering `T`; `malformed` is the error when the
    /// JSON is not a `T`.
    fn get<T: DeserializeOwned>(&self, e: Endpoint, malformed: &str) -> Result<T> {
        let url = self.url(&e);
        let resp = self.send(&url, |a, url, auth| {
            a.get(url).header("Authorization", auth).call()
        })?;
        self.answer(&url, resp, self.bound(&e), malformed)
    }
}

/// An answer past what its endpoint may take: refused unparsed.
fn too_large(url: &str, status: u16, limit: u64) -> Error {
    Error::refused(
        "response_too_large",
        format!(
            "response_too_large: the answer from {url} (HTTP {status}) is larger than the {limit} bytes that answer may take; nothing of it was used (a broken proxy or witness)"
        ),
    )
}

impl WitnessApi for HttpWitness {
    fn witness(&self) -> Result<WitnessJson> {
        self.get(Endpoint::Witness, "the witness did not send its public key")
    }

    fn group(&self) -> Result<GroupJson> {
        self.get(Endpoint::Group, "malformed group head")
    }

    fn commits(&self, after: u64, after_hash: Option<[u8; 32]>, limit: u32) -> Result<CommitsPage> {
        self.get(
            Endpoint::Commits {
                after,
                after_hash,
                limit,
            },
            "the witness sent a malformed page",
        )
    }

    fn commit(&self, req: &CommitRequest) -> Result<MinimalCommitResponse> {
        let url = self.url(&Endpoint::Commit);
        let resp = self.send(&url, |a, url, auth| {
            a.post(url)
                .header("Authorization", auth)
                .header("Prefer", "return=minimal")
                .send_json(req)
        })?;
        self.answer(
            &url,
            resp,
            self.bound(&Endpoint::Commit),
            "the witness sent a malformed certificate",
        )
    }

    fn migrations(&self, after_version: u32) -> Result<MigrationsPage> {
        self.get(
            Endpoint::Migrations { after_version },
            "the witness sent a malformed list of migrations",
        )
    }

    fn latest_snapshot(&self) -> Result<Option<SnapshotJson>> {
        match self.get(
            Endpoint::LatestSnapshot,
            "the witness sent a malformed snapshot manifest",
        ) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_rejection("not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A 206 answer whose Content-Range must start at `start`.
    fn snapshot_range(&self, seq: u64, start: u64, end: u64) -> Result<Vec<u8>> {
        let url = self.url(&Endpoint::SnapshotData { seq });
        let mut resp = self.send(&url, |a, url, auth| {
            a.get(url)
                .header("Authorization", auth)
                .header("Range", &format!("bytes={start}-{end}"))
                .call()
        })?;
        let unreadable = |message: String| Error::Network {
            stage: Stage::Unreadable,
            message,
        };
        if resp.status().as_u16() != 206 {
            // Not a range: the witness's error (classified as for JSON
            // calls), or an answer that is not what was asked for.
            let what: Json = self.answer(
                &url,
                resp,
                self.bound(&Endpoint::SnapshotData { seq }),
                "not a byte range",
            )?;
            return Err(unreadable(format!(
                "{url}: expected a byte range, got {}",
                snippet(&what.to_string())
            )));
        }
        let starts_right = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok())
            == Some(start);
        if !starts_right {
            return Err(unreadable(format!(
                "{url}: the answer is not the range asked for"
            )));
        }
        self.read(&url, &mut resp, end.saturating_sub(start).saturating_add(1))
    }

    fn projections(&self) -> Result<ProjectionList> {
        self.get(
            Endpoint::Projections,
            "the witness sent a malformed projection list",
        )
    }

    fn projection_page(&self, name: &str, after: i64, limit: u32) -> Result<ProjectionPage> {
        self.get(
            Endpoint::Projection { name, after, limit },
            "malformed page",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_answer_is_bounded_whatever_the_witness_advertises() {
        let ordinary = page_bound(&crate::state::default_limits());
        assert_eq!(
            ordinary,
            (4 + 8) * 2 * (1 << 20) + 1000 * 4096 + GROUP_BYTES
        );
        let hostile = LimitsJson {
            max_body_bytes: 1 << 40,
            max_page_bytes: 1 << 40,
            max_page_commits: u32::MAX,
            keep_log_commits: None,
            max_wait_seconds: None,
        };
        assert_eq!(page_bound(&hostile), MAX_PAGE_ANSWER);
        // A witness configured for its largest commits still has room for
        // one of them in base64 with its certificate.
        let largest = LimitsJson {
            max_body_bytes: MAX_ADVERTISED_BODY,
            max_page_bytes: 4 << 20,
            ..crate::state::default_limits()
        };
        assert!(page_bound(&largest) > MAX_ADVERTISED_BODY * 4 / 3 + (4 << 20) * 4 / 3);
    }
}
