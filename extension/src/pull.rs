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
use crate::merge::{self, Conflict, Row};
use crate::pending::{self, ByKey, Entry};
use crate::signed::verify_head;
use crate::state::{self, Head, Local};
use crate::tables::SyncTable;
use crate::{bootstrap, capture};
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::{unb64, value_json, LogEntryJson};
use pdb_protocol::{now_ms, sha256, Change, Changeset, HeadRecord, Op, Signed, StateRoot, Value};

/// Commits asked for per page.
const PAGE: u32 = 500;

/// What a pull did: commits applied and conflicts met.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pulled {
    pub commits: usize,
    pub conflicts: usize,
}

impl std::ops::AddAssign for Pulled {
    fn add_assign(&mut self, o: Pulled) {
        self.commits += o.commits;
        self.conflicts += o.conflicts;
    }
}

/// Pulls and applies every commit after the verified head.
pub fn pull(l: &Local, w: &dyn WitnessApi) -> Result<Pulled> {
    let mut pulled = Pulled::default();
    loop {
        let after = l.head()?.seq;
        let page = match w.commits(after, PAGE) {
            Ok(p) => p,
            Err(e) if e.is_rejection("snapshot_required") => {
                // The log before our head is gone: restart from a snapshot
                // (refused, keeping everything, if local changes are pending).
                let m = bootstrap::newer_snapshot(w, after)?.ok_or_else(|| {
                    Error::invalid("snapshot_required, but the witness offers no newer snapshot")
                })?;
                bootstrap::bootstrap(l, w, &m).inspect_err(|e| state::record_error(&l.db, e))?;
                continue;
            }
            Err(e) => return Err(state::call_failed(&l.db, e)),
        };
        let signed_head = verify_head(&l.key, &l.group, &page.head)?;
        crate::signed::check_fresh(&l.db, &signed_head, crate::signed::max_head_age(&l.db)?)?;
        state::set(&l.db, "remote_seq", Value::Integer(signed_head.seq as i64))?;
        if signed_head.seq < after {
            return Err(Error::invalid(format!(
                "the witness's head ({}) is behind this database's verified head ({after})",
                signed_head.seq
            )));
        }
        pulled += transaction(&l.db, || {
            capture::paused(l, || apply_page(l, &page.commits, &signed_head))
        })?;
        if page.next_after.is_none() || page.commits.is_empty() {
            return Ok(pulled);
        }
    }
}

/// Applies a page's entries after the verified head and moves the head;
/// at the page's end it must be the signed head the page came with.
/// Call inside a transaction with capture off.
fn apply_page(l: &Local, entries: &[LogEntryJson], signed_head: &HeadRecord) -> Result<Pulled> {
    let mut page = Page {
        l,
        pending: pending::by_key(l)?,
        own_key: pending::outbox(&l.db)?.map(|o| o.key),
        head: l.head()?,
    };
    let mut pulled = Pulled::default();
    for e in entries {
        if e.seq <= page.head.seq {
            continue;
        }
        let cs = unb64(&e.changeset)
            .ok_or_else(|| Error::invalid(format!("commit {}: changeset is not base64", e.seq)))?;
        let cert =
            e.certificate.signed.to_signed().ok_or_else(|| {
                Error::invalid(format!("commit {}: malformed certificate", e.seq))
            })?;
        pulled.conflicts += page.apply_entry(e.seq, &cs, &cert)?;
        pulled.commits += 1;
    }
    let h = &page.head;
    if h.seq == signed_head.seq
        && (h.hash != signed_head.head_hash || h.root.digest() != signed_head.state_root)
    {
        return Err(Error::invalid(
            "the local copy does not match the witness's signed head; nothing was applied",
        ));
    }
    l.set_head(h)?;
    Ok(pulled)
}

/// One page being applied: the pending rows and the outbox commit's key,
/// read once and kept in step with the log, and the head so far.
struct Page<'a> {
    l: &'a Local,
    pending: ByKey,
    own_key: Option<String>,
    head: Head,
}

