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

/// A failure is kept for `pdb_status`; nothing local is lost by it.
pub fn sync(db: Db) -> Result<Json> {
    let l = state::load(db)?;
    let w = HttpWitness::new(&l.url, &l.token, &l.group);
    rounds(&l, &w).inspect_err(|e| state::record_error(&db, e))
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
            Sent::Certified(rec) => {
                pulled += pull(l, w)?;
                if pending::outbox(&db)?.is_some_and(|x| x.key == o.key) {
                    return Err(Error::invalid(format!(
                        "commit {} was certified but is not in the log the witness serves",
                        rec.seq
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
