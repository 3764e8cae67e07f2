//! `pdb_conflicts`: both sides of every conflict a rebase met, and which
//! one the table kept — or, under the manual policy, the conflict left
//! open (its row held back from pushing until `pdb_resolve` settles it).

use crate::error::Result;
use crate::hold::{self, OPEN_CONFLICT};
use crate::merge::{Conflict, Kept, Row};
use crate::state::Local;
use crate::tables::SyncTable;
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::value_json;
use pdb_protocol::{now_ms, Value};

/// Values as a JSON array, in text.
pub fn values_json(values: &[Value]) -> String {
    serde_json::Value::Array(values.iter().map(value_json).collect()).to_string()
}

/// Records a conflict of commit `seq` on the row with `key`; an open one
/// holds the row back.
pub fn record(l: &Local, st: &SyncTable, seq: u64, key: &[Value], c: &Conflict) -> Result<()> {
    let row = |r: &Option<Row>| {
        r.as_deref()
            .map_or(Value::Null, |r| Value::text(&values_json(r)))
    };
    let (kind, col, base, local, remote, kept) = match c {
        Conflict::Column {
            index,
            base,
            local,
            remote,
            kept,
        } => (
            "column",
            st.columns
                .get(*index)
                .map_or(Value::Null, |c| Value::text(c)),
            base.clone().unwrap_or(Value::Null),
            local.clone(),
            remote.clone(),
            *kept,
        ),
        Conflict::Row {
            base,
            local,
            remote,
            kept,
        } => (
            "row",
            Value::Null,
            row(base),
            row(local),
            row(remote),
            *kept,
        ),
        Conflict::SetAside {
            base,
            local,
            remote,
            kept,
        } => (
            "constraint",
            Value::Null,
            row(base),
            row(local),
            row(remote),
            *kept,
        ),
    };
    l.sql.run(
        "INSERT INTO pdb_conflicts(seq, tbl, pk, col, base_value, local_value, remote_value, kept, policy, at_ms, kind, key_values)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        &[
            Value::Integer(seq as i64),
            Value::text(&st.name),
            Value::text(&values_json(key)),
            col,
            base,
            local,
            remote,
            Value::text(kept.name()),
            Value::text(l.policy.name()),
            Value::Integer(now_ms() as i64),
            Value::text(kind),
            Value::Blob(encode_values(key)),
        ],
    )?;
    if kept == Kept::Open && kind != "constraint" {
        hold::block(
            l,
            st,
            key,
            OPEN_CONFLICT,
            "a conflict with a remote change is open (policy manual); the row waits",
            "read it in pdb_conflicts (kept = 'open'), then call pdb_resolve(id, 'local') or pdb_resolve(id, 'remote')",
        )?;
    }
    Ok(())
}

/// Records a local edit that the migration at log entry `seq` took away
/// (kind `schema`): the value of a dropped column `col`, or (`col` None) a
/// pending row of a dropped table, its values as JSON arrays. Kept is
/// `remote`: the group's schema no longer has it.
pub fn record_schema(
    l: &Local,
    table: &str,
    seq: u64,
    key: &[Value],
    col: Option<&str>,
    base: Value,
    local: Value,
) -> Result<()> {
    l.sql.run(
        "INSERT INTO pdb_conflicts(seq, tbl, pk, col, base_value, local_value, remote_value, kept, policy, at_ms, kind, key_values)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 'remote', ?7, ?8, 'schema', ?9)",
        &[
            Value::Integer(seq as i64),
            Value::text(table),
            Value::text(&values_json(key)),
            col.map_or(Value::Null, Value::text),
            base,
            local,
            Value::text(l.policy.name()),
            Value::Integer(now_ms() as i64),
            Value::Blob(encode_values(key)),
        ],
    )
}
