//! Codec for SQLite's changeset format (the session extension's binary
//! format), and its validation against a group schema.
//!
//! Layout (all of it is documented with examples in docs/protocol.md):
//!
//! ```text
//! changeset := table*
//! table     := 'T' varint(nCol) pk_flag[nCol] name NUL record*
//! record    := op(INSERT=18 | UPDATE=23 | DELETE=9) indirect(0|1) values
//!   INSERT: new[nCol]   DELETE: old[nCol]   UPDATE: old[nCol] new[nCol]
//! value     := 0 (undefined) | 1 i64be | 2 f64be | 3 varint(n) text[n]
//!            | 4 varint(n) blob[n] | 5 (NULL)
//! ```
//!
//! Decoding is strict: every byte must be accounted for, varints must be
//! canonical and lengths must fit the input, so `encode(decode(b)) == b`.
//! A table block may hold no records: `sqldiff` writes one for every table.

use crate::schema::Schema;
use crate::value::{self, Value};
use crate::{varint, DecodeError};
use std::collections::HashSet;
use std::fmt;

pub const OP_INSERT: u8 = 18;
pub const OP_UPDATE: u8 = 23;
pub const OP_DELETE: u8 = 9;
const TABLE_MARKER: u8 = b'T';
const PATCHSET_MARKER: u8 = b'P';
/// SQLite's hard upper bound on columns in a table.
pub const MAX_COLUMNS: u64 = 32767;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn code(self) -> u8 {
        match self {
            Op::Insert => OP_INSERT,
            Op::Update => OP_UPDATE,
            Op::Delete => OP_DELETE,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// One row change. `None` is the format's "undefined" value (a column an
/// UPDATE leaves alone). INSERT has only `new`, DELETE only `old`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub indirect: bool,
    pub old: Vec<Option<Value>>,
    pub new: Vec<Option<Value>>,
}

/// One table block: header plus its records, in input order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableChanges {
    pub name: String,
    /// Per-column key flags as SQLite writes them: the column's position
    /// in the primary key (1, 2, ...), or 0.
    pub pk_flags: Vec<u8>,
    pub changes: Vec<Change>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changeset {
    pub tables: Vec<TableChanges>,
}

impl TableChanges {
    pub fn column_count(&self) -> usize {
        self.pk_flags.len()
    }
    pub fn is_pk(&self, col: usize) -> bool {
        self.pk_flags.get(col).is_some_and(|f| *f != 0)
    }
}

impl Change {
    /// The row after this change, given the row before it (`None`: the
    /// row does not exist). An INSERT gives its new values (undefined as
    /// NULL), an UPDATE the old row with the changed columns replaced, a
    /// DELETE nothing.
    pub fn row_after(&self, before: Option<&[Value]>) -> Option<Vec<Value>> {
        match self.op {
            Op::Insert => Some(
                self.new
                    .iter()
                    .map(|v| v.clone().unwrap_or(Value::Null))
                    .collect(),
            ),
            Op::Update => before.map(|row| {
                row.iter()
                    .zip(&self.new)
                    .map(|(old, new)| new.clone().unwrap_or_else(|| old.clone()))
                    .collect()
            }),
            Op::Delete => None,
        }
    }

    /// The row's primary-key values, in column order.
    pub fn pk(&self, pk_flags: &[u8]) -> Vec<Value> {
        let row = if self.op == Op::Insert {
            &self.new
        } else {
            &self.old
        };
        row.iter()
            .zip(pk_flags)
            .filter(|(_, f)| **f != 0)
            .map(|(v, _)| v.clone().unwrap_or(Value::Null))
            .collect()
    }
}

/// A changeset that does not fit the group's schema, with the table and
/// key it concerns so the client can point at the offending row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub table: Option<String>,
    pub key: Option<Vec<Value>>,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.table {
            Some(t) => write!(f, "table {t:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl Changeset {
    pub fn decode(bytes: &[u8]) -> Result<Changeset, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut tables = Vec::new();
        while !r.at_end() {
            let marker = r.byte()?;
            if marker == PATCHSET_MARKER {
                return Err(r.error("patchsets are not accepted, send a changeset"));
            }
            if marker != TABLE_MARKER {
                return Err(r.error("expected a table header ('T')"));
            }
            let n_col = r.varint()?;
            if n_col == 0 || n_col > MAX_COLUMNS {
                return Err(r.error("column count must be between 1 and 32767"));
            }
            let n_col = n_col as usize;
            let pk_flags = r.take(n_col)?.to_vec();
            let name = r.cstr()?;
            let mut changes = Vec::new();
            while let Some(&op) = r.peek() {
                if op == TABLE_MARKER || op == PATCHSET_MARKER {
                    break;
                }
                changes.push(r.change(n_col)?);
            }
            tables.push(TableChanges {
                name,
                pk_flags,
                changes,
            });
        }
        Ok(Changeset { tables })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for t in &self.tables {
            out.push(TABLE_MARKER);
            varint::put(&mut out, t.pk_flags.len() as u64);
            out.extend_from_slice(&t.pk_flags);
            out.extend_from_slice(t.name.as_bytes());
            out.push(0);
            for c in &t.changes {
                out.push(c.op.code());
                out.push(u8::from(c.indirect));
                for v in c.old.iter().chain(&c.new) {
                    match v {
                        Some(v) => v.encode(&mut out),
                        None => out.push(value::T_UNDEFINED),
                    }
                }
            }
        }
        out
    }

    /// Number of row changes in all tables.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.changes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that every record fits the schema: known table, same column
    /// count and key columns, complete rows where the format requires them,
    /// non-NULL keys, no key touched twice, and at least one change.
    pub fn validate(&self, schema: &Schema) -> Result<(), Invalid> {
        if self.is_empty() {
            return Err(Invalid {
                table: None,
                key: None,
                message: "the changeset holds no row changes".into(),
            });
        }
        let mut seen: HashSet<(usize, Vec<u8>)> = HashSet::new();
        for t in &self.tables {
            let bad = |key: Option<Vec<Value>>, message: String| Invalid {
                table: Some(t.name.clone()),
                key,
                message,
            };
            let Some(ti) = schema.table_index(&t.name) else {
                return Err(bad(None, "no such table in the group schema".into()));
            };
            let st = &schema.tables[ti];
            if st.columns.len() != t.column_count() {
                return Err(bad(
                    None,
                    format!(
                        "has {} columns in the changeset but {} in the schema",
                        t.column_count(),
                        st.columns.len()
                    ),
                ));
            }
            // SQLite writes each key column's position in the key (1, 2,
            // ...) and its apply skips a table whose flags differ.
            for (i, c) in st.columns.iter().enumerate() {
                if u32::from(t.pk_flags[i]) != c.pk {
                    return Err(bad(
                        None,
                        format!(
                            "primary key shape differs from the schema at column {:?}",
                            c.name
                        ),
                    ));
                }
            }
            for c in &t.changes {
                let key = c.pk(&t.pk_flags);
                let check_full = |row: &[Option<Value>], what: &str| {
                    if row.iter().any(Option::is_none) {
                        Err(bad(
                            Some(key.clone()),
                            format!("{} record has an undefined {what} value", c.op.name()),
                        ))
                    } else {
                        Ok(())
                    }
                };
                match c.op {
                    Op::Insert => check_full(&c.new, "new")?,
                    Op::Delete => check_full(&c.old, "old")?,
                    Op::Update => {
                        let mut changed = 0;
                        for i in 0..t.column_count() {
                            let (old, new) = (&c.old[i], &c.new[i]);
                            if t.is_pk(i) {
                                if old.is_none() || new.is_some() {
                                    return Err(bad(
                                        Some(key.clone()),
                                        "UPDATE must name the key in old values only (a key change is DELETE + INSERT)".into(),
                                    ));
                                }
                            } else if new.is_some() {
                                if old.is_none() {
                                    return Err(bad(
                                        Some(key.clone()),
                                        "UPDATE changes a column without its old value".into(),
                                    ));
                                }
                                changed += 1;
                            }
                        }
                        if changed == 0 {
                            return Err(bad(Some(key), "UPDATE changes no column".into()));
                        }
                    }
                }
                if key.contains(&Value::Null) {
                    return Err(bad(Some(key), "primary key value is NULL".into()));
                }
                if !seen.insert((ti, value::encode_values(&key))) {
                    return Err(bad(
                        Some(key),
                        "row is changed twice in one changeset".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Bounds-checked cursor over untrusted bytes; every read can fail, none
/// can panic or allocate more than the input holds.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn error(&self, message: &str) -> DecodeError {
        DecodeError {
            offset: self.pos,
            message: message.to_string(),
        }
    }

    fn peek(&self) -> Option<&u8> {
        self.bytes.get(self.pos)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.error("unexpected end of input"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error("unexpected end of input"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let (v, used) =
            varint::get(rest).ok_or_else(|| self.error("truncated or non-canonical varint"))?;
        self.pos += used;
        Ok(v)
    }

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.error("table name is not NUL-terminated"))?;
        if len == 0 {
            return Err(self.error("empty table name"));
        }
        let name = std::str::from_utf8(&rest[..len])
            .map_err(|_| self.error("table name is not UTF-8"))?
            .to_string();
        self.pos += len + 1;
        Ok(name)
    }

    fn value(&mut self) -> Result<Option<Value>, DecodeError> {
        let at = self.pos;
        let v = match self.byte()? {
            value::T_UNDEFINED => None,
            value::T_NULL => Some(Value::Null),
            value::T_INTEGER => Some(Value::Integer(i64::from_be_bytes(self.array8()?))),
            value::T_REAL => Some(Value::Real(f64::from_bits(u64::from_be_bytes(
                self.array8()?,
            )))),
            t @ (value::T_TEXT | value::T_BLOB) => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| self.error("length too large"))?;
                let b = self.take(n)?.to_vec();
                Some(if t == value::T_TEXT {
                    Value::Text(b)
                } else {
                    Value::Blob(b)
                })
            }
            _ => {
                self.pos = at;
                return Err(self.error("unknown value type"));
            }
        };
        Ok(v)
    }

    fn array8(&mut self) -> Result<[u8; 8], DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(a)
    }

    fn values(&mut self, n: usize) -> Result<Vec<Option<Value>>, DecodeError> {
        // Each value takes at least one byte, so `n` is bounded by the input.
        if n > self.bytes.len().saturating_sub(self.pos) {
            return Err(self.error("unexpected end of input"));
        }
        (0..n).map(|_| self.value()).collect()
    }

    fn change(&mut self, n_col: usize) -> Result<Change, DecodeError> {
        let op = match self.byte()? {
            OP_INSERT => Op::Insert,
            OP_UPDATE => Op::Update,
            OP_DELETE => Op::Delete,
            _ => {
                self.pos -= 1;
                return Err(self.error("unknown record type (expected INSERT, UPDATE or DELETE)"));
            }
        };
        let indirect = match self.byte()? {
            0 => false,
            1 => true,
            _ => {
                self.pos -= 1;
                return Err(self.error("indirect flag must be 0 or 1"));
            }
        };
        let (old, new) = match op {
            Op::Insert => (Vec::new(), self.values(n_col)?),
            Op::Delete => (self.values(n_col)?, Vec::new()),
            Op::Update => {
                let old = self.values(n_col)?;
                (old, self.values(n_col)?)
            }
        };
        Ok(Change {
            op,
            indirect,
            old,
            new,
        })
    }
}
