//! [`RevocationStore`], [`AuditStore`] and [`CleanupStore`] on SQLite. A revocation is a single
//! UPDATE: revoking a grant marks the grant row, and every token lookup joins its grant, so one
//! write kills the whole family. Its audit row is written in the same transaction.

use async_trait::async_trait;
use latch_core::audit::{AuditContext, AuditEvent, AuditQuery, Reason};
use latch_core::clock::UnixTime;
use latch_core::grant::Revocation;
use latch_core::id::{GrantId, Subject, TenantId};
use latch_core::store::{AuditStore, CleanupStore, Purged, RevocationStore, StoreResult};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::SqliteStore;

/// Live tokens of the grants a revocation is about to kill (counted before the UPDATE).
const LIVE_TOKENS: &str = "SELECT count(*) FROM tokens t JOIN grants g ON g.id = t.grant_id \
     WHERE g.revoked_at IS NULL AND t.revoked_at IS NULL AND t.rotated_at IS NULL \
       AND t.expires_at > ?1 AND ";

/// Applies a revocation inside the current transaction and records it in the audit trail.
/// Returns the audit record, or `None` when nothing was alive (nothing is recorded then).
pub(super) fn apply(
    c: &Connection,
    revocation: &Revocation,
    audit: &AuditContext,
) -> rusqlite::Result<Option<AuditEvent>> {
    let now = audit.at;
    let count = |filter: &str, p: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<u64> {
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&now];
        all.extend_from_slice(p);
        c.prepare_cached(&format!("{LIVE_TOKENS}{filter}"))?
            .query_row(all.as_slice(), |r| r.get(0))
    };
    let (grant_id, subject, grants, tokens) = match revocation {
        Revocation::Token(hash) => {
            let owner: Option<(String, String)> = c
                .prepare_cached(
                    "SELECT t.grant_id, g.subject FROM tokens t JOIN grants g ON g.id = t.grant_id \
                     WHERE t.hash = ?1",
                )?
                .query_row([&hash.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let n = c
                .prepare_cached(
                    "UPDATE tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![&hash.0[..], now])?;
            let (g, s) = owner.unzip();
            (g, s, 0, n as u64)
        }
        Revocation::Grant(id) => {
            let tokens = count("g.id = ?2", &[&id.as_str()])?;
            let subject: Option<String> = c
                .prepare_cached("SELECT subject FROM grants WHERE id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?;
            let n = c
                .prepare_cached(
                    "UPDATE grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![id.as_str(), now])?;
            (
                Some(id.to_string()),
                subject,
                n as u64,
                if n > 0 { tokens } else { 0 },
            )
        }
        Revocation::Subject { tenant, subject } => {
            let tokens = count(
                "g.tenant_id = ?2 AND g.subject = ?3",
                &[&tenant.as_str(), &subject.as_str()],
            )?;
            let n = c
                .prepare_cached(
                    "UPDATE grants SET revoked_at = ?3 \
                     WHERE tenant_id = ?1 AND subject = ?2 AND revoked_at IS NULL",
                )?
                .execute(params![tenant.as_str(), subject.as_str(), now])?;
            (None, Some(subject.to_string()), n as u64, tokens)
        }
        Revocation::Client { tenant, client_id } => {
            let tokens = count(
                "g.tenant_id = ?2 AND g.client_id = ?3",
                &[&tenant.as_str(), &client_id.as_str()],
            )?;
            let n = c
                .prepare_cached(
                    "UPDATE grants SET revoked_at = ?3 \
                     WHERE tenant_id = ?1 AND client_id = ?2 AND revoked_at IS NULL",
                )?
                .execute(params![tenant.as_str(), client_id.as_str(), now])?;
            (None, None, n as u64, tokens)
        }
        Revocation::Tenant(tenant) => {
            let tokens = count("g.tenant_id = ?2", &[&tenant.as_str()])?;
            let n = c
                .prepare_cached(
                    "UPDATE grants SET revoked_at = ?2 WHERE tenant_id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![tenant.as_str(), now])?;
            (None, None, n as u64, tokens)
        }
    };
    if grants == 0 && tokens == 0 {
        return Ok(None);
    }
    let address = audit.address.map(|a| a.to_string());
    c.prepare_cached(
        "INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, grants, \
           tokens, address) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        audit.tenant.as_str(),
        now,
        audit.actor,
        audit.route,
        audit.reason.as_str(),
        grant_id,
        subject,
        grants,
        tokens,
        address,
    ])?;
    Ok(Some(AuditEvent {
        id: c.last_insert_rowid(),
        tenant: audit.tenant.clone(),
        at: now,
        actor: audit.actor.clone(),
        route: audit.route.to_owned(),
        reason: audit.reason,
        grant_id: grant_id.map(GrantId::from_stored),
        subject: subject.map(Subject::from_stored),
        grants,
        tokens,
        address,
    }))
}

#[async_trait]
impl RevocationStore for SqliteStore {
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditContext,
    ) -> StoreResult<Option<AuditEvent>> {
        let (revocation, audit) = (revocation.clone(), audit.clone());
        self.write(move |c| apply(c, &revocation, &audit)).await
    }
}

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    let reason: String = r.get(5)?;
    Ok(AuditEvent {
        id: r.get(0)?,
        tenant: TenantId::from_stored(r.get(1)?),
        at: r.get(2)?,
        actor: r.get(3)?,
        route: r.get(4)?,
        reason: Reason::parse(&reason).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(5, Type::Text, "reason".into())
        })?,
        grant_id: r.get::<_, Option<String>>(6)?.map(GrantId::from_stored),
        subject: r.get::<_, Option<String>>(7)?.map(Subject::from_stored),
        grants: r.get(8)?,
        tokens: r.get(9)?,
        address: r.get(10)?,
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_events(
        &self,
        tenant: &TenantId,
        query: &AuditQuery,
    ) -> StoreResult<Vec<AuditEvent>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, tenant_id, at, actor, route, reason, grant_id, subject, grants, \
                        tokens, address FROM audit \
                 WHERE tenant_id = ?1 AND (?2 IS NULL OR subject = ?2) \
                   AND (?3 IS NULL OR at >= ?3) AND id > ?4 \
                 ORDER BY id LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![
                    tenant.as_str(),
                    query.subject.as_ref().map(|s| s.as_str()),
                    query.since,
                    query.after.unwrap_or(0),
                    query.limit,
                ],
                event_from_row,
            )?;
            rows.collect()
        })
    }
}

#[async_trait]
impl CleanupStore for SqliteStore {
    async fn purge_expired(&self, now: UnixTime, limit: u32) -> StoreResult<Purged> {
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
            Ok(Purged {
                tokens: tokens as u64,
                grants: grants as u64,
            })
        })
        .await
    }
}
