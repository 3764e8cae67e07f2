//! `pdb_open(url, group, options)`: pins the witness's key, creates the
//! group's tables (or checks the local ones match its schema), starts
//! capture, stores the settings, then catches up (from a snapshot when
//! the database is empty, then by pulling).

use crate::client::{HttpWitness, WitnessApi};
use crate::db::{transaction, Db};
use crate::error::{Error, Result};
use crate::merge::Policy;
use crate::state::{self, Head};
use crate::tables::{self, read_local, SyncTable};
use crate::transport::{Transport, DEFAULT_TIMEOUT_MS};
use crate::{bootstrap, capture, keys, pending, pull, signed, status};
use pdb_protocol::{genesis_hash, Schema, StateRoot, Value};
use serde_json::{json, Value as Json};

pub struct OpenOptions {
    pub token: String,
    pub public_key: Option<String>,
    pub policy: Policy,
    pub transport: Transport,
    /// A signed head older than the device's clock by more than this is
    /// refused (0: no bound).
    pub max_head_age_ms: u64,
    /// Whether the token is stored in the database (for SQL-only
    /// workflows and other processes) or held by this process only.
    pub store_token: bool,
    /// The schema versions the app's code understands (`None`: any).
    pub schema_versions: Option<(u32, u32)>,
    /// The options the call named; a re-open keeps what was stored for
    /// the others.
    pub given: Vec<String>,
}

const OPTIONS: &[&str] = &[
    "token",
    "public_key",
    "policy",
    "ca_file",
    "allow_http",
    "timeout_ms",
    "max_head_age_ms",
    "store_token",
    "schema_versions",
];

pub fn parse_options(s: Option<&str>) -> Result<OpenOptions> {
    let v: Json = match s {
        None => json!({}),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error::invalid(format!("options must be a JSON object: {e}")))?,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| Error::invalid("options must be a JSON object"))?;
    for k in obj.keys() {
        if !OPTIONS.contains(&k.as_str()) {
            return Err(Error::invalid(format!(
                "unknown option {k:?} (expected {})",
                OPTIONS.join(", ")
            )));
        }
    }
    let transport = Transport {
        ca_file: match obj.get("ca_file") {
            None | Some(Json::Null) => None,
            Some(Json::String(f)) if !f.is_empty() => Some(f.clone()),
            Some(_) => return Err(Error::invalid("ca_file must be the path of a PEM file")),
        },
        allow_http: match obj.get("allow_http") {
            None => false,
            Some(Json::Bool(b)) => *b,
            Some(Json::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                n.as_i64() == Some(1)
            }
            Some(_) => return Err(Error::invalid("allow_http must be true or false")),
        },
        timeout_ms: match obj.get("timeout_ms") {
            None => DEFAULT_TIMEOUT_MS,
            Some(v) => v
                .as_u64()
                .filter(|t| (100..=3_600_000).contains(t))
                .ok_or_else(|| {
                    Error::invalid("timeout_ms must be a number of milliseconds, 100 to 3600000")
                })?,
        },
    };
    let policy = match obj.get("policy") {
        None => Policy::RemoteWins,
        Some(p) => p
            .as_str()
            .and_then(Policy::parse)
            .ok_or_else(|| {
                Error::invalid(
                    "policy must be remote_wins, local_wins or manual (keep_both was replaced by manual: conflicts stay open until pdb_resolve settles them)",
                )
            })?,
    };
    Ok(OpenOptions {
        token: obj
            .get("token")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string(),
        public_key: obj
            .get("public_key")
            .and_then(Json::as_str)
            .map(str::to_string),
        policy,
        transport,
        store_token: match obj.get("store_token") {
            None => true,
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(Error::invalid("store_token must be true or false")),
        },
        schema_versions: schema_versions(obj.get("schema_versions"))?,
        max_head_age_ms: match obj.get("max_head_age_ms") {
            None => signed::DEFAULT_MAX_HEAD_AGE_MS,
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::invalid("max_head_age_ms must be a number of milliseconds (0: no bound)")
            })?,
        },
        given: obj.keys().cloned().collect(),
    })
}

