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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Object, Pool};
use latch_core::store::StoreResult;

/// Connections shared by the hot-path reads.
pub(super) struct Pipelined {
    pool: Pool,
    /// Each slot holds a connection taken from the pool for as long as it works.
    slots: Box<[Mutex<Option<Arc<Object>>>]>,
    next: AtomicUsize,
}

impl Pipelined {
    /// `connections` shared connections, taken from `pool` on first use.
    pub(super) fn new(pool: Pool, connections: usize) -> Self {
        Self {
            pool,
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A shared connection, the slots taken in turn. A connection found closed (PostgreSQL
    /// restarted, the backend was terminated) is replaced by a fresh one from the pool; the
    /// requests still holding the old one get their own errors, and the pool discards it
    /// when the last of them lets go.
    pub(super) async fn get(&self) -> StoreResult<Arc<Object>> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let lock = || slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = lock().as_ref().filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let fresh = Arc::new(
            self.pool
                .get()
                .await
                .map_err(|e| super::no_connection(&e))?,
        );
        // Two requests may both have found the slot empty; the later one's connection wins
        // and the other goes back to the pool once its request is done.
        *lock() = Some(fresh.clone());
        Ok(fresh)
    }
}
