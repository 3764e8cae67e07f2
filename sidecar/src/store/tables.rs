//! One replica table: its by-key statements and reading its rows exactly.

use super::value::{from_ref, Bind};
use pdb_protocol::schema::Affinity;
use pdb_protocol::{RowSql, StateRoot, Table, Value};
use rusqlite::Connection;

/// A table's shape and SQL text, built once from the schema.
pub struct TableSql {
    pub name: String,
    pub affinities: Vec<Affinity>,
    pub columns: Vec<String>,
    /// Key column indexes, in column order.
    pub pk_cols: Vec<usize>,
    pub sql: RowSql,
}

impl TableSql {
    pub fn new(t: &Table) -> TableSql {
        TableSql {
            name: t.name.clone(),
            affinities: t.affinities(),
            columns: t.columns.iter().map(|c| c.name.clone()).collect(),
            pk_cols: t.key_columns(),
            sql: RowSql::new(t),
        }
    }

    /// The full row with this key, if present.
    pub fn fetch(&self, conn: &Connection, key: &[Value]) -> rusqlite::Result<Option<Vec<Value>>> {
        let mut st = conn.prepare_cached(&self.sql.select_by_key)?;
        let n = st.column_count();
        let binds: Vec<Bind<'_>> = key.iter().map(Bind).collect();
        let mut rows = st.query(rusqlite::params_from_iter(binds.iter()))?;
        match rows.next()? {
            None => Ok(None),
            Some(r) => (0..n)
                .map(|i| r.get_ref(i).map(from_ref))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// Calls `f` with every row of the table, exactly as stored; returns
    /// how many there were.
    pub fn scan<E: From<rusqlite::Error>>(
        &self,
        conn: &Connection,
        mut f: impl FnMut(Vec<Value>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut st = conn.prepare(&self.sql.scan)?;
        let n = st.column_count();
        let mut rows = st.query([])?;
        let mut count = 0;
        while let Some(r) = rows.next()? {
            let row = (0..n)
                .map(|i| r.get_ref(i).map(from_ref))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            f(row)?;
            count += 1;
        }
        Ok(count)
    }

    /// Adds every row of the table to `root`.
    pub fn add_all(&self, conn: &Connection, root: &mut StateRoot) -> rusqlite::Result<u64> {
        self.scan(conn, |row| -> rusqlite::Result<()> {
            root.add_row(&self.name, &row);
            Ok(())
        })
    }
}
