//! Capture: for each synced table, a base log (`pdb_base_<table>`) and
//! plain-SQL triggers that append the base values of every row touched.
//! Plain SQL, so writes from any connection are captured (even one that
//! never loaded the extension), and a rolled-back transaction takes its
//! captures with it. `pending` reads the logs.

use crate::db::Db;
use crate::error::Result;
use crate::state::Local;
use crate::tables::SyncTable;
use pdb_protocol::{quote_ident, Table};

/// The log's own columns: entry order, and whether the row existed at
/// the verified head (0: the entry holds only the key).
pub const SEQ: &str = "pdb_seq";
pub const EXISTED: &str = "pdb_existed";

/// The quoted name of a table's base log.
pub fn base_table(table: &str) -> String {
    quote_ident(&format!("pdb_base_{table}"))
}

/// DDL of the base log: same column names and declared types as the
/// table (so the same affinity and the same stored values), and no
/// constraint at all, so capturing can never conflict.
fn base_ddl(t: &Table) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("{} {}", quote_ident(&c.name), c.decl_type))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({SEQ} INTEGER PRIMARY KEY, {EXISTED} INTEGER NOT NULL, {})",
        base_table(&t.name),
        cols.join(", ")
    )
}

const TRIGGERS: [&str; 5] = ["replace", "insert", "update", "rekey", "delete"];

fn trigger_name(t: &SyncTable, what: &str) -> String {
    quote_ident(&format!("pdb_capture_{}_{what}", t.name))
}

/// The capture triggers, in the order of [`TRIGGERS`]. Each appends to
/// the base log; the bodies are plain INSERTs into a table without
/// constraints, so the conflict clause of the user's statement (which
/// overrides those in trigger bodies) cannot matter.
fn trigger_ddl(t: &SyncTable) -> Vec<String> {
    let table = &t.rows.table;
    let list: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
    let pk = t.key_idents();
    let vals = |prefix: &str, cols: &[String]| -> String {
        cols.iter()
            .map(|c| format!("{prefix}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = |what: &str| trigger_name(t, what);
    let base = &t.log.table;
    let l = list.join(", ");
    let p = pk.join(", ");
    let key_cond: Vec<String> = pk.iter().map(|c| format!("t.{c} = NEW.{c}")).collect();
    let rekeyed: Vec<String> = pk
        .iter()
        .map(|c| format!("NEW.{c} IS NOT OLD.{c}"))
        .collect();
    vec![
        // INSERT OR REPLACE deletes the old row without firing DELETE
        // triggers: log the old row before it goes.
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} BEFORE INSERT ON {table} \
             WHEN EXISTS (SELECT 1 FROM {table} t WHERE {kc}) BEGIN \
             INSERT INTO {base} ({EXISTED}, {l}) SELECT 1, {} FROM {table} t WHERE {kc}; END",
            name("replace"),
            vals("t", &list),
            kc = key_cond.join(" AND "),
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER INSERT ON {table} BEGIN \
             INSERT INTO {base} ({EXISTED}, {p}) VALUES (0, {}); END",
            name("insert"),
            vals("NEW", &pk),
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER UPDATE ON {table} BEGIN \
             INSERT INTO {base} ({EXISTED}, {l}) VALUES (1, {}); END",
            name("update"),
            vals("OLD", &list),
        ),
        // A key change also creates a row under the new key.
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER UPDATE OF {p} ON {table} WHEN {} BEGIN \
             INSERT INTO {base} ({EXISTED}, {p}) VALUES (0, {}); END",
            name("rekey"),
            rekeyed.join(" OR "),
            vals("NEW", &pk),
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER DELETE ON {table} BEGIN \
             INSERT INTO {base} ({EXISTED}, {l}) VALUES (1, {}); END",
            name("delete"),
            vals("OLD", &list),
        ),
    ]
}

fn create_triggers(db: &Db, t: &SyncTable) -> Result<()> {
    for ddl in trigger_ddl(t) {
        db.exec(&ddl)?;
    }
    Ok(())
}

/// Starts capturing a table (idempotent): its base log and triggers.
/// With `adopt_rows`, rows already in the table are logged as local
/// inserts (they were there before sync started).
pub fn install(db: &Db, t: &Table, st: &SyncTable, adopt_rows: bool) -> Result<()> {
    db.exec(&base_ddl(t))?;
    create_triggers(db, st)?;
    if adopt_rows {
        let pk = st.key_idents();
        db.exec(&format!(
            "INSERT INTO {} ({EXISTED}, {}) SELECT 0, {} FROM {}",
            st.log.table,
            pk.join(", "),
            pk.join(", "),
            st.rows.table
        ))?;
    }
    Ok(())
}

/// Runs `f` with the capture triggers dropped, while sync writes rows
/// itself. Call inside a transaction, so no other connection ever sees
/// them missing (DDL is transactional).
pub fn paused<T>(l: &Local, f: impl FnOnce() -> Result<T>) -> Result<T> {
    for t in &l.tables {
        for what in TRIGGERS {
            l.db.exec(&format!("DROP TRIGGER IF EXISTS {}", trigger_name(t, what)))?;
        }
    }
    let out = f()?;
    for t in &l.tables {
        create_triggers(&l.db, t)?;
    }
    Ok(out)
}
