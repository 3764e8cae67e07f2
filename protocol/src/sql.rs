//! SQL text both sides build from a table's shape: identifiers quoted,
//! values always bound as `?N` parameters, never spliced.

use crate::schema::Table;

/// Quotes an SQL identifier (`"name"`, inner quotes doubled), so any name
/// is safe in statement text.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Statements that read and write one table's rows by primary key. Key
/// values are bound in column order, the order changesets carry them in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSql {
    /// The quoted table name.
    pub table: String,
    /// Every column, quoted, comma-separated, in column order.
    pub columns: String,
    /// `SELECT <columns> FROM t WHERE <key> = ?1 ...`; params: the key.
    pub select_by_key: String,
    /// `SELECT <columns> FROM t`.
    pub scan: String,
    /// `INSERT INTO t (<columns>) VALUES (?1, ...)`; params: the row.
    pub insert: String,
    /// `DELETE FROM t WHERE <key>`; params: the key.
    pub delete_by_key: String,
    key_columns: Vec<usize>,
    names: Vec<String>,
}

impl RowSql {
    pub fn new(t: &Table) -> RowSql {
        let names: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let key_columns = t.key_columns();
        let columns = names.join(", ");
        let table = quote_ident(&t.name);
        let key = key_condition(&names, &key_columns, 1);
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        RowSql {
            select_by_key: format!("SELECT {columns} FROM {table} WHERE {key}"),
            scan: format!("SELECT {columns} FROM {table}"),
            insert: format!(
                "INSERT INTO {table} ({columns}) VALUES ({})",
                marks.join(", ")
            ),
            delete_by_key: format!("DELETE FROM {table} WHERE {key}"),
            table,
            columns,
            key_columns,
            names,
        }
    }

    /// `UPDATE t SET <changed> WHERE <key>`; params: the new values of the
    /// `changed` columns (in that order), then the key.
    pub fn update(&self, changed: &[usize]) -> String {
        let sets: Vec<String> = changed
            .iter()
            .enumerate()
            .filter_map(|(n, i)| Some(format!("{} = ?{}", self.names.get(*i)?, n + 1)))
            .collect();
        format!(
            "UPDATE {} SET {} WHERE {}",
            self.table,
            sets.join(", "),
            key_condition(&self.names, &self.key_columns, changed.len() + 1)
        )
    }
}

/// `k1 = ?first AND k2 = ?first+1 ...` over the key columns.
fn key_condition(names: &[String], key_columns: &[usize], first: usize) -> String {
    key_columns
        .iter()
        .enumerate()
        .map(|(n, i)| format!("{} = ?{}", names[*i], first + n))
        .collect::<Vec<_>>()
        .join(" AND ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;

    fn col(name: &str, pk: u32) -> Column {
        Column {
            pk,
            ..Column::new(name, "TEXT")
        }
    }

    #[test]
    fn statements_quote_names_and_bind_keys_in_column_order() {
        // Key declared as PRIMARY KEY(b, a): positions 2 and 1.
        let t = Table {
            name: "we\"ird".into(),
            columns: vec![col("a", 2), col("b", 1), col("c", 0)],
            ..Default::default()
        };
        let s = RowSql::new(&t);
        assert_eq!(
            s.select_by_key,
            "SELECT \"a\", \"b\", \"c\" FROM \"we\"\"ird\" WHERE \"a\" = ?1 AND \"b\" = ?2"
        );
        assert_eq!(
            s.insert,
            "INSERT INTO \"we\"\"ird\" (\"a\", \"b\", \"c\") VALUES (?1, ?2, ?3)"
        );
        assert_eq!(
            s.delete_by_key,
            "DELETE FROM \"we\"\"ird\" WHERE \"a\" = ?1 AND \"b\" = ?2"
        );
        assert_eq!(
            s.update(&[2]),
            "UPDATE \"we\"\"ird\" SET \"c\" = ?1 WHERE \"a\" = ?2 AND \"b\" = ?3"
        );
    }
}
