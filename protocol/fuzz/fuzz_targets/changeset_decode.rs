//! Any bytes: decoding never panics, and whatever decodes re-encodes to
//! the same bytes and validates (or not) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdb_protocol::{Changeset, Column, Schema, Table};

fuzz_target!(|data: &[u8]| {
    if let Ok(cs) = Changeset::decode(data) {
        assert_eq!(cs.encode(), data);
        let col = |name: &str, pk| Column {
            name: name.into(),
            decl_type: String::new(),
            not_null: false,
            default: None,
            pk,
        };
        let schema = Schema::new(
            1,
            vec![Table {
                name: "t".into(),
                columns: vec![col("id", 1), col("v", 0)],
            }],
        );
        let _ = cs.validate(&schema);
    }
});
