//! Settling rows on new server values with local work kept. A row nobody
//! changed here takes the server's value; a pending row gets a three-way
//! merge (its base, the server's new value, its local value) and its base
//! moves to the server's value. Remote history always applies: when a
//! constraint refuses a write because of a local change — a pending row
//! holding a UNIQUE value a remote row takes, a merged row failing a CHECK
//! — that local change is set aside (the row back to its server value) and
//! recorded in `pdb_conflicts`. Pull uses it per change of a commit,
//! bootstrap per pending row over a snapshot.

use crate::conflicts;
use crate::error::{Error, Result};
use crate::merge::{self, Conflict, Kept, Policy, Row};
use crate::pending::{self, ByKey, Entry};
use crate::state::Local;
use crate::tables::SyncTable;
use crate::unique::Uniques;
use pdb_protocol::value::encode_values;
use pdb_protocol::Value;

/// How deep setting aside may chain (a row set back to its base taking a
/// value another pending row holds, ...).
const MAX_DEPTH: usize = 8;

/// Rows being settled: the pending rows by key, kept in step with the
/// base log, and what was met.
pub struct Rebase<'a> {
    l: &'a Local,
    pub pending: ByKey,
    /// Conflicts recorded so far.
    pub conflicts: usize,
}

fn is_constraint(e: &Error) -> bool {
    e.sqlite_code().is_some_and(|(primary, _)| primary == 19)
}

impl<'a> Rebase<'a> {
    pub fn new(l: &'a Local) -> Result<Rebase<'a>> {
        Ok(Rebase {
            l,
            pending: pending::by_key(l)?,
            conflicts: 0,
        })
    }

    fn table(&self, ti: usize) -> Result<&'a SyncTable> {
        self.l
            .tables
            .get(ti)
            .ok_or_else(|| Error::invalid("unknown table"))
    }

    /// The pending entry of a row, if it is pending.
    pub fn entry(&self, ti: usize, key: &[Value]) -> Option<Entry> {
        self.pending.get(&(ti, encode_values(key))).cloned()
    }

    /// Settles the row `key` of table `ti` on `new_server`. `now` is the
    /// row in the table, `local` its local value (the same row, except
    /// while bootstrap refills the table), `entry` its pending entry, `own`
    /// whether the value comes from this database's own commit, `seq` the
    /// commit (or snapshot) it comes from. Returns the new server value as
    /// stored, for the state root.
    #[allow(clippy::too_many_arguments)]
    pub fn settle(
        &mut self,
        ti: usize,
        key: &[Value],
        now: Option<Row>,
        local: Option<Row>,
        entry: Option<Entry>,
        new_server: Option<Row>,
        own: bool,
        seq: u64,
    ) -> Result<Option<Row>> {
        let (l, st) = (self.l, self.table(ti)?);
        let map_key = (ti, encode_values(key));
        let Some(entry) = entry else {
            // Nobody changed it here: the server's row, as stored.
            return self.write(ti, key, now.as_ref(), new_server.as_ref(), seq, 0);
        };
        pending::drop_entries(l, st, &entry.seqs)?;
        if own && local == new_server && now == local {
            // Our own commit, and the row has not changed since: the server
            // now holds exactly the local row, and nothing is pending.
            self.pending.remove(&map_key);
            return Ok(local);
        }
        let (new_entry, stored_base) = pending::log_base(l, st, key, new_server.as_ref())?;
        let (merged, found) = if own {
            (local.clone(), Vec::new())
        } else {
            merge::merge(
                &st.key,
                l.policy,
                entry.base.as_ref(),
                stored_base.as_ref(),
                local.as_ref(),
            )
        };
        let written = if merged != now {
            match self.write(ti, key, now.as_ref(), merged.as_ref(), seq, 0) {
                Ok(r) => r,
                Err(e) if is_constraint(&e) => {
                    // The merged row cannot stand beside the server's
                    // state: the server's value goes in, the local side is
                    // recorded.
                    let c = Conflict::SetAside {
                        base: entry.base.clone(),
                        local: merged.clone(),
                        remote: stored_base.clone(),
                        kept: set_aside_kept(l.policy),
                    };
                    conflicts::record(l, st, seq, key, &c)?;
                    self.conflicts += 1;
                    self.write(ti, key, now.as_ref(), stored_base.as_ref(), seq, 0)?
                }
                Err(e) => return Err(e),
            }
        } else {
            now
        };
        if written == stored_base {
            pending::drop_entries(l, st, &[new_entry])?;
            self.pending.remove(&map_key);
        } else {
            self.pending.insert(
                map_key,
                Entry {
                    seqs: vec![new_entry],
                    base: stored_base.clone(),
                },
            );
        }
        for c in &found {
            conflicts::record(l, st, seq, key, c)?;
        }
        self.conflicts += found.len();
        Ok(stored_base)
    }

    /// Moves the row with `key` from `now` to `target` and returns it as
    /// stored. When a constraint refuses it because pending rows hold its
    /// UNIQUE values, their local changes are set aside and the write is
    /// tried again; a refusal by rows nobody changed here is returned.
    fn write(
        &mut self,
        ti: usize,
        key: &[Value],
        now: Option<&Row>,
        target: Option<&Row>,
        seq: u64,
        depth: usize,
    ) -> Result<Option<Row>> {
        let st = self.table(ti)?;
        for _ in 0..MAX_DEPTH {
            let e = match st.write(&self.l.sql, key, now, target) {
                Ok(r) => return Ok(r),
                Err(e) if is_constraint(&e) && depth < MAX_DEPTH => e,
                Err(e) => return Err(e),
            };
            let Some(t) = target else { return Err(e) };
            let colliders = Uniques::of(st).colliders(&self.l.sql, st, t)?;
            if colliders.is_empty() {
                return Err(e);
            }
            for c in colliders {
                let ck = st.key_of(&c);
                let Some(entry) = self.entry(ti, &ck) else {
                    // A row the server has: the refused row must yield.
                    return Err(e);
                };
                self.set_aside(ti, &ck, c, entry, t, seq, depth + 1)?;
            }
        }
        Err(Error::invalid(format!(
            "table {:?}: a row could not be written past its UNIQUE constraints",
            st.name
        )))
    }

    /// Sets a pending row's local change aside, because `winner` (a row
    /// the server has) needs a value it holds: the row goes back to its
    /// server value, stops being pending, and the conflict is recorded.
    #[allow(clippy::too_many_arguments)]
    fn set_aside(
        &mut self,
        ti: usize,
        key: &[Value],
        local: Row,
        entry: Entry,
        winner: &Row,
        seq: u64,
        depth: usize,
    ) -> Result<()> {
        let (l, st) = (self.l, self.table(ti)?);
        let c = Conflict::SetAside {
            base: entry.base.clone(),
            local: Some(local.clone()),
            remote: Some(winner.clone()),
            kept: set_aside_kept(l.policy),
        };
        conflicts::record(l, st, seq, key, &c)?;
        self.conflicts += 1;
        let stored = self.write(ti, key, Some(&local), entry.base.as_ref(), seq, depth)?;
        if stored == entry.base {
            pending::drop_entries(l, st, &entry.seqs)?;
            self.pending.remove(&(ti, encode_values(key)));
        }
        Ok(())
    }
}

/// What a set-aside conflict records as kept: the server's side, which
/// is what the table holds; under the manual policy the conflict stays
/// open for the app to see (and dismiss with `pdb_resolve`).
fn set_aside_kept(policy: Policy) -> Kept {
    if policy == Policy::Manual {
        Kept::Open
    } else {
        Kept::Remote
    }
}
