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

impl Table {
    /// Key flags as SQLite's changesets carry them: each key column's
    /// position in the primary key, 0 for other columns.
    pub fn pk_flags(&self) -> Vec<u8> {
        self.columns.iter().map(|c| c.pk.min(255) as u8).collect()
    }
}
