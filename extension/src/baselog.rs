//! The base log of a synced table (`pdb_base_<table>`): capture appends
//! the base values of every row touched there, `pending` reads them. Its
//! names, its DDL and its statements, in one place.

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
pub fn base_ddl(t: &Table) -> String {
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

/// The statements on one table's base log, built once.
#[derive(Clone, Debug)]
pub struct LogSql {
    /// The quoted name of the log table.
    pub table: String,
    /// Appends an entry; parameters: the row, then pdb_existed.
    pub insert: String,
    /// Reads back the entry just appended (seq and row as stored).
    pub last: String,
    /// Deletes one entry by its pdb_seq.
    pub delete: String,
    /// Keeps only the earliest entry per key.
    pub compact: String,
    /// Per pending key: every entry's seq (comma-separated), whether the
    /// row existed at the head, its base row, whether it exists now, and
    /// its current row.
    pub pending: String,
    /// How many keys are pending.
    pub count: String,
    /// The newest entry's pdb_seq for one key (the key as parameters).
    pub newest: String,
}

impl LogSql {
    pub fn new(t: &Table, key: &[usize]) -> LogSql {
        let table = quote_ident(&t.name);
        let base = base_table(&t.name);
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let list = cols.join(", ");
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let key_cols: Vec<&str> = key
            .iter()
            .filter_map(|i| cols.get(*i))
            .map(String::as_str)
            .collect();
        let key_list = key_cols.join(", ");
        let join: Vec<String> = key_cols.iter().map(|c| format!("t.{c} = b.{c}")).collect();
        let b_cols: Vec<String> = cols.iter().map(|c| format!("b.{c}")).collect();
        let t_cols: Vec<String> = cols.iter().map(|c| format!("t.{c}")).collect();
        let present = key
            .first()
            .and_then(|i| cols.get(*i))
            .or(cols.first())
            .map_or("rowid", String::as_str);
        // The earliest entry of each key is its base (SQLite takes bare
        // columns from the row that gives min()).
        let keys = format!(
            "SELECT min({SEQ}) AS {SEQ}, group_concat({SEQ}) AS seqs, {EXISTED}, {list} \
             FROM {base} GROUP BY {key_list}"
        );
        LogSql {
            insert: format!(
                "INSERT INTO {base} ({EXISTED}, {list}) VALUES (?{}, {})",
                cols.len() + 1,
                marks.join(", ")
            ),
            last: format!("SELECT {SEQ}, {list} FROM {base} WHERE {SEQ} = last_insert_rowid()"),
            delete: format!("DELETE FROM {base} WHERE {SEQ} = ?1"),
            compact: format!(
                "DELETE FROM {base} WHERE {SEQ} NOT IN (SELECT min({SEQ}) FROM {base} GROUP BY {key_list})"
            ),
            pending: format!(
                "SELECT b.seqs, b.{EXISTED}, {}, t.{present} IS NOT NULL, {} \
                 FROM ({keys}) b LEFT JOIN {table} t ON {}",
                b_cols.join(", "),
                t_cols.join(", "),
                join.join(" AND ")
            ),
            count: format!("SELECT count(*) FROM (SELECT 1 FROM {base} GROUP BY {key_list})"),
            newest: format!(
                "SELECT max({SEQ}) FROM {base} WHERE {}",
                key_cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} IS ?{}", i + 1))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ),
            table: base,
        }
    }
}
