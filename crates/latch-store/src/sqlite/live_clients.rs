//! Whether an issuance's client still exists, asked once per client and write transaction.
//!
//! An issuance stores its grant only if the client exists when the write runs (a removal
//! revokes the grants it finds, so a grant stored after it would outlive it). Looking the
//! client up for each of a batch's issuances cost 7% of issuance throughput (A/B at 1M,
//! docs/benchmarks.md); within one write transaction a client can only disappear through a
//! removal in that same transaction (the writer holds SQLite's write lock from `BEGIN` to
//! `COMMIT`, so no other connection or process commits meanwhile), so the writer thread
//! remembers the clients it found until the transaction ends or a removal runs.

use std::cell::RefCell;

use latch_core::id::{ClientId, TenantId};
use rusqlite::{Connection, OptionalExtension};

/// The most clients remembered; a batch naming more looks the others up each time.
const REMEMBERED: usize = 8;

thread_local! {
    /// The clients found to exist in the writer thread's current transaction.
    static FOUND: RefCell<Vec<(TenantId, ClientId)>> = const { RefCell::new(Vec::new()) };
}

/// Whether the client exists, as the writer's current transaction sees it.
pub(super) fn exists(c: &Connection, tenant: &TenantId, id: &ClientId) -> rusqlite::Result<bool> {
    let known = FOUND.with_borrow(|found| found.iter().any(|(t, i)| i == id && t == tenant));
    if known {
        return Ok(true);
    }
    let exists = c
        .prepare_cached("SELECT 1 FROM clients WHERE tenant_id = ?1 AND client_id = ?2")?
        .query_row([tenant.as_str(), id.as_str()], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        FOUND.with_borrow_mut(|found| {
            if found.len() < REMEMBERED {
                found.push((tenant.clone(), id.clone()));
            }
        });
    }
    Ok(exists)
}

/// Forgets every client found: at the start of each write transaction, and before a write
/// that removes clients.
pub(super) fn forget() {
    FOUND.with_borrow_mut(Vec::clear);
}
