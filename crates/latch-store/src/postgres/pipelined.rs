//! The connections the hot-path reads share (introspection, revocation, client
//! authentication at the token endpoint).
//!
//! A pooled connection serves one request at a time, so 64 concurrent introspections keep up
//! to 16 PostgreSQL backends busy, each woken once per query. Shared, a tokio-postgres
//! connection pipelines the queries of every request using it: they leave in one write, and
//! one backend answers them back to back without sleeping in between. Measured on one core
//! shared with PostgreSQL (docs/benchmarks.md): introspection 2,124 / 3,713 req/s on the pool,
//! 5,235 / 6,363 on one shared connection, 6,674 / 5,827 on two. Since the lookups are
//! batched (`lookups`), one connection is faster than two (`PIPELINED_CONNECTIONS`).
//!
//! Only short single-statement reads go here: a pipeline answers in order, so one slow query
//! (an audit page, a client list) would hold up every request queued behind it. Those stay
//! on the pool.
//!
//! Every read has a [`Deadline`]. A connection that misses one is taken out of service: its
//! backend asked to cancel, out of its slot at once, and out of the pool (closed) once the
//! last read still using it lets go, since every query sent on it would wait behind the one
//! that got no answer.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{ClientWrapper, Object, Pool};
use latch_core::store::StoreResult;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::deadline::{cancel_backend, Deadline};

/// Connections shared by the hot-path reads.
pub(super) struct Pipelined {
    pool: Pool,
    /// Each slot holds a connection taken from the pool for as long as it works.
    slots: Box<[Mutex<Option<Arc<Shared>>>]>,
    next: AtomicUsize,
    deadline: Deadline,
    /// To reach the server for a cancel request.
    tls: MakeRustlsConnect,
}

/// A pooled connection shared by reads, which goes back to the pool when the last of them is
/// done with it, unless it missed a deadline: then it is closed.
struct Shared {
    conn: Option<Object>,
    failed: AtomicBool,
}

impl Deref for Shared {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.failed.load(Ordering::Relaxed) {
                drop(Object::take(conn));
            }
        }
    }
}

impl Pipelined {
    /// `connections` shared connections, taken from `pool` on first use; every read on them
    /// given `deadline`.
    pub(super) fn new(
        pool: Pool,
        connections: usize,
        deadline: Deadline,
        tls: MakeRustlsConnect,
    ) -> Self {
        Self {
            pool,
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            deadline,
            tls,
        }
    }

    /// Runs `read` on a shared connection, within the deadline.
    pub(super) async fn read<T>(
        &self,
        read: impl AsyncFnOnce(&ClientWrapper) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let (slot, conn) = self.get().await?;
        match self.deadline.within(read(&conn)).await {
            Ok(answer) => answer,
            Err(late) => {
                if !conn.failed.swap(true, Ordering::Relaxed) {
                    cancel_backend(conn.cancel_token(), &self.tls, self.deadline);
                }
                let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
                if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    *held = None;
                }
                Err(late.into())
            }
        }
    }

    /// A shared connection and its slot, the slots taken in turn. A connection found closed
    /// (PostgreSQL restarted, the backend was terminated) is replaced by a fresh one from the
    /// pool; the requests still holding the old one get their own errors, and the pool
    /// discards it when the last of them lets go.
    async fn get(&self) -> StoreResult<(&Mutex<Option<Arc<Shared>>>, Arc<Shared>)> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let lock = || slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = lock().as_ref().filter(|c| !c.is_closed()) {
            return Ok((slot, conn.clone()));
        }
        let fresh = self
            .deadline
            .within(self.pool.get())
            .await?
            .map_err(|e| super::no_connection(&e))?;
        let fresh = Arc::new(Shared {
            conn: Some(fresh),
            failed: AtomicBool::new(false),
        });
        // Two requests may both have found the slot empty; the later one's connection wins
        // and the other goes back to the pool once its request is done.
        *lock() = Some(fresh.clone());
        Ok((slot, fresh))
    }
}
