//! Logging a subject out everywhere in chunks (schema version 14), as a removal revokes a
//! client's grants (`removals.rs`, whose [`LiveGrants`] picks them). A subject may hold
//! hundreds of thousands of live grants (a client acting for itself: every grant it obtains
//! is its own subject's), and SQLite has one writer: one transaction revoking them all held
//! every other write up for seconds.
//!
//! A log-out that finds at most a chunk of live grants is one write, as any revocation.
//! One that finds more records itself as under way in that same write (a `subject_logouts`
//! row, with what its audit record will say) and revokes its first chunk; each later chunk
//! is a write of its own, other writes passing in between, adding what died to the row; the
//! last, which finds less than a chunk left, revokes the rest and turns the row into the
//! audit record. The caller answers after that last write.
//!
//! A log-out of a subject already under way takes it over: what the earlier one's chunks
//! revoked is recorded as its record, and the row carries on as the new one's, taking the
//! grants created by the new request's time too (both callers drive its chunks). So one that
//! a failure cut off part-way (its caller answered `503`) is finished by the subject's next
//! log-out, or, failing that, by the next server start
//! (`ClientStore::finish_interrupted_removals`). Either way it takes the grants created by
//! its `issued_by`: its latest request's time plus the allowance for clocks
//! ([`EXPIRY_GRACE`]), which covers those issued while it runs; not the sessions opened
//! more than that after it, however late it is finished.

use latch_core::audit::{AuditContext, AuditEvent, Killed};
use latch_core::cleanup::EXPIRY_GRACE;
use latch_core::clock::UnixTime;
use latch_core::id::{Subject, TenantId};
use rusqlite::{params, Connection, OptionalExtension};

use super::marks::RevocationMarks;
use super::removals::LiveGrants;
use super::revocations::{count_marks, last_audit_event};

/// A log-out of a subject everywhere, under way: the key of its `subject_logouts` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SubjectLogout {
    tenant: String,
    subject: String,
}

/// Where a chunk left a log-out.
#[derive(Debug)]
pub(super) enum Progress {
    /// Grants of it may remain.
    More,
    /// It has ended, with this audit record (`None`: nothing died, or another caller ended
    /// it).
    Ended(Option<AuditEvent>),
}

impl SubjectLogout {
    /// The log-out under way of `subject` of `tenant`, if there is one.
    pub(super) fn under_way(
        c: &Connection,
        tenant: &TenantId,
        subject: &Subject,
    ) -> rusqlite::Result<Option<Self>> {
        let logout = Self {
            tenant: tenant.to_string(),
            subject: subject.as_str().to_owned(),
        };
        Ok(logout.issued_by(c)?.map(|_| logout))
    }

    /// The log-out of `subject` of `tenant` asked for as `audit` says: taking over the one
    /// under way if there is one, else recorded as under way if its live grants number more
    /// than `chunk`; `None` when one write can revoke them all. Taken over, the earlier
    /// log-out's row is first recorded in the audit trail with what its chunks revoked (when
    /// they revoked something), then becomes this one's, its counts from zero: each request
    /// has its record, with what was revoked on its behalf.
    pub(super) fn begin_if_large(
        c: &Connection,
        tenant: &TenantId,
        subject: &Subject,
        audit: &AuditContext,
        chunk: u32,
    ) -> rusqlite::Result<Option<Self>> {
        if Self::under_way(c, tenant, subject)?.is_none()
            && !LiveGrants::of_subject(tenant.as_str(), subject.as_str())
                .at_least(c, chunk.saturating_add(1))?
        {
            return Ok(None);
        }
        record(
            c,
            tenant.as_str(),
            Some(subject.as_str()),
            Killed::default(),
        )?;
        c.prepare_cached(
            "INSERT INTO subject_logouts (tenant_id, subject, reason, at, issued_by, actor, \
               route, address) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (tenant_id, subject) DO UPDATE \
               SET reason = excluded.reason, at = excluded.at, \
                 issued_by = max(issued_by, excluded.issued_by), actor = excluded.actor, \
                 route = excluded.route, address = excluded.address, grants = 0, tokens = 0",
        )?
        .execute(params![
            tenant.as_str(),
            subject.as_str(),
            audit.reason.as_str(),
            audit.at,
            audit.at.saturating_add(EXPIRY_GRACE),
            audit.actor,
            audit.route,
            audit.address.map(|a| a.to_string()),
        ])?;
        Ok(Some(Self {
            tenant: tenant.to_string(),
            subject: subject.as_str().to_owned(),
        }))
    }

