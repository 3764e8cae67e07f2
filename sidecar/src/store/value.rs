//! Protocol values in and out of rusqlite, byte-exact (text as bytes).

use pdb_protocol::Value;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};

pub struct Bind<'a>(pub &'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

pub fn from_ref(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(t.to_vec()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Named parameters for a statement: binds `(name, value)` pairs, skipping
/// any name the statement does not use (so optional ones like `:caller`
/// may be offered to every rule or visibility expression).
pub fn named<'a>(
    st: &rusqlite::Statement<'_>,
    values: &'a [(&'a str, Value)],
) -> rusqlite::Result<Vec<(&'a str, Bind<'a>)>> {
    let mut out = Vec::with_capacity(values.len());
    for (name, v) in values {
        if st.parameter_index(name)?.is_some() {
            out.push((*name, Bind(v)));
        }
    }
    Ok(out)
}