impl OpenOptions {
    fn given(&self, k: &str) -> bool {
        self.given.iter().any(|g| g == k)
    }

    /// On a database opened before, every option this call does not name
    /// keeps its stored value (the token — this process's, or the stored
    /// one —, whether it is stored, the policy, the transport, the head
    /// age bound, the app's schema versions), so re-opening with one new
    /// option changes only that one — except that the token and the
    /// transport's trust settings (`ca_file`, `allow_http`) are kept only
    /// for the stored URL's origin: a re-open naming another server must
    /// name its token (the stored one is never sent to another host).
    /// Then a token must be known.
    fn keep_stored(&mut self, db: &Db, url: &str) -> Result<()> {
        state::migrate(db)?;
        if state::is_open(db)? {
            let stored_url = state::get_text(db, "url")?;
            let same_origin = stored_url.as_deref().is_some_and(|u| same_origin(u, url));
            if !same_origin && !self.given("token") {
                return Err(Error::invalid(format!(
                    "another server: this database syncs with {}, not {url}; the stored token is only sent to the server it was given for — to move to {url}, give its token as json_object('token', '<token>') (and ca_file or allow_http if it needs them)",
                    stored_url.as_deref().unwrap_or("another server")
                )));
            }
            let stored_token = state::get_text(db, "token")?;
            if !self.given("store_token") {
                self.store_token = stored_token.is_some();
            }
            if !self.given("token") {
                if let Some(t) = crate::token::get(db)?.or(stored_token) {
                    self.token = t;
                }
            }
            if !self.given("policy") {
                if let Some(p) = state::get_text(db, "policy")?
                    .as_deref()
                    .and_then(Policy::parse)
                {
                    self.policy = p;
                }
            }
            let stored = Transport::load(db)?;
            if !self.given("ca_file") && same_origin {
                self.transport.ca_file = stored.ca_file;
            }
            if !self.given("allow_http") && same_origin {
                self.transport.allow_http = stored.allow_http;
            }
            if !self.given("timeout_ms") {
                self.transport.timeout_ms = stored.timeout_ms;
            }
            if !self.given("max_head_age_ms") {
                if let Some(ms) =
                    state::get_i64(db, "max_head_age_ms")?.and_then(|v| u64::try_from(v).ok())
                {
                    self.max_head_age_ms = ms;
                }
            }
            if !self.given("schema_versions") {
                let (min, max) = crate::migrate::app_range(db)?;
                self.schema_versions = ((min, max) != (0, u32::MAX)).then_some((min, max));
            }
        } else if !self.given("token") {
            if let Some(t) = crate::token::get(db)? {
                self.token = t;
            }
        }
        if self.token.is_empty() {
            return Err(Error::invalid(
                "no token: give the device's own as json_object('token', '<token>') (the witness's operator makes one: pdb-witness add-token --identity NAME --group GROUP --role writer, or POST /v1/tokens), or hand one to pdb_set_token first",
            ));
        }
        Ok(())
    }
}

/// Whether two URLs have the same origin: scheme, host (in any case) and
/// port (the scheme's default when not written). A URL that does not parse
/// has no origin in common with anything.
fn same_origin(a: &str, b: &str) -> bool {
    fn origin(u: &str) -> Option<(String, String, u16)> {
        let uri: ureq::http::Uri = u.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let port = match (uri.port_u16(), scheme.as_str()) {
            (Some(p), _) => p,
            (None, "https") => 443,
            (None, "http") => 80,
            (None, _) => return None,
        };
        Some((scheme, uri.host()?.to_ascii_lowercase(), port))
    }
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// `schema_versions`: `[min, max]` (or one version N, meaning `[N, N]`),
/// or null for any.
fn schema_versions(v: Option<&Json>) -> Result<Option<(u32, u32)>> {
    let bad = || {
        Error::invalid(
            "schema_versions must be [min, max]: the range of the group's schema versions this app's code understands (or one version)",
        )
    };
    let version = |v: &Json| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Array(a)) if a.len() == 2 => {
            let (min, max) = (version(&a[0])?, version(&a[1])?);
            if min > max {
                return Err(bad());
            }
            Ok(Some((min, max)))
        }
        Some(n @ Json::Number(_)) => {
            let n = version(n)?;
            Ok(Some((n, n)))
        }
        Some(_) => Err(bad()),
    }
}

