//! Rows held back from sealing, so one row that cannot go never stops the
//! others (`pdb_blocked`, shown by `pdb_status`): rows the witness refused
//! for good (a UNIQUE value taken, a write rule), rows sealing finds it can
//! never send (a NULL key, a row larger than one request), and rows with an
//! open conflict under the manual policy. Held rows stay pending and
//! visible; a refused row is tried again, on its own, once it was edited or
//! the head moved (others' commits may have freed what it collided with);
//! a row with an open conflict goes once `pdb_resolve` closed it.

use crate::error::{Error, Result};
use crate::pending;
use crate::state::Local;
use crate::tables::SyncTable;
use pdb_protocol::value::{decode_values, encode_values};
use pdb_protocol::wire::value_json;
use pdb_protocol::{now_ms, Value};
use std::collections::HashMap;

/// A NULL in a key column: the witness can never accept the row.
pub const NULL_KEY: &str = "null_key";
/// The row alone is larger than one request may carry.
pub const ROW_TOO_LARGE: &str = "row_too_large";
/// An open conflict (policy manual) waits for `pdb_resolve`.
pub const OPEN_CONFLICT: &str = "open_conflict";

/// A refused row is tried again at least this often, even when nothing
/// local moved: the cause may have gone on the witness (a rule changed).
const RETRY_MS: i64 = 10 * 60 * 1000;

/// What sealing may do with a pending row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not held: it goes with the others.
    Free,
    /// Held, and nothing changed since: it waits.
    Held,
    /// Held, but its row or the head moved since: try it again, alone.
    Due,
}

/// How a row is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// By a rejection or an open conflict; `due`: tried again now.
    Waiting { due: bool },
    /// By sealing's own finding (NULL key, size), which sealing checks
    /// afresh every time: free for it, released when it goes.
    Checked,
}

/// The held rows, by (table index, encoded key).
pub struct Hold {
    rows: HashMap<(usize, Vec<u8>), Held>,
}

fn corrupt() -> Error {
    Error::invalid("pdb_blocked is corrupt")
}

impl Hold {
    /// Reads the held rows and forgets those that are no longer pending
    /// (synced, reverted or deleted since). Rows held by sealing's own
    /// findings (NULL keys, size) are left to sealing, which checks them
    /// every time.
    pub fn load(l: &Local) -> Result<Hold> {
        let head = l.head()?.seq as i64;
        let mut rows = HashMap::new();
        let mut stale = Vec::new();
        let now = now_ms() as i64;
        for r in l.db.rows(
            "SELECT tbl, pk, code, head_seq, row_digest, tried_ms FROM pdb_blocked",
            &[],
        )? {
            let (Some(Value::Text(tbl)), Some(Value::Blob(pk)), Some(Value::Text(code))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return Err(corrupt());
            };
            let int = |i: usize| r.get(i).and_then(crate::db::as_i64).unwrap_or(0);
            let (code, tbl) = (String::from_utf8_lossy(code), String::from_utf8_lossy(tbl));
            let found = l.schema.table_index(&tbl).zip(decode_values(pk));
            // Still pending? Then how the row is now.
            let mut now_digest = None;
            if let Some((ti, key)) = found {
                if let Some(t) = l.tables.get(ti) {
                    if pending::newest(l, t, &key)?.is_some() {
                        now_digest = Some((ti, row_digest(l, t, &key)?));
                    }
                }
            }
            let held_digest = r.get(4).and_then(crate::db::as_blob).unwrap_or_default();
            match now_digest {
                Some((ti, d)) => {
                    let edited = d != held_digest;
                    let held = if code == NULL_KEY || code == ROW_TOO_LARGE {
                        Held::Checked
                    } else {
                        Held::Waiting {
                            due: code != OPEN_CONFLICT
                                && (edited || head > int(3) || now - int(5) >= RETRY_MS),
                        }
                    };
                    rows.insert((ti, pk.clone()), held);
                }
                None => stale.push((Value::text(&tbl), Value::Blob(pk.clone()))),
            }
        }
        for (t, pk) in stale {
            l.db.run(
                "DELETE FROM pdb_blocked WHERE tbl = ?1 AND pk = ?2",
                &[t, pk],
            )?;
        }
        Ok(Hold { rows })
    }

