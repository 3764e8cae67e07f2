//! The `pdb-witness` command line: serving; tokens and roles, through the
//! running witness's API or on the files while it is stopped; and the
//! offline commands (create groups, migrate, verify, keys, restore).

use crate::auth::{Authenticator, Caller};
use crate::jwt::{IssuerConfig, Jwt};
use crate::limits::Limits;
use crate::witness::{self, Settings, SnapshotPolicy, Witness};
use crate::{access, keys, store, tokens, verify};
use clap::{Parser, Subcommand};
use pdb_protocol::hex;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "pdb-witness",
    version,
    about = "PersonalDB witness: orders, certifies and serves each group's history"
)]
pub struct Cli {
    /// Directory for the signing key, the token hash and the group files.
    #[arg(long, env = "PDB_DATA_DIR", default_value = ".pdb-data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once per process: the size of `serve`'s arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (the default).
    Serve(Box<ServeArgs>),
    /// Create a group from a schema file while the witness is stopped
    /// (use POST /v1/groups on a running witness).
    CreateGroup {
        /// Group id: 1-64 of a-z 0-9 _ -.
        #[arg(long)]
        group: String,
        /// File with the group's CREATE TABLE / CREATE INDEX statements.
        #[arg(long)]
        schema: PathBuf,
        #[arg(long, default_value_t = 1)]
        schema_version: u32,
    },
    /// Take a group's schema to its next version with a file of DDL
    /// (ALTER TABLE ... ADD/DROP/RENAME COLUMN, CREATE/DROP TABLE,
    /// CREATE/DROP INDEX), while the witness is stopped (use
    /// POST /v1/groups/<g>/migrations on a running witness).
    Migrate {
        #[arg(long)]
        group: String,
        /// File with the migration's statements.
        #[arg(long)]
        file: PathBuf,
        /// The version it makes (default: the current one + 1).
        #[arg(long)]
        schema_version: Option<u32>,
        /// The oldest version whose commits stay accepted, translated
        /// (default: the current one).
        #[arg(long)]
        accepts_from: Option<u32>,
    },
    /// Re-check a group's chain, signatures and state root from disk.
    Verify {
        /// The group to check; all groups when absent.
        #[arg(long)]
        group: Option<String>,
    },
    /// Print the witness's public key (hex).
    PublicKey,
    /// Replace the signing key with a new one (witness stopped). The
    /// rotation is signed by both keys; devices that pinned the old key
    /// follow it. The old private key is gone afterwards.
    RotateKey,
    /// Copy everything the witness keeps (key, tokens, directory, groups,
    /// snapshots) into DIR, consistently, while it serves. See
    /// docs/operations.md.
    Backup {
        /// Where the backup goes (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
        /// Tokens file, when it is not DATA/tokens.json.
        #[arg(long, env = "PDB_TOKENS_FILE")]
        tokens_file: Option<PathBuf>,
    },
    /// Put a backup back into an empty data directory (witness stopped);
    /// then run `verify`. See docs/operations.md.
    Restore {
        /// The backup's directory.
        #[arg(long)]
        from: PathBuf,
    },
    /// Make a static bearer token for an identity (a device, a person):
    /// printed once, only its hash is stored, and it works at once. With
    /// --group and --role the identity gets that role in the group too.
    /// On a running witness this goes through its API (with the admin
    /// token); with the witness stopped, to the files directly.
    AddToken {
        #[arg(long)]
        identity: String,
        /// A group to give the identity a role in.
        #[arg(long, requires = "role")]
        group: Option<String>,
        /// viewer, reader, writer or admin (with --group).
        #[arg(long, requires = "group")]
        role: Option<String>,
        /// Tokens file (default: DATA/tokens.json).
        #[arg(long, env = "PDB_TOKENS_FILE")]
        tokens_file: Option<PathBuf>,
        #[command(flatten)]
        running: RunningArgs,
    },
    /// Revoke every token of an identity, at once (its roles stay).
    RevokeToken {
        #[arg(long)]
        identity: String,
        /// Tokens file (default: DATA/tokens.json).
        #[arg(long, env = "PDB_TOKENS_FILE")]
        tokens_file: Option<PathBuf>,
        #[command(flatten)]
        running: RunningArgs,
    },
    /// Give an identity a role in a group (on a running witness through
    /// its API, with the admin token).
    Grant {
        #[arg(long)]
        group: String,
        #[arg(long)]
        identity: String,
        /// viewer, reader, writer or admin.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        running: RunningArgs,
    },
    /// Take an identity's role in a group away (on a running witness
    /// through its API, with the admin token).
    Revoke {
        #[arg(long)]
        group: String,
        #[arg(long)]
        identity: String,
        #[command(flatten)]
        running: RunningArgs,
    },
}

