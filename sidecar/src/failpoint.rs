//! Test-only panics: `PDB_TEST_PANIC=<point>[:<arg>][,...]` in the
//! witness's environment (read once) makes the named points panic, so
//! end-to-end tests can prove a panic leaves no work half done and no
//! thread lost. Unset — always, outside tests — every point is a no-op.

use std::sync::OnceLock;

/// Panics when `point` is named in `PDB_TEST_PANIC`, alone or as
/// `point:arg`.
pub fn hit(point: &str, arg: &str) {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var("PDB_TEST_PANIC")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default()
    });
    let hit = points.iter().any(|p| match p.split_once(':') {
        Some((name, a)) => name == point && a == arg,
        None => p == point,
    });
    if hit {
        panic!("PDB_TEST_PANIC: {point}:{arg}");
    }
}