    pub fn seen(&self, table: usize, pk: &[u8]) -> Seen {
        match self.rows.get(&(table, pk.to_vec())) {
            None | Some(Held::Checked) => Seen::Free,
            Some(Held::Waiting { due: false }) => Seen::Held,
            Some(Held::Waiting { due: true }) => Seen::Due,
        }
    }

    /// Whether any held row is due a retry.
    pub fn any_due(&self) -> bool {
        self.rows
            .values()
            .any(|h| *h == Held::Waiting { due: true })
    }

    /// Holds a row back, saying why and what to do; marks it with the
    /// head and its newest log entry, so it is tried again once either
    /// moves.
    pub fn block(
        &mut self,
        l: &Local,
        table: usize,
        key: &[Value],
        code: &str,
        message: &str,
        advice: &str,
    ) -> Result<()> {
        let t = l
            .tables
            .get(table)
            .ok_or_else(|| Error::invalid("unknown table"))?;
        block(l, t, key, code, message, advice)?;
        let held = if code == NULL_KEY || code == ROW_TOO_LARGE {
            Held::Checked
        } else {
            Held::Waiting { due: false }
        };
        self.rows.insert((table, encode_values(key)), held);
        Ok(())
    }

    /// Lets a row go (it is being sealed, or its hold no longer applies).
    pub fn release(&mut self, l: &Local, table: usize, key: &[Value]) -> Result<()> {
        let pk = encode_values(key);
        if self.rows.remove(&(table, pk.clone())).is_some() {
            if let Some(t) = l.tables.get(table) {
                release(l, t, &pk)?;
            }
        }
        Ok(())
    }
}

/// A digest of the row with this key as it is now (empty: absent), to see
/// whether it was edited since it was held.
fn row_digest(l: &Local, t: &SyncTable, key: &[Value]) -> Result<Vec<u8>> {
    Ok(t.select(&l.sql, key)?
        .map(|r| pdb_protocol::sha256(&encode_values(&r)).to_vec())
        .unwrap_or_default())
}

/// Records a held row (see [`Hold::block`]); the time it was first held
/// is kept while the reason stays the same.
pub fn block(
    l: &Local,
    t: &SyncTable,
    key: &[Value],
    code: &str,
    message: &str,
    advice: &str,
) -> Result<()> {
    let digest = row_digest(l, t, key)?;
    let key_json = serde_json::Value::Array(key.iter().map(value_json).collect()).to_string();
    l.sql.run(
        "INSERT INTO pdb_blocked(tbl, pk, key, code, message, advice, head_seq, row_digest, tried_ms, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
         ON CONFLICT (tbl, pk) DO UPDATE SET
           at_ms = CASE WHEN code = excluded.code THEN at_ms ELSE excluded.at_ms END,
           code = excluded.code, message = excluded.message, advice = excluded.advice,
           head_seq = excluded.head_seq, row_digest = excluded.row_digest, tried_ms = excluded.tried_ms",
        &[
            Value::text(&t.name),
            Value::Blob(encode_values(key)),
            Value::text(&key_json),
            Value::text(code),
            Value::text(message),
            Value::text(advice),
            Value::Integer(l.head()?.seq as i64),
            Value::Blob(digest),
            Value::Integer(now_ms() as i64),
        ],
    )
}

pub fn release(l: &Local, t: &SyncTable, pk: &[u8]) -> Result<()> {
    l.sql.run(
        "DELETE FROM pdb_blocked WHERE tbl = ?1 AND pk = ?2",
        &[Value::text(&t.name), Value::Blob(pk.to_vec())],
    )
}

/// Every held row, for `pdb_status`: table, key, code, message, advice,
/// since when.
pub fn list(db: &crate::db::Db) -> Result<Vec<serde_json::Value>> {
    let rows = db.rows(
        "SELECT tbl, key, code, message, advice, at_ms FROM pdb_blocked ORDER BY at_ms, tbl, pk LIMIT 100",
        &[],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let text = |i: usize| r.get(i).and_then(crate::db::as_text).unwrap_or_default();
            serde_json::json!({
                "table": text(0),
                "key": serde_json::from_str::<serde_json::Value>(&text(1)).unwrap_or_default(),
                "code": text(2),
                "message": text(3),
                "advice": text(4),
                "since_ms": r.get(5).and_then(crate::db::as_i64),
            })
        })
        .collect())
}
