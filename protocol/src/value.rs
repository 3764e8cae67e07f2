//! SQLite values exactly as SQLite stores them, and their byte encoding.
//!
//! The encoding is the one SQLite's session extension uses inside
//! changesets: a type byte, then the payload. It is reused wherever the
//! protocol hashes a value (state root, primary keys), so one definition
//! of "the exact value" serves the whole protocol.

use crate::varint;

/// One SQLite value. Text is kept as bytes: SQLite does not promise valid
/// UTF-8, and the protocol must round-trip whatever is stored.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Integer(i64),
    /// Kept as raw IEEE-754 bits so `-0.0` and every NaN payload survive.
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

/// Type bytes of the session changeset format.
pub(crate) const T_UNDEFINED: u8 = 0;
pub(crate) const T_INTEGER: u8 = 1;
pub(crate) const T_REAL: u8 = 2;
pub(crate) const T_TEXT: u8 = 3;
pub(crate) const T_BLOB: u8 = 4;
pub(crate) const T_NULL: u8 = 5;

impl PartialEq for Value {
    /// Bit-exact equality: `Real(0.0) != Real(-0.0)`, NaN equals itself.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Blob(a), Value::Blob(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Value {}

impl Value {
    pub fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }

    /// Appends the session-format encoding of this value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(T_NULL),
            Value::Integer(i) => {
                out.push(T_INTEGER);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::Real(f) => {
                out.push(T_REAL);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            Value::Text(b) => {
                out.push(T_TEXT);
                varint::put(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Blob(b) => {
                out.push(T_BLOB);
                varint::put(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }

    /// The size `encode` will write.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Integer(_) | Value::Real(_) => 9,
            Value::Text(b) | Value::Blob(b) => 1 + varint::len(b.len() as u64) + b.len(),
        }
    }
}

/// Encodes a row (or a primary key) as the concatenation of its values.
pub fn encode_values(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.iter().map(Value::encoded_len).sum());
    for v in values {
        v.encode(&mut out);
    }
    out
}

/// Decodes what [`encode_values`] wrote; `None` for malformed bytes.
pub fn decode_values(mut bytes: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    while let Some((&t, rest)) = bytes.split_first() {
        let (v, rest) = match t {
            T_NULL => (Value::Null, rest),
            T_INTEGER | T_REAL => {
                let (b, rest) = rest.split_first_chunk::<8>()?;
                let n = u64::from_be_bytes(*b);
                let v = if t == T_INTEGER {
                    Value::Integer(n as i64)
                } else {
                    Value::Real(f64::from_bits(n))
                };
                (v, rest)
            }
            T_TEXT | T_BLOB => {
                let (n, used) = varint::get(rest)?;
                let rest = rest.get(used..)?;
                let n = usize::try_from(n).ok()?;
                let (b, rest) = (rest.get(..n)?, rest.get(n..)?);
                let v = if t == T_TEXT {
                    Value::Text(b.to_vec())
                } else {
                    Value::Blob(b.to_vec())
                };
                (v, rest)
            }
            _ => return None,
        };
        out.push(v);
        bytes = rest;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_as_they_were_encoded() {
        let values = vec![
            Value::Null,
            Value::Integer(-7),
            Value::Real(-0.0),
            Value::text("héllo"),
            Value::Blob(vec![0; 300]),
        ];
        assert_eq!(decode_values(&encode_values(&values)), Some(values));
        assert_eq!(decode_values(&[]), Some(vec![]));
        assert_eq!(decode_values(&[T_INTEGER, 1, 2]), None, "truncated");
        assert_eq!(decode_values(&[T_TEXT, 5, b'a']), None, "short text");
        assert_eq!(decode_values(&[99]), None, "unknown type");
    }
}
