//! Any bytes as a certificate or head record: no panic, exact round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdb_protocol::{CommitRecord, HeadRecord};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = CommitRecord::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(r) = HeadRecord::decode(data) {
        assert_eq!(r.encode(), data);
    }
});
