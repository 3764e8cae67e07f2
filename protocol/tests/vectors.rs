//! Test vectors: fixed inputs and the exact bytes and digests they must
//! give. docs/protocol.md repeats them; any other implementation of the
//! protocol can check itself against these.

use ed25519_dalek::SigningKey;
use pdb_protocol::{
    genesis_hash, hex, Column, CommitRecord, Entry, HeadRecord, Index, IndexColumn, Migration,
    MigrationRecord, Schema, SchemaOp, Signed, StateRoot, Table, Value,
};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn schema() -> Schema {
    Schema::new(
        1,
        vec![Table {
            name: "tasks".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    decl_type: "INTEGER".into(),
                    not_null: false,
                    default: None,
                    pk: 1,
                    ..Default::default()
                },
                Column {
                    name: "title".into(),
                    decl_type: "TEXT".into(),
                    not_null: true,
                    default: None,
                    pk: 0,
                    ..Default::default()
                },
                Column {
                    name: "done".into(),
                    decl_type: "INTEGER".into(),
                    not_null: false,
                    default: Some("0".into()),
                    pk: 0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
    )
}

fn rows() -> Vec<Vec<Value>> {
    vec![
        vec![
            Value::Integer(1),
            Value::text("buy milk"),
            Value::Integer(0),
        ],
        vec![Value::Integer(2), Value::text("ship ✓"), Value::Real(1.5)],
        vec![Value::Integer(3), Value::Blob(vec![]), Value::Null],
    ]
}

fn show(label: &str, v: &str) {
    println!("{label}: {v}");
}

#[test]
fn schema_hash_vector() {
    let h = hex(&schema().hash());
    show("schema hash", &h);
    assert_eq!(h, SCHEMA_HASH);
}

/// Every part the hash covers: options, collations, UNIQUE, CHECK, indexes.
fn full_schema() -> Schema {
    let col = |name: &str, ty: &str| Column::new(name, ty);
    Schema::new(
        2,
        vec![Table {
            name: "notes".into(),
            columns: vec![
                Column {
                    pk: 1,
                    ..col("id", "TEXT")
                },
                Column {
                    not_null: true,
                    collation: Some("NOCASE".into()),
                    ..col("title", "TEXT")
                },
                Column {
                    default: Some("CURRENT_TIMESTAMP".into()),
                    ..col("at", "TEXT")
                },
            ],
            without_rowid: true,
            strict: true,
            unique: vec![vec![IndexColumn {
                name: "title".into(),
                ..Default::default()
            }]],
            checks: vec!["length ( \"title\" ) <= 200".into()],
            indexes: vec![Index {
                name: "notes_at".into(),
                unique: false,
                columns: vec![IndexColumn {
                    name: "at".into(),
                    desc: true,
                    collation: None,
                }],
            }],
        }],
    )
}

#[test]
fn full_schema_hash_vector() {
    let s = full_schema();
    s.validate().unwrap();
    let h = hex(&s.hash());
    show("full schema hash", &h);
    assert_eq!(h, FULL_SCHEMA_HASH);
    // Each part counts.
    let mut t = s.clone();
    t.tables[0].strict = false;
    assert_ne!(t.hash(), s.hash());
    let mut t = s.clone();
    t.tables[0].columns[1].collation = None;
    assert_ne!(t.hash(), s.hash());
    let mut t = s.clone();
    t.tables[0].checks.clear();
    assert_ne!(t.hash(), s.hash());
    let mut t = s.clone();
    t.tables[0].indexes[0].columns[0].desc = false;
    assert_ne!(t.hash(), s.hash());
    assert_eq!(
        s.ddl(),
        vec![
            "CREATE TABLE \"notes\" (\"id\" TEXT, \"title\" TEXT NOT NULL COLLATE NOCASE, \"at\" TEXT DEFAULT (CURRENT_TIMESTAMP), PRIMARY KEY (\"id\"), UNIQUE (\"title\"), CHECK (length ( \"title\" ) <= 200)) WITHOUT ROWID, STRICT",
            "CREATE INDEX IF NOT EXISTS \"notes_at\" ON \"notes\" (\"at\" DESC)",
        ]
    );
}

#[test]
fn state_root_vectors() {
    let empty = hex(&StateRoot::empty().digest());
    show("empty root", &empty);
    assert_eq!(empty, EMPTY_ROOT);
    let mut root = StateRoot::empty();
    for r in rows() {
        root.add_row("tasks", &r);
    }
    let three = hex(&root.digest());
    show("three-row root", &three);
    assert_eq!(three, THREE_ROW_ROOT);
}

#[test]
fn state_root_is_a_multiset_hash() {
    let rows = rows();
    let mut forward = StateRoot::empty();
    let mut backward = StateRoot::empty();
    for r in &rows {
        forward.add_row("tasks", r);
    }
    for r in rows.iter().rev() {
        backward.add_row("tasks", r);
    }
    assert_eq!(forward, backward, "order does not matter");
    let mut removed = forward.clone();
    removed.remove_row("tasks", &rows[1]);
    let mut two = StateRoot::empty();
    two.add_row("tasks", &rows[0]);
    two.add_row("tasks", &rows[2]);
    assert_eq!(removed, two, "remove is the inverse of add");
    // Exact values: integer 1 and real 1.0 are different rows, so are
    // text and blob with the same bytes, and the table name counts.
    let h = |t: &str, v: Value| {
        let mut r = StateRoot::empty();
        r.add_row(t, &[v]);
        r.digest()
    };
    assert_ne!(h("t", Value::Integer(1)), h("t", Value::Real(1.0)));
    assert_ne!(h("t", Value::text("a")), h("t", Value::Blob(b"a".to_vec())));
    assert_ne!(h("t", Value::Real(0.0)), h("t", Value::Real(-0.0)));
    assert_ne!(h("t", Value::Integer(1)), h("u", Value::Integer(1)));
    // Storage round trip.
    assert_eq!(StateRoot::from_bytes(&forward.to_bytes()), Some(forward));
}

fn commit() -> CommitRecord {
    let s = schema();
    CommitRecord {
        group: "tasks-demo".into(),
        seq: 1,
        prev_head: genesis_hash("tasks-demo", 1, &s.hash()),
        changeset_digest: pdb_protocol::sha256(b"changeset"),
        state_root: StateRoot::empty().digest(),
        schema_version: 1,
        schema_hash: s.hash(),
        author: "alice".into(),
        idempotency_key: "k-1".into(),
        time_ms: 1_764_000_000_000,
    }
}

#[test]
fn genesis_vector() {
    let g = hex(&genesis_hash("tasks-demo", 1, &schema().hash()));
    show("genesis", &g);
    assert_eq!(g, GENESIS);
}

#[test]
fn commit_certificate_vector() {
    let rec = commit();
    let bytes = rec.encode();
    show("commit record", &hex(&bytes));
    assert_eq!(hex(&bytes), COMMIT_RECORD);
    assert_eq!(CommitRecord::decode(&bytes).unwrap(), rec);
    let signed = Signed::sign(&key(), bytes);
    show("commit signature", &hex(&signed.signature));
    assert_eq!(hex(&signed.signature), COMMIT_SIGNATURE);
    show("commit head hash", &hex(&rec.head_hash()));
    assert_eq!(hex(&rec.head_hash()), COMMIT_HEAD_HASH);
    assert_eq!(signed.commit(&key().verifying_key()).unwrap(), rec);
}

#[test]
fn head_vector() {
    let c = commit();
    let rec = HeadRecord {
        group: c.group.clone(),
        seq: 1,
        head_hash: c.head_hash(),
        state_root: c.state_root,
        schema_version: 1,
        schema_hash: c.schema_hash,
        time_ms: c.time_ms,
    };
    let signed = Signed::sign(&key(), rec.encode());
    show("head record", &hex(&signed.bytes));
    show("head signature", &hex(&signed.signature));
    assert_eq!(hex(&signed.bytes), HEAD_RECORD);
    assert_eq!(hex(&signed.signature), HEAD_SIGNATURE);
    assert_eq!(signed.head(&key().verifying_key()).unwrap(), rec);
}

#[test]
fn signatures_are_domain_separated_and_tamper_evident() {
    let vk = key().verifying_key();
    let signed = Signed::sign(&key(), commit().encode());
    // A certificate is not a head, even with a valid signature.
    assert!(signed.head(&vk).is_err());
    // Any flipped bit breaks the signature.
    for i in [0, 40, signed.bytes.len() - 1] {
        let mut t = signed.clone();
        t.bytes[i] ^= 1;
        assert!(t.commit(&vk).is_err());
    }
    let mut t = signed.clone();
    t.signature[3] ^= 1;
    assert!(t.commit(&vk).is_err());
    // Another key does not verify.
    let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
    assert!(signed.commit(&other).is_err());
}

const FULL_SCHEMA_HASH: &str = "1a1b42e5fe91ab929907d0c6d3ff2105b41d22fc99fe295f92a3b652e8e858a8";
const SCHEMA_HASH: &str = "7dfd275368a762375c71edf14c49a336eff930be4d0e9cafad2c0be7af9e96c8";
const EMPTY_ROOT: &str = "bdaef1d36e04791174ed32821a490762e4e20a76332e244e26753363dc097acf";
const THREE_ROW_ROOT: &str = "d8930daabb075eabbf6a4eaa8a92a182c23712be08c79e8aee6719b8b994a8ae";
const GENESIS: &str = "feb827d1808dd0db485a05816b2ab995c7bcca60a7ad5d1aba761f3b51b60b6f";
const COMMIT_RECORD: &str = "1d706572736f6e616c64622f636f6d6d69742d636572746966696361746501000a7461736b732d64656d6f0000000000000001feb827d1808dd0db485a05816b2ab995c7bcca60a7ad5d1aba761f3b51b60b6f8f75dabae22a0e19461ce9fdd5ff2ef52b8456db857b0423a9b8c37710188b82bdaef1d36e04791174ed32821a490762e4e20a76332e244e26753363dc097acf000000017dfd275368a762375c71edf14c49a336eff930be4d0e9cafad2c0be7af9e96c80005616c69636500036b2d310000019ab697e800";
const COMMIT_SIGNATURE: &str = "89477cbafce8ca81f3fc4e8c4c5c0695fa14a9114781556e1754fdc401a508252365ff2f69bd0e9653b7a3eccda70d3b650ca4e8101f02212c3361b98c9e3500";
const COMMIT_HEAD_HASH: &str = "9e5bcc31e7d98415cdba7752a76ba2e7fd38ae0a6e5fa1cd094a6a925dfa3f1e";
const HEAD_RECORD: &str = "0f706572736f6e616c64622f6865616401000a7461736b732d64656d6f00000000000000019e5bcc31e7d98415cdba7752a76ba2e7fd38ae0a6e5fa1cd094a6a925dfa3f1ebdaef1d36e04791174ed32821a490762e4e20a76332e244e26753363dc097acf000000017dfd275368a762375c71edf14c49a336eff930be4d0e9cafad2c0be7af9e96c80000019ab697e800";
const HEAD_SIGNATURE: &str = "5bfc74eafa38fab3913e94a766ae2490150d408e1c923937cae8f5f858e3482665351d72310ccedac99552f705311e43657071f652767fd60463fd70a031ea09";

/// `ALTER TABLE tasks ADD COLUMN due TEXT` after the commit above: the
/// migration's canonical bytes, the schema it makes, its signed record,
/// and the root of the three rows moved to version 2.
#[test]
fn migration_vector() {
    let v1 = schema();
    let due = Column {
        name: "due".into(),
        decl_type: "TEXT".into(),
        ..Default::default()
    };
    let ops = vec![SchemaOp::AddColumn {
        table: "tasks".into(),
        column: due,
    }];
    let mut v2 = v1.clone();
    for op in &ops {
        op.apply(&mut v2).unwrap();
    }
    v2.version = 2;
    let m = Migration {
        from_version: 1,
        to_version: 2,
        ops,
        tables: v2.tables.clone(),
        accepts_from: 1,
        ddl: "ALTER TABLE tasks ADD COLUMN due TEXT".into(),
    };
    let bytes = m.encode();
    show("migration bytes", &String::from_utf8_lossy(&bytes));
    assert_eq!(String::from_utf8(bytes.clone()).unwrap(), MIGRATION_JSON);
    assert_eq!(Migration::decode(&bytes).unwrap(), m);
    show("v2 schema hash", &hex(&v2.hash()));
    assert_eq!(hex(&v2.hash()), V2_SCHEMA_HASH);

    // Three rows under version 1, then each out as it was and in with the
    // new column's default.
    let mut root = StateRoot::empty();
    for r in rows() {
        root.add_row("tasks", &r);
    }
    for mut r in rows() {
        root.remove_row("tasks", &r);
        r.push(Value::Null);
        root.add_row("tasks", &r);
    }
    show("three rows at version 2", &hex(&root.digest()));
    assert_eq!(hex(&root.digest()), V2_THREE_ROW_ROOT);

    let c = commit();
    let rec = MigrationRecord {
        group: c.group.clone(),
        seq: 2,
        prev_head: c.head_hash(),
        migration_digest: pdb_protocol::sha256(&bytes),
        state_root: StateRoot::empty().digest(),
        from_version: 1,
        schema_version: 2,
        schema_hash: v2.hash(),
        accepts_from: 1,
        author: "admin".into(),
        time_ms: c.time_ms + 1,
    };
    let signed = Signed::sign(&key(), rec.encode());
    show("migration record", &hex(&signed.bytes));
    show("migration signature", &hex(&signed.signature));
    show("migration head hash", &hex(&rec.head_hash()));
    assert_eq!(hex(&signed.bytes), MIGRATION_RECORD);
    assert_eq!(hex(&signed.signature), MIGRATION_SIGNATURE);
    assert_eq!(hex(&rec.head_hash()), MIGRATION_HEAD_HASH);
    let vk = key().verifying_key();
    assert_eq!(signed.migration(&vk).unwrap(), rec);
    assert_eq!(signed.entry(&vk).unwrap(), Entry::Migration(rec));
    // A migration's certificate is not a commit's, nor the other way.
    assert!(signed.commit(&vk).is_err());
    assert!(Signed::sign(&key(), c.encode()).migration(&vk).is_err());
}

const MIGRATION_JSON: &str = r#"{"from_version":1,"to_version":2,"ops":[{"op":"add_column","table":"tasks","column":{"name":"due","type":"TEXT"}}],"tables":[{"name":"tasks","columns":[{"name":"id","type":"INTEGER","pk":1},{"name":"title","type":"TEXT","not_null":true},{"name":"done","type":"INTEGER","default":"0"},{"name":"due","type":"TEXT"}]}],"accepts_from":1,"ddl":"ALTER TABLE tasks ADD COLUMN due TEXT"}"#;
const V2_SCHEMA_HASH: &str = "e3e8dfb4c99e20651734f23e45e785c6873c315d7e5a027a6687b11b7ea1f5c6";
const V2_THREE_ROW_ROOT: &str = "d129754872da8f310aee7562e45b5cc28c1d70e5d58121dfba86da72d680fead";
const MIGRATION_RECORD: &str = "14706572736f6e616c64622f6d6967726174696f6e01000a7461736b732d64656d6f00000000000000029e5bcc31e7d98415cdba7752a76ba2e7fd38ae0a6e5fa1cd094a6a925dfa3f1e8d198ce9575791abe138c787bff83eb64b33bd852b019d3e26c62a708fb5d402bdaef1d36e04791174ed32821a490762e4e20a76332e244e26753363dc097acf0000000100000002e3e8dfb4c99e20651734f23e45e785c6873c315d7e5a027a6687b11b7ea1f5c600000001000561646d696e0000019ab697e801";
const MIGRATION_SIGNATURE: &str = "d71de8aa247041331e8a01284e740560739b1d3a96af7767b5ae541ebe70a642f5d718292563fe77540c93bb0e9c557f8ddac39c21a2b341b9210f5b6fec9003";
const MIGRATION_HEAD_HASH: &str =
    "a82ad3c007f0ba31fc3acae65340e6ef340e4d9009fa4630b979817614d025a4";
