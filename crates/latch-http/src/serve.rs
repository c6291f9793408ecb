//! Serving the router over HTTP/1.1: an accept loop, one task per connection, and a
//! graceful stop.
//!
//! `axum::serve` runs hyper without a timer, so nothing bounds how long a client takes to
//! send a request: a few hundred clients trickling a header line every minute (or simply
//! connecting and sending nothing) hold as many connections and file descriptors for ever.
//! Here hyper has a timer: a request's head must arrive within the read timeout, counted from
//! when the server starts waiting for it, so a keep-alive connection idle that long is closed
//! too; and [`crate::form::read_body`] gives its body as long again ([`Connection`]).
//! Writes have a timeout of their own: a client that sends requests and never reads the
//! answers stalls the connection's writes once the socket buffers are full, and a write
//! that makes no progress for that long closes the connection.
//!
//! At most [`Limits::max_connections`] connections are served at once; past that, the loop
//! stops accepting until one closes (the kernel queues the newcomers in the listen backlog),
//! so a flood of connections cannot take every file descriptor the storage needs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_io_timeout::TimeoutStream;
use tower::Service;

/// How long a client may take to send a request's head, and then its body, when nothing
/// else is configured: long enough for any client on a slow link, short enough that idle or
/// trickling connections do not pile up.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a write to a client may make no progress when nothing else is configured.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once when nothing else is configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// What clients may hold of the server: how long they may keep it waiting, in each
/// direction, and how many connections they may hold at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// For a request's head, counted from when the server starts waiting for it (so also
    /// how long a keep-alive connection may idle), and then again for its body.
    pub read_timeout: Duration,
    /// For a write to the client to make progress: a client that does not read its
    /// answers holds the connection no longer.
    pub write_timeout: Duration,
    /// Connections served at once (at least 1).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A listener's connections, counted for `/metrics`: how close clients are to holding them
/// all (past that, newcomers wait in the listen backlog, their requests unanswered).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections served now.
    open: AtomicUsize,
    /// The most served at once ([`Limits::max_connections`]), once serving began.
    max: AtomicUsize,
    /// Times every slot was taken when the accept loop wanted one.
    at_limit: AtomicU64,
}

impl ConnectionStats {
    /// Connections served now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The most served at once (0 before serving began).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Times every slot was taken when the accept loop wanted one: from then until one
    /// closed, newcomers waited in the listen backlog.
    pub fn at_limit(&self) -> u64 {
        self.at_limit.load(Ordering::Relaxed)
    }
}

/// What the server knows of a request's connection; a request extension.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// How long the client may take to send the request's body.
    pub read_timeout: Duration,
}

/// The most a connection's read buffer holds, and so the largest request head (`431`
/// past it): hyper's default, 408 KiB, let every connection of the limit hold that much
/// (4 GiB at 10,000 connections, renewed every read timeout). An OAuth request's head is a
/// few hundred bytes; proxies in front usually allow 8-16 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Serves `router` on `listener`, counting its connections in `stats`, until `stop`
/// completes; then stops accepting, lets each
/// connection finish the request it is serving (an idle one closes at once, one in the
/// middle of a request's head after [`STOP_GRACE`]), and returns
/// once all have closed. Once `cut` completes (a stop that gives up waiting), or if this is
/// dropped, the connections still open close at once, their requests unanswered: a caller
/// that awaits it after `cut` knows that none is still served (nor commits) when it goes on
/// to close the database.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    stop: impl Future<Output = ()>,
    cut: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    stats
        .max
        .store(limits.max_connections.max(1), Ordering::Relaxed);
    // `stopping` is dropped to tell every connection to stop. Each connection holds a
    // receiver of `closed` until it ends, so `closed_tx` learns when the last one has.
    let (stopping, stop_seen) = watch::channel(());
    let (closed_tx, closed) = watch::channel(());
    // `cutting` is dropped to cut the connections still open.
    let (cutting, cut_seen) = watch::channel(());
    let mut stop = std::pin::pin!(stop);
    loop {
        // A slot first, then the connection: at the limit, newcomers wait in the backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                stats.at_limit.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break, // never closed
                    },
                    () = &mut stop => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tokio::select! {
                        () = pause_after(e) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        let connection = Connection {
            peer,
            read_timeout: limits.read_timeout,
        };
        let router = router.clone();
        let serving = Arc::new(AtomicUsize::new(0));
        let requests = serving.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(connection);
            let serving = Serving::begin(&requests);
            // `Router` is always ready, and cloning it clones an `Arc`.
            let response = router.clone().call(request);
            async move {
                let _serving = serving;
                response.await
            }
        });
        // Reads are bounded by hyper's timer and `read_body`; only writes need the wrapper,
        // whose timer runs only while a write is pending.
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let conn = http.serve_connection(TokioIo::new(Box::pin(stream)), service);
        let mut stop_seen = stop_seen.clone();
        let mut cut_seen = cut_seen.clone();
        let closed = closed.clone();
        let open = Open::begin(&stats);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => log_end(result),
                _ = stop_seen.changed() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn => log_end(result),
                        // The stop gave up waiting (its timeout): the request is cut off
                        // here, unanswered, rather than served on while the database closes.
                        _ = cut_seen.changed() => {}
                        () = serving_none(&serving) => {}
                    }
                }
            }
            drop(closed);
            drop(open);
            drop(slot);
        });
    }
    drop(listener);
    drop(stopping);
    drop(closed);
    drop(cut_seen);
    let cut = std::pin::pin!(cut);
    tokio::select! {
        () = closed_tx.closed() => {}
        () = cut => {
            drop(cutting);
            closed_tx.closed().await;
        }
    }
    Ok(())
}

/// A connection open, counted in its listener's [`ConnectionStats`] until it closes.
struct Open(Arc<ConnectionStats>);

impl Open {
    fn begin(stats: &Arc<ConnectionStats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request being served on a connection, counted there from when hyper hands it over (its
/// head received) until its response is ready.
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn begin(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a stopping connection serving no request is left to hyper before it is closed.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Completes once a stopping connection has served no request for [`STOP_GRACE`]. Told to
/// stop, hyper closes a connection at once if it is idle, and once it has answered if it
/// is serving a request; but one that has sent part of a request's head it keeps until its
/// read timeout (30 s by default), which outlasts the stop's own (20 s): one such client,
/// slow or hostile, made every stop wait its whole timeout and cut the requests still in
/// flight. Its head incomplete, its request has not begun, so nothing is lost. (An answer
/// already made is written at once, and the connection then closed by hyper: only one a
/// client has stopped reading for that long is given up, as its write timeout would.)
async fn serving_none(serving: &AtomicUsize) {
    loop {
        tokio::time::sleep(STOP_GRACE).await;
        if serving.load(Ordering::Relaxed) == 0 {
            return;
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // A client that hung up or timed out: routine, and never the request's content.
        tracing::debug!(error = %e, "connection ended");
    }
}

/// After a failed `accept`: a connection that failed before it was taken is the client's
/// business; anything else (no file descriptors left, say) would fail again at once, so the
/// loop waits a moment rather than spin.
async fn pause_after(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
