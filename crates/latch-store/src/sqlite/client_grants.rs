//! Revoking every grant of a client that stays (schema version 12), in chunks as a removal
//! does (`removals.rs`, whose [`LiveGrants`] picks them), each chunk a write of its own with
//! an audit record of its own: SQLite has one writer, and a single transaction revoking a
//! large client's grants would hold every other write up for seconds.
//!
//! A `client_grant_revocations` row records the revocation as under way, with what its audit
//! records say, from before its first chunk until its last deletes it. One that a stop cut off
//! (a server waits for it only up to its shutdown timeout) or a crash interrupted is finished
//! by the next server start (`ClientStore::finish_interrupted_removals`). Only the grants
//! issued by the time it was asked for are its (its bound: that time, or the latest creation
//! time among the client's live grants then, if a clock stepped back has put it later, so
//! that every grant issued before the request is under it): those issued later belong to the
//! client as it is since (a compromised client's new secret), however late a start finishes
//! it.

use latch_core::audit::{AuditContext, AuditEvent};
use latch_core::clock::UnixTime;
use latch_core::id::{ClientId, TenantId};
use rusqlite::{params, Connection};

use super::marks::RevocationMarks;
use super::removals::LiveGrants;
use super::revocations::{count_marks, last_audit_event};

/// A revocation of every grant a client was issued by a time, under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ClientGrantsRevocation {
    /// Its `client_grant_revocations` row.
    id: i64,
    grants: LiveGrants,
}

impl ClientGrantsRevocation {
    /// Records a revocation of the grants `client` of `tenant` was issued by `issued_by`,
    /// with what its audit records will say, as under way. Another revocation of the
    /// client's grants already under way stays so, even if this one's grants include its
    /// own: it may be running (in another process), and one that is not (a failure, a killed
    /// command) finds nothing left to revoke when the next start finishes it.
    pub(super) fn begin(
        c: &Connection,
        tenant: &TenantId,
        client: &ClientId,
        audit: &AuditContext,
        issued_by: UnixTime,
    ) -> rusqlite::Result<Self> {
        c.prepare_cached(
            "INSERT INTO client_grant_revocations (tenant_id, client_id, reason, at, issued_by, \
               actor, route, subject, address) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            tenant.as_str(),
            client.as_str(),
            audit.reason.as_str(),
            audit.at,
            issued_by,
            audit.actor,
            audit.route,
            audit.subject.as_ref().map(|s| s.as_str()),
            audit.address.map(|a| a.to_string()),
        ])?;
        Ok(Self {
            id: c.last_insert_rowid(),
            grants: LiveGrants::of_client(tenant, client).issued_by(issued_by),
        })
    }

    /// Every one under way, oldest first.
    pub(super) fn all_under_way(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        c.prepare(
            "SELECT id, tenant_id, client_id, issued_by FROM client_grant_revocations ORDER BY id",
        )?
        .query_map([], |r| {
            let tenant = TenantId::from_stored(r.get(1)?);
            let client = ClientId::from_stored(r.get(2)?);
            Ok(Self {
                id: r.get(0)?,
                grants: LiveGrants::of_client(&tenant, &client).issued_by(r.get(3)?),
            })
        })?
        .collect()
    }

    /// One chunk: revokes, at `now`, up to `limit` of its grants with their tokens, records
    /// what died in the audit trail as its row says (nothing when nothing did), and ends it
    /// (deletes its row) once none of its grants remains. Returns the record, and whether
    /// grants of it may remain: `false` too when it has ended (its row gone: another process
    /// finished it).
    ///
    /// `now` is the time of whatever drives it: the request that asked for it, or the start
    /// finishing it. Its records keep the time it was asked for.
    pub(super) fn chunk(
        &self,
        c: &Connection,
        marks: &RevocationMarks,
        now: UnixTime,
        limit: u32,
    ) -> rusqlite::Result<(Option<AuditEvent>, bool)> {
        let under_way: bool = c
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM client_grant_revocations WHERE id = ?1)")?
            .query_row([self.id], |r| r.get(0))?;
        if !under_way {
            return Ok((None, false));
        }
        let mut marked = Vec::new();
        let (killed, more) = (self.grants).revoke_chunk(c, marks, now, limit, &mut marked)?;
        let event = if killed.is_nothing() {
            None
        } else {
            c.prepare_cached(
                "INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, \
                   grants, tokens, address) \
                 SELECT tenant_id, at, actor, route, reason, NULL, subject, ?2, ?3, address \
                 FROM client_grant_revocations WHERE id = ?1",
            )?
            .execute(params![self.id, killed.grants, killed.tokens])?;
            Some(last_audit_event(c)?)
        };
        if !more {
            c.prepare_cached("DELETE FROM client_grant_revocations WHERE id = ?1")?
                .execute([self.id])?;
        }
        // Its marks count once this write can no longer fail: kept until then.
        count_marks(marks, now, marked);
        Ok((event, more))
    }
}

impl std::fmt::Display for ClientGrantsRevocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the grants of {}", self.grants)
    }
}
