//! What a tenant's metadata document (RFC 8414) says of its clients: the scopes they may
//! obtain together (`scopes_supported`).
//!
//! The document is public, so it is served from a short-lived copy per tenant instead of a
//! read of every client of the tenant per request, which would let anyone make the server
//! do work that grows with the number of clients. The copy is dropped at once by every
//! change to clients made through this node, and at most [`SCOPES_TTL`] seconds old
//! otherwise (a change made by another node or by the CLI). It is advisory data: nothing is
//! authorised from it.

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
    by_tenant: Mutex<HashMap<TenantId, ScopesRead>>,
}

impl ScopesCache {
    /// Forgets every tenant's scopes (a client was created, changed or removed).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, ScopesRead>> {
        self.by_tenant.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Authority {
    /// The scopes a tenant's clients may obtain, each once, sorted; `NotFound` for a tenant
    /// that does not exist.
    pub async fn scopes_supported(&self, tenant: &TenantId) -> Result<Arc<[String]>, Error> {
        let now = self.clock.now();
        if let Some((read_at, scopes)) = self.scopes.lock().get(tenant) {
            // A clock stepped back counts as expired too.
            if (*read_at..*read_at + SCOPES_TTL).contains(&now) {
                return Ok(scopes.clone());
            }
        }
        let mut scopes: Vec<String> = (self.clients(tenant, None).await?.iter())
            .flat_map(|c| c.scope.iter().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        scopes.sort_unstable();
        scopes.dedup();
        let scopes: Arc<[String]> = scopes.into();
        self.scopes
            .lock()
            .insert(tenant.clone(), (now, scopes.clone()));
        Ok(scopes)
    }
}
