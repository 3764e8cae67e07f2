//! `pdb_sync()`: push the outbox, pull, and act on every refusal by its
//! class (docs/extension.md, "Never stuck"): retry later keeping
//! everything, rebase and resubmit, hold the rows the witness refused and
//! sync the rest, restart from a snapshot, or stop saying what must
//! change. Rounds repeat until nothing is left to push (bounded). Network
//! calls happen outside local transactions; every local change happens
//! inside one, so a process killed at any point leaves either the old
//! state or the new one.

use crate::client::WitnessApi;
use crate::db::transaction;
use crate::error::{Class, Error, Result};
use crate::hold::{self, Hold};
use crate::pending::{self, Outbox};
use crate::pull::{self, Pulled};
use crate::push;
use crate::seal::{self, Budget, Scope};
use crate::state::{self, Local};
use crate::status::head_json;
use pdb_protocol::wire::{value_json, LimitsJson};
use pdb_protocol::Changeset;
use serde_json::{json, Value as Json};

/// Rounds one pdb_sync may take (a round sends one commit or pulls):
/// enough to push a large batch in parts and to find a refused row by
/// halving, bounded so a sync always ends.
const MAX_ROUNDS: usize = 64;

/// A failure is kept for `pdb_status`; nothing local is lost by it. An
/// answer that does not verify may be signed by a key the witness rotated
/// to since: the rotations are followed (from the pinned key) and the sync
/// tried once more.
pub fn sync(db: crate::db::Db) -> Result<Json> {
    let l = state::load(db)?;
    let w = l.witness()?;
    let result = match rounds(&l, &w) {
        Err(e) if e.is_untrusted() => match crate::keys::follow(&db, &w) {
            Ok(true) => rounds(&state::load(db)?, &w),
            Ok(false) => Err(e),
            // The served chain is refused (a fork, a forged rotation):
            // that is what stopped sync, and pdb_status says it.
            Err(f) if f.is_refused_answer() => Err(f),
            Err(_) => Err(e),
        },
        result => result,
    };
    finish(&l, result)
}

/// [`sync`] against the witness `w`.
#[cfg(test)]
pub fn sync_with(l: &Local, w: &dyn WitnessApi) -> Result<Json> {
    finish(l, rounds(l, w))
}

/// A failed sync is told by what happened and kept for `pdb_status`.
fn finish(l: &Local, result: Result<Json>) -> Result<Json> {
    result.map_err(Error::classified).inspect_err(|e| {
        state::record_error(&l.db, e);
        crate::recover::assess(l, e);
    })
}

/// One pdb_sync's work and what it has done so far.
struct Run<'a> {
    base: &'a Local,
    /// The database loaded again after a pull migrated it.
    reloaded: Option<Local>,
    w: &'a dyn WitnessApi,
    hold: Hold,
    limits: LimitsJson,
    budget: Budget,
    pushed: usize,
    pulled: Pulled,
    /// Whether the copy is at the head the witness last signed, as of this
    /// sync (a pull, or a push answered with the head): nothing to pull.
    current: bool,
    /// Whether the last local transaction recorded the sync as ended
    /// well (then no other is needed for it).
    synced: bool,
}

