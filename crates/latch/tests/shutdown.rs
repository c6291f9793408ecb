//! Graceful shutdown: on SIGTERM latch stops accepting connections, finishes the requests
//! already in flight, and exits 0.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{basic_header, Process};

#[test]
fn sigterm_stops_accepting_finishes_in_flight_requests_and_exits_zero() {
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

    // A request whose body is only half sent when the signal arrives.
    let body = "grant_type=client_credentials";
    let (first, rest) = body.split_at(10);
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /oauth2/token HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{first}",
        basic_header("demo-service", "demo-service-secret"),
        body.len()
    )
    .unwrap();
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
}
