//! [`TenantStore`] on SQLite.

use async_trait::async_trait;
use latch_core::audit::{AuditContext, AuditEvent};
use latch_core::clock::UnixTime;
use latch_core::id::TenantId;
use latch_core::store::{StoreResult, TenantPage, TenantStore};
use latch_core::StoreError;
use rusqlite::{params, OptionalExtension};

use super::{Removal, SqliteStore};

#[async_trait]
impl TenantStore for SqliteStore {
    async fn tenant_exists(&self, tenant: &TenantId) -> StoreResult<bool> {
        self.read(|c| {
            c.prepare_cached("SELECT 1 FROM tenants WHERE id = ?1")?
                .query_row([tenant.as_str()], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        })
    }

    async fn list_tenants(&self, page: Option<&TenantPage>) -> StoreResult<Vec<TenantId>> {
        let after = page.and_then(|p| p.after.as_ref()).map(TenantId::as_str);
        // A negative LIMIT is none.
        let limit = page.map_or(-1, |p| i64::from(p.limit));
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id FROM tenants WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(TenantId::from_stored)).collect()
        })
    }

    async fn create_tenant(&self, tenant: &TenantId, now: UnixTime) -> StoreResult<()> {
        let id = tenant.as_str().to_owned();
        self.write(move |c| {
            c.prepare_cached("INSERT INTO tenants (id, created_at) VALUES (?1, ?2)")?
                .execute(params![id, now])
                .map(|_| ())
        })
        .await
    }

    async fn delete_tenant(
        &self,
        tenant: &TenantId,
        audit: &AuditContext,
    ) -> StoreResult<Option<Option<AuditEvent>>> {
        // Recorded as under way, its grants are then revoked in chunks, other writes passing
        // in between, and its clients' rows and its own go with the last (`removals`).
        let id = tenant.as_str().to_owned();
        let removal = Removal::tenant(tenant);
        let now = audit.at;
        let (begin, audit) = (removal.clone(), audit.clone());
        let begun = self.write(move |c| {
            // A client the configuration declares is removed there alone; checked in the
            // write, so a start declaring one since the caller looked is not undone (and
            // again by the removal's last write: `Removal::finish`).
            let declared: bool = c
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM clients WHERE tenant_id = ?1 AND declared)",
                )?
                .query_row([&id], |r| r.get(0))?;
            if declared {
                return Ok(Err(StoreError::Conflict));
            }
            let exists: bool = c
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = ?1)")?
                .query_row([&id], |r| r.get(0))?;
            if exists {
                begin.begin(c, &audit)?;
            }
            Ok(Ok(exists))
        });
        if !begun.await?? {
            return Ok(None);
        }
        // `None` if another caller (removing it too) wrote its record: removed all the same.
        Ok(Some(self.run_removal(removal, now).await?))
    }
}
