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
    pub base: String,
    pub select_row: String,
    pub select_base: String,
    pub insert_row: String,
    pub delete_row: String,
    pub upsert_base: String,
    pub delete_base: String,
    pub pending_join: String,
}

pub const EXISTED: &str = "pdb_existed";

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
        SyncTable {
            name: t.name.clone(),
            columns: t.columns.iter().map(|c| c.name.clone()).collect(),
            pk_flags: t.pk_flags(),
            select_row: format!("SELECT {list} FROM {table} WHERE {}", cond("")),
            select_base: format!("SELECT {EXISTED}, {list} FROM {base} WHERE {}", cond("")),
            insert_row: format!(
                "INSERT INTO {table} ({list}) VALUES ({}) RETURNING {list}",
                marks.join(", ")
            ),
            delete_row: format!("DELETE FROM {table} WHERE {}", cond("")),
            upsert_base: format!(
                "INSERT OR REPLACE INTO {base} ({EXISTED}, {list}) VALUES (?{}, {}) RETURNING {list}",
                cols.len() + 1,
                marks.join(", ")
            ),
            delete_base: format!("DELETE FROM {base} WHERE {}", cond("")),
            pending_join: format!(
                "SELECT b.{EXISTED}, {}, t.{first_pk} IS NOT NULL, {} FROM {base} b LEFT JOIN {table} t ON {}",
                b_cols.join(", "),
                t_cols.join(", "),
                join.join(" AND ")
            ),
            base,
            pk_cols,
        }
    }

    pub fn key_of(&self, row: &[Value]) -> Vec<Value> {
        self.pk_cols.iter().map(|i| row[*i].clone()).collect()
    }

    /// `UPDATE t SET <changed> WHERE <key> RETURNING *` for a set of
    /// changed columns; parameters: new values then the key.
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
        let list: Vec<String> = self.columns.iter().map(|c| ident(c)).collect();
        format!(
            "UPDATE {} SET {} WHERE {} RETURNING {}",
            ident(&self.name),
            sets.join(", "),
            conds.join(" AND "),
            list.join(", ")
        )
    }

    /// DDL of the shadow table holding base rows: same column names and
    /// declared types (so the same affinity and the same stored values),
    /// keyed like the table, plus whether the row existed at the base.
    pub fn base_ddl(&self, t: &Table) -> String {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), c.decl_type))
            .collect();
        let pk: Vec<String> = self
            .pk_cols
            .iter()
            .map(|i| ident(&self.columns[*i]))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({EXISTED} INTEGER NOT NULL, {}, PRIMARY KEY ({})) WITHOUT ROWID",
            self.base,
            cols.join(", "),
            pk.join(", ")
        )
    }

    /// The capture triggers: plain SQL, so writes from any connection are
    /// captured, and a rolled-back transaction takes its captures with it.
    /// Each records a row's base values the first time it is touched.
    ///
    /// The bodies avoid conflict clauses on purpose: an `OR REPLACE` or
    /// `OR IGNORE` on the user's statement overrides those inside trigger
    /// bodies. `INSERT ... WHERE NOT EXISTS` never conflicts.
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
        let absent = |prefix: &str| -> String {
            let cond: Vec<String> = pk.iter().map(|c| format!("b.{c} = {prefix}.{c}")).collect();
            format!(
                "NOT EXISTS (SELECT 1 FROM {} b WHERE {})",
                self.base,
                cond.join(" AND ")
            )
        };
        let name = |what: &str| ident(&format!("pdb_capture_{}_{what}", self.name));
        let base = &self.base;
        let l = list.join(", ");
        let p = pk.join(", ");
        let key_cond: Vec<String> = pk.iter().map(|c| format!("t.{c} = NEW.{c}")).collect();
        vec![
            // INSERT OR REPLACE deletes the old row without firing DELETE
            // triggers: keep the old row as the base before it goes.
            format!(
                "CREATE TRIGGER IF NOT EXISTS {} BEFORE INSERT ON {table} BEGIN \
                 INSERT INTO {base} ({EXISTED}, {l}) SELECT 1, {} FROM {table} t WHERE {} AND {}; END",
                name("replace"),
                vals("t", &list),
                key_cond.join(" AND "),
                absent("NEW")
            ),
            format!(
                "CREATE TRIGGER IF NOT EXISTS {} AFTER INSERT ON {table} BEGIN \
                 INSERT INTO {base} ({EXISTED}, {p}) SELECT 0, {} WHERE {}; END",
                name("insert"),
                vals("NEW", &pk),
                absent("NEW")
            ),
            format!(
                "CREATE TRIGGER IF NOT EXISTS {} AFTER UPDATE ON {table} BEGIN \
                 INSERT INTO {base} ({EXISTED}, {l}) SELECT 1, {} WHERE {}; \
                 INSERT INTO {base} ({EXISTED}, {p}) SELECT 0, {} WHERE {}; END",
                name("update"),
                vals("OLD", &list),
                absent("OLD"),
                vals("NEW", &pk),
                absent("NEW")
            ),
            format!(
                "CREATE TRIGGER IF NOT EXISTS {} AFTER DELETE ON {table} BEGIN \
                 INSERT INTO {base} ({EXISTED}, {l}) SELECT 1, {} WHERE {}; END",
                name("delete"),
                vals("OLD", &list),
                absent("OLD")
            ),
        ]
    }

    pub fn trigger_names(&self) -> Vec<String> {
        ["replace", "insert", "update", "delete"]
            .iter()
            .map(|w| ident(&format!("pdb_capture_{}_{w}", self.name)))
            .collect()
    }
}
