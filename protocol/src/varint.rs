//! SQLite's variable-length integer: 1 to 9 bytes, big-endian groups of 7
//! bits with a continuation bit, and a full 8-bit ninth byte.

/// Appends the shortest encoding of `v`.
pub fn put(out: &mut Vec<u8>, v: u64) {
    if v >> 56 != 0 {
        // Nine bytes: eight 7-bit groups carry the top 56 bits, then 8 bits.
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut rest = v >> 8;
        for i in (0..8).rev() {
            buf[i] = (rest as u8 & 0x7f) | 0x80;
            rest >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let n = len(v);
    for i in (0..n).rev() {
        let group = ((v >> (7 * i)) & 0x7f) as u8;
        out.push(if i == 0 { group } else { group | 0x80 });
    }
}

/// Number of bytes `put` writes for `v`.
pub fn len(v: u64) -> usize {
    if v >> 56 != 0 {
        return 9;
    }
    let mut n = 1;
    let mut rest = v >> 7;
    while rest != 0 {
        n += 1;
        rest >>= 7;
    }
    n
}

/// Reads a varint from the front of `bytes`: `(value, bytes used)`.
/// `None` if the input ends first or the encoding is not the shortest one
/// (the protocol accepts only canonical bytes, so encoding round-trips).
pub fn get(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *bytes.get(i)?;
        if i == 8 {
            v = (v << 8) | u64::from(b);
            return canonical(v, 9);
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return canonical(v, i + 1);
        }
    }
    None
}

fn canonical(v: u64, used: usize) -> Option<(u64, usize)> {
    (len(v) == used).then_some((v, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_length_boundary() {
        let mut cases = vec![0u64, 1, 127, 128, 16383, 16384, u64::MAX];
        for bits in [14, 21, 28, 35, 42, 49, 56, 63] {
            cases.push((1u64 << bits) - 1);
            cases.push(1u64 << bits);
        }
        for v in cases {
            let mut out = Vec::new();
            put(&mut out, v);
            assert_eq!(out.len(), len(v), "length of {v}");
            assert_eq!(get(&out), Some((v, out.len())), "value {v}");
        }
    }

    #[test]
    fn known_encodings() {
        let enc = |v| {
            let mut o = Vec::new();
            put(&mut o, v);
            o
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x81, 0x00]);
        assert_eq!(enc(300), [0x82, 0x2c]);
        assert_eq!(enc(u64::MAX), [0xff; 9]);
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        assert_eq!(get(&[]), None);
        assert_eq!(get(&[0x81]), None);
        // 0 written in two bytes is not canonical.
        assert_eq!(get(&[0x80, 0x00]), None);
    }
}
