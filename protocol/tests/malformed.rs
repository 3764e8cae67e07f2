//! Untrusted changeset bytes: every malformation is a clean error, and no
//! input at all can make the decoder panic.

use pdb_protocol::{Changeset, Column, Schema, Table, Value};

fn schema() -> Schema {
    let col = |name: &str, pk| Column {
        pk,
        ..Column::new(name, "")
    };
    Schema::new(
        1,
        vec![Table {
            name: "t".into(),
            columns: vec![col("id", 1), col("v", 0)],
            ..Default::default()
        }],
    )
}

/// INSERT INTO t VALUES (1, 'a') as a changeset.
fn insert_one() -> Vec<u8> {
    let mut b = vec![b'T', 2, 1, 0, b't', 0, 18, 0];
    Value::Integer(1).encode(&mut b);
    Value::text("a").encode(&mut b);
    b
}

#[test]
fn a_good_changeset_decodes_and_validates() {
    let cs = Changeset::decode(&insert_one()).unwrap();
    cs.validate(&schema()).unwrap();
    assert_eq!(cs.encode(), insert_one());
}

#[test]
fn every_truncation_is_refused() {
    // A prefix that ends right after a table header is a well-formed
    // changeset with no records (sqldiff writes such blocks); validation
    // refuses it. Every other prefix does not decode.
    let good = insert_one();
    for len in 1..good.len() {
        match Changeset::decode(&good[..len]) {
            Err(_) => {}
            Ok(cs) => {
                assert_eq!(len, 6, "prefix of {len} bytes decoded");
                assert!(cs.validate(&schema()).is_err());
            }
        }
    }
}

#[test]
fn garbage_is_an_error() {
    for bad in [
        &b"hello world"[..],
        &[b'P', 1, 1, b't', 0][..],
        &[b'T', 0, b't', 0][..],
        &[b'T', 1, 1, b't'][..],
        &[b'T', 1, 1, b't', 0, 99, 0][..],
        &[b'T', 1, 1, b't', 0, 18, 7, 5][..],
        &[b'T', 1, 1, b't', 0, 18, 0, 9][..],
        &[b'T', 1, 1, b't', 0, 18, 0, 3, 0xff, 0xff, 0xff, 0x7f][..],
        &[b'T', 0x80, 0x01, 1, b't', 0][..],
    ] {
        assert!(Changeset::decode(bad).is_err(), "{bad:?} decoded");
    }
}

#[test]
fn schema_violations_name_table_and_key() {
    let s = schema();
    let check = |bytes: Vec<u8>, want: &str| {
        let cs = Changeset::decode(&bytes).unwrap();
        let err = cs.validate(&s).unwrap_err();
        assert!(err.message.contains(want), "{err} does not say {want:?}");
        err
    };
    // Unknown table.
    let mut b = insert_one();
    b[4] = b'x';
    let e = check(b, "no such table");
    assert_eq!(e.table.as_deref(), Some("x"));
    // Wrong column count.
    let mut b = vec![b'T', 3, 1, 0, 0, b't', 0, 18, 0];
    for v in [Value::Integer(1), Value::Null, Value::Null] {
        v.encode(&mut b);
    }
    check(b, "columns");
    // Wrong primary key shape.
    let mut b = insert_one();
    b[2] = 0;
    b[3] = 1;
    check(b, "primary key shape");
    // NULL key.
    let mut b = vec![b'T', 2, 1, 0, b't', 0, 18, 0];
    Value::Null.encode(&mut b);
    Value::Null.encode(&mut b);
    let e = check(b, "NULL");
    assert_eq!(e.key, Some(vec![Value::Null]));
    // Same row twice.
    let mut b = insert_one();
    b.extend_from_slice(&insert_one()[6..]);
    let e = check(b, "twice");
    assert_eq!(e.key, Some(vec![Value::Integer(1)]));
    // Insert with an undefined value.
    let mut b = vec![b'T', 2, 1, 0, b't', 0, 18, 0];
    Value::Integer(2).encode(&mut b);
    b.push(0);
    check(b, "undefined");
    // Empty.
    assert!(Changeset::decode(&[]).unwrap().validate(&s).is_err());
}

/// A small deterministic fuzz pass that runs with the normal suite; the
/// coverage-guided target lives in protocol/fuzz (see docs/fuzzing.md).
#[test]
fn mutated_inputs_never_panic_and_round_trip_when_accepted() {
    let seed_inputs = [insert_one(), {
        let mut b = vec![b'T', 2, 1, 0, b't', 0, 23, 0];
        for v in [
            Some(Value::Integer(1)),
            Some(Value::text("a")),
            None,
            Some(Value::Blob(vec![1, 2])),
        ] {
            match v {
                Some(v) => v.encode(&mut b),
                None => b.push(0),
            }
        }
        b
    }];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..200_000 {
        let mut b = seed_inputs[(next() % 2) as usize].clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % (b.len() + 1);
            match next() % 3 {
                0 if i < b.len() => b[i] = next() as u8,
                1 => b.insert(i, next() as u8),
                _ if i < b.len() => {
                    b.remove(i);
                }
                _ => {}
            }
        }
        if let Ok(cs) = Changeset::decode(&b) {
            assert_eq!(cs.encode(), b);
            let _ = cs.validate(&schema());
        }
    }
}
