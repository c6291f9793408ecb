//! Whether an issuance's client still exists, asked once per client and write transaction.
//!
//! An issuance stores its grant only if the client exists when the write runs (a removal
//! revokes the grants it finds, so a grant stored after it would outlive it), with the
//! secret hash the request authenticated against (a client removed and created again under
//! its id, or given a new secret, is not the client that authenticated). Looking the
//! client up for each of a batch's issuances cost 7% of issuance throughput (A/B at 1M,
//! docs/benchmarks.md); within one write transaction a client can only disappear through a
//! removal in that same transaction (the writer holds SQLite's write lock from `BEGIN` to
//! `COMMIT`, so no other connection or process commits meanwhile), so the writer thread
//! remembers the clients it found, with their secret hashes, until the transaction ends or
//! a write that changes clients runs.

use std::cell::RefCell;

use latch_core::id::{ClientId, TenantId};
use rusqlite::{Connection, OptionalExtension};

/// The most clients remembered; a batch naming more looks the others up each time.
const REMEMBERED: usize = 8;

thread_local! {
    /// The clients found to exist in the writer thread's current transaction, with their
    /// secret hashes.
    static FOUND: RefCell<Vec<Found>> = const { RefCell::new(Vec::new()) };
}

struct Found {
    tenant: TenantId,
    id: ClientId,
    secret: Option<String>,
}

/// Whether the client exists with the secret hash `secret` (`None`: no secret), as the
/// writer's current transaction sees it.
pub(super) fn exists(
    c: &Connection,
    tenant: &TenantId,
    id: &ClientId,
    secret: Option<&str>,
) -> rusqlite::Result<bool> {
    let known = FOUND.with_borrow(|found| {
        found
            .iter()
            .find(|f| f.id == *id && f.tenant == *tenant)
            .map(|f| f.secret.as_deref() == secret)
    });
    if let Some(same) = known {
        return Ok(same);
    }
    let stored: Option<Option<String>> = c
        .prepare_cached("SELECT secret_hash FROM clients WHERE tenant_id = ?1 AND client_id = ?2")?
        .query_row([tenant.as_str(), id.as_str()], |r| r.get(0))
        .optional()?;
    let Some(stored) = stored else {
        return Ok(false);
    };
    let same = stored.as_deref() == secret;
    FOUND.with_borrow_mut(|found| {
        if found.len() < REMEMBERED {
            found.push(Found {
                tenant: tenant.clone(),
                id: id.clone(),
                secret: stored,
            });
        }
    });
    Ok(same)
}

/// Forgets every client found: at the start of each write transaction, and before a write
/// that creates, changes or removes clients.
pub(super) fn forget() {
    FOUND.with_borrow_mut(Vec::clear);
}
