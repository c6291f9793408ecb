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
//! grants created by the new request's time too. The earlier caller goes on driving chunks,
//! now the new one's (whatever they revoke is on the new one's record), until the row is
//! gone, and then answers with its own record, found in the trail: its `200` still means
//! every grant it covers is revoked, even if the new caller's chunks fail. So one that
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
use super::revocations::{count_marks, event_from_row, last_audit_event};
use crate::audit_query::{audit_block, AUDIT_BLOCK_BITS, AUDIT_COLUMNS};

/// A log-out of a subject everywhere, under way: the key of its `subject_logouts` row, and
/// the request driving it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SubjectLogout {
    tenant: String,
    subject: String,
    /// The request that began it or took it over, when this handle is that request's;
    /// `None` when it is finished for one cut off (the subject's next log-out through a dead
    /// token, the next start).
    asked: Option<Asked>,
}

/// A request's log-out, as its handle knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Asked {
    /// The row's turn the request wrote: while the row is at it, it is the request's.
    turn: i64,
    /// Who asked, as its record will say.
    by: Requester,
    /// The last audit id the trail had handed out when the request began: its record comes
    /// after.
    since: i64,
}

/// Who asked for a log-out, when, how and why: the fields of its row that its audit record
/// carries.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Requester {
    reason: String,
    at: UnixTime,
    actor: String,
    route: String,
    address: Option<String>,
}

impl Requester {
    fn of(audit: &AuditContext) -> Self {
        Self {
            reason: audit.reason.as_str().to_owned(),
            at: audit.at,
            actor: audit.actor.clone(),
            route: audit.route.to_owned(),
            address: audit.address.map(|a| a.to_string()),
        }
    }

    /// Whether `event` records a log-out this requester asked for.
    fn recorded_in(&self, event: &AuditEvent) -> bool {
        event.grant_id.is_none()
            && event.reason.as_str() == self.reason
            && (event.at, &event.actor, &event.route) == (self.at, &self.actor, &self.route)
            && event.address == self.address
    }
}

