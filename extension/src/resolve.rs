//! `pdb_resolve(id, 'local' | 'remote')`: settles an open conflict (policy
//! manual). `local` keeps what the table holds (the local side) and lets
//! the row sync; `remote` puts the witness's current value back (the
//! row's base) — a change captured like any other, so nothing of it is
//! pushed. When the row has no open conflict left, its hold is released.

use crate::db::{as_blob, as_text, transaction, Db};
use crate::error::{Error, Result};
use crate::hold;
use crate::pending;
use crate::state;
use pdb_protocol::value::decode_values;
use pdb_protocol::{now_ms, Value};
use serde_json::{json, Value as Json};

pub fn resolve(db: Db, id: i64, side: &str) -> Result<Json> {
    if side != "local" && side != "remote" {
        return Err(Error::invalid(
            "argument 2 (side) must be 'local' or 'remote'",
        ));
    }
    let l = state::load(db)?;
    transaction(&db, || {
        let r = db
            .row(
                "SELECT tbl, key_values, kind, col, kept FROM pdb_conflicts WHERE id = ?1",
                &[Value::Integer(id)],
            )?
            .ok_or_else(|| Error::invalid(format!("there is no conflict {id}")))?;
        let text = |i: usize| r.get(i).and_then(as_text);
        let (tbl, kind, kept) = (
            text(0).unwrap_or_default(),
            text(2).unwrap_or_default(),
            text(4).unwrap_or_default(),
        );
        if kept != "open" {
            return Err(Error::invalid(format!(
                "conflict {id} is not open: it was settled ({kept})"
            )));
        }
        let key = r
            .get(1)
            .and_then(as_blob)
            .and_then(decode_values)
            .ok_or_else(|| Error::invalid(format!("conflict {id} does not name its row")))?;
        let ti = l
            .schema
            .table_index(&tbl)
            .ok_or_else(|| Error::invalid(format!("conflict {id}: no synced table {tbl:?}")))?;
        let st = l
            .tables
            .get(ti)
            .ok_or_else(|| Error::invalid("unknown table"))?;
        if kind == "constraint" && side == "local" {
            return Err(Error::invalid(format!(
                "conflict {id}: the local row could not stand beside the remote one (a UNIQUE value it took, or a CHECK); write the row yourself with other values, then pdb_resolve({id}, 'remote')"
            )));
        }
        if side == "remote" && kind != "constraint" {
            // The row's base is the witness's current value of it.
            let base = pending::rows(&l, st)?
                .into_iter()
                .find(|p| p.key == key)
                .map(|p| p.base);
            if let Some(base) = base {
                let now = st.select(&l.sql, &key)?;
                let target = match (text(3), &base, &now) {
                    // One column: only that column goes back.
                    (Some(col), Some(b), Some(n)) => {
                        let i = st.columns.iter().position(|c| *c == col).ok_or_else(|| {
                            Error::invalid(format!("conflict {id}: no column {col:?}"))
                        })?;
                        let mut row = n.clone();
                        if let (Some(slot), Some(v)) = (row.get_mut(i), b.get(i)) {
                            *slot = v.clone();
                        }
                        Some(row)
                    }
                    _ => base.clone(),
                };
                st.write(&l.sql, &key, now.as_ref(), target.as_ref())
                    .map_err(|e| {
                        e.context(|m| {
                            format!(
                                "conflict {id}: the witness's value cannot go back here ({m}): another local row holds it; change that row first, or resolve 'local'"
                            )
                        })
                    })?;
            }
        }
        db.run(
            "UPDATE pdb_conflicts SET kept = ?1, resolved_ms = ?2 WHERE id = ?3",
            &[
                Value::text(side),
                Value::Integer(now_ms() as i64),
                Value::Integer(id),
            ],
        )?;
        let still_open = db
            .row(
                "SELECT 1 FROM pdb_conflicts WHERE tbl = ?1 AND key_values = ?2 AND kept = 'open'",
                &[
                    Value::text(&tbl),
                    Value::Blob(pdb_protocol::value::encode_values(&key)),
                ],
            )?
            .is_some();
        if !still_open {
            hold::release(&l, st, &pdb_protocol::value::encode_values(&key))?;
        }
        Ok(json!({ "id": id, "kept": side, "table": tbl, "open": still_open }))
    })
}
