//! Memory follows the groups in use, against the real witness binary:
//! what open groups held (SQLite page caches, statements, buffers) is
//! given back to the system once they close, so the process does not
//! stay at its peak after a burst of groups has gone idle.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use std::time::{Duration, Instant};

const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, note TEXT);";
const GROUPS: usize = 300;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn row(id: i64, note: &str) -> Vec<u8> {
    changeset(
        "t",
        &[1, 0],
        vec![insert(vec![Value::Integer(id), Value::text(note)])],
    )
}

#[test]
fn memory_of_closed_groups_is_given_back() {
    let dir = TempDir::new("memory");
    let flags = ["--group-idle-secs", "5"];
    let mut w = Witness::start_with(dir.path(), 0, &flags);
    let note = "n".repeat(2000);
    let mut groups = Vec::new();
    for i in 0..GROUPS {
        let g = w.create_group(&format!("m{i:03}"), DDL);
        for k in 0..20 {
            let r = w.commit_at_head(&g, &format!("c{k}"), &row(k, &note), Policy::RebaseIfClean);
            assert_eq!(r.status, 201, "{r:?}");
        }
        groups.push(g);
    }
    assert!(w.terminate().success());

    // A fresh process: nothing open.
    let w = Witness::start_with(dir.path(), 0, &flags);
    let open = |w: &Witness| w.get("/healthz").body["open_groups"].as_u64().unwrap();
    let before = rss_mib(w.pid());
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let before_fds = fds(w.pid());
    // Every group in use: its log read, a commit written.
    for (i, g) in groups.iter().enumerate() {
        let r = w.get(&format!("/v1/groups/m{i:03}/commits?after=0&limit=100"));
        assert_eq!(r.status, 200, "{r:?}");
        let r = w.commit_at_head(g, "more", &row(100, &note), Policy::RebaseIfClean);
        assert_eq!(r.status, 201, "{r:?}");
    }
    let during = rss_mib(w.pid());
    let until = Instant::now() + Duration::from_secs(120);
    // Closed: out of the count, and their files closed (a checkpoint
    // each, after they left the count).
    while open(&w) > 0 || fds(w.pid()) > before_fds + 16 {
        assert!(Instant::now() < until, "groups never closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = rss_mib(w.pid());
    println!(
        "RSS MiB: before {before:.1}, {GROUPS} groups open {during:.1}, all closed {after:.1}"
    );
    assert!(during > before, "{before} {during}");
    // At least half of what the open groups took came back.
    assert!(
        after - before <= (during - before) / 2.0,
        "RSS MiB: before {before:.1}, {GROUPS} groups open {during:.1}, all closed {after:.1}"
    );
}