/// How a command reaches a running witness (used only when one holds the
/// data directory).
#[derive(clap::Args)]
pub struct RunningArgs {
    /// The running witness's URL (default: the one it wrote to
    /// DATA/url when it started).
    #[arg(long, env = "PDB_WITNESS_URL")]
    url: Option<String>,
    /// The running witness's admin token.
    #[arg(long, env = "PDB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PDB_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Admin bearer token. When unset, one is generated on first start,
    /// shown once, and only its hash is stored.
    #[arg(long, env = "PDB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "PDB_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// A catch-up page stops once its changesets reach this many bytes (it
    /// always holds at least one commit).
    #[arg(long, env = "PDB_MAX_PAGE_BYTES", default_value_t = store::log::DEFAULT_PAGE_BYTES)]
    max_page_bytes: u64,
    /// Make a snapshot every N commits (0: never on this trigger).
    #[arg(long, env = "PDB_SNAPSHOT_EVERY_COMMITS", default_value_t = 10_000)]
    snapshot_every_commits: u64,
    /// Make a snapshot every M bytes of log since the last one (0: never).
    #[arg(long, env = "PDB_SNAPSHOT_EVERY_BYTES", default_value_t = 64 * 1024 * 1024)]
    snapshot_every_bytes: u64,
    /// Drop changesets of commits up to the newest snapshot (default: keep
    /// the whole log). Older catch-up gets `snapshot_required`.
    #[arg(long, env = "PDB_PRUNE_LOG")]
    prune_log: bool,
    /// With --prune-log: commits kept in the log before each new snapshot,
    /// so devices a little behind it catch up from the log.
    #[arg(long, env = "PDB_KEEP_LOG_COMMITS", default_value_t = witness::DEFAULT_KEEP_LOG_COMMITS)]
    keep_log_commits: u64,
    /// The longest wait a head watch (`GET .../head?after=&wait=`) may ask
    /// for, in seconds.
    #[arg(long, env = "PDB_MAX_WAIT_SECONDS", default_value_t = 60)]
    max_wait_seconds: u64,
    /// Head watches waiting at once, in all.
    #[arg(long, env = "PDB_MAX_WATCHERS", default_value_t = 10_000)]
    max_watchers: usize,
    /// Head watches waiting at once per caller identity.
    #[arg(long, env = "PDB_MAX_WATCHERS_PER_CALLER", default_value_t = 16)]
    max_watchers_per_caller: usize,
    /// Static tokens: JSON list of {"identity", "sha256"} (default:
    /// DATA/tokens.json; see `add-token`).
    #[arg(long, env = "PDB_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Secret for HS256 JWTs from the app's auth server (at least 32
    /// bytes).
    #[arg(long, env = "PDB_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
    /// Ed25519 public key (hex) for EdDSA JWTs from the app's auth server.
    #[arg(long, env = "PDB_JWT_EDDSA_KEY")]
    jwt_eddsa_key: Option<String>,
    /// PEM file of a public key for JWTs: RSA (RS256), EC P-256 (ES256) or
    /// Ed25519 (EdDSA). Repeat, or separate with commas, for several.
    #[arg(long, env = "PDB_JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    jwt_public_key_file: Vec<PathBuf>,
    /// JWKS URL of the identity provider (https://, or http:// to a
    /// loopback address); fetched, cached, refreshed on an unknown `kid`.
    #[arg(long, env = "PDB_JWT_JWKS_URL")]
    jwt_jwks_url: Option<String>,
    /// Required `iss` of JWTs (unchecked when unset).
    #[arg(long, env = "PDB_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of JWTs (unchecked when unset).
    #[arg(long, env = "PDB_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// JWT identities are `<prefix>:<sub>`, so they never collide with
    /// static tokens' identities; an empty prefix makes them the bare `sub`.
    #[arg(long, env = "PDB_JWT_IDENTITY_PREFIX", default_value = "jwt")]
    jwt_identity_prefix: String,
    /// JSON file listing identity providers, each with its own keys,
    /// `issuer`, `audience` and `identity_prefix` (docs/witness.md).
    #[arg(long, env = "PDB_JWT_CONFIG")]
    jwt_config: Option<PathBuf>,
    /// PEM certificate chain: the witness terminates TLS itself and serves
    /// https:// (with --tls-key).
    #[arg(long, env = "PDB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "PDB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "PDB_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Bounds on connections, memory and work (docs/witness.md, "Limits").
#[derive(clap::Args)]
pub struct LimitArgs {
    /// Open connections in total (more are answered 503 and closed).
    #[arg(long, env = "PDB_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Open connections from one IP address (more are answered 429).
    #[arg(long, env = "PDB_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    max_connections_per_ip: usize,
    /// Seconds a connection may take to send a request head, or stay idle
    /// between requests, before it is closed.
    #[arg(long, env = "PDB_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    idle_timeout_secs: u64,
    /// Seconds a request body may take to arrive.
    #[arg(long, env = "PDB_BODY_TIMEOUT_SECS", default_value_t = 30)]
    body_timeout_secs: u64,
    /// Seconds a connection may take no bytes of an answer before it is
    /// closed (what the answer held is released).
    #[arg(long, env = "PDB_WRITE_TIMEOUT_SECS", default_value_t = 30)]
    write_timeout_secs: u64,
    /// Bytes per second an answer must be taken at, on average: each
    /// answer is cut (and what it held released) past the write timeout
    /// plus its length at this rate.
    #[arg(long, env = "PDB_MIN_WRITE_BYTES_PER_SEC", default_value_t = 64 * 1024)]
    min_write_bytes_per_sec: u64,
    /// Request body bytes held in memory at once, all requests together.
    #[arg(long, env = "PDB_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    max_buffered_bytes: usize,
    /// Requests one caller may have in progress at once (429 over it).
    #[arg(long, env = "PDB_MAX_CALLS_PER_CALLER", default_value_t = 32)]
    max_calls_per_caller: usize,
    /// Reads (and admins' changes and snapshots) running at once against
    /// one group.
    #[arg(long, env = "PDB_GROUP_READS", default_value_t = 4)]
    group_reads: usize,
    /// Blocking jobs (reads, maintenance, snapshots) running at once.
    #[arg(long, env = "PDB_BLOCKING_JOBS", default_value_t = 64)]
    blocking_jobs: usize,
    /// Free disk space to keep: below it commits get storage_full (507)
    /// and /healthz is not ready.
    #[arg(long, env = "PDB_RESERVE_BYTES", default_value_t = 64 * 1024 * 1024)]
    reserve_bytes: u64,
    /// Virtual-machine steps one unit of admin SQL may take (one commit's
    /// rule checks, one projection's upkeep per commit, one page).
    #[arg(long, env = "PDB_SQL_STEPS", default_value_t = 10_000_000)]
    sql_steps: u64,
    /// Milliseconds one unit of admin SQL may take.
    #[arg(long, env = "PDB_SQL_MILLIS", default_value_t = 2000)]
    sql_millis: u64,
    /// SQLite memory one statement of admin SQL may hold.
    #[arg(long, env = "PDB_SQL_MEMORY_BYTES", default_value_t = 64 * 1024 * 1024)]
    sql_memory_bytes: usize,
    /// Groups open at once; beyond it the least recently used idle ones
    /// are closed (each open group holds up to 9 files).
    #[arg(long, env = "PDB_MAX_OPEN_GROUPS", default_value_t = 1000)]
    max_open_groups: usize,
    /// Seconds an open group stays open unused.
    #[arg(long, env = "PDB_GROUP_IDLE_SECS", default_value_t = 60)]
    group_idle_secs: u64,
    /// Threads that run the groups' writers (at most one per group at a
    /// time).
    #[arg(long, env = "PDB_WRITER_THREADS", default_value_t = 8)]
    writer_threads: usize,
    /// Migrations a group may run back to back (then one per
    /// --migration-every-secs; 429 with Retry-After meanwhile).
    #[arg(long, env = "PDB_MIGRATION_BURST", default_value_t = 10)]
    migration_burst: u32,
    /// Seconds that earn a group one more migration.
    #[arg(long, env = "PDB_MIGRATION_EVERY_SECS", default_value_t = 10)]
    migration_every_secs: u64,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            idle_timeout: secs(self.idle_timeout_secs),
            body_timeout: secs(self.body_timeout_secs),
            write_timeout: secs(self.write_timeout_secs),
            min_write_rate: self.min_write_bytes_per_sec.max(1),
            max_buffered_bytes: self.max_buffered_bytes,
            max_calls_per_caller: self.max_calls_per_caller.max(1),
            group_reads: self.group_reads.max(1),
            blocking: self.blocking_jobs.max(2),
            reserve_bytes: self.reserve_bytes,
            sql: crate::sandbox::Limits {
                steps: self.sql_steps.max(1000),
                time: std::time::Duration::from_millis(self.sql_millis.max(1)),
                memory: self.sql_memory_bytes.max(1024 * 1024),
                ..crate::sandbox::Limits::default()
            },
            max_open_groups: self.max_open_groups.max(1),
            group_idle: secs(self.group_idle_secs),
            writer_threads: self.writer_threads.max(1),
            migration_burst: self.migration_burst.max(1),
            migration_every: secs(self.migration_every_secs),
            ..Limits::default()
        }
    }
}

