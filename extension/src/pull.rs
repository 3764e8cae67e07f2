//! Pulling: every commit after the verified head, a page per local
//! transaction, each commit verified before any of it is applied.
//!
//! Rows nobody changed locally take the commit's values directly. Rows
//! with local changes (pending) get a three-way merge (`merge`) — base
//! (the verified head's value), remote (the commit's), local — and their
//! base moves to the commit's value. The client's own commit, seen again
//! in the log, only moves the base: it is never applied twice. The state
//! root moves by the server-side values of each row and must equal the
//! certificate's root, or the whole page is rolled back.

use crate::client::WitnessApi;
use crate::db::transaction;
use crate::error::{Error, Result};
use crate::merge::{self, Row};
use crate::pending::{self, Outbox};
use crate::push::Accepted;
use crate::rebase::Rebase;
use crate::signed::verify_head;
use crate::state::{self, Head, Local};
use crate::{bootstrap, capture};
use pdb_protocol::wire::{unb64, LogEntryJson};
use pdb_protocol::{now_ms, sha256, Change, Changeset, HeadRecord, Op, Signed, StateRoot, Value};

/// Commits asked for per page.
const PAGE: u32 = 500;

/// What a pull did: commits applied, conflicts met, migrations applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pulled {
    pub commits: usize,
    pub conflicts: usize,
    pub migrations: usize,
}

impl std::ops::AddAssign for Pulled {
    fn add_assign(&mut self, o: Pulled) {
        self.commits += o.commits;
        self.conflicts += o.conflicts;
        self.migrations += o.migrations;
    }
}

/// Pulls and applies every entry after the verified head. After a
/// migration the database's schema is another: callers holding a `Local`
/// load it again when `migrations` > 0. A migration past the versions the
/// app understands is not applied: what came before it is kept and the
/// pull stops with `app_upgrade_required`.
pub fn pull(l0: &Local, w: &dyn WitnessApi) -> Result<Pulled> {
    pull_then(l0, w, false)
}

/// [`pull`]; with `synced`, the last page's transaction also records the
/// sync as ended well (`state::mark_synced`).
pub fn pull_then(l0: &Local, w: &dyn WitnessApi, synced: bool) -> Result<Pulled> {
    let mut pulled = Pulled::default();
    let mut reloaded: Option<Local> = None;
    loop {
        let l = reloaded.as_ref().unwrap_or(l0);
        let at = l.head()?;
        let after = at.seq;
        // The hash too: a witness whose history does not hold it (restored
        // from an older backup, then moved on) says `unknown_head`.
        let after_hash = (after > 0).then_some(at.hash);
        let page = match w.commits(after, after_hash, PAGE) {
            Ok(p) => p,
            Err(e) if e.is_rejection("snapshot_required") => {
                // The log after our head is gone: restart from a snapshot,
                // pending rows re-based on it (migrated first if the
                // snapshot is of a later schema).
                let schema = l.schema.version;
                bootstrap::catch_up(l, w, after)?;
                let next = state::load(l.db)?;
                crate::changes::all(&next, next.head()?.seq, "snapshot")?;
                if next.schema.version != schema {
                    pulled.migrations += 1;
                }
                reloaded = Some(next);
                continue;
            }
            Err(e) => return Err(e),
        };
        let signed_head = verify_head(&l.key, &l.group, &page.head)?;
        let max_age = crate::signed::max_head_age(&l.db)?;
        if signed_head.seq < after {
            return Err(Error::invalid(format!(
                "the witness's head ({}) is behind this database's verified head ({after})",
                signed_head.seq
            )));
        }
        let last = page.next_after.is_none() || page.commits.is_empty();
        // One local transaction per page: the head's freshness, the
        // entries, and how current the copy is now (a page with nothing
        // new changes no table, and pauses no capture).
        let applied = transaction(&l.db, || {
            crate::signed::check_fresh(&l.db, &signed_head, max_age)?;
            state::set(&l.db, "remote_seq", Value::Integer(signed_head.seq as i64))?;
            let (p, stopped) = if page.commits.iter().any(|e| e.seq > after) {
                apply_page(l, &page.commits, &signed_head)?
            } else {
                check_at_head(l, &signed_head)?;
                (Pulled::default(), None)
            };
            if stopped.is_none() && l.head()?.seq == signed_head.seq {
                // The signed head says this copy is current as of now.
                state::set(&l.db, "verified_at_ms", Value::Integer(now_ms() as i64))?;
            }
            if synced && stopped.is_none() && last {
                state::mark_synced(&l.db)?;
            }
            Ok((p, stopped))
        });
        let (p, stopped) = match applied {
            Ok(x) => x,
            Err(e) => {
                if !e.is_refused_answer() {
                    // How far behind this copy is, kept for pdb_status.
                    let _ = state::set(&l.db, "remote_seq", Value::Integer(signed_head.seq as i64));
                }
                return Err(e);
            }
        };
        pulled += p;
        if p.migrations > 0 {
            let next = state::load(l.db)?;
            reloaded = Some(next);
        }
        if let Some(e) = stopped {
            return Err(e);
        }
        if last {
            return Ok(pulled);
        }
        // Every page but the last moves the head: one that does not (a
        // replayed page whose entries end at this database's own head,
        // with `next_after` still set) would be asked for again forever.
        let now = reloaded.as_ref().unwrap_or(l0).head()?.seq;
        if now <= after {
            return Err(Error::refused(
                "no_progress",
                format!(
                    "no_progress: the witness's page of commits after {after} holds nothing after it yet says more follow (a replayed or broken answer); nothing was applied, the next pdb_sync asks again"
                ),
            ));
        }
    }
}

