//! Slow readers are bounded, against the real witness binary: answers
//! being written count against the memory bounds of bodies in flight (per
//! client address and in total) and hold the caller's call slot until
//! they are written; a connection that takes no bytes for the write
//! timeout is closed and what its answer held is released. 40 connections
//! that ask for 8 MiB snapshot ranges and never read cannot hold more
//! than an address's share, nor keep others from being served.

use pdb_e2e::*;
use pdb_protocol::wire::Policy;
use pdb_protocol::Value;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, note TEXT);";
const RANGE: usize = 8 * 1024 * 1024;

/// A connection from `from` that takes almost nothing off the wire
/// unless read.
fn tight(from: [u8; 4], port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("rcvbuf");
    s.bind(&std::net::SocketAddr::from((from, 0)).into())
        .expect("bind");
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s
}

fn ask(s: &mut TcpStream, path: &str, token: &str) -> RawReply {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {token}\r\nRange: bytes=0-\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    read_answer_to(s, true).expect("answer head")
}

/// A witness (with `flags`) whose group g has a snapshot larger than one
/// 8 MiB range; the tokens of readers "slow" and "other"; the data path.
fn witness_with_snapshot(dir: &TempDir, flags: &[&str]) -> (Witness, String, String, String) {
    let data = dir.path().join("data");
    let reader = add_token(&data, "slow");
    let other = add_token(&data, "other");
    let w = Witness::start_with(dir.path(), 0, flags);
    let g = w.create_group("g", DDL);
    for who in ["slow", "other"] {
        let r = w.request(
            "PUT",
            &format!("/v1/groups/g/members/{who}"),
            Some(TOKEN),
            Some(&json!({"role": "reader"})),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    // A snapshot larger than one 8 MiB range.
    for i in 0..10 {
        let cs = changeset(
            "t",
            &[1, 0],
            vec![insert(vec![
                Value::Integer(i),
                Value::text(&"x".repeat(1 << 20)),
            ])],
        );
        let r = w.commit_at_head(&g, &format!("k{i}"), &cs, Policy::RebaseIfClean);
        assert_eq!(r.status, 201, "{r:?}");
    }
    let m = w.post("/v1/groups/g/snapshots", &serde_json::Value::Null);
    assert_eq!(m.status, 201, "{m:?}");
    let seq = m.body["seq"].as_u64().unwrap();
    let path = format!("/v1/groups/g/snapshots/{seq}/data");
    (w, reader, other, path)
}

/// Asks for the 8 MiB range from `from` and reads it all: it is served.
fn read_whole_range(port: u16, from: [u8; 4], path: &str, token: &str) {
    let mut s = tight(from, port);
    let r = ask(&mut s, path, token);
    assert_eq!(r.status, 206, "{r:?}");
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok();
    assert_eq!(body.len(), RANGE, "a large answer was cut");
}

#[test]
fn answers_nobody_reads_are_bounded_and_timed_out() {
    let dir = TempDir::new("slow-readers");
    let (w, reader, other, path) = witness_with_snapshot(&dir, &["--write-timeout-secs", "3"]);
    let port = w.port();

    // 40 connections ask for 8 MiB each and never read past the head.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut s = tight([127, 0, 0, 1], port);
        let r = ask(&mut s, &path, &reader);
        match r.status {
            206 => held.push(s),
            429 => {
                assert!(r.header("retry-after").is_some(), "{r:?}");
                refused += 1;
            }
            s => panic!("unexpected answer {s}"),
        }
    }
    // An address holds at most its share of the bound on bodies in
    // flight (a quarter of --max-buffered-bytes, 256 MiB): 8 answers.
    assert!(held.len() <= 8, "{} answers held", held.len());
    assert!(!held.is_empty());
    assert_eq!(held.len() + refused, 40);
    // Others' large answers are served meanwhile (the stalled ones hold
    // only their address's share of the bound).
    read_whole_range(port, [127, 0, 0, 2], &path, &other);

    // What they held is released: the address is served whole again.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = tight([127, 0, 0, 1], port);
        let r = ask(&mut s, &path, &reader);
        if r.status == 206 {
            let mut body = Vec::new();
            s.read_to_end(&mut body).ok();
            assert_eq!(body.len(), RANGE);
            break;
        }
        assert!(Instant::now() < until, "still refused: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // By then every stalled connection has been idle past the timeout
    // (they were opened together; two timeouts more, so none is read from
    // before its own ran out): each was closed with its answer cut.
    std::thread::sleep(Duration::from_secs(6));
    // The stalled connections are closed after the write timeout: none
    // delivers its whole answer.
    for mut s in held {
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if got > RANGE {
                break;
            }
        }
        assert!(got < RANGE, "a stalled answer was written whole");
    }
}

#[test]
fn a_callers_slot_is_held_until_its_answer_is_written() {
    let dir = TempDir::new("slow-caller");
    let (w, reader, other, path) = witness_with_snapshot(
        &dir,
        &["--write-timeout-secs", "3", "--max-calls-per-caller", "3"],
    );
    let port = w.port();
    // Three answers nobody reads, from three addresses (so no address
    // passes its share of memory): the caller's three calls are in
    // progress until they are written.
    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut s = tight([127, 0, 0, 10 + i], port);
        assert_eq!(ask(&mut s, &path, &reader).status, 206);
        held.push(s);
    }
    let mut s = tight([127, 0, 0, 20], port);
    let r = ask(&mut s, "/v1/groups/g", &reader);
    assert_eq!(r.status, 429, "{r:?}");
    // Another caller is not held up.
    let mut s = tight([127, 0, 0, 21], port);
    assert_eq!(ask(&mut s, "/v1/groups/g", &other).status, 200);
    // Once the write timeout closed them, the caller is served again.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = tight([127, 0, 0, 20], port);
        if ask(&mut s, "/v1/groups/g", &reader).status == 200 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the caller's slots were never released"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
}