impl Cli {
    /// The command line; with no subcommand it is `serve`, parsed as such
    /// so every flag default and environment variable applies.
    pub fn from_args() -> Cli {
        let cli = Cli::parse();
        if cli.command.is_some() {
            return cli;
        }
        Cli::parse_from(std::env::args_os().chain(std::iter::once("serve".into())))
    }

    pub fn run(self) -> Result<(), String> {
        let data = self.data_dir.as_path();
        match self.command {
            None => Err("no command (try --help)".into()),
            Some(Command::Serve(args)) => serve(data, *args),
            Some(Command::CreateGroup {
                group,
                schema,
                schema_version,
            }) => create_group(data, &group, &schema, schema_version),
            Some(Command::Migrate {
                group,
                file,
                schema_version,
                accepts_from,
            }) => migrate(data, &group, &file, schema_version, accepts_from),
            Some(Command::Verify { group }) => verify_groups(data, group.as_deref()),
            Some(Command::AddToken {
                identity,
                group,
                role,
                tokens_file,
                running,
            }) => add_token(data, &identity, group.zip(role), tokens_file, &running),
            Some(Command::RevokeToken {
                identity,
                tokens_file,
                running,
            }) => revoke_token(data, &identity, tokens_file, &running),
            Some(Command::Grant {
                group,
                identity,
                role,
                running,
            }) => change_role(data, &group, &identity, Some(&role), &running),
            Some(Command::Revoke {
                group,
                identity,
                running,
            }) => change_role(data, &group, &identity, None, &running),
            Some(Command::RotateKey) => rotate_key(data),
            Some(Command::Backup { to, tokens_file }) => {
                let m = crate::backup::backup(data, &to, tokens_file.as_deref())?;
                let groups = m["groups"].as_object().map_or(0, |g| g.len());
                println!("backed up {groups} group(s) into {}", to.display());
                Ok(())
            }
            Some(Command::Restore { from }) => {
                let _lock = lock_data_dir(data)?;
                let m = crate::backup::restore(&from, data)?;
                let groups = m["groups"].as_object().map_or(0, |g| g.len());
                println!(
                    "restored {groups} group(s) from {} into {}; check them with `pdb-witness verify`",
                    from.display(),
                    data.display()
                );
                Ok(())
            }
            Some(Command::PublicKey) => keys::load_key(data)
                .map(|k| println!("{}", hex(k.verifying_key().as_bytes())))
                .map_err(|e| e.to_string()),
        }
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PDB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: a log written to a file or a pipe
        // (systemd, `2> witness.log`) keeps no escape codes; NO_COLOR too.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// Holds an exclusive lock on the data directory while serving, so offline
/// commands never write under a running witness.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, String> {
    try_lock_data_dir(data_dir)?.ok_or_else(|| {
        format!(
            "{} is in use by a running witness (stop it, or use its HTTP API)",
            data_dir.display()
        )
    })
}

/// The data directory's lock, or `None` while a running witness holds it.
fn try_lock_data_dir(data_dir: &Path) -> Result<Option<std::fs::File>, String> {
    crate::keys::private_dir(data_dir)
        .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("LOCK"))
        .map_err(|e| e.to_string())?;
    Ok(f.try_lock().is_ok().then_some(f))
}

