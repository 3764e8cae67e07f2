//! `pdb_sync()`: push the outbox; on `stale_head` pull, rebase and
//! resubmit; pull; repeat until nothing is pending (at most a few rounds).
//! Network calls happen outside local transactions; every local change
//! happens inside one, so a process killed at any point leaves either the
//! old state or the new one.

use crate::client::{HttpWitness, WitnessApi};
use crate::db::{transaction, Db};
use crate::error::{Error, Result};
use crate::pending;
use crate::pull::{pull, Pulled};
use crate::push::{self, Sent};
use crate::state::{self, Local};
use crate::status::head_json;
use pdb_protocol::{now_ms, Value};
use serde_json::{json, Value as Json};

const MAX_ROUNDS: usize = 8;

/// A failure is kept for `pdb_status`; nothing local is lost by it. An
/// answer that does not verify may be signed by a key the witness rotated
/// to since: the rotations are followed (from the pinned key) and the sync
/// tried once more.
pub fn sync(db: Db) -> Result<Json> {
    let l = state::load(db)?;
    let w = HttpWitness::of(&l)?;
    let result = match rounds(&l, &w) {
        Err(e) if e.is_untrusted() && crate::keys::follow(&db, &w)? => {
            rounds(&state::load(db)?, &w)
        }
        result => result,
    };
    result.inspect_err(|e| state::record_error(&db, e))
}

pub fn rounds(l: &Local, w: &dyn WitnessApi) -> Result<Json> {
    let db = l.db;
    let mut pushed = 0;
    let mut pulled = Pulled::default();
    for _ in 0..MAX_ROUNDS {
        let Some(o) = transaction(&db, || push::next_commit(l))? else {
            pulled += pull(l, w)?;
            // A pull can leave changes to push (local_wins); go round again.
            if transaction(&db, || push::next_commit(l))?.is_none() {
                break;
            }
            continue;
        };
        match push::send(l, w, &o)? {
            Sent::Certified { seq } => {
                pulled += pull(l, w)?;
                if pending::outbox(&db)?.is_some_and(|x| x.key == o.key) {
                    return Err(Error::invalid(format!(
                        "commit {seq} was certified but is not in the log the witness serves"
                    )));
                }
                pushed += 1;
            }
            Sent::Stale => {
                // Not accepted (a replay would have answered): pull, then
                // seal again from the merged state with a new key.
                pulled += pull(l, w)?;
                push::unseal(l, &o)?;
            }
        }
    }
    state::clear_error(&db)?;
    state::set(&db, "last_sync_ms", Value::Integer(now_ms() as i64))?;
    Ok(json!({
        "pushed": pushed, "pulled": pulled.commits, "conflicts": pulled.conflicts,
        "head": head_json(l)?,
    }))
}

#[cfg(test)]
mod tests {
    //! pdb_open and pdb_sync against the fake witness, on a real SQLite.

    use super::*;
    use crate::error::Stage;
    use crate::merge::Policy;
    use crate::open::{open_with, OpenOptions};
    use crate::testing::{Conn, FakeWitness};
    use pdb_protocol::{Change, Op};

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
        };
        open_with(c.db(), w, "http://fake", "g", opts).unwrap()
    }

    fn sync(c: &Conn, w: &FakeWitness) -> Result<Json> {
        let l = state::load(c.db())?;
        rounds(&l, w).inspect_err(|e| state::record_error(&c.db(), e))
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
        let r = sync(&c, &w).unwrap();
        assert_eq!(
            (r["pushed"].as_i64(), r["pulled"].as_i64()),
            (Some(1), Some(1)),
            "{r}"
        );
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
        // Nothing left: another sync sends nothing.
        assert_eq!(sync(&c, &w).unwrap()["pushed"], 0);
        assert_eq!(w.seq(), 1);
    }

    #[test]
    fn a_lost_answer_is_resent_byte_for_byte_and_replays() {
        let w = witness();
        let c = device(&w, Policy::RemoteWins);
        c.exec("INSERT INTO notes VALUES (1, 'once', 1)");
        w.faults.borrow_mut().lose_commit_answer = true;
        let e = sync(&c, &w).unwrap_err();
        assert_eq!(e.stage(), Some(Stage::Answer));
        assert!(e.to_string().starts_with("witness unreachable: "), "{e}");
        assert!(status(&c)["last_error"]
            .as_str()
            .unwrap()
            .starts_with("witness unreachable"));
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
        crate::push::commit(c.db()).unwrap();
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
        assert!(e.to_string().starts_with("witness unreachable: "), "{e}");
        let s = status(&c);
        assert!(
            s["last_error"]
                .as_str()
                .unwrap()
                .starts_with("witness unreachable"),
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
}