/// Applies a page's entries after the verified head and moves the head;
/// at the page's end it must be the signed head the page came with. A
/// migration entry is applied where it stands, and the entries after it
/// on the new schema. Returns what was applied, and the stop when the
/// page holds a migration past what the app understands (everything
/// before it is applied). Call inside a transaction.
fn apply_page(
    l0: &Local,
    entries: &[LogEntryJson],
    signed_head: &HeadRecord,
) -> Result<(Pulled, Option<Error>)> {
    capture::pause(l0)?;
    let mut changes = crate::changes::Recorder::default();
    let mut pulled = Pulled::default();
    let mut reloaded: Option<Local> = None;
    let mut rest = entries;
    let mut stopped = None;
    loop {
        let l = reloaded.as_ref().unwrap_or(l0);
        let mut page = Page {
            l,
            rebase: Rebase::new(l)?,
            own_key: pending::outbox(&l.db)?.map(|o| o.key),
            head: l.head()?,
            changes: &mut changes,
        };
        let mut migration = None;
        for (i, e) in rest.iter().enumerate() {
            if e.seq <= page.head.seq {
                continue;
            }
            if e.migration.is_some() {
                migration = Some((i, e));
                break;
            }
            let cs = unb64(&e.changeset).ok_or_else(|| {
                Error::invalid(format!("commit {}: changeset is not base64", e.seq))
            })?;
            let cert = e.certificate.signed.to_signed().ok_or_else(|| {
                Error::invalid(format!("commit {}: malformed certificate", e.seq))
            })?;
            page.apply_entry(e.seq, &cs, &cert)?;
            pulled.commits += 1;
        }
        pulled.conflicts += page.rebase.conflicts;
        let head = page.head;
        l.set_head(&head)?;
        let Some((i, e)) = migration else { break };
        let v = crate::migrate::verify(l, &head, e, true)?;
        let (_, max) = crate::migrate::app_range(&l.db)?;
        if v.schema.version > max {
            stopped = Some(crate::migrate::upgrade_required(v.schema.version, max));
            break;
        }
        if let Some(e) = crate::migrate::local_table_in_the_way(l, &v)? {
            stopped = Some(e);
            break;
        }
        let after = crate::migrate::apply(l, &v, &head, true)?;
        l.set_head(&after)?;
        pulled.migrations += 1;
        let next = state::load(l.db)?;
        crate::changes::all(&next, after.seq, "migration")?;
        reloaded = Some(next);
        rest = &rest[i + 1..];
    }
    let l = reloaded.as_ref().unwrap_or(l0);
    check_at_head(l, signed_head)?;
    capture::resume(l)?;
    crate::changes::trim(l)?;
    Ok((pulled, stopped))
}