/// Where a running witness serving `data_dir` said it listens.
const URL_FILE: &str = "url";

/// A running witness, reached over its API with the admin token.
struct Running {
    url: String,
    token: String,
    agent: ureq::Agent,
}

impl Running {
    fn new(data_dir: &Path, args: &RunningArgs) -> Result<Running, String> {
        let url = match &args.url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => std::fs::read_to_string(data_dir.join(URL_FILE))
                .map(|u| u.trim().to_string())
                .map_err(|e| {
                    format!(
                        "a running witness holds {} but its URL is unknown ({}: {e}): give it with --url or PDB_WITNESS_URL",
                        data_dir.display(),
                        data_dir.join(URL_FILE).display()
                    )
                })?,
        };
        let token = args.admin_token.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
            format!(
                "a witness is running on {} ({url}): this goes through its API, which needs its admin token — set PDB_ADMIN_TOKEN (or pass --admin-token), or stop the witness to change the files directly",
                data_dir.display()
            )
        })?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(60)))
            .build()
            .into();
        Ok(Running { url, token, agent })
    }

    /// One call; the answer's JSON, or its error's code and message.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, None) => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = sent.map_err(|e| {
            format!(
                "the witness at {} did not answer: {e} (is --url / DATA/url right?)",
                self.url
            )
        })?;
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_json()
            .map_err(|e| format!("unreadable answer from {}: HTTP {status}: {e}", self.url))?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let code = v["error"]["code"].as_str().unwrap_or("error");
        let message = v["error"]["message"].as_str().unwrap_or("");
        Err(if status == 401 {
            format!("{code}: {message} (the admin token given is not this witness's: set PDB_ADMIN_TOKEN to the one it printed on first start)")
        } else {
            format!("{code}: {message}")
        })
    }
}

