//! Capture: for each synced table, a base log (`pdb_base_<table>`) and
//! plain-SQL triggers that append the base values of every row touched.
//! Plain SQL, so writes from any connection are captured (even one that
//! never loaded the extension), and a rolled-back transaction takes its
//! captures with it. `pending` reads the logs.

use crate::baselog::{base_ddl, EXISTED};
use crate::db::Db;
use crate::error::Result;
use crate::state::Local;
use crate::tables::SyncTable;
use pdb_protocol::{quote_ident, Table};

const TRIGGERS: [&str; 6] = ["replace", "insert", "update", "rekey", "delete", "displace"];

fn trigger_name(t: &SyncTable, what: &str) -> String {
    quote_ident(&format!("pdb_capture_{}_{what}", t.name))
}

/// The capture triggers, in the order of [`TRIGGERS`]. Each appends to
/// the base log; the bodies are plain INSERTs into a table without
/// constraints, so the conflict clause of the user's statement (which
/// overrides those in trigger bodies) cannot matter.
fn trigger_ddl(t: &SyncTable) -> Vec<String> {
    let table = &t.rows.table;
    let base = &t.log.table;
    let list: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
    let pk = t.key_idents();
    let l = list.join(", ");
    let p = pk.join(", ");
    let vals = |prefix: &str, cols: &[String]| -> String {
        cols.iter()
            .map(|c| format!("{prefix}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let joined = |f: &dyn Fn(&String) -> String, sep: &str| -> String {
        pk.iter().map(f).collect::<Vec<_>>().join(sep)
    };
    let key_cond = joined(&|c| format!("t.{c} = NEW.{c}"), " AND ");
    let old_key = joined(&|c| format!("t.{c} = OLD.{c}"), " AND ");
    // The rows a write by NEW may displace under OR REPLACE: the one with
    // its key, and any holding its values of a UNIQUE constraint. SQLite
    // deletes them without firing DELETE triggers. One condition per
    // constraint, each answered by its index (an OR across them would
    // scan the table).
    let mut displaced = vec![key_cond.clone()];
    let mut guarded: Vec<String> = pk.clone();
    for u in &t.uniques {
        let conds: Vec<String> = u
            .iter()
            .filter_map(|(i, coll)| {
                let c = quote_ident(t.columns.get(*i)?);
                if !guarded.contains(&c) {
                    guarded.push(c.clone());
                }
                Some(format!("t.{c} = NEW.{c} COLLATE {}", quote_ident(coll)))
            })
            .collect();
        displaced.push(conds.join(" AND "));
    }
    // Whether some displaced row exists (`but`: a further condition), and
    // the statements logging each.
    let any = |but: &str| -> String {
        displaced
            .iter()
            .map(|c| format!("EXISTS (SELECT 1 FROM {table} t WHERE {but}{c})"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let log_each = |but: &str| -> String {
        displaced
            .iter()
            .map(|c| {
                format!(
                    "INSERT INTO {base} ({EXISTED}, {l}) SELECT 1, {} FROM {table} t WHERE {but}{c}",
                    vals("t", &list)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let rekeyed = joined(&|c| format!("NEW.{c} IS NOT OLD.{c}"), " OR ");
    // A NULL key can never reach the witness: refused at write time (AFTER,
    // so an INTEGER PRIMARY KEY has its rowid by then).
    let null_key = joined(&|c| format!("NEW.{c} IS NULL"), " OR ");
    let refuse = format!(
        "SELECT RAISE(ABORT, '{}') WHERE {null_key}; ",
        format!(
            "pdb: table {:?}: NULL in a primary-key column; the witness never accepts it, give the row a key",
            t.name
        )
        .replace('\'', "''")
    );
    // A trigger whose body is `body`.
    let raw = |what: &str, when: &str, condition: &str, body: String| {
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} {when} ON {table} {condition}BEGIN {body}; END",
            trigger_name(t, what)
        )
    };
    // `<when> ON table [<condition>]`: [check, then] append (pdb_existed,
    // columns) from `values` to the base log.
    let trigger = |what: &str, when: &str, condition: &str, columns: &str, values: String| {
        let check = if what == "insert" || what == "rekey" {
            refuse.as_str()
        } else {
            ""
        };
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} {when} ON {table} {condition}BEGIN \
             {check}INSERT INTO {base} ({EXISTED}, {columns}) {values}; END",
            trigger_name(t, what)
        )
    };
    vec![
        // INSERT OR REPLACE deletes rows without firing DELETE triggers:
        // log every row it may delete before it goes (a row logged that
        // stays is logged with its own value: harmless).
        raw(
            "replace",
            "BEFORE INSERT",
            &format!("WHEN {} ", any("")),
            log_each(""),
        ),
        trigger(
            "insert",
            "AFTER INSERT",
            "",
            &p,
            format!("VALUES (0, {})", vals("NEW", &pk)),
        ),
        trigger(
            "update",
            "AFTER UPDATE",
            "",
            &l,
            format!("VALUES (1, {})", vals("OLD", &list)),
        ),
        // A key change also creates a row under the new key.
        trigger(
            "rekey",
            &format!("AFTER UPDATE OF {p}"),
            &format!("WHEN {rekeyed} "),
            &p,
            format!("VALUES (0, {})", vals("NEW", &pk)),
        ),
        trigger(
            "delete",
            "AFTER DELETE",
            "",
            &l,
            format!("VALUES (1, {})", vals("OLD", &list)),
        ),
        // UPDATE OR REPLACE of a key or a UNIQUE column deletes the other
        // rows holding the new values, likewise silently.
        raw(
            "displace",
            &format!("BEFORE UPDATE OF {}", guarded.join(", ")),
            &format!("WHEN {} ", any(&format!("NOT ({old_key}) AND "))),
            log_each(&format!("NOT ({old_key}) AND ")),
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
    install_log(db, t, st, adopt_rows)?;
    create_triggers(db, st)
}

/// A table's base log without its triggers (they come with [`resume`]),
/// for a table a migration adds while capture is paused.
pub fn install_log(db: &Db, t: &Table, st: &SyncTable, adopt_rows: bool) -> Result<()> {
    db.exec(&base_ddl(t))?;
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
    pause(l)?;
    let out = f()?;
    resume(l)?;
    Ok(out)
}

/// Drops the capture triggers of every synced table (inside a
/// transaction that ends with [`resume`]).
pub fn pause(l: &Local) -> Result<()> {
    for t in &l.tables {
        for what in TRIGGERS {
            l.db.exec(&format!("DROP TRIGGER IF EXISTS {}", trigger_name(t, what)))?;
        }
    }
    Ok(())
}

/// Creates the capture triggers of every synced table of `l` — after a
/// migration, of the tables of the new schema.
pub fn resume(l: &Local) -> Result<()> {
    for t in &l.tables {
        create_triggers(&l.db, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::read_local;
    use crate::testing::Conn;
    use pdb_protocol::Value;

    /// The base log as (existed, id, v), in order.
    fn log(c: &Conn) -> Vec<(i64, i64, Option<String>)> {
        c.dump("pdb_base_t")
            .into_iter()
            .map(|r| {
                let int = |v: &Value| crate::db::as_i64(v).unwrap();
                (int(&r[1]), int(&r[2]), crate::db::as_text(&r[3]))
            })
            .collect()
    }

    #[test]
    fn every_kind_of_write_logs_the_rows_base() {
        let c = Conn::memory();
        c.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');");
        let t = read_local(&c.db(), &["t".into()])
            .unwrap()
            .unwrap()
            .remove(0);
        install(&c.db(), &t, &SyncTable::new(&t), true).unwrap();
        assert_eq!(
            log(&c),
            vec![(0, 1, None)],
            "rows already there are local inserts"
        );
        c.exec("DELETE FROM pdb_base_t");
        c.exec("UPDATE t SET v = 'b' WHERE id = 1");
        c.exec("INSERT OR REPLACE INTO t VALUES (1, 'c')");
        c.exec("UPDATE t SET id = 2 WHERE id = 1");
        c.exec("DELETE FROM t WHERE id = 2");
        c.exec("BEGIN; INSERT INTO t VALUES (9, 'rolled back'); ROLLBACK;");
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            log(&c),
            vec![
                (1, 1, s("a")), // update: the old row
                (1, 1, s("b")), // replace: the row it deletes
                (0, 1, None),   // ... and the insert
                (0, 2, None),   // key change: a row under the new key
                (1, 1, s("c")), // ... and the old row
                (1, 2, s("c")), // delete: the old row
            ]
        );
        // Installing again changes nothing.
        install(&c.db(), &t, &SyncTable::new(&t), false).unwrap();
        assert_eq!(log(&c).len(), 6);
    }

    #[test]
    fn rows_or_replace_displaces_through_a_unique_value_are_logged() {
        let c = Conn::memory();
        c.exec(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE COLLATE NOCASE);
             INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        );
        let t = read_local(&c.db(), &["t".into()])
            .unwrap()
            .unwrap()
            .remove(0);
        install(&c.db(), &t, &SyncTable::new(&t), false).unwrap();
        let s = |v: &str| Some(v.to_string());
        // Row 1 goes because the new row takes its value (any case).
        c.exec("INSERT OR REPLACE INTO t VALUES (9, 'A')");
        assert_eq!(log(&c), vec![(1, 1, s("a")), (0, 9, None)]);
        c.exec("DELETE FROM pdb_base_t");
        // Row 3 goes because row 2 takes its value; and a key taken.
        c.exec("UPDATE OR REPLACE t SET v = 'C' WHERE id = 2");
        assert_eq!(log(&c), vec![(1, 3, s("c")), (1, 2, s("b"))]);
        c.exec("DELETE FROM pdb_base_t");
        c.exec("UPDATE OR REPLACE t SET id = 9 WHERE id = 2");
        assert_eq!(
            log(&c),
            vec![(1, 9, s("A")), (0, 9, None), (1, 2, s("C"))],
            "the row under the new key is logged first, before it goes"
        );
        // Plain updates of other columns do not look for displaced rows,
        // and a refused write logs nothing.
        c.exec("DELETE FROM pdb_base_t");
        assert!(c
            .db()
            .exec("UPDATE t SET v = 'x' WHERE id = 9; INSERT INTO t VALUES (5, 'X')")
            .is_err());
        assert_eq!(log(&c), vec![(1, 9, s("C"))]);
    }
}