/// Where a new database starts: the schema, the local tables to drop
/// first so they are built again at it (empty, and exactly the tables of
/// the other version of the group whose shape they have), and whether it
/// starts from the newest snapshot even with rows of its own (they are
/// re-based on it).
struct Start {
    schema: Schema,
    rebuild: Vec<String>,
    snapshot_with_own_rows: bool,
}

/// The schema a new database starts from: the group's schema in force
/// when its history has no migrations; else the schema of the snapshot it
/// will start from, or of the log's start — checked against signed
/// records (the snapshot's, the migrations', or the genesis its first
/// entry must chain to). Local tables that already exist choose: in the
/// shape of the snapshot's version, the database starts there (its rows,
/// if any, re-based on the snapshot); of the log's first version, there;
/// empty and in the shape of any other version of the group, they are
/// built again where the history starts (and reach that version as the
/// log is pulled). Anything else is refused, naming what to change.
fn start_schema(
    db: &Db,
    w: &dyn WitnessApi,
    key: &pdb_protocol::KeyChain,
    group: &str,
    g: &pdb_protocol::wire::GroupJson,
    current: Schema,
) -> Result<Start> {
    let start = |schema, rebuild, snapshot_with_own_rows| Start {
        schema,
        rebuild,
        snapshot_with_own_rows,
    };
    let Some(first) = g.schema_history.first() else {
        return Ok(start(current, Vec::new(), false));
    };
    let names: Vec<String> = current.tables.iter().map(|t| t.name.clone()).collect();
    let local = read_local(db, &names)?;
    let own_rows = match &local {
        None => false,
        Some(_) => has_rows(db, &names)?,
    };
    let snapshot = bootstrap::newer_snapshot(w, 0)?
        .and_then(|m| m.signed.to_signed())
        .and_then(|s| s.snapshot(key).ok())
        .map(|r| r.schema_version);
    let at = |v: u32| -> Result<Schema> {
        if v == current.version {
            Ok(current.clone())
        } else {
            crate::migrate::schema_at(key, group, w, v)
        }
    };
    let from = snapshot.unwrap_or(first.version);
    if local.is_none() {
        return Ok(start(at(from)?, Vec::new(), false));
    }
    // The local tables exist: which of the group's versions are they?
    if let Some(v) = snapshot {
        let s = at(v)?;
        if tables::check_local(db, &s).is_ok() {
            return Ok(start(s, Vec::new(), own_rows));
        }
    }
    // Newest first, so tables in the shape of a later version that added
    // a table are not taken for the first version's (which would keep the
    // added table as one of the app's own).
    let mut versions: Vec<u32> = g.schema_history.iter().map(|h| h.version).collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions.dedup();
    // Empty tables in a later version's shape are built again where the
    // history starts — exactly that version's tables, never a table of
    // another name (it may be the app's own). Tables with rows go on to
    // older versions: the first version's shape starts there.
    let mut with_rows = None;
    for v in versions.into_iter().filter(|v| Some(*v) != snapshot) {
        let s = at(v)?;
        if tables::check_local(db, &s).is_err() {
            continue;
        }
        if v == first.version {
            return Ok(start(s, Vec::new(), false));
        }
        let names: Vec<String> = s.tables.iter().map(|t| t.name.clone()).collect();
        if !has_rows(db, &names)? {
            return Ok(start(at(from)?, names, false));
        }
        with_rows.get_or_insert(v);
    }
    match with_rows {
        Some(v) => Err(Error::invalid(format!(
            "schema_mismatch: the tables here hold rows in the shape of the group's schema version {v}, but a new device starts from version {from} ({}): ask the group's admin for a snapshot at version {v} (POST /v1/groups/{group}/snapshots) and open again, or open with the tables empty",
            if snapshot.is_some() { "its newest snapshot's" } else { "where its log starts" }
        ))),
        None => {
            let why = tables::check_local(db, &at(current.version)?)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            Err(Error::invalid(format!(
                "schema_mismatch: the tables here match none of the group's schema versions (it is at version {}; against it: {}) — change them to the group's schema, or use another database",
                current.version,
                why.trim_start_matches("schema_mismatch: ")
            )))
        }
    }
}