/// When the verified head is the signed head's sequence, it must be that
/// head: its hash, root and schema.
fn check_at_head(l: &Local, signed_head: &HeadRecord) -> Result<()> {
    let h = l.head()?;
    if h.seq == signed_head.seq
        && (h.hash != signed_head.head_hash
            || h.root.digest() != signed_head.state_root
            || signed_head.schema_version != l.schema.version
            || signed_head.schema_hash != l.schema_hash)
    {
        return Err(Error::invalid(
            "the local copy does not match the witness's signed head; nothing was applied",
        ));
    }
    Ok(())
}

/// Applies this database's own commit, just certified, from the outbox's
/// bytes instead of fetching it back: when it follows the verified head
/// and the witness certified exactly those bytes on this schema (a commit
/// translated to a later schema, or accepted after others, is pulled). It
/// is verified and applied as a pulled commit is — the certificate chains
/// to the verified head, its digest is the bytes', the state root after
/// it is the certified one — and only moves the base of its rows (a row
/// no longer pending leaves it to a pull). A head
/// that came with it makes the copy current as of the head's time.
/// Returns false, having done nothing, when it must be pulled instead.
/// With `synced` (and a head), the transaction also records the sync as
/// ended well.
pub fn apply_own(l: &Local, o: &Outbox, a: &Accepted, synced: bool) -> Result<bool> {
    let head = l.head()?;
    if a.rec.seq != head.seq + 1
        || a.rec.prev_head != head.hash
        || !a.as_sent(o)
        || a.rec.schema_version != l.schema.version
        || a.rec.schema_hash != l.schema_hash
    {
        return Ok(false);
    }
    let max_age = crate::signed::max_head_age(&l.db)?;
    transaction(&l.db, || {
        // Every row of it is pending here (it was sealed from them): then
        // settling it only moves bases and writes no synced table, so the
        // capture triggers need no pause (dropping and creating them is
        // DDL, which costs more than the rest of a small sync). A row that
        // is not is left to a pull, which applies it the careful way.
        let rebase = Rebase::new(l)?;
        let Ok(cs) = Changeset::decode(&o.changeset) else {
            return Ok(false);
        };
        let all_pending = cs.tables.iter().all(|t| {
            l.schema.table_index(&t.name).is_some_and(|ti| {
                l.tables.get(ti).is_some_and(|st| {
                    t.changes
                        .iter()
                        .all(|c| rebase.entry(ti, &c.pk(&st.pk_flags)).is_some())
                })
            })
        });
        if !all_pending {
            return Ok(false);
        }
        let mut page = Page {
            l,
            rebase,
            own_key: Some(o.key.clone()),
            head,
            // Nothing to record: its rows are this device's own.
            changes: &mut crate::changes::Recorder::default(),
        };
        page.apply_entry(a.rec.seq, &o.changeset, &a.cert)?;
        l.set_head(&page.head)?;
        if let Some(h) = &a.head {
            crate::signed::check_fresh(&l.db, h, max_age)?;
            check_at_head(l, h)?;
            state::set(&l.db, "remote_seq", Value::Integer(h.seq as i64))?;
            state::set(&l.db, "verified_at_ms", Value::Integer(now_ms() as i64))?;
            if synced {
                state::mark_synced(&l.db)?;
            }
        }
        Ok(true)
    })
}

/// One page being applied: the rows being settled, the outbox commit's
/// key, and the head so far.
struct Page<'a> {
    l: &'a Local,
    rebase: Rebase<'a>,
    own_key: Option<String>,
    head: Head,
    /// What remote commits changed, for `pdb_changes`.
    changes: &'a mut crate::changes::Recorder,
}

