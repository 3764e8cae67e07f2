//! After a restore: the witness's history no longer holds this
//! database's verified head (it went back to an older backup, and maybe
//! moved on from there). What sync found, kept for `pdb_status` and the
//! worker (`assess`), and the way forward, `pdb_recover(mode)`:
//!
//! - `recommit` (the device that synced last): the difference between
//!   this device's state and the witness's at the point both histories
//!   share — inserts, edits and deletes — becomes pending local work, on
//!   top of the witness's current state (merged with what others
//!   committed since, as a pull merges), and the next sync commits it;
//! - `in_place` (every other device, once that one has): the witness's
//!   current state is installed with this device's own pending rows
//!   re-based on it, as a bootstrap does.
//!
//! Nothing here trusts the answer that stopped sync: the witness's state
//! is rebuilt in a scratch database by the ordinary open (every head,
//! certificate, snapshot and root verified against the trusted keys, the
//! newest head no older than one this database saw), and the commits
//! since the shared point are verified against it. A hostile proxy can
//! stop sync, never make a recovery drop what this device holds.

use crate::client::WitnessApi;
use crate::db::{as_blob, as_i64, transaction, Db, Owned};
use crate::error::{Error, Result};
use crate::merge::{self, Row};
use crate::open::{open_with, OpenOptions};
use crate::pending::{self, Entry};
use crate::rebase::Rebase;
use crate::state::{self, Head, Local};
use crate::{capture, seal, signed};
use pdb_protocol::value::encode_values;
use pdb_protocol::{hex, now_ms, sha256, Change, Changeset, Op, Signed, StateRoot as Root, Value};
use serde_json::{json, Value as Json};
use std::collections::{BTreeSet, HashMap};

/// `pdb_state` key: what the last `unknown_head` showed (JSON).
pub const RESTORED: &str = "restored";
/// The schema name the scratch copy is attached under.
const SCRATCH: &str = "pdb_recover";
/// Most bytes of changesets since the shared point held for a recommit.
const MAX_SINCE_BYTES: usize = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Recommit,
    InPlace,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "recommit" => Ok(Mode::Recommit),
            "in_place" => Ok(Mode::InPlace),
            _ => Err(Error::invalid(
                "the mode must be 'recommit' (on the device that synced last: its state is committed again) or 'in_place' (on the others: the witness's state, this device's pending rows kept)",
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Recommit => "recommit",
            Mode::InPlace => "in_place",
        }
    }
}

/// The hash of this database's verified history at `seq`: its head, a
/// certificate's, or the one the next certificate chains to.
fn hash_at(l: &Local, seq: u64) -> Result<Option<[u8; 32]>> {
    let head = l.head()?;
    if seq == head.seq {
        return Ok(Some(head.hash));
    }
    if seq > head.seq {
        return Ok(None);
    }
    let r = l.db.row(
        "SELECT head_hash FROM pdb_certificates WHERE seq = ?1",
        &[Value::Integer(seq as i64)],
    )?;
    if let Some(h) = r.as_ref().and_then(|r| r.first()).and_then(as_blob) {
        return Ok(<[u8; 32]>::try_from(h).ok());
    }
    let r = l.db.row(
        "SELECT record, signature FROM pdb_certificates WHERE seq = ?1",
        &[Value::Integer(seq as i64 + 1)],
    )?;
    let Some((Some(bytes), Some(sig))) = r.map(|r| {
        (
            r.first().and_then(as_blob).map(<[u8]>::to_vec),
            r.get(1)
                .and_then(as_blob)
                .and_then(|s| <[u8; 64]>::try_from(s).ok()),
        )
    }) else {
        return Ok(None);
    };
    let cert = Signed {
        bytes,
        signature: sig,
    };
    Ok(cert.commit(&l.key).ok().map(|c| c.prev_head))
}

