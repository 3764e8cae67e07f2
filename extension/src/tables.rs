//! The synced tables as the extension sees them: their shape read from
//! the local database, and the SQL text used to read and write their rows
//! and their base rows (the `pdb_base_<table>` shadow tables).

use crate::db::{ident, Db, Error, Result};
use pdb_protocol::{Column, Schema, Table, Value};

/// Reads `pragma table_xinfo` for one table (None if it does not exist).
pub fn read_table(db: &Db, name: &str) -> Result<Option<Table>> {
    let exists = db.row(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        &[Value::text(name)],
    )?;
    let Some(row) = exists else { return Ok(None) };
    let real_name = crate::db::as_text(&row[0]).unwrap_or_else(|| name.to_string());
    let mut columns = Vec::new();
    for r in db.rows(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
        &[Value::text(&real_name)],
    )? {
        if crate::db::as_i64(&r[5]).unwrap_or(0) != 0 {
            return Err(Error(format!("table {real_name:?} has generated or hidden columns")));
        }
        columns.push(Column {
            name: crate::db::as_text(&r[0]).unwrap_or_default(),
            decl_type: crate::db::as_text(&r[1]).unwrap_or_default(),
            not_null: crate::db::as_i64(&r[2]).unwrap_or(0) != 0,
            default: crate::db::as_text(&r[3]),
            pk: crate::db::as_i64(&r[4]).unwrap_or(0) as u32,
        });
    }
    Ok(Some(Table {
        name: real_name,
        columns,
    }))
}

/// The local shape of the group's tables: `Ok(None)` when none exists,
/// an error when only some do.
pub fn read_local(db: &Db, names: &[String], version: u32) -> Result<Option<Schema>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        match read_table(db, n)? {
            Some(t) => found.push(t),
            None => missing.push(n.clone()),
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    if !missing.is_empty() {
        return Err(Error(format!(
            "schema_mismatch: the database has some of the group's tables but not {missing:?}"
        )));
    }
    Ok(Some(Schema::new(version, found)))
}

/// SQL for one synced table, built once from its schema.
#[derive(Clone, Debug)]
pub struct SyncTable {
    pub name: String,
    pub columns: Vec<String>,
    pub pk_cols: Vec<usize>,
    pub pk_flags: Vec<u8>,
    pub affinities: Vec<pdb_protocol::schema::Affinity>,
    pub base: String,
    pub select_row: String,
    pub insert_row: String,
    pub delete_row: String,
    /// Appends a base entry; parameters: the row, then pdb_existed.
    pub insert_base: String,
    /// Reads back the entry just appended (seq and row as stored).
    pub last_base: String,
    /// Deletes one base entry by its pdb_seq.
    pub delete_base: String,
    /// Keeps only the earliest entry per key.
    pub compact_base: String,
    /// (seq, existed, base row, present, current row) per pending key.
    pub pending: String,
}

pub const EXISTED: &str = "pdb_existed";
pub const SEQ: &str = "pdb_seq";