impl Page<'_> {
    /// Verifies a log entry against the pinned key and the head so far,
    /// then applies it.
    fn apply_entry(&mut self, seq: u64, changeset: &[u8], cert: &Signed) -> Result<()> {
        let l = self.l;
        let fail = |m: &str| Error::untrusted(format!("commit {seq}: {m}; nothing was applied"));
        let rec = cert
            .commit(&l.key)
            .map_err(|e| fail(&format!("certificate rejected ({e})")))?;
        let checks = [
            (
                rec.seq == seq && seq == self.head.seq + 1,
                "it does not follow the verified head",
            ),
            (rec.group == l.group, "the certificate names another group"),
            (
                rec.prev_head == self.head.hash,
                "the certificate does not chain to the verified head",
            ),
            (
                rec.changeset_digest == sha256(changeset),
                "the changeset does not match its certificate",
            ),
            (
                rec.schema_hash == l.schema_hash && rec.schema_version == l.schema.version,
                "the certificate names another schema",
            ),
        ];
        if let Some((_, m)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(fail(m));
        }
        let cs = Changeset::decode(changeset)
            .map_err(|e| fail(&format!("malformed changeset ({e})")))?;
        cs.validate(&l.schema)
            .map_err(|e| fail(&format!("invalid changeset ({e})")))?;
        let own = self.own_key.as_deref() == Some(rec.idempotency_key.as_str());
        let mut root = self.head.root.clone();
        for t in &cs.tables {
            let ti = l
                .schema
                .table_index(&t.name)
                .ok_or_else(|| fail("unknown table"))?;
            for c in &t.changes {
                self.apply_change(ti, c, own, seq, &mut root).map_err(|e| {
                    e.context(|m| format!("commit {seq}: {m}; nothing was applied"))
                })?;
            }
        }
        if root.digest() != rec.state_root {
            return Err(fail(
                "the state root after applying differs from the certified one (tampered response or diverged copy)",
            ));
        }
        l.sql.run(
            "INSERT OR REPLACE INTO pdb_certificates(seq, idem_key, author, mine, head_hash, state_root, time_ms, record, signature)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &[
                Value::Integer(seq as i64),
                Value::text(&rec.idempotency_key),
                Value::text(&rec.author),
                Value::Integer(i64::from(own)),
                Value::Blob(sha256(&cert.bytes).to_vec()),
                Value::Blob(rec.state_root.to_vec()),
                Value::Integer(rec.time_ms as i64),
                Value::Blob(cert.bytes.clone()),
                Value::Blob(cert.signature.to_vec()),
            ],
        )?;
        if own {
            l.db.run(
                "DELETE FROM pdb_outbox WHERE idem_key = ?1",
                &[Value::text(&rec.idempotency_key)],
            )?;
            self.own_key = None;
        }
        self.head = Head {
            seq,
            hash: sha256(&cert.bytes),
            root,
        };
        Ok(())
    }

    /// Applies one row change of commit `seq`: the server's row moves by
    /// it (and the root with it), the local row settles on it.
    fn apply_change(
        &mut self,
        ti: usize,
        c: &Change,
        own: bool,
        seq: u64,
        root: &mut StateRoot,
    ) -> Result<()> {
        let st = self
            .l
            .tables
            .get(ti)
            .ok_or_else(|| Error::invalid("unknown table"))?;
        let key = c.pk(&st.pk_flags);
        if !own {
            self.changes.row(self.l, seq, ti, &key, c.op)?;
        }
        let entry = self.rebase.entry(ti, &key);
        // A row nobody changed here is the server's row: an insert of it needs
        // no lookup (if it exists, the INSERT's key constraint says so).
        let local = if c.op == Op::Insert && entry.is_none() {
            None
        } else {
            st.select(&self.l.sql, &key)?
        };
        let old_server: Option<Row> = match &entry {
            Some(p) => p.base.clone(),
            None => local.clone(),
        };
        let new_server = merge::apply(c, old_server.as_deref()).map_err(|()| {
            Error::invalid(format!(
                "table {:?}: the change does not fit the verified local copy",
                st.name
            ))
        })?;
        if let Some(o) = &old_server {
            root.remove_row(&st.name, o);
        }
        let stored =
            self.rebase
                .settle(ti, &key, local.clone(), local, entry, new_server, own, seq)?;
        if let Some(s) = &stored {
            root.add_row(&st.name, s);
        }
        Ok(())
    }
}