#[test]
fn a_trickling_reader_is_cut_at_the_answers_deadline() {
    let dir = TempDir::new("slow-trickle");
    // Room for four 8 MiB answers in all, one per address; each must be
    // written within 8 s plus 8 MiB at 4 MiB/s.
    let (w, reader, other, path) = witness_with_snapshot(
        &dir,
        &[
            "--write-timeout-secs",
            "8",
            "--min-write-bytes-per-sec",
            "4194304",
            "--max-buffered-bytes",
            "33554432",
        ],
    );
    let port = w.port();
    // Four readers from four addresses take the whole bound.
    let mut trickling = Vec::new();
    for i in 0..4u8 {
        let mut s = tight([127, 0, 0, 30 + i], port);
        assert_eq!(ask(&mut s, &path, &reader).status, 206);
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        trickling.push((s, 0usize, false));
    }
    // While they hold it, another caller's large answer is refused.
    let mut s = tight([127, 0, 0, 40], port);
    let r = ask(&mut s, &path, &other);
    assert_eq!(r.status, 503, "{r:?}");
    drop(s);
    // They read a little, regularly (16 KiB each every 100 ms, far under
    // the minimum rate, but never idle for the write timeout), until the
    // witness ends their answers.
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..(2 * RANGE / buf.len()) {
        if trickling.iter().all(|t| t.2) {
            break;
        }
        for (s, got, done) in trickling.iter_mut().filter(|t| !t.2) {
            match s.read(&mut buf) {
                Ok(0) => *done = true,
                Ok(n) => *got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => *done = true,
            }
            if *got >= RANGE {
                *done = true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, got, done) in &trickling {
        assert!(*done, "a trickling reader was neither cut nor served");
        assert!(*got > 0, "the reader never got bytes");
        assert!(*got < RANGE, "a trickling answer was written whole");
    }
    // What they held is released: another caller's large answer is
    // served whole.
    read_whole_range(port, [127, 0, 0, 40], &path, &other);
}