/// An identity as one path segment.
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn serve(data_dir: &Path, args: ServeArgs) -> Result<(), String> {
    // Before SQLite is first used: count its memory per thread, so admin
    // SQL can be held to its memory budget.
    let counted = crate::sandbox::alloc::install();
    init_logs(&args.log_format);
    if !counted {
        tracing::warn!(
            "SQLite started before its allocator could be set: admin SQL has no memory bound"
        );
    }
    let _lock = lock_data_dir(data_dir)?;
    let (key, created) = keys::load_or_create_key(data_dir).map_err(|e| e.to_string())?;
    let (rotations, _) = keys::chain(data_dir, &key).map_err(|e| e.to_string())?;
    let (token_hash, new_token) =
        keys::admin_token(data_dir, args.admin_token.as_deref()).map_err(|e| e.to_string())?;
    let public_key = hex(key.verifying_key().as_bytes());
    let settings = Settings {
        data_dir: data_dir.to_path_buf(),
        auth: Authenticator {
            admin_hash: token_hash,
            tokens: tokens::Tokens::open(&tokens_path(data_dir, args.tokens_file.clone()))?,
            jwt: Jwt::new(jwt_issuers(&args)?)?,
        },
        max_body_bytes: args.max_body_bytes.max(1024),
        max_page_bytes: args.max_page_bytes.max(1),
        snapshots: SnapshotPolicy {
            every_commits: args.snapshot_every_commits,
            every_log_bytes: args.snapshot_every_bytes,
            prune_log: args.prune_log,
            keep_log_commits: args.keep_log_commits,
        },
        limits: args.limits.limits(),
        rotations,
        watch: crate::watch::WatchLimits {
            max_wait: std::time::Duration::from_secs(args.max_wait_seconds.clamp(1, 3600)),
            max_waiters: args.max_watchers,
            max_waiters_per_caller: args.max_watchers_per_caller.max(1),
        },
    };
    let blocking = settings.limits.blocking;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::acceptor(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    raise_file_limit(&settings.limits);
    let witness = Arc::new(Witness::open(settings, key)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking + 16)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let addr = args.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let url = format!("{scheme}://{addr}");
        // Where commands run on this host reach it (add-token, grant...).
        let local = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => format!("{scheme}://127.0.0.1:{}", addr.port()),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => format!("{scheme}://[::1]:{}", addr.port()),
            _ => url.clone(),
        };
        if let Err(e) = keys::write_private(&data_dir.join(URL_FILE), &local) {
            tracing::warn!(error = %e, "could not write DATA/url (commands on this host then need --url)");
        }
        println!("PersonalDB witness listening on {url}");
        println!("  data directory: {}", data_dir.display());
        println!(
            "  public key:     {public_key}{}",
            if created { " (created now)" } else { "" }
        );
        println!(
            "  groups:         {} (each opened on first use)",
            witness.directory.count().map_err(|e| e.to_string())?
        );
        match &new_token {
            Some(t) => println!("  admin token:    {t}\n                  (shown once; only its hash is stored)"),
            None => println!("  admin token:    as configured (PDB_ADMIN_TOKEN or the token shown on first start)"),
        }
        println!("Create a group:");
        println!(
            "  curl -s -H \"Authorization: Bearer $PDB_ADMIN_TOKEN\" {url}/v1/groups \\\n    -d '{{\"group\":\"tasks\",\"schema_sql\":\"CREATE TABLE tasks(id TEXT PRIMARY KEY, title TEXT, done INTEGER)\"}}'"
        );
        println!("Make a token for a device (a writer in that group; never give a device the admin token):");
        println!(
            "  curl -s -H \"Authorization: Bearer $PDB_ADMIN_TOKEN\" {url}/v1/tokens \\\n    -d '{{\"identity\":\"phone\",\"group\":\"tasks\",\"role\":\"writer\"}}'"
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        crate::http::run(listener, witness, tls, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })?;
    // Whatever blocking work is left (it is being stopped) gets a bound.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(())
}

