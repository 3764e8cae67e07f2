//! Test vectors: fixed inputs and the exact bytes and digests they must
//! give. docs/protocol.md repeats them; any other implementation of the
//! protocol can check itself against these.

use ed25519_dalek::SigningKey;
use pdb_protocol::{
    genesis_hash, hex, Column, CommitRecord, HeadRecord, Schema, Signed, StateRoot, Table, Value,
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
                },
                Column {
                    name: "title".into(),
                    decl_type: "TEXT".into(),
                    not_null: true,
                    default: None,
                    pk: 0,
                },
                Column {
                    name: "done".into(),
                    decl_type: "INTEGER".into(),
                    not_null: false,
                    default: Some("0".into()),
                    pk: 0,
                },
            ],
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

const SCHEMA_HASH: &str = "91e57bb214a09190db6308e44bab5522fc3151d119184b875d23615d8873f7d7";
const EMPTY_ROOT: &str = "bdaef1d36e04791174ed32821a490762e4e20a76332e244e26753363dc097acf";
const THREE_ROW_ROOT: &str = "d8930daabb075eabbf6a4eaa8a92a182c23712be08c79e8aee6719b8b994a8ae";
const GENESIS: &str = "d253838ad4413bd258d905f293d73d4e4c6dd36bf8c0418f17d0ce592b74b37d";
const COMMIT_RECORD: &str = "1d706572736f6e616c64622f636f6d6d69742d636572746966696361746501000a7461736b732d64656d6f0000000000000001d253838ad4413bd258d905f293d73d4e4c6dd36bf8c0418f17d0ce592b74b37d8f75dabae22a0e19461ce9fdd5ff2ef52b8456db857b0423a9b8c37710188b82bdaef1d36e04791174ed32821a490762e4e20a76332e244e26753363dc097acf0000000191e57bb214a09190db6308e44bab5522fc3151d119184b875d23615d8873f7d70005616c69636500036b2d310000019ab697e800";
const COMMIT_SIGNATURE: &str = "a536dc3c9893573bb9b5d55e244e7b2868c06200af0ccfabee4a088a3975d283333213626d1944fb112da023f8a8f296768596dfebadb496db18595396aa330d";
const COMMIT_HEAD_HASH: &str = "fb85cde0b1cc6f46a933ae0d526e3f38235caef382bafb0569b8ce47c4e8d9f1";
const HEAD_RECORD: &str = "0f706572736f6e616c64622f6865616401000a7461736b732d64656d6f0000000000000001fb85cde0b1cc6f46a933ae0d526e3f38235caef382bafb0569b8ce47c4e8d9f1bdaef1d36e04791174ed32821a490762e4e20a76332e244e26753363dc097acf0000000191e57bb214a09190db6308e44bab5522fc3151d119184b875d23615d8873f7d70000019ab697e800";
const HEAD_SIGNATURE: &str = "38809180094f403b29df1ba6c6ca7a4a6b38234a909daece018d6523cf4f06b971eaf440d32b4c8a187d44aafc8c43003ec8948106a9b0c23a82ae8e24496e0d";