/// Whether any of the tables holds a row.
fn has_rows(db: &Db, names: &[String]) -> Result<bool> {
    for n in names {
        let sql = format!(
            "SELECT 1 FROM {} LIMIT 1",
            pdb_protocol::sql::quote_ident(n)
        );
        if db.row(&sql, &[])?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Opens (or re-opens) a database for sync with a group.
pub fn open(db: Db, url: &str, group: &str, mut opts: OpenOptions) -> Result<Json> {
    if !valid_group_id(group) {
        return Err(Error::invalid(format!(
            "invalid group id {group:?}: a group id is 1-64 of a-z 0-9 _ -, starting with a letter or digit (the id the group was created with)"
        )));
    }
    // What a pdb_recover that did not finish (a crash) left beside the file.
    crate::recover::remove_stale_scratch(db.file()?.as_deref());
    opts.keep_stored(&db, url)?;
    if !opts.store_token {
        crate::token::set(&db, Some(&opts.token))?;
    }
    let w = HttpWitness::new(url, &opts.token, group, &opts.transport)?;
    open_with(db, &w, url, group, opts)
        .map_err(Error::classified)
        .inspect_err(|e| {
            if e.class().is_some() && state::is_open(&db).unwrap_or(false) {
                state::record_error(&db, e);
            }
        })
}

/// A group id as the witness makes them: 1-64 of `a-z 0-9 _ -`, starting
/// with a letter or digit.
fn valid_group_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

/// [`open`] against the witness `w` (serving `url`).
pub fn open_with(
    db: Db,
    w: &dyn WitnessApi,
    url: &str,
    group: &str,
    opts: OpenOptions,
) -> Result<Json> {
    state::migrate(&db)?;
    if let (Some(u), Some(g)) = (state::get_text(&db, "url")?, state::get_text(&db, "group")?) {
        if g != group {
            return Err(Error::invalid(format!(
                "this database is already open for group {g:?} at {u}: open it with group {g:?}, or use another database file for group {group:?} (one file per group; ATTACH several to one connection)"
            )));
        }
    }
    let info = w.witness()?;
    // The pinned key: the one given, the one pinned before, or (first use)
    // the one the witness serves; the rotations must lead from it to the
    // served key.
    let pinned = opts
        .public_key
        .clone()
        .or(state::get_text(&db, "public_key")?)
        .unwrap_or_else(|| info.public_key.clone());
    let key = keys::served_chain(&db, &pinned, &info)?;
    let g = w.group()?;
    let head_rec = signed::verify_head(&key, group, &g.head)?;
    signed::check_fresh(&db, &head_rec, opts.max_head_age_ms)?;
    // The schema is data: checked against the grammar and its hash, which
    // the signed head must name, before any of it is used.
    let current = g.schema.schema().map_err(|e| {
        Error::invalid(format!(
            "the witness sent a schema that is refused ({e}); nothing was created"
        ))
    })?;
    if head_rec.schema_hash != current.hash() || head_rec.schema_version != current.version {
        return Err(Error::invalid(
            "the group's schema is not the one its signed head names; nothing was created",
        ));
    }
    let fresh = state::get(&db, "head_seq")?.is_none();
    if let Some((min, max)) = opts.schema_versions {
        if current.version < min {
            return Err(crate::migrate::group_too_old(current.version, min));
        }
        if fresh && current.version > max {
            return Err(crate::migrate::upgrade_required(current.version, max));
        }
    }
    // A database already in sync keeps its own schema (pulling migrates
    // it); a new one starts where its history will start.
    let (schema, rebuild, snapshot_with_own_rows) = if fresh {
        let s = start_schema(&db, w, &key, group, &g, current)?;
        (s.schema, s.rebuild, s.snapshot_with_own_rows)
    } else {
        (state::stored_schema(&db)?, Vec::new(), false)
    };
    let schema_hash = schema.hash();
    let names: Vec<String> = schema.tables.iter().map(|t| t.name.clone()).collect();

    transaction(&db, || {
        if !rebuild.is_empty() {
            // Empty tables in the shape of a later version: built again
            // where the history starts (pulling takes them to it). Still
            // empty now, inside the transaction: another connection may
            // have written to them since they were looked at.
            if has_rows(&db, &rebuild)? {
                return Err(Error::invalid(format!(
                    "schema_mismatch: rows were written to {} while this database was being opened (its tables were empty, in the shape of a later schema version, and are built again where the group's history starts); open again",
                    rebuild.join(", ")
                )));
            }
            for n in &rebuild {
                db.exec(&format!(
                    "DROP TABLE IF EXISTS {}",
                    pdb_protocol::sql::quote_ident(n)
                ))?;
            }
        }
        let created = match read_local(&db, &names)? {
            Some(_) => {
                tables::check_local(&db, &schema)?;
                false
            }
            None => true,
        };
        // Tables (when new) and the group's indexes, from the structure:
        // statements this code builds, never text from the network.
        for t in &schema.tables {
            if created {
                db.exec(&t.create_sql())?;
            }
            for sql in t.index_sql() {
                db.exec(&sql)?;
            }
        }
        tables::check_local(&db, &schema)?;
        crate::migrate::set_app_range(&db, opts.schema_versions)?;
        if let Some(limits) = &info.limits {
            state::set_limits(&db, limits)?;
        }
        for (k, v) in [
            ("url", Value::text(url)),
            ("group", Value::text(group)),
            ("policy", Value::text(opts.policy.name())),
        ] {
            state::set(&db, k, v)?;
        }
        state::set_schema(&db, &schema)?;
        keys::save(&db, &key, &info)?;
        if opts.store_token {
            state::set(&db, "token", Value::text(&opts.token))?;
        } else {
            state::delete(&db, "token")?;
        }
        opts.transport.save(&db)?;
        state::set(
            &db,
            "max_head_age_ms",
            Value::Integer(i64::try_from(opts.max_head_age_ms).unwrap_or(i64::MAX)),
        )?;
        for t in &schema.tables {
            // Rows that were here before sync started are local inserts.
            capture::install(&db, t, &SyncTable::new(t), fresh && !created)?;
        }
        if fresh {
            state::set_head(
                &db,
                &Head {
                    seq: 0,
                    hash: genesis_hash(group, schema.version, &schema_hash),
                    root: StateRoot::empty(),
                },
            )?;
        }
        Ok(())
    })?;
    let l = state::load(db)?;
    // An empty database starts from the newest snapshot, if there is one.
    let mut bootstrapped = None;
    if l.head()?.seq == 0
        && pending::outbox(&db)?.is_none()
        && (snapshot_with_own_rows || pending::count(&l)? == 0)
    {
        if let Some(m) = bootstrap::newer_snapshot(w, 0)? {
            bootstrapped = Some(bootstrap::bootstrap(&l, w, &m, None)?);
        }
    }
    let pulled = pull::pull(&l, w)?;
    state::clear_error(&db)?;
    let l = state::load(db)?;
    Ok(json!({
        "group": group, "pulled": pulled.commits, "conflicts": pulled.conflicts,
        "migrations": pulled.migrations,
        "bootstrapped_from": bootstrapped, "head": status::head_json(&l)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn an_origin_is_scheme_host_and_port() {
        for (a, b) in [
            ("https://w.example", "https://W.example/"),
            ("https://w.example", "https://w.example:443"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1"),
        ] {
            assert!(same_origin(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("https://w.example", "https://evil.example"),
            ("https://w.example", "http://w.example"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8081"),
            ("https://w.example", "https://w.example.evil"),
            ("https://w.example", "https://w.example@evil.example"),
            ("https://w.example", "not a url"),
        ] {
            assert!(!same_origin(a, b), "{a} {b}");
        }
    }
}