/// Raises the soft limit on open files to the hard one (connections and
/// open groups each hold files), warning when the bounds could pass it.
fn raise_file_limit(limits: &Limits) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    let have = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
        r.rlim_cur
    };
    let need = (limits.max_connections + 9 * limits.max_open_groups + 64) as u64;
    if (have as u64) < need {
        tracing::warn!(
            open_files = have as u64,
            need,
            "the open-file limit is below what --max-connections and --max-open-groups may use"
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn create_group(data_dir: &Path, id: &str, schema: &Path, version: u32) -> Result<(), String> {
    let _lock = lock_data_dir(data_dir)?;
    let ddl = std::fs::read_to_string(schema)
        .map_err(|e| format!("reading {}: {e}", schema.display()))?;
    let w = offline_witness(data_dir)?;
    let g = w
        .create_group(id, &ddl, version)
        .map_err(|e| e.to_string())?;
    println!(
        "created group {id} (schema version {version}, hash {})",
        hex(&g.info().schema_hash)
    );
    w.shutdown();
    Ok(())
}

fn migrate(
    data_dir: &Path,
    id: &str,
    file: &Path,
    version: Option<u32>,
    accepts_from: Option<u32>,
) -> Result<(), String> {
    let _lock = lock_data_dir(data_dir)?;
    let ddl =
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let w = offline_witness(data_dir)?;
    let g = w.group(id).map_err(|e| e.to_string())?;
    let current = g.info().schema.clone();
    let to = match version {
        Some(v) => v,
        None => current
            .version
            .checked_add(1)
            .ok_or("the schema version cannot grow further")?,
    };
    let migration = store::migrate::derive(
        &current,
        &ddl,
        to,
        accepts_from.unwrap_or(current.version),
        g.sql_limits(),
    )?;
    let input = crate::write::migration::MigrationInput {
        migration,
        author: "operator-cli".into(),
    };
    let out = g.migrate_blocking(input).map_err(|e| e.to_string())?;
    println!(
        "group {id}: schema version {} -> {} at entry {} (hash {}); commits of versions {} and later accepted",
        current.version, out.schema.version, out.certificate.seq, out.schema.hash, out.accepts_from
    );
    drop(g);
    w.shutdown();
    Ok(())
}

fn verify_groups(data_dir: &Path, only: Option<&str>) -> Result<(), String> {
    let key = keys::load_key(data_dir).map_err(|e| e.to_string())?;
    let (_, vk) = keys::chain(data_dir, &key).map_err(|e| e.to_string())?;
    let dir = witness::groups_dir(data_dir);
    let mut ids: Vec<String> = match only {
        Some(g) => vec![g.to_string()],
        None => std::fs::read_dir(&dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".sqlite"))
                    .map(str::to_string)
            })
            .collect(),
    };
    ids.sort();
    let mut failed = 0;
    for id in ids {
        if !store::valid_id(&id) {
            return Err(format!("invalid group id {id:?}"));
        }
        let snaps = crate::snapshot::dir(data_dir, &id);
        match verify::verify_file(&dir.join(store::file_name(&id)), &snaps, &vk) {
            Ok(r) => println!(
                "ok {}: {} commits, {} rows, head {}, state root {}",
                r.group, r.commits, r.rows, r.head_hash, r.state_root
            ),
            Err(e) => {
                failed += 1;
                println!("FAILED {id}: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} group(s) failed verification"));
    }
    Ok(())
}

