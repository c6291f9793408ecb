//! [`RevocationStore`], [`AuditStore`] and [`CleanupStore`] on SQLite. A revocation is a single
//! UPDATE: revoking a grant marks the grant row, and every token lookup joins its grant, so one
//! write kills the whole family. Its audit row is written in the same transaction.

use async_trait::async_trait;
use latch_core::audit::{AuditContext, AuditEvent, AuditQuery, Killed, Reason};
use latch_core::clock::UnixTime;
use latch_core::grant::Revocation;
use latch_core::id::{GrantId, Subject, TenantId};
use latch_core::store::{AuditStore, CleanupStore, Purged, RevocationStore, StoreResult};
use rusqlite::types::Type;
use rusqlite::{params, Connection, Row};

use super::SqliteStore;
use crate::audit_query::audit_events_sql;
use crate::cleanup_sql::{purge_audit_sql, purge_expired_sql, Expiring};
use crate::target::{grant_condition, live_tokens_sql, revoke_grants_sql, Target};

/// Applies a revocation inside the current transaction and records it in the audit trail.
/// Returns the audit record, or `None` when nothing was alive (nothing is recorded then).
pub(super) fn apply(
    c: &Connection,
    revocation: &Revocation,
    audit: &AuditContext,
) -> rusqlite::Result<Option<AuditEvent>> {
    let now = audit.at;
    let killed = match Target::of(revocation) {
        Target::Token(hash) => {
            let n = c
                .prepare_cached(
                    "UPDATE tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![hash.as_bytes(), now])?;
            Killed {
                grants: 0,
                tokens: n as u64,
            }
        }
        Target::Grants(columns) => {
            let condition = grant_condition(&columns, |n| format!("?{n}"));
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&now];
            values.extend(columns.iter().map(|(_, v)| v as &dyn rusqlite::ToSql));
            // Count the live tokens first: after the UPDATE their grants are dead.
            let tokens: u64 = c
                .prepare_cached(&live_tokens_sql("?1", &condition))?
                .query_row(values.as_slice(), |r| r.get(0))?;
            let grants = c
                .prepare_cached(&revoke_grants_sql("?1", &condition))?
                .execute(values.as_slice())? as u64;
            Killed {
                grants,
                tokens: if grants > 0 { tokens } else { 0 },
            }
        }
    };
    if killed.is_nothing() {
        return Ok(None);
    }
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
        audit.grant_id.as_ref().map(|g| g.as_str()),
        audit.subject.as_ref().map(|s| s.as_str()),
        killed.grants,
        killed.tokens,
        audit.address.map(|a| a.to_string()),
    ])?;
    Ok(Some(audit.event(c.last_insert_rowid(), killed)))
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
            let sql = audit_events_sql(query.subject.is_some(), |n| format!("?{n}"));
            let mut stmt = c.prepare_cached(&sql)?;
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
            let purge = |table| {
                let sql = purge_expired_sql(table, |n| format!("?{n}"));
                c.prepare_cached(&sql)?.execute(params![now, limit])
            };
            let tokens = purge(Expiring::Tokens)?;
            let grants = purge(Expiring::Grants)?;
            Ok(Purged {
                tokens: tokens as u64,
                grants: grants as u64,
                audit: 0,
            })
        })
        .await
    }

    async fn purge_audit(&self, before: UnixTime, limit: u32) -> StoreResult<u64> {
        self.write(move |c| {
            let sql = purge_audit_sql(|n| format!("?{n}"));
            Ok(c.prepare_cached(&sql)?.execute(params![before, limit])? as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, by_subject: bool) -> String {
        let sql = audit_events_sql(by_subject, |n| format!("?{n}"));
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(params!["default", "alice", None::<i64>, 0, 10], |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
            .join("; ")
    }

    #[test]
    fn the_audit_query_reads_one_subject_through_its_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn).unwrap();
        let by_subject = plan(&conn, true);
        assert!(
            by_subject
                .contains("USING INDEX audit_by_subject (tenant_id=? AND subject=? AND id>?)"),
            "{by_subject}"
        );
        let all = plan(&conn, false);
        assert!(
            all.contains("USING INDEX audit_by_tenant (tenant_id=? AND id>?)"),
            "{all}"
        );
        assert!(!by_subject.contains("TEMP B-TREE") && !all.contains("TEMP B-TREE"));
    }
}