/// Where a chunk left a log-out.
#[derive(Debug)]
pub(super) enum Progress {
    /// Grants of it may remain.
    More,
    /// It has ended, or, for a request's handle, is no longer that request's (another took
    /// it over, or ended it): with that request's audit record (`None`: nothing died on its
    /// behalf, or, for a handle of no request, another ended it).
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
            asked: None,
        };
        Ok(logout.row(c)?.map(|_| logout))
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
        // After the record of the one taken over, which may say the same (one actor asking
        // twice in a second).
        let since = last_audit_id(c)?;
        let turn: i64 = c
            .prepare_cached(
                "INSERT INTO subject_logouts (tenant_id, subject, reason, at, issued_by, actor, \
               route, address) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (tenant_id, subject) DO UPDATE \
               SET reason = excluded.reason, at = excluded.at, \
                 issued_by = max(issued_by, excluded.issued_by), actor = excluded.actor, \
                 route = excluded.route, address = excluded.address, grants = 0, tokens = 0, \
                 turn = turn + 1 \
             RETURNING turn",
            )?
            .query_row(
                params![
                    tenant.as_str(),
                    subject.as_str(),
                    audit.reason.as_str(),
                    audit.at,
                    audit.at.saturating_add(EXPIRY_GRACE),
                    audit.actor,
                    audit.route,
                    audit.address.map(|a| a.to_string()),
                ],
                |r| r.get(0),
            )?;
        Ok(Some(Self {
            tenant: tenant.to_string(),
            subject: subject.as_str().to_owned(),
            asked: Some(Asked {
                turn,
                by: Requester::of(audit),
                since,
            }),
        }))
    }

    /// Every one under way.
    pub(super) fn all_under_way(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        c.prepare("SELECT tenant_id, subject FROM subject_logouts")?
            .query_map([], |r| {
                Ok(Self {
                    tenant: r.get(0)?,
                    subject: r.get(1)?,
                    asked: None,
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
        // Taken over by another (`taken_over`), a request's handle drives the other's chunks
        // all the same: until the row is gone, grants its request covers may be live.
        let (issued_by, taken_over) = match (self.row(c)?, &self.asked) {
            (Some((issued_by, _)), None) => (issued_by, None),
            (Some((issued_by, turn)), Some(asked)) if turn == asked.turn => (issued_by, None),
            (Some((issued_by, _)), Some(asked)) => (issued_by, Some(asked)),
            (None, None) => return Ok(Progress::Ended(None)),
            // Ended by another: its own part is recorded already.
            (None, Some(asked)) => return Ok(Progress::Ended(self.record_of(c, asked)?)),
        };
        let grants = LiveGrants::of_subject(&self.tenant, &self.subject).issued_by(issued_by);
        let mut marked = Vec::new();
        let (killed, more) = grants.revoke_chunk(c, marks, now, limit, &mut marked)?;
        let progress = if more {
            self.add(c, killed)?;
            Progress::More
        } else {
            // Ended with the record of the request whose turn the row is at; a request
            // taken over answers with its own, recorded when it was taken over.
            let ended = self.end(c, killed)?;
            match taken_over {
                None => Progress::Ended(ended),
                Some(asked) => Progress::Ended(self.record_of(c, asked)?),
            }
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

    /// The latest creation time of the grants it takes, and its turn; `None` once it has
    /// ended (its row gone).
    fn row(&self, c: &Connection) -> rusqlite::Result<Option<(UnixTime, i64)>> {
        c.prepare_cached(
            "SELECT issued_by, turn FROM subject_logouts WHERE tenant_id = ?1 AND subject = ?2",
        )?
        .query_row(params![self.tenant, self.subject], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
    }

    /// The audit record of `asked`'s log-out, which another request wrote as it took the
    /// log-out over or ended it: the first of the subject's records since `asked` began that
    /// says what it asked (`None`: nothing died on its behalf). Read through the trail's
    /// index by subject, block by block from there to the trail's end: the few blocks
    /// written since.
    fn record_of(&self, c: &Connection, asked: &Asked) -> rusqlite::Result<Option<AuditEvent>> {
        let last = last_audit_id(c)?;
        // Spelled as the index's expression (`audit_by_subject_in_block`); the other fields
        // are compared here too, as the trail stores them.
        let mut in_block = c.prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit \
             WHERE tenant_id = ?1 AND (id >> {AUDIT_BLOCK_BITS}) = ?2 AND subject = ?3 \
               AND id > ?4 AND grant_id IS NULL AND at = ?5 AND actor = ?6 \
             ORDER BY id"
        ))?;
        let by = &asked.by;
        for block in audit_block(asked.since.saturating_add(1))..=audit_block(last) {
            let params = params![
                self.tenant,
                block,
                self.subject,
                asked.since,
                by.at,
                by.actor
            ];
            for event in in_block.query_map(params, event_from_row)? {
                let event = event?;
                if by.recorded_in(&event) {
                    return Ok(Some(event));
                }
            }
        }
        Ok(None)
    }
}

/// The last id the audit trail has handed out: its newest record's, or one the clean-up
/// has deleted since (ids are never reused, `AUTOINCREMENT`), so that a search from it
/// starts at the trail's end even when the clean-up has emptied the trail.
fn last_audit_id(c: &Connection) -> rusqlite::Result<i64> {
    c.prepare_cached(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'audit'), 0), \
                    coalesce((SELECT max(id) FROM audit), 0))",
    )?
    .query_row([], |r| r.get(0))
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

#[cfg(test)]
mod tests {
    use super::*;
    use latch_core::audit::Reason;

    /// A migrated database where subject `crowd` holds 25 live grants.
    fn database() -> (Connection, RevocationMarks) {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 25) \
             INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, \
               expires_at) \
             SELECT 'g' || i, 'default', 'app', 'crowd', 'read', 100, 10000 FROM k",
        )
        .unwrap();
        (conn, RevocationMarks::new(1_000))
    }

    fn asked(actor: &str, at: UnixTime) -> AuditContext {
        let tenant = TenantId::default_tenant();
        AuditContext::new(tenant, actor, "test", Reason::LogoutEverywhere, None, at)
            .about(None, Some(&Subject::parse("crowd").unwrap()))
    }

    /// Runs `f` in a write transaction of its own, as the writer runs a batch.
    fn in_batch<T>(c: &Connection, marks: &RevocationMarks, f: impl FnOnce() -> T) -> T {
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        marks.begin_batch(c).unwrap();
        let done = f();
        c.execute_batch("COMMIT").unwrap();
        marks.batch_committed();
        done
    }

    /// A request's log-out, begun, with its first chunk of 10 grants.
    fn begun(c: &Connection, marks: &RevocationMarks, audit: &AuditContext) -> SubjectLogout {
        in_batch(c, marks, || {
            let (tenant, subject) = (&audit.tenant, audit.subject.as_ref().unwrap());
            let logout = SubjectLogout::begin_if_large(c, tenant, subject, audit, 10).unwrap();
            let logout = logout.expect("more than a chunk");
            assert!(matches!(
                logout.chunk(c, marks, audit.at, 10).unwrap(),
                Progress::More
            ));
            logout
        })
    }

    /// What a chunk of `logout` answers: `Some` once it ended, with its record's time and
    /// grants (0 for no record).
    fn chunk(
        c: &Connection,
        marks: &RevocationMarks,
        logout: &SubjectLogout,
    ) -> Option<(i64, u64)> {
        match in_batch(c, marks, || logout.chunk(c, marks, 500, 10).unwrap()) {
            Progress::More => None,
            Progress::Ended(event) => Some(event.map_or((0, 0), |e| (e.at, e.grants))),
        }
    }

    fn live(c: &Connection) -> i64 {
        let sql = "SELECT count(*) FROM grants WHERE revoked_at IS NULL";
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A log-out taken over answers its caller with its own record, and only once every grant
    /// its request covers is revoked: finding the row another's, it drives the other's
    /// chunks to the end (a failure of the other's caller must not leave them live after
    /// its `200`), which then count on the other's record.
    #[test]
    fn a_logout_taken_over_answers_with_its_own_record() {
        for later_ends_first in [false, true] {
            let (c, marks) = database();
            let first = begun(&c, &marks, &asked("admin", 200));
            let second = begun(&c, &marks, &asked("ops", 400));
            if later_ends_first {
                assert_eq!(chunk(&c, &marks, &second), Some((400, 15)));
                assert_eq!(chunk(&c, &marks, &first), Some((200, 10)));
            } else {
                assert_eq!(chunk(&c, &marks, &first), Some((200, 10)));
                assert_eq!(
                    live(&c),
                    0,
                    "answered once every grant it covers is revoked"
                );
                assert_eq!(chunk(&c, &marks, &second), Some((400, 15)));
            }
            assert_eq!(live(&c), 0);
        }
    }

    /// Two requests alike in every recorded field (one actor asking twice in a second) each
    /// drive only their own turn and get their own record, whichever chunk comes first;
    /// here with their records in two blocks of the trail's index by subject.
    #[test]
    fn each_of_two_like_requests_gets_its_own_record() {
        for later_ends_first in [false, true] {
            let (c, marks) = database();
            // The next audit ids: 65,535 (the last of block 0), then 65,536 (block 1).
            c.execute_batch("INSERT INTO sqlite_sequence (name, seq) VALUES ('audit', 65534)")
                .unwrap();
            let first = begun(&c, &marks, &asked("admin", 200));
            let second = begun(&c, &marks, &asked("admin", 200));
            let (first_end, second_end) = if later_ends_first {
                let second_end = chunk(&c, &marks, &second);
                (chunk(&c, &marks, &first), second_end)
            } else {
                let first_end = chunk(&c, &marks, &first);
                (first_end, chunk(&c, &marks, &second))
            };
            assert_eq!((first_end, second_end), (Some((200, 10)), Some((200, 15))));
            assert_eq!(live(&c), 0);
            let ids: String = c
                .query_row("SELECT group_concat(id, ' ') FROM audit", [], |r| r.get(0))
                .unwrap();
            assert_eq!(ids, "65535 65536");
        }
    }

    /// A log-out finished for no request (`under_way`: the next start, a dead token's
    /// log-out) answers what it ended; the request whose turn it ended gets its own record
    /// all the same, and so does the one it had taken over.
    #[test]
    fn a_logout_finished_for_no_request_leaves_each_request_its_record() {
        let (c, marks) = database();
        let first = begun(&c, &marks, &asked("admin", 200));
        let second = begun(&c, &marks, &asked("ops", 400));
        let tenant = TenantId::default_tenant();
        let crowd = Subject::parse("crowd").unwrap();
        let finishing = SubjectLogout::under_way(&c, &tenant, &crowd)
            .unwrap()
            .unwrap();
        assert_eq!(chunk(&c, &marks, &finishing), Some((400, 15)));
        assert_eq!(chunk(&c, &marks, &second), Some((400, 15)));
        assert_eq!(chunk(&c, &marks, &first), Some((200, 10)));
        assert_eq!(live(&c), 0);
    }
}