/// The identity providers the flags and the `--jwt-config` file name.
fn jwt_issuers(args: &ServeArgs) -> Result<Vec<IssuerConfig>, String> {
    let mut issuers = match &args.jwt_config {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            serde_json::from_str::<Vec<IssuerConfig>>(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let mut pems = Vec::new();
    for path in &args.jwt_public_key_file {
        pems.push(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
        );
    }
    if args.jwt_hs256_secret.is_some()
        || args.jwt_eddsa_key.is_some()
        || !pems.is_empty()
        || args.jwt_jwks_url.is_some()
    {
        issuers.push(IssuerConfig {
            name: "--jwt-* flags".into(),
            identity_prefix: args.jwt_identity_prefix.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            hs256_secret: args.jwt_hs256_secret.clone(),
            public_keys_pem: pems,
            eddsa_keys_hex: args.jwt_eddsa_key.iter().cloned().collect(),
            jwks_url: args.jwt_jwks_url.clone(),
        });
    }
    Ok(issuers)
}

fn tokens_path(data_dir: &Path, file: Option<PathBuf>) -> PathBuf {
    file.unwrap_or_else(|| data_dir.join("tokens.json"))
}

fn add_token(
    data_dir: &Path,
    identity: &str,
    grant: Option<(String, String)>,
    file: Option<PathBuf>,
    running: &RunningArgs,
) -> Result<(), String> {
    let Some(lock) = try_lock_data_dir(data_dir)? else {
        let r = Running::new(data_dir, running)?;
        let mut body = serde_json::json!({ "identity": identity });
        if let Some((g, role)) = &grant {
            body["group"] = serde_json::json!(g);
            body["role"] = serde_json::json!(role);
        }
        let v = r.call("POST", "/v1/tokens", Some(body))?;
        println!("{}", v["token"].as_str().unwrap_or_default());
        eprintln!("{}", made(identity, &grant, &r.url));
        return Ok(());
    };
    if let Some((g, role)) = &grant {
        change_role_offline(data_dir, g, identity, Some(role))?;
    }
    // (The lock is held throughout.)
    let path = tokens_path(data_dir, file);
    let token = tokens::Tokens::open(&path)?.add(identity)?;
    drop(lock);
    println!("{token}");
    eprintln!(
        "{} (stored hashed in {})",
        made(identity, &grant, &data_dir.display().to_string()),
        path.display()
    );
    Ok(())
}

fn made(identity: &str, grant: &Option<(String, String)>, at: &str) -> String {
    match grant {
        Some((g, role)) => format!("token for {identity:?} ({role} in group {g:?}) made at {at}; shown once, works now"),
        None => format!("token for {identity:?} made at {at}; shown once, works now (give it a role: pdb-witness grant)"),
    }
}

fn revoke_token(
    data_dir: &Path,
    identity: &str,
    file: Option<PathBuf>,
    running: &RunningArgs,
) -> Result<(), String> {
    let Some(_lock) = try_lock_data_dir(data_dir)? else {
        let r = Running::new(data_dir, running)?;
        let v = r.call("DELETE", &format!("/v1/tokens/{}", segment(identity)), None)?;
        println!("revoked {} token(s) of {identity:?}", v["revoked"]);
        return Ok(());
    };
    let n = tokens::Tokens::open(&tokens_path(data_dir, file))?.revoke(identity)?;
    if n == 0 {
        return Err(format!("no tokens for identity {identity:?}"));
    }
    println!("revoked {n} token(s) of {identity:?}");
    Ok(())
}

fn change_role(
    data_dir: &Path,
    group: &str,
    identity: &str,
    role: Option<&str>,
    running: &RunningArgs,
) -> Result<(), String> {
    let Some(_lock) = try_lock_data_dir(data_dir)? else {
        let r = Running::new(data_dir, running)?;
        let path = format!(
            "/v1/groups/{}/members/{}",
            segment(group),
            segment(identity)
        );
        let v = match role {
            Some(role) => r.call("PUT", &path, Some(serde_json::json!({ "role": role })))?,
            None => r.call("DELETE", &path, None)?,
        };
        println!("{v}");
        return Ok(());
    };
    change_role_offline(data_dir, group, identity, role)
}

/// Changes a role with the witness stopped (the caller holds the lock).
fn change_role_offline(
    data_dir: &Path,
    group: &str,
    identity: &str,
    role: Option<&str>,
) -> Result<(), String> {
    let w = offline_witness(data_dir)?;
    let g = w.group(group).map_err(|e| e.to_string())?;
    let operator = Caller {
        identity: "operator-cli".into(),
        operator: true,
    };
    let out = match role {
        Some(r) => access::grant(
            &w.directory,
            &g,
            &operator,
            identity,
            &serde_json::json!({ "role": r }),
        ),
        None => access::revoke(&w.directory, &g, &operator, identity),
    }
    .map_err(|e| e.to_string())?;
    println!("{out}");
    drop(g);
    w.shutdown();
    Ok(())
}

/// The latest time this witness signed into a group's log (each group's
/// last entry), for `rotate-key`.
fn latest_signed_ms(data_dir: &Path) -> Result<u64, String> {
    let dir = witness::groups_dir(data_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut latest = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_suffix(".sqlite")
            .filter(|id| store::valid_id(id))
        else {
            continue;
        };
        let head = rusqlite::Connection::open_with_flags(
            e.path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| store::log::head(&c))
        .map_err(|e| format!("reading group {id}'s head: {e}"))?;
        latest = latest.max(head.time_ms);
    }
    Ok(latest)
}

fn rotate_key(data_dir: &Path) -> Result<(), String> {
    let _lock = lock_data_dir(data_dir)?;
    // A new key is in force from its start: a start before a time the old
    // key already signed would put those records outside the old key's
    // period (verify fails, devices refuse them).
    let latest = latest_signed_ms(data_dir)?;
    let now = pdb_protocol::now_ms();
    if now <= latest {
        return Err(format!(
            "refusing to rotate: this witness already signed a record at {latest} ms since 1970, {} s after this machine's clock ({now} ms); a key starting now would put that record outside the old key's period. Check the clock; rotate once it has passed that time",
            (latest - now) / 1000
        ));
    }
    let r = keys::rotate(data_dir).map_err(|e| e.to_string())?;
    let rec = r.verify().map_err(|e| e.to_string())?;
    println!("{}", hex(&rec.new_key));
    eprintln!(
        "rotation {} made: {} -> {} (start the witness to sign with the new key)",
        rec.index,
        hex(&rec.prev_key),
        hex(&rec.new_key)
    );
    Ok(())
}

/// The witness's groups, opened for a command run while it is stopped.
fn offline_witness(data_dir: &Path) -> Result<Witness, String> {
    let (key, _) = keys::load_or_create_key(data_dir).map_err(|e| e.to_string())?;
    let settings = Settings {
        data_dir: data_dir.to_path_buf(),
        auth: Default::default(),
        max_body_bytes: 0,
        max_page_bytes: store::log::DEFAULT_PAGE_BYTES,
        snapshots: SnapshotPolicy::default(),
        limits: Limits::default(),
        rotations: Vec::new(),
        watch: Default::default(),
    };
    Witness::open(settings, key)
}