pub fn rounds(l: &Local, w: &dyn WitnessApi) -> Result<Json> {
    let mut run = Run {
        base: l,
        reloaded: None,
        w,
        hold: Hold::load(l)?,
        limits: l.limits.clone(),
        budget: Budget::of(&l.limits),
        pushed: 0,
        pulled: Pulled::default(),
        current: false,
        synced: false,
    };
    let mut scope = Scope::Fresh;
    let mut retried = false;
    for _ in 0..MAX_ROUNDS {
        let Some(o) = run.seal(scope)? else {
            if scope == Scope::Fresh && !run.current {
                run.pull()?;
                // A pull can leave changes to push (merges): go round again.
                if run.seal(Scope::Fresh)?.is_some() {
                    continue;
                }
            }
            // Held rows that changed, or whose head moved, are tried once
            // more, on their own, so they cannot hold the rest back.
            if !retried {
                retried = true;
                run.hold = Hold::load(run.l())?;
                if run.hold.any_due() {
                    scope = Scope::Retry;
                    continue;
                }
            }
            break;
        };
        if push::request_bytes(&o) > run.limits.max_body_bytes {
            run.too_large_to_send(&o)?;
            continue;
        }
        run.current = false;
        run.synced = false;
        match push::send(run.l(), w, &o) {
            Ok(a) => {
                run.pushed += 1;
                // Our own commit is applied from the bytes we hold, not
                // fetched back, when nothing came between; else pulled.
                if pull::apply_own(run.l(), &o, &a, true)? {
                    run.current = a.head.is_some();
                    run.synced = run.current;
                } else {
                    run.pull()?;
                }
                if pending::outbox(&run.l().db)?.is_some_and(|x| x.key == o.key) {
                    return Err(Error::invalid(format!(
                        "commit {} was certified but is not in the log the witness serves",
                        a.rec.seq
                    )));
                }
            }
            Err(e) => match e.class() {
                Some(Class::Rebase) => {
                    // Not accepted (a replay would have answered): pull,
                    // then seal again from the merged state with a new key.
                    run.pull()?;
                    run.unseal(&o)?;
                }
                Some(Class::FixRows) => run.fix_rows(&o, &e)?,
                Some(Class::Retry) => {
                    if e.stage() == Some(crate::error::Stage::Answer) {
                        // A body over a lowered limit reads as a lost
                        // answer: learn the limit for the next try.
                        let _ = run.refresh_limits();
                    }
                    return Err(e);
                }
                Some(Class::CatchUp | Class::Stop) | None => return Err(e),
            },
        }
    }
    let l = run.l();
    if !run.synced {
        transaction(&l.db, || state::mark_synced(&l.db))?;
    }
    Ok(json!({
        "pushed": run.pushed, "pulled": run.pulled.commits, "conflicts": run.pulled.conflicts,
        "migrations": run.pulled.migrations,
        "blocked": hold::list(&l.db)?,
        "head": head_json(l)?,
    }))
}

impl Run<'_> {
    /// The database as it is now (its schema may have moved this sync).
    fn l(&self) -> &Local {
        self.reloaded.as_ref().unwrap_or(self.base)
    }

    /// The outbox commit to push (one already sent is kept byte for byte),
    /// else a new seal of the rows in `scope`. One the witness takes is
    /// marked sent in the same transaction.
    fn seal(&mut self, scope: Scope) -> Result<Option<Outbox>> {
        let l = self.reloaded.as_ref().unwrap_or(self.base);
        let (budget, hold, max) = (self.budget, &mut self.hold, self.limits.max_body_bytes);
        let o = transaction(&l.db, || {
            let o = seal::seal(l, hold, scope, budget)?;
            if let Some(o) = o.as_ref().filter(|o| push::request_bytes(o) <= max) {
                push::mark_sent(l, o)?;
            }
            Ok(o)
        })?;
        if o.is_some() {
            self.synced = false;
        }
        Ok(o)
    }

    fn unseal(&self, o: &Outbox) -> Result<()> {
        let l = self.l();
        transaction(&l.db, || seal::unseal(l, o))
    }

    /// Pulls; a pull may open conflicts (policy manual) that hold rows
    /// back, so the held rows are read again after it applied anything.
    fn pull(&mut self) -> Result<()> {
        let p = pull::pull_then(self.l(), self.w, true)?;
        self.current = true;
        self.synced = true;
        if p.migrations > 0 {
            self.reloaded = Some(state::load(self.base.db)?);
        }
        if p.conflicts > 0 || p.migrations > 0 {
            self.hold = Hold::load(self.l())?;
        }
        self.pulled += p;
        Ok(())
    }

    fn refresh_limits(&mut self) -> Result<()> {
        if let Some(limits) = self.w.witness()?.limits {
            state::set_limits(&self.l().db, &limits)?;
            self.budget = Budget::of(&limits);
            self.limits = limits;
        }
        Ok(())
    }

    /// A commit sealed under a larger limit than the witness's current
    /// one cannot be sent as it is (the witness refuses the body before
    /// reading it). If it landed before, the log has it; else it is
    /// unsealed and its rows go again in smaller commits.
    fn too_large_to_send(&mut self, o: &Outbox) -> Result<()> {
        self.pull()?;
        if pending::outbox(&self.l().db)?.is_some_and(|x| x.key == o.key) {
            self.unseal(o)?;
        }
        self.budget = Budget::of(&self.limits);
        Ok(())
    }

    /// The witness will never accept this commit as it is: unseal it, and
    /// hold back the row it names (or, when it names none, halve the next
    /// commit until the one row is found), so the rest goes.
    fn fix_rows(&mut self, o: &Outbox, e: &Error) -> Result<()> {
        self.unseal(o)?;
        let Some(r) = e.rejection() else {
            return Err(Error::invalid("a refusal without the witness's answer"));
        };
        let code = r.body.code.as_str();
        if code == "idempotency_conflict" {
            // The key was taken (by no commit of ours): seal under a new one.
            return Ok(());
        }
        if code == "body_too_large" {
            self.refresh_limits()?;
            self.budget = self
                .budget
                .halved(o.rows as usize, o.changeset.len())
                .within(Budget::of(&self.limits));
            if o.rows > 1 {
                return Ok(());
            }
        }
        let cs = Changeset::decode(&o.changeset)
            .map_err(|_| Error::invalid("the outbox commit does not decode"))?;
        let l = self.reloaded.as_ref().unwrap_or(self.base);
        let named = r.body.table.as_deref().zip(r.body.key.as_ref());
        let mut found = None;
        for t in &cs.tables {
            let Some(ti) = l.schema.table_index(&t.name) else {
                continue;
            };
            for c in &t.changes {
                let key = c.pk(&t.pk_flags);
                let json: Vec<Json> = key.iter().map(value_json).collect();
                let is_named = named
                    .is_some_and(|(table, k)| table.eq_ignore_ascii_case(&t.name) && k == &json);
                if is_named || o.rows == 1 {
                    found = Some((ti, key));
                    break;
                }
            }
        }
        match found {
            Some((ti, key)) => {
                let code = if code == "body_too_large" {
                    hold::ROW_TOO_LARGE
                } else {
                    code
                };
                let message = r.body.message.clone();
                self.hold.block(l, ti, &key, code, &message, advice(code))
            }
            None => {
                // Not told which row: halve the next commit.
                self.budget = self.budget.halved(o.rows as usize, o.changeset.len());
                Ok(())
            }
        }
    }
}