impl Page<'_> {
    /// Verifies a log entry against the pinned key and the head so far,
    /// then applies it; returns the conflicts met.
    fn apply_entry(&mut self, seq: u64, changeset: &[u8], cert: &Signed) -> Result<usize> {
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
        let mut conflicts = 0;
        for t in &cs.tables {
            let ti = l
                .schema
                .table_index(&t.name)
                .ok_or_else(|| fail("unknown table"))?;
            for c in &t.changes {
                conflicts += self.apply_change(ti, c, own, seq, &mut root).map_err(|e| {
                    e.context(|m| format!("commit {seq}: {m}; nothing was applied"))
                })?;
            }
        }
        if root.digest() != rec.state_root {
            return Err(fail(
                "the state root after applying differs from the certified one (tampered response or diverged copy)",
            ));
        }
        l.db.run(
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
        Ok(conflicts)
    }

    /// Applies one row change of commit `seq`; returns the conflicts met.
    fn apply_change(
        &mut self,
        ti: usize,
        c: &Change,
        own: bool,
        seq: u64,
        root: &mut StateRoot,
    ) -> Result<usize> {
        let l = self.l;
        let st = l
            .tables
            .get(ti)
            .ok_or_else(|| Error::invalid("unknown table"))?;
        let key = c.pk(&st.pk_flags);
        let map_key = (ti, encode_values(&key));
        let pending = self.pending.get(&map_key).cloned();
        // A row nobody changed here is the server's row: an insert of it needs
        // no lookup (if it exists, the INSERT's key constraint says so).
        let local = if c.op == Op::Insert && pending.is_none() {
            None
        } else {
            st.select(&l.sql, &key)?
        };
        let old_server: Option<Row> = match &pending {
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
        let Some(pending) = pending else {
            let stored = st.write(&l.sql, &key, local.as_ref(), new_server.as_ref())?;
            if let Some(s) = &stored {
                root.add_row(&st.name, s);
            }
            return Ok(0);
        };
        pending::drop_entries(l, st, &pending.seqs)?;
        if own && local == new_server {
            // Our own commit, and the row has not changed since: the server now
            // holds exactly the local row (as read), and nothing is pending.
            if let Some(r) = &local {
                root.add_row(&st.name, r);
            }
            self.pending.remove(&map_key);
            return Ok(0);
        }
        let (new_entry, stored_base) = pending::log_base(l, st, &key, new_server.as_ref())?;
        if let Some(s) = &stored_base {
            root.add_row(&st.name, s);
        }
        let (merged, conflicts) = if own {
            (local.clone(), Vec::new())
        } else {
            merge::merge(
                &st.key,
                l.policy,
                old_server.as_ref(),
                stored_base.as_ref(),
                local.as_ref(),
            )
        };
        let now = if merged != local {
            st.write(&l.sql, &key, local.as_ref(), merged.as_ref())?
        } else {
            local
        };
        if now == stored_base {
            pending::drop_entries(l, st, &[new_entry])?;
            self.pending.remove(&map_key);
        } else {
            self.pending.insert(
                map_key,
                Entry {
                    seqs: vec![new_entry],
                    base: stored_base,
                },
            );
        }
        for cf in &conflicts {
            record_conflict(l, st, seq, &key, cf)?;
        }
        Ok(conflicts.len())
    }
}

/// Values as a JSON array, in text.
fn values_json(values: &[Value]) -> String {
    serde_json::Value::Array(values.iter().map(value_json).collect()).to_string()
}

fn record_conflict(l: &Local, st: &SyncTable, seq: u64, key: &[Value], c: &Conflict) -> Result<()> {
    let row = |r: &Option<Row>| {
        r.as_deref()
            .map_or(Value::Null, |r| Value::text(&values_json(r)))
    };
    let (col, base, local, remote, kept_remote) = match c {
        Conflict::Column {
            index,
            base,
            local,
            remote,
            kept_remote,
        } => (
            st.columns
                .get(*index)
                .map_or(Value::Null, |c| Value::text(c)),
            base.clone().unwrap_or(Value::Null),
            local.clone(),
            remote.clone(),
            *kept_remote,
        ),
        Conflict::Row {
            base,
            local,
            remote,
            kept_remote,
        } => (
            Value::Null,
            row(base),
            row(local),
            row(remote),
            *kept_remote,
        ),
    };
    l.db.run(
        "INSERT INTO pdb_conflicts(seq, tbl, pk, col, base_value, local_value, remote_value, kept, policy, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &[
            Value::Integer(seq as i64),
            Value::text(&st.name),
            Value::text(&values_json(key)),
            col,
            base,
            local,
            remote,
            Value::text(if kept_remote { "remote" } else { "local" }),
            Value::text(l.policy.name()),
            Value::Integer(now_ms() as i64),
        ],
    )
}
