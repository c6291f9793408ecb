//! Graceful shutdown: on SIGTERM latch stops accepting connections, finishes the requests
//! already in flight, empties SQLite's write-ahead log into the database file, and exits 0.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{basic_header, Process};

#[test]
fn sigterm_stops_accepting_finishes_in_flight_requests_empties_the_wal_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = serve_dev(dir.path(), &[]);
    let addr = p.base.trim_start_matches("http://").to_owned();

    // A request whose body is only half sent when the signal arrives.
    let body = "grant_type=client_credentials";
    let (first, rest) = body.split_at(10);
    let mut conn = request_in_flight(&addr, body.len(), first);

    p.send_sigterm();

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

/// A client that stalls mid-request (its peer gone, or slow on purpose) does not hold a stop
/// for ever: after `--shutdown-timeout` its request is cut off (it never gets an answer), the
/// database is closed as on any clean stop, and latch exits 0.
#[test]
fn a_request_stalled_mid_body_holds_a_stop_only_until_the_shutdown_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve_dev(dir.path(), &["--shutdown-timeout", "1"]);
    let addr = p.base.trim_start_matches("http://").to_owned();
    let mut conn = request_in_flight(&addr, 100, "grant_type");
    p.send_sigterm();

    // Bounded: without the timeout the process never exits.
    let status = exited_within_a_minute(&mut p).expect("latch still running 60 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status; logs:\n{}", p.logs());
    assert!(p.logs().contains("cut off"), "{}", p.logs());

    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    assert!(
        response.is_empty(),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let wal = std::fs::metadata(dir.path().join("data/latch.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the database was closed: its WAL is empty");
}

/// A second stop signal ends a stop still waiting for a stalled request at once (exit 1),
/// however long the shutdown timeout: an operator's second Ctrl-C is not ignored. (Without
/// it, this stop lasts until the stalled body's read timeout, 30 s, and exits 0.)
#[test]
fn a_second_signal_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve_dev(dir.path(), &["--shutdown-timeout", "3600"]);
    let addr = p.base.trim_start_matches("http://").to_owned();
    let _conn = request_in_flight(&addr, 100, "grant_type");
    p.send_sigterm();
    // Two signals sent together could be taken as one.
    let mut stopping = false;
    for _ in 0..3_000 {
        stopping = p.logs().contains("stopping: finishing in-flight requests");
        if stopping {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(stopping, "the first signal was never taken: {}", p.logs());
    p.send_sigterm();
    // Bounded, and well past the stalled request's read timeout.
    let status =
        exited_within_a_minute(&mut p).expect("latch still running 60 s after a second SIGTERM");
    assert_eq!(status.code(), Some(1), "exit status; logs:\n{}", p.logs());
    assert!(p.logs().contains("a second stop signal"), "{}", p.logs());
}

/// A server on a fresh SQLite database, its settings adjusted by `configure`, on the system
/// clock; with its database.
async fn started(
    configure: impl FnOnce(&mut latch::config::Settings),
) -> (latch::server::Server, common::TestDb) {
    let db = common::TestDb::fresh_on(common::Backend::Sqlite).await;
    let mut settings = common::settings_for(&db);
    configure(&mut settings);
    let server = latch::server::Server::start(
        &settings,
        std::sync::Arc::new(latch_core::clock::SystemClock),
    )
    .await
    .expect("server starts");
    (server, db)
}

/// A request the shutdown timeout cut off is never answered, however its client goes on:
/// its connection closes before the database does. Left running, it read the rest of its
/// body and was served while the store closed, or after (a write committed past the final
/// checkpoint, the "cut off" request answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_shutdown_timeout_cut_off_is_closed_unanswered() {
    let (server, _db) = started(|settings| settings.shutdown_timeout = 1).await;
    let addr = server.addr.to_string();
    let conn = tokio::task::spawn_blocking(move || request_in_flight(&addr, 100, "grant_type"))
        .await
        .unwrap();
    server.shutdown().await.expect("a stop that timed out");
    // The rest of the body, then whatever comes back.
    assert_unanswered(answer_after(conn, vec![b'x'; 90]).await);
}

/// With an operations listener, a stop lets the requests in flight on it finish before the
/// database closes, as on the clients' listener, and stops accepting on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_finishes_a_request_in_flight_on_the_operations_listener() {
    let (server, db) = started(|settings| {
        settings.operations_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (clients, operations) = (server.addr, server.operations_addr.unwrap());
    let body = br#"{"tenant_id":"late"}"#;
    let conn = tokio::task::spawn_blocking(move || {
        admin_request_in_flight(&operations.to_string(), "/tenants", body.len(), "{")
    })
    .await
    .unwrap();
    let stop = tokio::spawn(server.shutdown());
    // Stopping, both listeners close (bounded: the stop has begun within a minute).
    for addr in [clients, operations] {
        let mut refused = false;
        for _ in 0..3_000 {
            refused = std::net::TcpStream::connect(addr).is_err();
            if refused {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(refused, "{addr} still accepts connections during the stop");
    }
    // The admin request is served to the end, its write committed, before the stop returns.
    let answer = answer_after(conn, body[1..].to_vec()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    stop.await.unwrap().expect("a clean stop");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM tenants WHERE id = 'late'")
            .await,
        1
    );
}

/// With an operations listener, the shutdown timeout cuts the requests still in flight on
/// both listeners alike: neither is answered once the database closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_timeout_cuts_off_the_requests_of_both_listeners() {
    let (server, _db) = started(|settings| {
        settings.shutdown_timeout = 1;
        settings.operations_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (clients, operations) = (server.addr, server.operations_addr.unwrap());
    let (token, admin) = tokio::task::spawn_blocking(move || {
        (
            request_in_flight(&clients.to_string(), 100, "grant_type"),
            admin_request_in_flight(&operations.to_string(), "/tenants", 100, "{"),
        )
    })
    .await
    .unwrap();
    server.shutdown().await.expect("a stop that timed out");
    assert_unanswered(answer_after(token, vec![b'x'; 90]).await);
    assert_unanswered(answer_after(admin, vec![b' '; 99]).await);
}

/// The process's exit status, once it has exited, polled for at most a minute.
fn exited_within_a_minute(p: &mut Process) -> Option<std::process::ExitStatus> {
    for _ in 0..3_000 {
        if let Some(status) = p.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

/// `latch serve` with the development configuration, its database under `dir/data`.
fn serve_dev(dir: &std::path::Path, extra: &[&str]) -> Process {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/dev.toml");
    let mut args = vec!["--config", config, "--data-dir", "data"];
    args.extend_from_slice(extra);
    Process::serve(dir, &args, &[])
}

/// Starts a token request with a body of `len` bytes and sends only `first` of it. Connecting
/// alone does not prove the server took the connection (it may still sit in the kernel's
/// backlog and be reset when the listener closes), so the request asks for `100 Continue`:
/// hyper sends it only once the handler starts reading the body, i.e. once the request is
/// truly in flight.
fn request_in_flight(addr: &str, len: usize, first: &str) -> TcpStream {
    let authorization = basic_header("demo-service", "demo-service-secret");
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    in_flight(addr, &head, first)
}

/// The same, of a `POST` of JSON to the admin API's `path` at `addr`.
fn admin_request_in_flight(addr: &str, path: &str, len: usize, first: &str) -> TcpStream {
    let head = format!(
        "POST /admin/v1{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\
         Expect: 100-continue\r\n\r\n",
        common::ADMIN_TOKEN
    );
    in_flight(addr, &head, first)
}

/// Sends `head` (which asks for `100 Continue`) and, once the server is reading the body,
/// `first` of it.
fn in_flight(addr: &str, head: &str, first: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    conn.flush().unwrap();
    let interim = read_until_blank_line(&mut conn);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    conn.write_all(first.as_bytes()).unwrap();
    conn.flush().unwrap();
    conn
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

/// A client that has sent part of a request's head when the stop comes holds it up for no
/// more than a moment: hyper kept such a connection until its read timeout (30 s by default,
/// more than the stop's own 20 s), so one slow or hostile client made every stop wait its
/// whole timeout and cut off the requests still in flight. Here both timeouts are an hour;
/// the stop is bounded at 10 s (it takes about half a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_half_sent_does_not_hold_a_stop() {
    let db = common::TestDb::fresh_on(common::Backend::Sqlite).await;
    let mut settings = common::settings_for(&db);
    settings.shutdown_timeout = 3600;
    settings.read_timeout = 3600;
    let server = latch::server::Server::start(
        &settings,
        std::sync::Arc::new(latch_core::clock::SystemClock),
    )
    .await
    .expect("server starts");
    let addr = server.addr;
    let conn = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
        let client = conn.local_addr().unwrap();
        until_read_by_server(addr.port(), client.port());
        conn
    })
    .await
    .unwrap();
    let stop = tokio::time::timeout(std::time::Duration::from_secs(10), server.shutdown()).await;
    let stopped = stop.expect("the stop waited for the half-sent head");
    stopped.expect("a clean stop");
    assert_unanswered(answer_after(conn, Vec::new()).await);
}

/// What comes back on `conn` until it closes, once `rest` is sent (or refused).
async fn answer_after(mut conn: TcpStream, rest: Vec<u8>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let _ = conn.write_all(&rest);
        let mut response = Vec::new();
        let _ = conn.read_to_end(&mut response);
        response
    })
    .await
    .unwrap()
}

fn assert_unanswered(response: Vec<u8>) {
    assert!(
        response.is_empty(),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

/// Waits (bounded) until the server's end of the connection from `client_port` to
/// `server_port` on 127.0.0.1 has nothing left unread in the kernel (`/proc/net/tcp`'s
/// receive queue): what the client sent is in the server's hands.
fn until_read_by_server(server_port: u16, client_port: u16) {
    let ends = format!("0100007F:{server_port:04X} 0100007F:{client_port:04X}");
    for _ in 0..5_000 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queues = table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 4 && format!("{} {}", fields[1], fields[2]) == ends)
                .then(|| fields[4].to_owned())
        });
        if queues.is_some_and(|q| q.ends_with(":00000000")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("the server never read what was sent to it");
}