impl SyncTable {
    pub fn new(t: &Table) -> SyncTable {
        let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
        let mut pk: Vec<(u32, usize)> = t
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pk > 0)
            .map(|(i, c)| (c.pk, i))
            .collect();
        pk.sort();
        // Key values are bound in column order everywhere (as the changeset
        // format orders them).
        let mut pk_cols: Vec<usize> = pk.into_iter().map(|(_, i)| i).collect();
        pk_cols.sort();
        let table = ident(&t.name);
        let base = ident(&format!("pdb_base_{}", t.name));
        let list = cols.join(", ");
        let cond = |prefix: &str| -> String {
            pk_cols
                .iter()
                .enumerate()
                .map(|(n, i)| format!("{prefix}{} = ?{}", cols[*i], n + 1))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let join: Vec<String> = pk_cols
            .iter()
            .map(|i| format!("t.{c} = b.{c}", c = cols[*i]))
            .collect();
        let b_cols: Vec<String> = cols.iter().map(|c| format!("b.{c}")).collect();
        let t_cols: Vec<String> = cols.iter().map(|c| format!("t.{c}")).collect();
        let first_pk = cols[pk_cols.first().copied().unwrap_or(0)].clone();
        let pk_list: Vec<String> = pk_cols.iter().map(|i| cols[*i].clone()).collect();
        let pk_list = pk_list.join(", ");
        SyncTable {
            name: t.name.clone(),
            columns: t.columns.iter().map(|c| c.name.clone()).collect(),
            pk_flags: t.pk_flags(),
            affinities: t.affinities(),
            select_row: format!("SELECT {list} FROM {table} WHERE {}", cond("")),
            insert_row: format!("INSERT INTO {table} ({list}) VALUES ({})", marks.join(", ")),
            delete_row: format!("DELETE FROM {table} WHERE {}", cond("")),
            insert_base: format!(
                "INSERT INTO {base} ({EXISTED}, {list}) VALUES (?{}, {})",
                cols.len() + 1,
                marks.join(", ")
            ),
            last_base: format!("SELECT {SEQ}, {list} FROM {base} WHERE {SEQ} = last_insert_rowid()"),
            delete_base: format!("DELETE FROM {base} WHERE {SEQ} = ?1"),
            compact_base: format!(
                "DELETE FROM {base} WHERE {SEQ} NOT IN (SELECT min({SEQ}) FROM {base} GROUP BY {pk_list})"
            ),
            // The earliest entry of each key is its base (SQLite takes bare
            // columns from the row that gives min()).
            pending: format!(
                "SELECT b.{SEQ}, b.{EXISTED}, {}, t.{first_pk} IS NOT NULL, {} \
                 FROM (SELECT min({SEQ}) AS {SEQ}, {EXISTED}, {list} FROM {base} GROUP BY {pk_list}) b \
                 LEFT JOIN {table} t ON {}",
                b_cols.join(", "),
                t_cols.join(", "),
                join.join(" AND ")
            ),
            base,
            pk_cols,
        }
    }

    /// Whether writing these values (at these columns) surely stores them
    /// unchanged, so reading them back can be skipped.
    pub fn keeps(&self, cols: impl IntoIterator<Item = (usize, Value)>) -> bool {
        cols.into_iter()
            .all(|(i, v)| self.affinities.get(i).is_some_and(|a| a.keeps(&v)))
    }

    pub fn key_of(&self, row: &[Value]) -> Vec<Value> {
        self.pk_cols.iter().map(|i| row[*i].clone()).collect()
    }

    /// `UPDATE t SET <changed> WHERE <key>` for a set of changed columns;
    /// parameters: new values then the key.
    pub fn update_sql(&self, changed: &[usize]) -> String {
        let sets: Vec<String> = changed
            .iter()
            .enumerate()
            .map(|(n, i)| format!("{} = ?{}", ident(&self.columns[*i]), n + 1))
            .collect();
        let conds: Vec<String> = self
            .pk_cols
            .iter()
            .enumerate()
            .map(|(n, i)| format!("{} = ?{}", ident(&self.columns[*i]), changed.len() + n + 1))
            .collect();
        format!(
            "UPDATE {} SET {} WHERE {}",
            ident(&self.name),
            sets.join(", "),
            conds.join(" AND ")
        )
    }

    /// DDL of the log of base rows: every first touch of a row since the
    /// verified head appends its values there; the earliest entry per key
    /// is the row's base. Same column names and declared types as the
    /// table (so the same affinity and the same stored values), and no
    /// constraint at all, so capturing can never conflict.
    pub fn base_ddl(&self, t: &Table) -> String {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), c.decl_type))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({SEQ} INTEGER PRIMARY KEY, {EXISTED} INTEGER NOT NULL, {})",
            self.base,
            cols.join(", ")
        )
    }

    /// The capture triggers: plain SQL, so writes from any connection are
    /// captured, and a rolled-back transaction takes its captures with it.
    /// Each appends to the base log; the bodies are plain INSERTs into a
    /// table without constraints, so the conflict clause of the user's
    /// statement (which overrides those in trigger bodies) cannot matter.
    pub fn trigger_ddl(&self) -> Vec<String> {
        let table = ident(&self.name);
        let list: Vec<String> = self.columns.iter().map(|c| ident(c)).collect();
        let pk: Vec<String> = self
            .pk_cols
            .iter()
            .map(|i| ident(&self.columns[*i]))
            .collect();
        let vals = |prefix: &str, cols: &[String]| -> String {
            cols.iter()
                .map(|c| format!("{prefix}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let name = |what: &str| ident(&format!("pdb_capture_{}_{what}", self.name));
        let base = &self.base;
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

    pub fn trigger_names(&self) -> Vec<String> {
        ["replace", "insert", "update", "rekey", "delete"]
            .iter()
            .map(|w| ident(&format!("pdb_capture_{}_{w}", self.name)))
            .collect()
    }
}
