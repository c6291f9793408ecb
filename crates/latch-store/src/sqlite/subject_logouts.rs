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
//! audit record. The caller answers after that last write. The grants it takes are those
//! the subject holds when each chunk runs: those issued while it ran too, since they were
//! issued before the log-out was answered. One that a stop cut off or a crash interrupted is
//! finished by the next server start (`ClientStore::finish_interrupted_removals`).

use latch_core::audit::{AuditContext, AuditEvent};
use latch_core::clock::UnixTime;
use latch_core::id::{Subject, TenantId};
use rusqlite::{params, Connection, OptionalExtension};

use super::marks::RevocationMarks;
use super::removals::LiveGrants;
use super::revocations::{count_marks, last_audit_event};

/// A log-out of a subject everywhere, under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SubjectLogout {
    /// Its `subject_logouts` row.
    id: i64,
    grants: LiveGrants,
}

/// Where a chunk left a log-out.
#[derive(Debug)]
pub(super) enum Progress {
    /// Grants of it may remain.
    More,
    /// It has ended, with this audit record (`None`: nothing died, or another process
    /// ended it).
    Ended(Option<AuditEvent>),
}

impl SubjectLogout {
    /// The log-out of `subject` of `tenant`, recorded as under way with what its audit
    /// record will say (`audit`), if its live grants number more than `chunk`; `None` when
    /// one write can revoke them all.
    pub(super) fn begin_if_large(
        c: &Connection,
        tenant: &TenantId,
        subject: &Subject,
        audit: &AuditContext,
        chunk: u32,
    ) -> rusqlite::Result<Option<Self>> {
        let grants = LiveGrants::of_subject(tenant.as_str(), subject.as_str());
        if !grants.at_least(c, chunk.saturating_add(1))? {
            return Ok(None);
        }
        c.prepare_cached(
            "INSERT INTO subject_logouts (tenant_id, subject, reason, at, actor, route, address) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            tenant.as_str(),
            subject.as_str(),
            audit.reason.as_str(),
            audit.at,
            audit.actor,
            audit.route,
            audit.address.map(|a| a.to_string()),
        ])?;
        Ok(Some(Self {
            id: c.last_insert_rowid(),
            grants,
        }))
    }

    /// Every one under way, oldest first.
    pub(super) fn all_under_way(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        c.prepare("SELECT id, tenant_id, subject FROM subject_logouts ORDER BY id")?
            .query_map([], |r| {
                let (tenant, subject): (String, String) = (r.get(1)?, r.get(2)?);
                Ok(Self {
                    id: r.get(0)?,
                    grants: LiveGrants::of_subject(&tenant, &subject),
                })
            })?
            .collect()
    }

    /// One chunk: revokes, at `now`, up to `limit` of the subject's live grants with their
    /// tokens and adds what died to its row; once less than a full chunk was left, records
    /// the whole log-out in the audit trail (nothing when nothing died) and deletes its row.
    ///
    /// `now` is the time of whatever drives it: the request that asked for it, or the start
    /// finishing it. Its record keeps the time it was asked for.
    pub(super) fn chunk(
        &self,
        c: &Connection,
        marks: &RevocationMarks,
        now: UnixTime,
        limit: u32,
    ) -> rusqlite::Result<Progress> {
        let under_way = c
            .prepare_cached("SELECT 1 FROM subject_logouts WHERE id = ?1")?
            .query_row([self.id], |_| Ok(()))
            .optional()?
            .is_some();
        if !under_way {
            return Ok(Progress::Ended(None));
        }
        let mut marked = Vec::new();
        let (killed, more) = (self.grants).revoke_chunk(c, marks, now, limit, &mut marked)?;
        let progress = if more {
            c.prepare_cached(
                "UPDATE subject_logouts SET grants = grants + ?2, tokens = tokens + ?3 \
                 WHERE id = ?1",
            )?
            .execute(params![self.id, killed.grants, killed.tokens])?;
            Progress::More
        } else {
            let recorded = c
                .prepare_cached(
                    "INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, \
                       grants, tokens, address) \
                     SELECT tenant_id, at, actor, route, reason, NULL, subject, grants + ?2, \
                       tokens + ?3, address \
                     FROM subject_logouts \
                     WHERE id = ?1 AND grants + ?2 + tokens + ?3 > 0",
                )?
                .execute(params![self.id, killed.grants, killed.tokens])?;
            let event = if recorded > 0 {
                Some(last_audit_event(c)?)
            } else {
                None
            };
            c.prepare_cached("DELETE FROM subject_logouts WHERE id = ?1")?
                .execute([self.id])?;
            Progress::Ended(event)
        };
        // Its marks count once this write can no longer fail: kept until then.
        count_marks(marks, now, marked);
        Ok(progress)
    }
}

impl std::fmt::Display for SubjectLogout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the log-out of {}", self.grants)
    }
}
