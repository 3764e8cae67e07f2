//! A group's schema as both sides read it back from SQLite, and its
//! canonical hash. Reading the structure from `pragma table_xinfo` (not
//! comparing DDL text) makes the hash independent of whitespace and
//! formatting in the SQL.

use crate::hash::Hasher;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Declared type exactly as written (`pragma table_xinfo.type`).
    pub decl_type: String,
    pub not_null: bool,
    /// Default expression text, if any.
    pub default: Option<String>,
    /// 1-based position in the primary key, 0 if not a key column.
    pub pk: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    pub version: u32,
    /// Tables sorted by lower-cased name.
    pub tables: Vec<Table>,
}

const TAG: &[u8] = b"personaldb/schema";
const FORMAT: u8 = 1;

impl Schema {
    pub fn new(version: u32, mut tables: Vec<Table>) -> Schema {
        tables.sort_by_key(|t| t.name.to_ascii_lowercase());
        Schema { version, tables }
    }

    /// SQLite names are case-insensitive (ASCII only).
    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.name.eq_ignore_ascii_case(name))
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.table_index(name).map(|i| &self.tables[i])
    }

    /// SHA-256 over the canonical structure (see docs/protocol.md).
    /// The version is not part of it: two versions may share a shape.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Hasher::tagged(TAG, FORMAT);
        h.u32(self.tables.len() as u32);
        for t in &self.tables {
            h.str(&t.name.to_ascii_lowercase());
            h.u32(t.columns.len() as u32);
            for c in &t.columns {
                h.str(&c.name.to_ascii_lowercase());
                h.str(&c.decl_type.to_ascii_uppercase());
                h.u8(u8::from(c.not_null));
                match &c.default {
                    Some(d) => {
                        h.u8(1);
                        h.str(d);
                    }
                    None => h.u8(0),
                }
                h.u32(c.pk);
            }
        }
        h.finish()
    }
}

/// A column's type affinity, by SQLite's rules on the declared type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub fn of(decl_type: &str) -> Affinity {
        let t = decl_type.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// Whether storing `v` in a column of this affinity and reading it
    /// back surely gives `v` again, bit for bit. Conservative: `false`
    /// means "read it back", not "it changes". (Text may turn numeric in a
    /// numeric column; a REAL column keeps integral reals as integers, so
    /// -0.0 reads back as 0.0; NaN binds as NULL.)
    pub fn keeps(self, v: &crate::Value) -> bool {
        use crate::Value::*;
        match (v, self) {
            (Null, _) | (Blob(_), _) => true,
            (Integer(_), Affinity::Integer | Affinity::Numeric | Affinity::Blob) => true,
            (Real(f), Affinity::Real | Affinity::Blob) => {
                !f.is_nan() && f.to_bits() != (-0.0f64).to_bits()
            }
            (Text(_), Affinity::Text | Affinity::Blob) => true,
            _ => false,
        }
    }
}

/// The query both sides read a table's columns with (`?1`: the table's
/// name); [`Column::from_xinfo`] turns each row into a column.
pub const COLUMNS_SQL: &str = "SELECT name, type, \"notnull\", dflt_value, pk, hidden \
     FROM pragma_table_xinfo(?1) ORDER BY cid";

impl Column {
    /// One row of [`COLUMNS_SQL`]. Generated and hidden columns are
    /// refused: changesets do not carry them.
    pub fn from_xinfo(
        table: &str,
        name: String,
        decl_type: String,
        not_null: bool,
        default: Option<String>,
        pk: i64,
        hidden: i64,
    ) -> Result<Column, String> {
        if hidden != 0 {
            return Err(format!(
                "table {table:?} has generated or hidden columns, which cannot be synced"
            ));
        }
        Ok(Column {
            name,
            decl_type,
            not_null,
            default,
            pk: u32::try_from(pk).unwrap_or(0),
        })
    }
}

impl Table {
    /// Indexes of the primary-key columns, in column order (the order
    /// changesets and by-key statements bind them in).
    pub fn key_columns(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|i| self.columns[*i].pk > 0)
            .collect()
    }

    /// Each column's affinity, in column order.
    pub fn affinities(&self) -> Vec<Affinity> {
        self.columns
            .iter()
            .map(|c| Affinity::of(&c.decl_type))
            .collect()
    }

    /// Key flags as SQLite's changesets carry them: each key column's
    /// position in the primary key, 0 for other columns.
    pub fn pk_flags(&self) -> Vec<u8> {
        self.columns.iter().map(|c| c.pk.min(255) as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Affinity::{self, *};
    use crate::Value;

    #[test]
    fn affinity_follows_sqlites_rules() {
        for (t, a) in [
            ("INTEGER", Integer),
            ("BIGINT", Integer),
            ("VARCHAR(10)", Text),
            ("TEXT", Text),
            ("", Blob),
            ("BLOB", Blob),
            ("REAL", Real),
            ("DOUBLE PRECISION", Real),
            ("FLOATING POINT", Integer),
            ("NUMERIC", Numeric),
            ("DECIMAL(10,5)", Numeric),
            ("ANY", Numeric),
        ] {
            assert_eq!(Affinity::of(t), a, "{t}");
        }
    }

    #[test]
    fn keeps_only_what_surely_round_trips() {
        assert!(Integer.keeps(&Value::Integer(1)));
        assert!(!Real.keeps(&Value::Integer(1)));
        assert!(!Text.keeps(&Value::Integer(1)));
        assert!(Real.keeps(&Value::Real(1.5)));
        assert!(!Real.keeps(&Value::Real(-0.0)));
        assert!(!Real.keeps(&Value::Real(f64::NAN)));
        assert!(!Integer.keeps(&Value::Real(2.0)));
        assert!(!Numeric.keeps(&Value::text("12")));
        assert!(Text.keeps(&Value::text("12")));
        assert!(Blob.keeps(&Value::text("12")));
        assert!(Numeric.keeps(&Value::Null));
    }
}