/// What to do about a row the witness refused, by its code.
fn advice(code: &str) -> &'static str {
    match code {
        "changeset_conflict" => "the witness cannot apply this row as it is (a UNIQUE value another device took, a constraint): change or delete it; the other rows sync; it is tried again when it changes or new commits arrive",
        "unauthorized" | "rule_error" => "a write rule of the group refuses this row: change it so the rule allows it, delete it, or ask the group's admin; the other rows sync",
        hold::ROW_TOO_LARGE => "make the row smaller, or raise the witness's --max-body-bytes; it syncs on the next pdb_sync",
        _ => "the witness refuses this row as it is: change or delete it; the other rows sync; it is tried again when it changes or new commits arrive",
    }
}

#[cfg(test)]
mod tests {
    //! pdb_open and pdb_sync against the fake witness, on a real SQLite.

    use super::*;
    use crate::error::Stage;
    use crate::merge::Policy;
    use crate::open::{open_with, OpenOptions};
    use crate::testing::{Conn, FakeWitness};
    use pdb_protocol::{Change, Op, Value};

    const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, n INTEGER);";

    fn witness() -> FakeWitness {
        FakeWitness::new("g", DDL, &["notes"])
    }

    /// A fresh database opened for the group.
    fn device(w: &FakeWitness, policy: Policy) -> Conn {
        let c = Conn::memory();
        open(&c, w, policy);
        c
    }

    fn open(c: &Conn, w: &FakeWitness, policy: Policy) -> Json {
        let opts = OpenOptions {
            token: String::new(),
            public_key: None,
            policy,
            transport: Default::default(),
            max_head_age_ms: 0,
            store_token: true,
            schema_versions: None,
            given: Vec::new(),
        };
        open_with(c.db(), w, "http://fake", "g", opts).unwrap()
    }

    fn sync(c: &Conn, w: &FakeWitness) -> Result<Json> {
        sync_with(&state::load(c.db())?, w)
    }

    fn note(id: i64, body: &str, n: i64) -> Vec<Value> {
        vec![Value::Integer(id), Value::text(body), Value::Integer(n)]
    }

    fn insert(row: Vec<Value>) -> Change {
        Change {
            op: Op::Insert,
            indirect: false,
            old: vec![],
            new: row.into_iter().map(Some).collect(),
        }
    }

    /// An update of row `id` from `old` to `new` values of column `col`.
    fn update(id: i64, col: usize, old: Value, new: Value) -> Change {
        let mut o = vec![Some(Value::Integer(id)), None, None];
        let mut n = vec![None, None, None];
        o[col] = Some(old);
        n[col] = Some(new);
        Change {
            op: Op::Update,
            indirect: false,
            old: o,
            new: n,
        }
    }

    fn verified(c: &Conn) -> bool {
        crate::status::verify(c.db()).unwrap()["ok"] == true
    }

    fn status(c: &Conn) -> Json {
        crate::status::status(c.db()).unwrap()
    }

    #[test]
    fn open_pulls_the_log_and_the_copy_verifies() {
        let w = witness();
        w.remote(
            "notes",
            vec![insert(note(1, "one", 1)), insert(note(2, "two", 2))],
        );
        w.remote(
            "notes",
            vec![update(2, 2, Value::Integer(2), Value::Integer(20))],
        );
        let c = Conn::memory();
        let r = open(&c, &w, Policy::RemoteWins);
        assert_eq!(r["pulled"], 2, "{r}");
        assert_eq!(c.dump("notes"), w.rows("notes"));
        assert_eq!(r["head"]["seq"], 2);
        assert!(verified(&c));
    }

    #[test]
    fn local_changes_are_pushed_once_as_their_net_change() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'a', 1); UPDATE notes SET n = 2 WHERE id = 1;");
        c.exec("INSERT INTO notes VALUES (2, 'gone', 0); DELETE FROM notes WHERE id = 2;");
        let pages = w.pages_read.get();
        let r = sync(&c, &w).unwrap();
        // Its own commit is not fetched back: the answer to the push
        // carries the certificate and the head, and is all it asks.
        assert_eq!(
            (r["pushed"].as_i64(), r["pulled"].as_i64()),
            (Some(1), Some(0)),
            "{r}"
        );
        assert_eq!(w.pages_read.get(), pages, "no page read");
        assert_eq!(w.seq(), 1);
        assert_eq!(w.author(1), "device");
        assert_eq!(w.rows("notes"), vec![note(1, "a", 2)]);
        let s = status(&c);
        assert_eq!(
            (s["pending_rows"].as_i64(), s["outbox"].is_null()),
            (Some(0), true),
            "{s}"
        );
        assert_eq!(
            c.count("SELECT count(*) FROM pdb_certificates WHERE mine = 1"),
            1
        );
        assert_eq!(c.count("SELECT count(*) FROM pdb_base_notes"), 0);
        assert!(verified(&c));
        // Nothing left: another sync sends nothing, and reads one page.
        assert_eq!(sync(&c, &w).unwrap()["pushed"], 0);
        assert_eq!(w.seq(), 1);
        assert_eq!(w.pages_read.get(), pages + 1);
    }

    #[test]
    fn a_row_changed_after_its_seal_stays_pending_when_the_commit_is_settled_from_the_outbox() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'a', 1)");
        // Sent and accepted, the answer lost: the commit stays as sealed.
        w.faults.borrow_mut().lose_commit_answer = true;
        assert!(sync(&c, &w).is_err());
        c.exec("UPDATE notes SET n = 2 WHERE id = 1");
        let pages = w.pages_read.get();
        let r = sync(&c, &w).unwrap();
        // The replay settles the sealed commit from the outbox (the row
        // keeps its later change, pending), then that change goes: no
        // page read.
        assert_eq!(r["pushed"], 2, "{r}");
        assert_eq!(w.pages_read.get(), pages);
        assert_eq!(w.rows("notes"), vec![note(1, "a", 2)]);
        assert_eq!(c.dump("notes"), w.rows("notes"));
        assert_eq!(status(&c)["pending_rows"], 0);
        assert!(verified(&c));
    }

    #[test]
    fn without_the_head_in_the_answer_the_push_is_settled_by_a_pull() {
        let w = witness();
        w.faults.borrow_mut().no_head = true;
        let c = device(&w, Policy::RemoteWins);
        let other = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'a', 1)");
        let pages = w.pages_read.get();
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 1, "{r}");
        assert_eq!(w.pages_read.get(), pages + 1, "one pull to learn the head");
        assert_eq!(
            c.count("SELECT count(*) FROM pdb_certificates WHERE mine = 1"),
            1
        );
        assert!(status(&c)["outbox"].is_null());
        // With the head back: a commit sealed before another device's is
        // refused as stale, pulled over, sealed again and settled from the
        // answer; both copies agree.
        w.faults.borrow_mut().no_head = false;
        other.exec("INSERT INTO notes VALUES (2, 'b', 2)");
        sync(&other, &w).unwrap();
        c.exec("UPDATE notes SET n = 10 WHERE id = 1");
        crate::seal::commit(c.db()).unwrap();
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 1, "{r}");
        assert_eq!(c.dump("notes"), w.rows("notes"));
        assert_eq!(other.dump("notes").len(), 2);
        sync(&other, &w).unwrap();
        assert_eq!(other.dump("notes"), c.dump("notes"));
        assert!(verified(&c));
        assert!(verified(&other));
    }

    #[test]
    fn a_lost_answer_is_resent_byte_for_byte_and_replays() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'once', 1)");
        w.faults.borrow_mut().lose_commit_answer = true;
        let e = sync(&c, &w).unwrap_err();
        assert_eq!(e.stage(), Some(Stage::Answer));
        assert!(e.to_string().starts_with("answer lost: "), "{e}");
        assert!(status(&c)["last_error"]
            .as_str()
            .unwrap()
            .starts_with("answer lost"));
        assert_eq!(w.seq(), 1, "the witness did accept it");
        // Meanwhile another device commits; the retry is a replay.
        w.remote("notes", vec![insert(note(2, "other", 2))]);
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 1, "{r}");
        assert_eq!(w.seq(), 2, "no duplicate");
        assert_eq!(c.dump("notes"), w.rows("notes"));
        assert_eq!(
            c.count("SELECT count(*) FROM pdb_certificates WHERE mine = 1"),
            1
        );
        assert!(status(&c)["last_error"].is_null());
        assert!(verified(&c));
    }

    #[test]
    fn a_commit_whose_answer_was_lost_is_recognised_when_pulled() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'mine', 1)");
        w.faults.borrow_mut().lose_commit_answer = true;
        assert!(sync(&c, &w).is_err());
        let r = open(&c, &w, Policy::RemoteWins);
        assert_eq!(r["pulled"], 1, "{r}");
        let s = status(&c);
        assert!(s["outbox"].is_null(), "{s}");
        assert_eq!(s["pending_rows"], 0, "{s}");
        assert_eq!(
            c.count("SELECT mine FROM pdb_certificates WHERE seq = 1"),
            1
        );
        assert_eq!(sync(&c, &w).unwrap()["pushed"], 0);
        assert_eq!(w.seq(), 1);
    }

    #[test]
    fn a_stale_head_pulls_merges_and_resubmits() {
        let w = witness();
        w.remote(
            "notes",
            vec![insert(note(1, "a", 1)), insert(note(2, "b", 1))],
        );
        let c = device(&w, Policy::RemoteWins);
        // Sealed against seq 1, row 1 changed again since (two log entries
        // for its key); then another device moves the head.
        c.exec("UPDATE notes SET n = 5 WHERE id = 1; UPDATE notes SET n = 20 WHERE id = 2;");
        crate::seal::commit(c.db()).unwrap();
        c.exec("UPDATE notes SET n = 10 WHERE id = 1");
        w.remote(
            "notes",
            vec![
                update(1, 2, Value::Integer(1), Value::Integer(11)),
                update(2, 1, Value::text("b"), Value::text("B")),
            ],
        );
        let r = sync(&c, &w).unwrap();
        // Row 1: same column on both sides, remote wins and it is recorded.
        // Row 2: different columns, both survive and the merge is pushed.
        assert_eq!(
            (r["pushed"].as_i64(), r["conflicts"].as_i64()),
            (Some(1), Some(1)),
            "{r}"
        );
        assert_eq!(w.rows("notes"), vec![note(1, "a", 11), note(2, "B", 20)]);
        assert_eq!(c.dump("notes"), w.rows("notes"));
        let conflict = c
            .db()
            .row(
                "SELECT col, base_value, local_value, remote_value, kept FROM pdb_conflicts",
                &[],
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            conflict,
            vec![
                Value::text("n"),
                Value::Integer(1),
                Value::Integer(10),
                Value::Integer(11),
                Value::text("remote")
            ]
        );
        assert_eq!(c.count("SELECT count(*) FROM pdb_base_notes"), 0);
        assert!(verified(&c));
    }

    #[test]
    fn a_deleted_row_against_a_remote_update_is_a_row_conflict_kept_local() {
        let w = witness();
        w.remote("notes", vec![insert(note(1, "a", 1))]);
        let c = device(&w, Policy::LocalWins);
        c.exec("DELETE FROM notes WHERE id = 1");
        w.remote(
            "notes",
            vec![update(1, 1, Value::text("a"), Value::text("changed"))],
        );
        let r = sync(&c, &w).unwrap();
        assert_eq!(
            (r["pushed"].as_i64(), r["conflicts"].as_i64()),
            (Some(1), Some(1)),
            "{r}"
        );
        assert!(w.rows("notes").is_empty(), "local_wins: the delete stands");
        let (col, local, remote) = {
            let r = c
                .db()
                .row(
                    "SELECT col, local_value, remote_value FROM pdb_conflicts",
                    &[],
                )
                .unwrap()
                .unwrap();
            (r[0].clone(), r[1].clone(), r[2].clone())
        };
        assert_eq!(col, Value::Null);
        assert_eq!(local, Value::Null);
        assert_eq!(remote, Value::text(r#"[1,"changed",1]"#));
        assert!(verified(&c));
    }

    #[test]
    fn rejections_are_classified_by_code_and_nothing_local_is_lost() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'x', 1)");
        w.faults.borrow_mut().reject_commit = Some((403, "unauthorized"));
        let e = sync(&c, &w).unwrap_err();
        assert!(e.is_rejection("unauthorized"));
        assert!(
            e.to_string()
                .starts_with("unauthorized: refused by the test (sync stopped"),
            "{e}"
        );
        w.faults.borrow_mut().reject_commit = Some((503, "unavailable"));
        let e = sync(&c, &w).unwrap_err();
        assert!(e.to_string().starts_with("witness error: HTTP 503"), "{e}");
        let s = status(&c);
        assert!(
            s["last_error"]
                .as_str()
                .unwrap()
                .starts_with("witness error"),
            "{s}"
        );
        assert_eq!(s["pending_rows"], 1, "{s}");
        assert_eq!(w.seq(), 0);
        // Once the witness takes it, sync resumes by itself.
        assert_eq!(sync(&c, &w).unwrap()["pushed"], 1);
        assert!(verified(&c));
    }

    #[test]
    fn a_tampered_certificate_changes_nothing() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (100, 'local, unsynced', 0)");
        w.remote("notes", vec![insert(note(1, "real", 1))]);
        let (rows, head) = (c.dump("notes"), crate::status::head(c.db()).unwrap());
        w.faults.borrow_mut().tamper_page = true;
        let e = sync(&c, &w).unwrap_err();
        assert!(e.to_string().contains("certificate rejected"), "{e}");
        assert_eq!(c.dump("notes"), rows);
        assert_eq!(crate::status::head(c.db()).unwrap(), head);
        assert_eq!(sync(&c, &w).unwrap()["pushed"], 1);
        assert_eq!(c.dump("notes"), w.rows("notes"));
        assert!(verified(&c));
    }

    fn insert_notes(c: &Conn, ids: std::ops::Range<i64>, body: &str) {
        c.exec("BEGIN");
        for id in ids {
            c.exec(&format!("INSERT INTO notes VALUES ({id}, '{body}', {id})"));
        }
        c.exec("COMMIT");
    }

    fn blocked_keys(c: &Conn) -> Vec<Json> {
        status(c)["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["key"].clone())
            .collect()
    }

    #[test]
    fn a_row_refused_without_being_named_is_found_by_halving_and_the_rest_goes() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        insert_notes(&c, 1..17, "x");
        w.faults.borrow_mut().refuse_key = Some((Value::Integer(11), "invalid_changeset", false));
        let r = sync(&c, &w).unwrap();
        assert_eq!(w.rows("notes").len(), 15, "{r}");
        assert_eq!(blocked_keys(&c), vec![json!([11])]);
        assert_eq!(status(&c)["pending_rows"], 1);
        // Halving found it in a handful of requests, not one per row.
        assert!(w.commits_sent.get() <= 12, "{}", w.commits_sent.get());
        assert!(verified(&c));
    }

    #[test]
    fn a_refused_row_is_not_sent_again_until_it_changes_then_it_goes() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        insert_notes(&c, 1..4, "x");
        w.faults.borrow_mut().refuse_key = Some((Value::Integer(2), "changeset_conflict", true));
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 1, "{r}");
        assert_eq!(r["blocked"][0]["code"], "changeset_conflict", "{r}");
        let sent = w.commits_sent.get();
        // Nothing changed: nothing is sent.
        assert_eq!(sync(&c, &w).unwrap()["pushed"], 0);
        assert_eq!(w.commits_sent.get(), sent);
        // The app changes the row: it goes, on its own, on the next sync.
        w.faults.borrow_mut().refuse_key = None;
        c.exec("UPDATE notes SET body = 'fixed' WHERE id = 2");
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 1, "{r}");
        assert!(blocked_keys(&c).is_empty());
        assert_eq!(c.dump("notes"), w.rows("notes"));
        assert!(verified(&c));
    }

    #[test]
    fn a_witness_clock_far_ahead_is_clock_skew_and_once_corrected_nothing_is_locked_out() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'x', 1)");
        sync(&c, &w).unwrap();
        // A head 400 days ahead of this device's clock: its own code, in
        // the retry class, and nothing of it used.
        w.faults.borrow_mut().clock_offset_ms = 400 * 86_400_000;
        w.remote("notes", vec![insert(note(2, "remote", 2))]);
        let e = sync(&c, &w).unwrap_err();
        assert_eq!(e.code(), Some("clock_skew"), "{e}");
        assert_eq!(e.class(), Some(crate::error::Class::Retry));
        assert!(e.to_string().contains("400 days"), "{e}");
        let s = status(&c);
        assert_eq!(s["state"], "waiting", "{s}");
        assert_eq!(s["reason"]["code"], "clock_skew", "{s}");
        assert_eq!(c.count("SELECT count(*) FROM notes"), 1);
        // A head a few minutes ahead is taken; then the witness's clock is
        // corrected backwards: its heads are earlier than one seen, but
        // extend the verified history — not a rollback, no lockout.
        w.faults.borrow_mut().clock_offset_ms = 4 * 60_000;
        sync(&c, &w).unwrap();
        assert_eq!(c.count("SELECT count(*) FROM notes"), 2);
        w.faults.borrow_mut().clock_offset_ms = 0;
        sync(&c, &w).unwrap();
        c.exec("INSERT INTO notes VALUES (3, 'after the correction', 3)");
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 1, "{r}");
        assert_eq!(status(&c)["state"], "healthy");
    }

    #[test]
    fn a_retry_keeps_the_outbox_byte_for_byte_and_reads_retry_after() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'x', 1)");
        w.faults.borrow_mut().reject_commit = Some((507, "storage_full"));
        let e = sync(&c, &w).unwrap_err();
        assert_eq!(e.class(), Some(crate::error::Class::Retry));
        assert!(e.to_string().starts_with("storage_full: "), "{e}");
        let before = pending::outbox(&c.db()).unwrap().unwrap();
        let s = status(&c);
        assert_eq!(s["state"], "waiting", "{s}");
        assert_eq!(s["reason"]["code"], "storage_full", "{s}");
        // More local writes do not change the sealed commit.
        c.exec("INSERT INTO notes VALUES (2, 'y', 2)");
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 2, "{r}");
        let first = w.log.borrow().entries[0].changeset.clone();
        assert_eq!(first, pdb_protocol::wire::b64(&before.changeset));
        assert_eq!(status(&c)["state"], "healthy");
    }

    #[test]
    fn an_idempotency_conflict_reseals_under_a_new_key() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'x', 1)");
        w.faults.borrow_mut().reject_commit = Some((409, "idempotency_conflict"));
        let r = sync(&c, &w).unwrap();
        assert_eq!(r["pushed"], 1, "{r}");
        assert_eq!(w.commits_sent.get(), 2);
        assert!(verified(&c));
    }

    #[test]
    fn a_batch_goes_in_commits_no_larger_than_the_witness_takes() {
        let w = witness();
        w.faults.borrow_mut().limits = Some(pdb_protocol::wire::LimitsJson {
            max_body_bytes: 40 * 1024,
            max_page_bytes: 1 << 20,
            max_page_commits: 1000,
            keep_log_commits: None,
            max_wait_seconds: None,
        });
        let c = device(&w, Policy::RemoteWins);
        insert_notes(&c, 1..301, &"b".repeat(200));
        let r = sync(&c, &w).unwrap();
        let pushed = r["pushed"].as_u64().unwrap();
        assert!(pushed >= 3, "{r}");
        assert_eq!(w.seq(), pushed);
        for e in &w.log.borrow().entries {
            assert!(e.changeset.len() < 40 * 1024, "{}", e.changeset.len());
        }
        assert_eq!(w.rows("notes").len(), 300);
        assert!(verified(&c));
    }
}
