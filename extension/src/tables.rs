//! The synced tables: their shape as the local database declares it, and
//! reading and writing their rows by primary key.

use crate::baselog::LogSql;
use crate::db::{as_i64, as_text, Cache, Db};
use crate::error::{Error, Result};
use crate::merge::Row;
use pdb_protocol::schema::{Affinity, COLUMNS_SQL};
use pdb_protocol::{quote_ident, Column, RowSql, Schema, Table, Value};

/// Reads one table's columns (None if it does not exist).
pub fn read_table(db: &Db, name: &str) -> Result<Option<Table>> {
    let exists = db.row(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        &[Value::text(name)],
    )?;
    let Some(row) = exists else { return Ok(None) };
    let real_name = row
        .first()
        .and_then(as_text)
        .unwrap_or_else(|| name.to_string());
    let mut columns = Vec::new();
    for r in db.rows(COLUMNS_SQL, &[Value::text(&real_name)])? {
        let text = |i: usize| r.get(i).and_then(as_text);
        let int = |i: usize| r.get(i).and_then(as_i64).unwrap_or(0);
        columns.push(
            Column::from_xinfo(
                &real_name,
                text(0).unwrap_or_default(),
                text(1).unwrap_or_default(),
                int(2) != 0,
                text(3),
                int(4),
                int(5),
            )
            .map_err(Error::Invalid)?,
        );
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
        return Err(Error::invalid(format!(
            "schema_mismatch: the database has some of the group's tables but not {missing:?}"
        )));
    }
    Ok(Some(Schema::new(version, found)))
}

/// One synced table and the SQL for it, built once from its schema.
#[derive(Clone, Debug)]
pub struct SyncTable {
    pub name: String,
    pub columns: Vec<String>,
    /// The primary-key columns' indexes, in column order (the order keys
    /// are bound in, as changesets carry them).
    pub key: Vec<usize>,
    pub pk_flags: Vec<u8>,
    affinities: Vec<Affinity>,
    /// The table's rows by key.
    pub rows: RowSql,
    /// Its base log (see `pending`).
    pub log: LogSql,
}

impl SyncTable {
    pub fn new(t: &Table) -> SyncTable {
        let rows = RowSql::new(t);
        let key = t.key_columns();
        SyncTable {
            name: t.name.clone(),
            columns: t.columns.iter().map(|c| c.name.clone()).collect(),
            pk_flags: t.pk_flags(),
            affinities: t.affinities(),
            log: LogSql::new(t, &key),
            key,
            rows,
        }
    }

    /// The key values of a full row.
    pub fn key_of(&self, row: &[Value]) -> Vec<Value> {
        self.key
            .iter()
            .map(|i| row.get(*i).cloned().unwrap_or(Value::Null))
            .collect()
    }

    /// The key columns' names, quoted.
    pub fn key_idents(&self) -> Vec<String> {
        self.key
            .iter()
            .filter_map(|i| self.columns.get(*i))
            .map(|c| quote_ident(c))
            .collect()
    }

    /// Whether writing these values (at these columns) surely stores them
    /// unchanged, so reading them back can be skipped.
    fn keeps(&self, cols: impl IntoIterator<Item = (usize, Value)>) -> bool {
        cols.into_iter()
            .all(|(i, v)| self.affinities.get(i).is_some_and(|a| a.keeps(&v)))
    }

    /// The row with this key, as stored.
    pub fn select(&self, sql: &Cache, key: &[Value]) -> Result<Option<Row>> {
        sql.row(&self.rows.select_by_key, key)
    }

    /// Inserts a row that is not there yet; returns it as stored.
    pub fn insert(&self, sql: &Cache, row: &[Value]) -> Result<Row> {
        let key = self.key_of(row);
        self.write(sql, &key, None, Some(&row.to_vec()))?
            .ok_or_else(|| {
                Error::invalid(format!(
                    "table {:?}: an inserted row cannot be read back",
                    self.name
                ))
            })
    }

    /// Moves the row from `current` to `target` and returns it as stored:
    /// read back, because column affinity may have changed a value (and
    /// some SQLite versions give REAL columns' integral values as integers
    /// via RETURNING).
    pub fn write(
        &self,
        sql: &Cache,
        key: &[Value],
        current: Option<&Row>,
        target: Option<&Row>,
    ) -> Result<Option<Row>> {
        match (current, target) {
            (None, None) => Ok(None),
            (Some(_), None) => {
                sql.run(&self.rows.delete_by_key, key)?;
                Ok(None)
            }
            (None, Some(t)) => {
                sql.run(&self.rows.insert, t)?;
                if self.keeps(t.iter().cloned().enumerate()) {
                    return Ok(Some(t.clone()));
                }
                self.select(sql, key)
            }
            (Some(c), Some(t)) => {
                let changed: Vec<(usize, &Value)> = t
                    .iter()
                    .enumerate()
                    .filter(|(i, v)| c.get(*i) != Some(v))
                    .collect();
                if changed.is_empty() {
                    return Ok(Some(c.clone()));
                }
                let columns: Vec<usize> = changed.iter().map(|(i, _)| *i).collect();
                let mut params: Vec<Value> = changed.iter().map(|(_, v)| (*v).clone()).collect();
                params.extend(key.iter().cloned());
                sql.run(&self.rows.update(&columns), &params)?;
                if self.keeps(changed.into_iter().map(|(i, v)| (i, v.clone()))) {
                    return Ok(Some(t.clone()));
                }
                self.select(sql, key)
            }
        }
    }
}