    /// Every one under way.
    pub(super) fn all_under_way(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        c.prepare("SELECT tenant_id, subject FROM subject_logouts")?
            .query_map([], |r| {
                Ok(Self {
                    tenant: r.get(0)?,
                    subject: r.get(1)?,
                })
            })?
            .collect()
    }

    /// Ends, with the removal of their tenant (which revokes every grant they would take),
    /// the log-outs under way in `tenant`: what their chunks revoked is recorded, each in an
    /// audit record as its row describes it (none where nothing died), so that no
    /// revocation goes without its record.
    pub(super) fn end_with_tenant(c: &Connection, tenant: &str) -> rusqlite::Result<()> {
        record(c, tenant, None, Killed::default())?;
        c.prepare_cached("DELETE FROM subject_logouts WHERE tenant_id = ?1")?
            .execute([tenant])?;
        Ok(())
    }

    /// One chunk: revokes, at `now`, up to `limit` of the subject's live grants created by
    /// its bound, with their tokens, and adds what died to its row; once less than a full
    /// chunk was left, records the whole log-out in the audit trail (nothing when nothing
    /// died) and deletes its row.
    ///
    /// `now` is the time of whatever drives it: a request that asked for it, or the start
    /// finishing it. Its record keeps the time it was first asked for.
    pub(super) fn chunk(
        &self,
        c: &Connection,
        marks: &RevocationMarks,
        now: UnixTime,
        limit: u32,
    ) -> rusqlite::Result<Progress> {
        let Some(issued_by) = self.issued_by(c)? else {
            return Ok(Progress::Ended(None));
        };
        let grants = LiveGrants::of_subject(&self.tenant, &self.subject).issued_by(issued_by);
        let mut marked = Vec::new();
        let (killed, more) = grants.revoke_chunk(c, marks, now, limit, &mut marked)?;
        let progress = if more {
            self.add(c, killed)?;
            Progress::More
        } else {
            Progress::Ended(self.end(c, killed)?)
        };
        // Its marks count once this write can no longer fail: kept until then.
        count_marks(marks, now, marked);
        Ok(progress)
    }

    /// Adds what a chunk killed to its row.
    fn add(&self, c: &Connection, killed: Killed) -> rusqlite::Result<()> {
        c.prepare_cached(
            "UPDATE subject_logouts SET grants = grants + ?3, tokens = tokens + ?4 \
             WHERE tenant_id = ?1 AND subject = ?2",
        )?
        .execute(params![
            self.tenant,
            self.subject,
            killed.grants,
            killed.tokens
        ])?;
        Ok(())
    }

    /// Ends it, with its last chunk having killed `killed`: records it in the audit trail
    /// with what all its chunks killed (nothing when nothing died), and deletes its row.
    fn end(&self, c: &Connection, killed: Killed) -> rusqlite::Result<Option<AuditEvent>> {
        let recorded = record(c, &self.tenant, Some(&self.subject), killed)?;
        let event = if recorded > 0 {
            Some(last_audit_event(c)?)
        } else {
            None
        };
        c.prepare_cached("DELETE FROM subject_logouts WHERE tenant_id = ?1 AND subject = ?2")?
            .execute(params![self.tenant, self.subject])?;
        Ok(event)
    }

    /// The latest creation time of the grants it takes; `None` once it has ended (its row
    /// gone).
    fn issued_by(&self, c: &Connection) -> rusqlite::Result<Option<UnixTime>> {
        c.prepare_cached(
            "SELECT issued_by FROM subject_logouts WHERE tenant_id = ?1 AND subject = ?2",
        )?
        .query_row(params![self.tenant, self.subject], |r| r.get(0))
        .optional()
    }
}

/// Records in the audit trail each log-out under way of `tenant` (of `subject`'s alone, if
/// given) as its row describes it, with what its chunks revoked plus `more` (none where
/// nothing died); returns how many it recorded.
fn record(
    c: &Connection,
    tenant: &str,
    subject: Option<&str>,
    more: Killed,
) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, grants, \
           tokens, address) \
         SELECT tenant_id, at, actor, route, reason, NULL, subject, grants + ?3, tokens + ?4, \
           address \
         FROM subject_logouts \
         WHERE tenant_id = ?1 AND subject = coalesce(?2, subject) \
           AND grants + ?3 + tokens + ?4 > 0",
    )?
    .execute(params![tenant, subject, more.grants, more.tokens])
}

impl std::fmt::Display for SubjectLogout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the log-out of {}",
            LiveGrants::of_subject(&self.tenant, &self.subject)
        )
    }
}
