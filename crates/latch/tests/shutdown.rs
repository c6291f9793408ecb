//! Graceful shutdown: on SIGTERM latch stops accepting connections, finishes the requests
//! already in flight, empties SQLite's write-ahead log into the database file, and exits 0.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{basic_header, Process};

#[test]
fn sigterm_stops_accepting_finishes_in_flight_requests_empties_the_wal_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::serve(
        dir.path(),
        &[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/dev.toml"),
            "--data-dir",
            "data",
        ],
        &[],
    );
    let addr = p.base.trim_start_matches("http://").to_owned();

    // A request whose body is only half sent when the signal arrives. Connecting alone does
    // not prove the server took the connection (it may still sit in the kernel's backlog and be
    // reset when the listener closes), so the request asks for `100 Continue`: hyper sends it
    // only once the handler starts reading the body, i.e. once the request is truly in flight.
    let body = "grant_type=client_credentials";
    let (first, rest) = body.split_at(10);
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /oauth2/token HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        basic_header("demo-service", "demo-service-secret"),
        body.len()
    )
    .unwrap();
    conn.flush().unwrap();
    let interim = read_until_blank_line(&mut conn);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    conn.write_all(first.as_bytes()).unwrap();
    conn.flush().unwrap();

    let pid = p.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    // Wait (bounded, no fixed sleep) until the listener is closed: new connections fail.
    let mut refused = false;
    for _ in 0..10_000 {
        match TcpStream::connect(&addr) {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(c) => drop(c),
        }
        std::thread::yield_now();
    }
    assert!(refused, "the listener never closed after SIGTERM");

    // The in-flight request still completes.
    conn.write_all(rest.as_bytes()).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("latch_at_"), "{response}");

    let mut p = p;
    let status = p.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status");

    // The database file alone holds everything: the write-ahead log was copied into it and
    // emptied on the way out, so a copy of the file is a whole database.
    let data = dir.path().join("data");
    let wal = std::fs::metadata(data.join("latch.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL is empty after a clean stop");
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(data.join("latch.db"), copy.path().join("latch.db")).unwrap();
    let db = rusqlite::Connection::open(copy.path().join("latch.db")).unwrap();
    let tokens: i64 = db
        .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tokens, 1, "the token issued before the stop is in the file");
}

/// Reads one response head (up to and including the blank line), byte by byte so nothing
/// of the next response is consumed.
fn read_until_blank_line(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}