/// After `e` (an `unknown_head` answer), keeps what the witness's signed
/// head in it shows for `pdb_status`: the witness behind this database on
/// its own history (`behind`: it lost this device's last commits) or on
/// another one (`forked`). An answer without a head that verifies shows
/// nothing. Advice only: `pdb_recover` verifies everything again.
pub fn assess(l: &Local, e: &Error) {
    let Some(h) = e
        .rejection()
        .filter(|r| r.body.code == "unknown_head")
        .and_then(|r| r.body.head.as_ref())
    else {
        return;
    };
    let Ok(rec) = signed::verify_head(&l.key, &l.group, h) else {
        return;
    };
    let Ok(d) = l.head() else { return };
    let behind = rec.seq < d.seq && hash_at(l, rec.seq).ok().flatten() == Some(rec.head_hash);
    let v = json!({
        "kind": if behind { "behind" } else { "forked" },
        "witness_seq": rec.seq,
        "device_seq": d.seq,
        "lost_commits": if behind { json!(d.seq - rec.seq) } else { Json::Null },
        "witness_time_ms": rec.time_ms,
    });
    let _ = state::set(&l.db, RESTORED, Value::text(&v.to_string()));
}

/// What `pdb_status` says about a restore: what was found, and which
/// recovery to run.
pub fn status(db: &Db) -> Result<Json> {
    let Some(t) = state::get_text(db, RESTORED)? else {
        return Ok(Json::Null);
    };
    let mut v: Json = serde_json::from_str(&t).unwrap_or_else(|_| json!({}));
    v["advice"] = json!(advice());
    Ok(v)
}

pub fn advice() -> &'static str {
    "the witness's history no longer holds this database's head (restored from an older backup?). On the device that synced last (the highest head_seq of the group's devices): SELECT pdb_recover('recommit') — its state is committed again. Then on every other device: SELECT pdb_recover('in_place') — the witness's state, with that device's pending rows kept; one that wrote lost commits itself is refused (lost_commits_here) until told they were re-committed: pdb_recover('in_place', json_object('discard_lost', 1)) (docs/operations.md)"
}

/// The scratch file beside this database's file; for a database with no
/// file, in a private directory (0700, a random name) of its own.
/// Returns the path and that directory.
fn scratch_path(l: &Local) -> Result<(String, Option<std::path::PathBuf>)> {
    if let Some(f) = l.db.file()?.filter(|f| !f.is_empty()) {
        return Ok((format!("{f}-pdb-recover"), None));
    }
    let mut r = [0u8; 16];
    getrandom::getrandom(&mut r)
        .map_err(|e| Error::invalid(format!("no randomness for the scratch directory: {e}")))?;
    let dir = std::env::temp_dir().join(format!("pdb-recover-{}", hex(&r)));
    create_private_dir(&dir).map_err(|e| {
        Error::invalid(format!(
            "cannot make the scratch directory {}: {e} (set TMPDIR to a writable directory)",
            dir.display()
        ))
    })?;
    let path = dir.join("scratch").to_string_lossy().into_owned();
    Ok((path, Some(dir)))
}

#[cfg(unix)]
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir(dir)
}

/// Creates the (empty) scratch file readable by this user only: it holds
/// the group's rows.
fn create_private_file(path: &str) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map(|_| ()).map_err(|e| {
        Error::invalid(format!(
            "cannot create the scratch file {path}: {e} (pdb_recover writes it beside the database file)"
        ))
    })
}

const SCRATCH_SUFFIXES: [&str; 6] = [
    "",
    "-journal",
    "-wal",
    "-shm",
    "-pdb-snapshot",
    "-pdb-progress.json",
];

