//! [`RevocationStore`] on SQLite. A revocation is a single UPDATE: revoking a grant marks the
//! grant row, and every token lookup joins its grant, so one write kills the whole family.

use async_trait::async_trait;
use latch_core::clock::UnixTime;
use latch_core::grant::Revocation;
use latch_core::store::{RevocationStore, StoreResult};
use rusqlite::{params, Connection};

use super::SqliteStore;

/// Applies a revocation inside the current transaction; returns how many live rows died.
pub(super) fn apply(
    c: &Connection,
    revocation: &Revocation,
    now: UnixTime,
) -> rusqlite::Result<usize> {
    match revocation {
        Revocation::Token(hash) => c
            .prepare_cached(
                "UPDATE tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![&hash.0[..], now]),
        Revocation::Grant(id) => c
            .prepare_cached(
                "UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id.as_str(), now]),
        Revocation::Subject { tenant, subject } => c
            .prepare_cached(
                "UPDATE grants SET revoked_at = ?3 \
                 WHERE tenant_id = ?1 AND subject = ?2 AND revoked_at IS NULL",
            )?
            .execute(params![tenant.as_str(), subject.as_str(), now]),
        Revocation::Client { tenant, client_id } => c
            .prepare_cached(
                "UPDATE grants SET revoked_at = ?3 \
                 WHERE tenant_id = ?1 AND client_id = ?2 AND revoked_at IS NULL",
            )?
            .execute(params![tenant.as_str(), client_id.as_str(), now]),
    }
}

#[async_trait]
impl RevocationStore for SqliteStore {
    async fn revoke(&self, revocation: &Revocation, now: UnixTime) -> StoreResult<u64> {
        let revocation = revocation.clone();
        self.write(move |c| apply(c, &revocation, now).map(|n| n as u64))
            .await
    }
}

#[async_trait]
impl latch_core::store::CleanupStore for SqliteStore {
    async fn purge_expired(
        &self,
        now: UnixTime,
        limit: u32,
    ) -> StoreResult<latch_core::store::Purged> {
        self.write(move |c| {
            let tokens = c
                .prepare_cached(
                    "DELETE FROM tokens WHERE hash IN \
                     (SELECT hash FROM tokens WHERE expires_at <= ?1 LIMIT ?2)",
                )?
                .execute(params![now, limit])?;
            let grants = c
                .prepare_cached(
                    "DELETE FROM grants WHERE id IN \
                     (SELECT id FROM grants WHERE expires_at <= ?1 LIMIT ?2)",
                )?
                .execute(params![now, limit])?;
            Ok(latch_core::store::Purged {
                tokens: tokens as u64,
                grants: grants as u64,
            })
        })
        .await
    }
}
