//! What a tenant's metadata document (RFC 8414) says of its clients: the scopes they may
//! obtain together (`scopes_supported`).
//!
//! The document is public, so it is served from a short-lived copy per tenant instead of a
//! read of every client of the tenant per request, which would let anyone make the server
//! do work that grows with the number of clients. One request at a time reads (the others
//! wait for its copy). A change to a tenant's clients made through this node drops its copy,
//! and a read that began before the change does not store what it read; a change made by
//! another node or by the CLI shows within [`SCOPES_TTL`] seconds. It is advisory data:
//! nothing is authorised from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::authority::Authority;
use crate::clock::UnixTime;
use crate::error::Error;
use crate::id::TenantId;

/// Seconds a tenant's `scopes_supported` is served from memory at most.
pub const SCOPES_TTL: UnixTime = 5;

/// A tenant's `scopes_supported`, and when it was read.
type ScopesRead = (UnixTime, Arc<[String]>);

/// Each tenant's `scopes_supported`, and when it was read.
#[derive(Default)]
pub(crate) struct ScopesCache {
    copies: Mutex<Copies>,
    /// Held by the one request reading clients for a copy.
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Copies {
    by_tenant: HashMap<TenantId, ScopesRead>,
    /// Moves at every change, so that a read begun before one is not stored after it.
    generation: u64,
}

impl ScopesCache {
    /// Drops a tenant's copy: its clients changed (or it was removed).
    pub(crate) fn forget(&self, tenant: &TenantId) {
        let mut copies = self.lock();
        copies.by_tenant.remove(tenant);
        copies.generation += 1;
    }

    /// The tenant's copy, if read within [`SCOPES_TTL`] of `now`.
    fn fresh(&self, tenant: &TenantId, now: UnixTime) -> Option<Arc<[String]>> {
        let copies = self.lock();
        let (read_at, scopes) = copies.by_tenant.get(tenant)?;
        // A clock stepped back counts as expired too.
        (*read_at..*read_at + SCOPES_TTL)
            .contains(&now)
            .then(|| scopes.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Copies> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Authority {
    /// The scopes a tenant's clients may obtain, each once, sorted; `NotFound` for a tenant
    /// that does not exist.
    pub async fn scopes_supported(&self, tenant: &TenantId) -> Result<Arc<[String]>, Error> {
        if let Some(scopes) = self.scopes.fresh(tenant, self.clock.now()) {
            return Ok(scopes);
        }
        let _reading = self.scopes.reading.lock().await;
        // Another request may have read it while this one waited.
        let now = self.clock.now();
        if let Some(scopes) = self.scopes.fresh(tenant, now) {
            return Ok(scopes);
        }
        let generation = self.scopes.lock().generation;
        let mut scopes: Vec<String> = (self.clients(tenant, None).await?.iter())
            .flat_map(|c| c.scope.iter().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        scopes.sort_unstable();
        scopes.dedup();
        let scopes: Arc<[String]> = scopes.into();
        let mut copies = self.scopes.lock();
        if copies.generation == generation {
            copies
                .by_tenant
                .insert(tenant.clone(), (now, scopes.clone()));
        }
        Ok(scopes)
    }
}
