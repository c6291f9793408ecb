//! How long latch waits for PostgreSQL's answer.
//!
//! TCP's bounds (`tls::bound_silent_peers`) catch a server that stops acknowledging what it
//! is sent. A server that acknowledges and never answers (a hung backend, a pooler waiting
//! for a server connection, a table locked by hand) would keep requests waiting for ever, and
//! with them every request queued behind them on the same connection. So each read, and each
//! batch of writes, gets a deadline: past it the request answers `503` and the connection is
//! closed rather than used again, since every query sent on it would wait behind the one
//! that got no answer; the next request gets a new connection, and a new backend.

use std::future::Future;
use std::time::Duration;

use latch_core::StoreError;
use tokio_postgres::CancelToken;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The URL's `query_timeout` in seconds (latch's own parameter, not libpq's; 0 waits for
/// ever), 10 s if left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline(pub(crate) Option<Duration>);

impl Default for Deadline {
    fn default() -> Self {
        Self(Some(Duration::from_secs(10)))
    }
}

/// The deadline passed before PostgreSQL answered.
#[derive(Debug)]
pub(crate) struct Late(Duration);

impl Deadline {
    /// `work`'s output, or [`Late`] once the deadline passes (`work` is then dropped).
    pub(crate) async fn within<T>(self, work: impl Future<Output = T>) -> Result<T, Late> {
        match self.0 {
            None => Ok(work.await),
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .map_err(|_| Late(limit)),
        }
    }
}

/// Asks the server, in the background and within `deadline`, to cancel what the backend of
/// a connection given up on is doing. Closing the connection is not enough: a backend waiting
/// for a lock, or stuck in a query, keeps its locks and its connection slot until it next
/// writes to its client and finds it gone.
pub(crate) fn cancel_backend(token: CancelToken, tls: &MakeRustlsConnect, deadline: Deadline) {
    let tls = tls.clone();
    tokio::spawn(async move {
        let _ = deadline.within(token.cancel_query(tls)).await;
    });
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PostgreSQL did not answer within {} s (query_timeout)",
            self.0.as_secs()
        )
    }
}

impl From<Late> for StoreError {
    fn from(late: Late) -> Self {
        StoreError::Unavailable(late.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_outlasts_the_deadline_is_dropped_and_reported_late() {
        let deadline = Deadline(Some(Duration::from_secs(10)));
        let never = std::future::pending::<()>();
        let late = deadline.within(never).await.unwrap_err();
        assert_eq!(
            StoreError::from(late).to_string(),
            StoreError::Unavailable("PostgreSQL did not answer within 10 s (query_timeout)".into())
                .to_string()
        );
        assert_eq!(deadline.within(async { 7 }).await.unwrap(), 7);
        let forever = Deadline(None);
        let slow = tokio::time::sleep(Duration::from_secs(3600));
        assert!(forever.within(slow).await.is_ok(), "no deadline: waits");
    }
}
