//! Test-only panics: `PDB_TEST_PANIC=<point>[,<point>...]` in the host's
//! environment (read once, at the first point reached) makes the named
//! points panic, so end-to-end tests can prove a panic leaves no work half
//! done; `abort:<point>` aborts the process there instead (a crash: no
//! unwinding, no destructors). Unset — always, outside tests — every
//! point is a no-op.

use std::sync::OnceLock;

/// Panics when `point` is named in `PDB_TEST_PANIC`.
pub fn hit(point: &str) {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var("PDB_TEST_PANIC")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default()
    });
    if points.iter().any(|p| p == point) {
        panic!("PDB_TEST_PANIC: {point}");
    }
    if points
        .iter()
        .any(|p| p.strip_prefix("abort:") == Some(point))
    {
        std::process::abort();
    }
}
