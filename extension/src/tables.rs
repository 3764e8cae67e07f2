//! The synced tables: their structure as the local database has it (read
//! with the protocol's schema reader and checked against the group's), and
//! reading and writing their rows by primary key.

use crate::baselog::LogSql;
use crate::db::{Cache, Db};
use crate::error::{Error, Result};
use crate::merge::Row;
use pdb_protocol::schema::{self, Affinity, Catalog};
use pdb_protocol::{quote_ident, RowSql, Schema, Table, Value};

/// The local database's catalog, for the protocol's schema reader.
struct DbCatalog<'a>(&'a Db);

impl Catalog for DbCatalog<'_> {
    fn rows(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> std::result::Result<Vec<Vec<Value>>, String> {
        self.0.rows(sql, params).map_err(|e| e.to_string())
    }
}

/// The local structure of the group's tables: `Ok(None)` when none
/// exists, an error when only some do.
pub fn read_local(db: &Db, names: &[String]) -> Result<Option<Vec<Table>>> {
    schema::read_tables(&mut DbCatalog(db), names)
        .map_err(|e| Error::invalid(format!("schema_mismatch: {e}")))
}

/// Checks that the local tables can stand for the group's (same columns,
/// keys, types, defaults, collations and constraints; extra non-unique
/// local indexes are fine), naming the first difference.
pub fn check_local(db: &Db, schema: &Schema) -> Result<()> {
    let names: Vec<String> = schema.tables.iter().map(|t| t.name.clone()).collect();
    let local = read_local(db, &names)?.ok_or_else(|| {
        Error::invalid("schema_mismatch: the group's tables are missing from this database")
    })?;
    for (want, have) in schema.tables.iter().zip(&local) {
        want.check_local(have).map_err(|e| {
            Error::invalid(format!(
                "schema_mismatch: {e} — the group's schema version {} (this app changed a synced table; undo the change, or use another database)",
                schema.version
            ))
        })?;
    }
    Ok(())
}

/// A digest of the catalog entries of the group's tables and their
/// indexes: while it is unchanged, the structure checked at open still
/// stands, so each call need not read it all again.
pub fn fingerprint(db: &Db, schema: &Schema) -> Result<[u8; 32]> {
    let names: Vec<String> = schema.tables.iter().map(|t| t.name.clone()).collect();
    let names = serde_json::to_string(&names).map_err(|e| Error::invalid(e.to_string()))?;
    let rows = db.rows(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema \
         WHERE type IN ('table', 'index') \
           AND tbl_name COLLATE NOCASE IN (SELECT value FROM json_each(?1)) \
         ORDER BY type, name",
        &[Value::text(&names)],
    )?;
    let mut bytes = Vec::new();
    for r in &rows {
        bytes.extend(pdb_protocol::value::encode_values(r));
    }
    Ok(pdb_protocol::sha256(&bytes))
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
    /// How many rows have this key, NULLs compared as equal (the key as
    /// parameters): finds rows with a NULL in their key.
    pub count_key_is: String,
    /// The columns of each UNIQUE constraint and UNIQUE index (the primary
    /// key aside), each with the collation it compares under.
    pub uniques: Vec<Vec<(usize, String)>>,
}

impl SyncTable {
    pub fn new(t: &Table) -> SyncTable {
        let rows = RowSql::new(t);
        let key = t.key_columns();
        let is: Vec<String> = key
            .iter()
            .filter_map(|i| t.columns.get(*i))
            .enumerate()
            .map(|(n, c)| format!("{} IS ?{}", quote_ident(&c.name), n + 1))
            .collect();
        let column = |c: &pdb_protocol::schema::IndexColumn| {
            let i = t
                .columns
                .iter()
                .position(|x| x.name.eq_ignore_ascii_case(&c.name))?;
            let coll = c
                .collation
                .clone()
                .or_else(|| t.columns.get(i).and_then(|x| x.collation.clone()))
                .unwrap_or_else(|| "BINARY".into());
            Some((i, coll))
        };
        let uniques = t
            .unique
            .iter()
            .chain(t.indexes.iter().filter(|i| i.unique).map(|i| &i.columns))
            .filter_map(|cols| cols.iter().map(column).collect::<Option<Vec<_>>>())
            .collect();
        SyncTable {
            uniques,
            count_key_is: format!(
                "SELECT count(*) FROM {} WHERE {}",
                quote_ident(&t.name),
                is.join(" AND ")
            ),
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