fn remove_scratch(path: &str) {
    for suffix in SCRATCH_SUFFIXES {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

/// Removes what a pdb_recover that did not finish (a crash, a kill) left
/// beside the database file `file`.
pub fn remove_stale_scratch(file: Option<&str>) {
    if let Some(f) = file.filter(|f| !f.is_empty()) {
        remove_scratch(&format!("{f}-pdb-recover"));
    }
}

/// The scratch database while a recovery runs: whatever way the recovery
/// ends (an error, a panic unwinding), it is detached and its files and
/// private directory removed.
struct Scratch {
    db: Db,
    path: String,
    dir: Option<std::path::PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.db.exec(&format!("DETACH DATABASE {SCRATCH}"));
        remove_scratch(&self.path);
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `pdb_recover(mode[, options])`'s options: `discard_lost` (in_place
/// only) installs the witness's state even though this device holds
/// commits the witness lost.
#[derive(Default)]
struct Options {
    discard_lost: bool,
}

impl Options {
    fn parse(s: Option<&str>) -> Result<Options> {
        let Some(s) = s else {
            return Ok(Options::default());
        };
        let bad = || {
            Error::invalid("pdb_recover's options are a JSON object: {\"discard_lost\": 1} (in_place only) or nothing")
        };
        let v: Json = serde_json::from_str(s).map_err(|_| bad())?;
        let obj = v.as_object().ok_or_else(bad)?;
        let mut o = Options::default();
        for (k, v) in obj {
            match (k.as_str(), v) {
                ("discard_lost", Json::Bool(b)) => o.discard_lost = *b,
                ("discard_lost", Json::Number(n))
                    if n.as_i64() == Some(0) || n.as_i64() == Some(1) =>
                {
                    o.discard_lost = n.as_i64() == Some(1)
                }
                ("discard_lost", _) => {
                    return Err(Error::invalid(
                        "discard_lost must be 1 or 0 (true or false)",
                    ))
                }
                _ => return Err(bad()),
            }
        }
        Ok(o)
    }
}

/// `pdb_recover(mode[, options])`.
pub fn recover(db: Db, mode: &str, opts: Option<&str>) -> Result<Json> {
    let mode = Mode::parse(mode)?;
    let opts = Options::parse(opts)?;
    if opts.discard_lost && mode != Mode::InPlace {
        return Err(Error::invalid(
            "discard_lost is an option of pdb_recover('in_place') only (recommit keeps everything)",
        ));
    }
    if db.in_transaction()? {
        return Err(Error::invalid(
            "call pdb_recover outside a transaction (it attaches a scratch database)",
        ));
    }
    let l = state::load(db)?;
    let w = l.witness()?;
    let (path, dir) = scratch_path(&l)?;
    // One left by a recovery that did not finish goes first.
    remove_scratch(&path);
    let scratch = Scratch { db, path, dir };
    let out = recover_with(&l, &w, mode, &opts, &scratch.path);
    drop(scratch);
    let out = out.map_err(Error::classified)?;
    // The way is clear: sync now (its outcome is part of the answer).
    let synced = match crate::sync::sync(db) {
        Ok(r) => r,
        Err(e) => json!({"error": e.to_string()}),
    };
    let mut out = out;
    out["sync"] = synced;
    Ok(out)
}

/// The witness's current state, verified, in the scratch database at
/// `path`.
fn build_scratch(l: &Local, w: &dyn WitnessApi, path: &str) -> Result<()> {
    create_private_file(path)?;
    let scratch = Owned::create(path, 5_000)?;
    let opts = OpenOptions {
        token: l.token.clone(),
        public_key: state::get_text(&l.db, "public_key")?,
        policy: l.policy,
        transport: crate::transport::Transport::load(&l.db)?,
        max_head_age_ms: signed::max_head_age(&l.db)?,
        // The token stays in memory (the requests go through `w`, which
        // holds it): never written into the scratch file.
        store_token: false,
        schema_versions: match crate::migrate::app_range(&l.db)? {
            (0, u32::MAX) => None,
            r => Some(r),
        },
        given: Vec::new(),
    };
    open_with(scratch.db(), w, &l.url, &l.group, opts)
        .map(|_| ())
        .map_err(|e| e.context(|m| format!("reading the witness's current state: {m}")))
}

fn scratch_get(db: &Db, k: &str) -> Result<Option<Value>> {
    Ok(db
        .row(
            &format!("SELECT v FROM {SCRATCH}.pdb_state WHERE k = ?1"),
            &[Value::text(k)],
        )?
        .and_then(|r| r.into_iter().next()))
}

/// The witness's current head as the scratch copy verified it, and its
/// time.
fn scratch_head(l: &Local) -> Result<(Head, u64)> {
    let bad = || Error::invalid("the scratch copy of the witness's state is incomplete");
    let seq = scratch_get(&l.db, "head_seq")?
        .as_ref()
        .and_then(as_i64)
        .ok_or_else(bad)?;
    let hash = scratch_get(&l.db, "head_hash")?
        .as_ref()
        .and_then(as_blob)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(bad)?;
    let root = scratch_get(&l.db, "root")?
        .as_ref()
        .and_then(as_blob)
        .and_then(Root::from_bytes)
        .ok_or_else(bad)?;
    let time = scratch_get(&l.db, "head_time_ms")?
        .as_ref()
        .and_then(as_i64)
        .unwrap_or(0);
    for (k, want) in [
        ("schema_version", Value::Integer(l.schema.version.into())),
        ("schema_hash", Value::text(&hex(&l.schema_hash))),
    ] {
        if scratch_get(&l.db, k)? != Some(want) {
            return Err(Error::Stopped {
                code: "schema_mismatch",
                message: "the group's schema moved since this database's head: pdb_recover works on the schema this database has; open a fresh database for the group and copy its rows over".into(),
            });
        }
    }
    Ok((
        Head {
            seq: seq.max(0) as u64,
            hash,
            root,
        },
        time.max(0) as u64,
    ))
}

/// The point both histories share: the highest sequence at which the
/// scratch copy's verified history and this database's hold the same
/// hash.
fn shared_point(l: &Local, wh: &Head) -> Result<Option<u64>> {
    if hash_at(l, wh.seq)? == Some(wh.hash) {
        return Ok(Some(wh.seq));
    }
    let r = l.db.row(
        &format!(
            "SELECT max(c.seq) FROM main.pdb_certificates c JOIN {SCRATCH}.pdb_certificates s \
             ON s.seq = c.seq AND s.head_hash = c.head_hash"
        ),
        &[],
    )?;
    Ok(r.and_then(|r| r.first().and_then(as_i64))
        .map(|s| s.max(0) as u64))
}

/// The commits after the shared point `f` up to the witness's head,
/// each checked against the certificate the scratch copy verified there.
fn since(l: &Local, w: &dyn WitnessApi, f: u64, wh: &Head) -> Result<Vec<Changeset>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut after = f;
    let mut after_hash = hash_at(l, f)?;
    for _ in 0..=wh.seq.saturating_sub(f) {
        if after >= wh.seq {
            return Ok(out);
        }
        let page = w.commits(after, after_hash, 500)?;
        if page.commits.is_empty() {
            break;
        }
        for e in &page.commits {
            if e.seq != after + 1 || e.seq > wh.seq {
                return Err(Error::untrusted(
                    "the witness's log does not follow the verified history",
                ));
            }
            if e.migration.is_some() {
                return Err(Error::Stopped {
                    code: "schema_mismatch",
                    message: "the group migrated since the point this database shares with the witness: recommit cannot carry rows across it; use pdb_recover('in_place'), or open a fresh database and copy rows over".into(),
                });
            }
            let cert = e
                .certificate
                .signed
                .to_signed()
                .ok_or_else(|| Error::untrusted("a malformed certificate"))?;
            let verified = l.db.row(
                &format!("SELECT head_hash FROM {SCRATCH}.pdb_certificates WHERE seq = ?1"),
                &[Value::Integer(e.seq as i64)],
            )?;
            let want = verified
                .as_ref()
                .and_then(|r| r.first())
                .and_then(as_blob)
                .map(<[u8]>::to_vec);
            let rec = cert
                .commit(&l.key)
                .map_err(|e| Error::untrusted(format!("certificate rejected ({e})")))?;
            let cs = pdb_protocol::wire::unb64(&e.changeset)
                .ok_or_else(|| Error::untrusted("a changeset is not base64"))?;
            if want.as_deref() != Some(&sha256(&cert.bytes)[..])
                || rec.changeset_digest != sha256(&cs)
            {
                return Err(Error::untrusted(format!(
                    "commit {}: not the one the witness's verified history holds; nothing was changed",
                    e.seq
                )));
            }
            bytes += cs.len();
            if bytes > MAX_SINCE_BYTES {
                return Err(Error::invalid(
                    "more than 256 MiB were committed since the point this database shares with the witness: recommit would hold them all; use pdb_recover('in_place'), or open a fresh database and copy rows over",
                ));
            }
            out.push(Changeset::decode(&cs).map_err(|e| Error::untrusted(e.to_string()))?);
            after = e.seq;
            after_hash = Some(sha256(&cert.bytes));
        }
    }
    if after != wh.seq {
        return Err(Error::untrusted(
            "the witness's log ended before its verified head",
        ));
    }
    Ok(out)
}

/// The change that undoes `c`.
fn invert(c: &Change, pk_flags: &[u8]) -> Change {
    match c.op {
        Op::Insert => Change {
            op: Op::Delete,
            indirect: c.indirect,
            old: c.new.clone(),
            new: vec![None; c.new.len()],
        },
        Op::Delete => Change {
            op: Op::Insert,
            indirect: c.indirect,
            old: vec![None; c.old.len()],
            new: c.old.clone(),
        },
        Op::Update => {
            let n = c.old.len();
            let is_pk = |i: usize| pk_flags.get(i).is_some_and(|f| *f != 0);
            let new_at = |i: usize| c.new.get(i).cloned().flatten();
            Change {
                op: Op::Update,
                indirect: c.indirect,
                old: (0..n)
                    .map(|i| {
                        if is_pk(i) {
                            c.old[i].clone()
                        } else {
                            new_at(i)
                        }
                    })
                    .collect(),
                new: (0..n)
                    .map(|i| {
                        if !is_pk(i) && new_at(i).is_some() {
                            c.old[i].clone()
                        } else {
                            None
                        }
                    })
                    .collect(),
            }
        }
    }
}

/// A row of the scratch copy by key.
fn scratch_row(l: &Local, ti: usize, key: &[Value]) -> Result<Option<Row>> {
    let st = l
        .tables
        .get(ti)
        .ok_or_else(|| Error::invalid("unknown table"))?;
    let cond: Vec<String> = st
        .key_idents()
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = ?{}", i + 1))
        .collect();
    l.sql.row(
        &format!(
            "SELECT {} FROM {SCRATCH}.{} WHERE {}",
            st.rows.columns,
            st.rows.table,
            cond.join(" AND ")
        ),
        key,
    )
}

/// The keys of table `ti` whose rows may differ between this database
/// and the scratch copy (SQL's comparison; values are compared exactly
/// after).
fn differing_keys(l: &Local, ti: usize) -> Result<Vec<Vec<Value>>> {
    let st = l
        .tables
        .get(ti)
        .ok_or_else(|| Error::invalid("unknown table"))?;
    let (cols, t) = (&st.rows.columns, &st.rows.table);
    let keys = st.key_idents().join(", ");
    l.db.rows(
        &format!(
            "SELECT {keys} FROM (SELECT {cols} FROM main.{t} EXCEPT SELECT {cols} FROM {SCRATCH}.{t}) \
             UNION SELECT {keys} FROM (SELECT {cols} FROM {SCRATCH}.{t} EXCEPT SELECT {cols} FROM main.{t})"
        ),
        &[],
    )
}

fn recover_with(
    l: &Local,
    w: &dyn WitnessApi,
    mode: Mode,
    opts: &Options,
    path: &str,
) -> Result<Json> {
    let d = l.head()?;
    // A commit sent before may have landed on the witness as it is now:
    // resent, it replays (and the witness's state holds it) or is refused
    // (its base is in the lost history): then it is unsealed, its rows
    // stay pending.
    if let Some(o) = pending::outbox(&l.db)? {
        // Any refusal or failure (unknown_head, a rebase, rows refused,
        // the witness busy or unreachable) is "not landed": either way
        // only the outbox goes, the rows stay pending, and the witness's
        // state read next shows whether it had landed after all.
        let landed = o.attempts > 0 && crate::push::send(l, w, &o).is_ok();
        transaction(&l.db, || {
            if landed {
                l.db.run(
                    "DELETE FROM pdb_outbox WHERE id = ?1",
                    &[Value::Integer(o.id)],
                )
            } else {
                seal::unseal(l, &o)
            }
        })?;
    }
    build_scratch(l, w, path)?;
    l.db.run(
        &format!("ATTACH DATABASE ?1 AS {SCRATCH}"),
        &[Value::text(path)],
    )?;
    crate::failpoint::hit("recover_attached");
    let (wh, wtime) = scratch_head(l)?;
    // Fresh: no older than a head this database saw (a replayed state is
    // refused like a replayed head).
    let newest = state::get_i64(&l.db, "head_time_ms")?.map_or(0, |t| t.max(0) as u64);
    if wtime.saturating_add(1_000) < newest {
        return Err(Error::untrusted(
            "the witness's state is older than a head this database already saw: a replayed answer; nothing was changed",
        ));
    }
    let f = shared_point(l, &wh)?;
    if f == Some(d.seq) {
        // What an `unknown_head` showed no longer holds (a proxy's fake
        // answer, or the witness back on this history): no advice left.
        state::delete(&l.db, RESTORED)?;
        return Err(Error::Stopped {
            code: "not_restored",
            message: format!(
                "not_restored: the witness's history holds this database's head {}: nothing to recover, pdb_sync goes on",
                d.seq
            ),
        });
    }
    // In place replaces this database's history after the shared point
    // with the witness's: refused while this device holds commits the
    // witness lost that may be nowhere else — it is ahead on the
    // witness's own history (behind), or it wrote some of the lost
    // commits — unless told to discard them.
    if mode == Mode::InPlace && !opts.discard_lost {
        let cut = f.unwrap_or(0).min(wh.seq);
        let mine =
            l.db.row(
                &format!(
                    "SELECT count(*) FROM main.pdb_certificates WHERE mine = 1 AND ({})",
                    lost_where()
                ),
                &[Value::Integer(cut as i64)],
            )?
            .and_then(|r| r.first().and_then(as_i64))
            .unwrap_or(0);
        let behind = f == Some(wh.seq) && d.seq > wh.seq;
        if behind || mine > 0 {
            return Err(Error::Stopped {
                code: "lost_commits_here",
                message: format!(
                    "lost_commits_here: this database holds commits the witness lost ({}): in_place would discard them. If this is the device that synced last, run SELECT pdb_recover('recommit') here; if that device re-committed them already, SELECT pdb_recover('in_place', json_object('discard_lost', 1))",
                    if behind {
                        format!("it is {} commits ahead of the witness's history", d.seq - wh.seq)
                    } else {
                        format!("{mine} written by this device")
                    }
                ),
            });
        }
    }
    // For a recommit: the state at the shared point, for the rows changed
    // since (undone from the witness's state, commit by commit back).
    let mut at_f: HashMap<(usize, Vec<u8>), Option<Row>> = HashMap::new();
    if mode == Mode::Recommit {
        let f = f.ok_or_else(|| Error::Stopped {
            code: "no_shared_point",
            message: "this database and the witness share no point of the group's history that both can show: use pdb_recover('in_place'), or open a fresh database and copy rows over".into(),
        })?;
        let commits = since(l, w, f, &wh)?;
        for cs in commits.iter().rev() {
            for t in &cs.tables {
                let ti = l
                    .schema
                    .table_index(&t.name)
                    .ok_or_else(|| Error::untrusted("a commit names an unknown table"))?;
                for c in t.changes.iter().rev() {
                    let key = c.pk(&t.pk_flags);
                    let k = (ti, encode_values(&key));
                    let now = match at_f.get(&k) {
                        Some(r) => r.clone(),
                        None => scratch_row(l, ti, &key)?,
                    };
                    let before =
                        merge::apply(&invert(c, &t.pk_flags), now.as_deref()).map_err(|()| {
                            Error::untrusted("a commit does not fit the witness's verified state")
                        })?;
                    at_f.insert(k, before);
                }
            }
        }
        // The rows undone must give the root certified at the shared point.
        let mut root = wh.root.clone();
        for ((ti, pk), before) in &at_f {
            let st = l
                .tables
                .get(*ti)
                .ok_or_else(|| Error::invalid("unknown table"))?;
            let key = pdb_protocol::value::decode_values(pk).unwrap_or_default();
            if let Some(r) = scratch_row(l, *ti, &key)? {
                root.remove_row(&st.name, &r);
            }
            if let Some(r) = before {
                root.add_row(&st.name, r);
            }
        }
        let certified = if f == wh.seq {
            Some(wh.root.digest().to_vec())
        } else {
            l.db.row(
                "SELECT state_root FROM pdb_certificates WHERE seq = ?1",
                &[Value::Integer(f as i64)],
            )?
            .and_then(|r| r.first().and_then(as_blob).map(<[u8]>::to_vec))
        };
        if certified.as_deref() != Some(&root.digest()[..]) {
            return Err(Error::untrusted(
                "the witness's commits since the shared point do not undo to its certified state; nothing was changed",
            ));
        }
    }
    let lost = transaction(&l.db, || install(l, mode, &wh, wtime, f, &at_f))?;
    Ok(json!({
        "mode": mode.name(),
        "witness_seq": wh.seq,
        "device_seq": d.seq,
        "shared_seq": f,
        "lost_commits": lost.0,
        "pending_rows": lost.1,
        "conflicts": lost.2,
    }))
}

/// The certificates of this database (`main`) that are not of the
/// witness's history, after the shared point `?1`: past it, or at a seq
/// where the scratch copy's differs.
fn lost_where() -> String {
    format!(
        "seq > ?1 OR seq IN (SELECT c.seq FROM main.pdb_certificates c JOIN {SCRATCH}.pdb_certificates s \
         ON s.seq = c.seq WHERE s.head_hash IS NOT c.head_hash)"
    )
}

/// In one local transaction: the witness's state in the tables, this
/// database's work on top as the mode says, the witness's head verified
/// and set, the lost certificates kept aside. Returns the lost commits,
/// the pending rows and the conflicts met.
fn install(
    l: &Local,
    mode: Mode,
    wh: &Head,
    wtime: u64,
    f: Option<u64>,
    at_f: &HashMap<(usize, Vec<u8>), Option<Row>>,
) -> Result<(i64, i64, usize)> {
    let conflicts = capture::paused(l, || {
        let mut rebase = Rebase::new(l)?;
        let mut total = 0;
        for (ti, st) in l.tables.iter().enumerate() {
            let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
            for k in differing_keys(l, ti)? {
                keys.insert(encode_values(&k));
            }
            keys.extend(
                rebase
                    .pending
                    .keys()
                    .filter(|(t, _)| *t == ti)
                    .map(|(_, k)| k.clone()),
            );
            keys.extend(
                at_f.keys()
                    .filter(|(t, _)| *t == ti)
                    .map(|(_, k)| k.clone()),
            );
            for pk in keys {
                let Some(key) = pdb_protocol::value::decode_values(&pk) else {
                    continue;
                };
                if key.contains(&Value::Null) {
                    continue; // never synced: it stays as it is, held
                }
                let local = st.select(&l.sql, &key)?;
                let server = scratch_row(l, ti, &key)?;
                let existing = rebase.entry(ti, &key);
                let entry = match mode {
                    Mode::InPlace => existing,
                    Mode::Recommit => {
                        // Pending against the shared point: everything
                        // this device holds that the witness lost, and its
                        // own pending work.
                        let base = match at_f.get(&(ti, pk.clone())) {
                            Some(b) => b.clone(),
                            None => server.clone(),
                        };
                        let seqs = existing.map(|e| e.seqs).unwrap_or_default();
                        if local == base {
                            pending::drop_entries(l, st, &seqs)?;
                            rebase.pending.remove(&(ti, pk.clone()));
                            None
                        } else {
                            Some(Entry { seqs, base })
                        }
                    }
                };
                rebase.settle(ti, &key, local.clone(), local, entry, server, false, wh.seq)?;
            }
            total = rebase.conflicts;
        }
        l.set_head(wh)?;
        Ok(total)
    })?;
    let check = crate::status::verify(l.db)?;
    if check["ok"] != true {
        return Err(Error::invalid(
            "after recovery the local rows do not give the witness's state root; nothing was changed",
        ));
    }
    // The certificates of the lost history, kept aside with who wrote
    // them; the witness's in their place.
    // With no shared point every certificate here is of the other
    // history (the scratch copy may hold none of the seqs they have, when
    // it started from a snapshot).
    let lost_where = lost_where();
    let cut = Value::Integer(f.unwrap_or(0).min(wh.seq) as i64);
    l.db.run(
        &format!(
            "INSERT INTO pdb_lost_commits(seq, idem_key, author, mine, head_hash, time_ms, record, signature, recovered_at_ms, mode)
             SELECT seq, idem_key, author, mine, head_hash, time_ms, record, signature, ?2, ?3
             FROM main.pdb_certificates WHERE {lost_where}"
        ),
        &[cut.clone(), Value::Integer(now_ms() as i64), Value::text(mode.name())],
    )?;
    let lost =
        l.db.row("SELECT changes()", &[])?
            .and_then(|r| r.first().and_then(as_i64))
            .unwrap_or(0);
    l.db.run(
        &format!("DELETE FROM main.pdb_certificates WHERE {lost_where}"),
        &[cut],
    )?;
    l.db.exec(&format!(
        "INSERT OR IGNORE INTO main.pdb_certificates SELECT * FROM {SCRATCH}.pdb_certificates"
    ))?;
    // The keys those certificates are signed by: the scratch open followed
    // the witness's rotations from this database's pinned key (a chain
    // extending the trusted one), so they are trusted here from now on.
    for k in ["public_key", "key_rotations"] {
        if let Some(v) = scratch_get(&l.db, k)? {
            state::set(&l.db, k, v)?;
        }
    }
    let newest = state::get_i64(&l.db, "head_time_ms")?.unwrap_or(0);
    state::set(
        &l.db,
        "head_time_ms",
        Value::Integer(newest.max(wtime as i64)),
    )?;
    state::set(&l.db, "remote_seq", Value::Integer(wh.seq as i64))?;
    state::set(&l.db, "verified_at_ms", Value::Integer(now_ms() as i64))?;
    state::delete(&l.db, RESTORED)?;
    state::clear_error(&l.db)?;
    crate::changes::all(l, wh.seq, "snapshot")?;
    let pending_rows = pending::count(l)? as i64;
    Ok((lost, pending_rows, conflicts))
}
