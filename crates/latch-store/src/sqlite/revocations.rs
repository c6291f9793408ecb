//! [`RevocationStore`], [`AuditStore`] and [`CleanupStore`] on SQLite. Revoking a grant marks
//! the grant row, which a lookup of a refresh token (or of an access token from before
//! schema version 6) joins, and, if it holds live access tokens read without it, appends a
//! row for the grant to the revocation log. Revoking one token appends a row for the token
//! ([`super::marks`]). The audit row is written in the same transaction.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use latch_core::audit::{AuditContext, AuditEvent, AuditPage, AuditQuery, Killed, Reason};
use latch_core::cleanup::EXPIRY_GRACE;
use latch_core::clock::UnixTime;
use latch_core::grant::{Revocation, TokenRecord};
use latch_core::id::{ClientId, GrantId, Subject, TenantId};
use latch_core::store::{AuditStore, CleanupStore, Purged, RevocationStore, StoreResult, Sweep};
use latch_core::token::TokenHash;
use rusqlite::types::{ToSqlOutput, Type, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, ToSql};

use super::client_grants::ClientGrantsRevocation;
use super::marks::{MarkOf, Marked, RevocationMarks};
use super::removals::LiveGrants;
use super::subject_logouts::{Progress, SubjectLogout};
use super::{SqliteStore, REMOVAL_CHUNK};
use crate::audit_query::{
    audit_block, audit_events_sql, audit_first_after_sql, audit_query_start, AuditSelect,
    AUDIT_COLUMNS,
};
use crate::cleanup_sql::{
    next_sweep, purge_audit_sql, sweep_delete_sql, sweep_end_sql, swept, token_sweep_end, SweepKey,
    Swept, AUDIT_PURGE_HEAD,
};
use crate::target::{grant_condition, revoke_grants_sql, Target};

/// What a revocation's write did.
#[derive(Debug)]
pub(super) enum Applied {
    /// All of it: its audit record, or `None` when nothing was alive (nothing is recorded
    /// then, unless the reason is [always recorded](latch_core::audit::Reason::always_recorded)).
    Done(Option<AuditEvent>),
    /// The first chunk of a subject's log-out too large for one write
    /// ([`super::subject_logouts`]): the rest is the caller's to run.
    Chunked(SubjectLogout),
}

/// Applies a revocation inside the current transaction and records it in the audit trail;
/// a subject's log-out, only its first chunk when it holds more than a chunk of live grants.
///
/// Must be the last fallible statement of its write: the batch counts on the marks it made
/// once it returns, and a failure after it would roll its log rows back (the write's
/// savepoint) but not those marks.
pub(super) fn apply(
    c: &Connection,
    marks: &RevocationMarks,
    revocation: &Revocation,
    audit: &AuditContext,
) -> rusqlite::Result<Applied> {
    apply_knowing(c, marks, revocation, audit, None)
}

/// [`apply`], for a revocation judged on `read`, a token this transaction has read (with its
/// marks applied): revoking that token needs no second lookup of its row.
pub(super) fn apply_to_read(
    c: &Connection,
    marks: &RevocationMarks,
    read: &TokenRecord,
    revocation: &Revocation,
    audit: &AuditContext,
) -> rusqlite::Result<Applied> {
    apply_knowing(c, marks, revocation, audit, Some(read))
}

fn apply_knowing(
    c: &Connection,
    marks: &RevocationMarks,
    revocation: &Revocation,
    audit: &AuditContext,
    read: Option<&TokenRecord>,
) -> rusqlite::Result<Applied> {
    let now = audit.at;
    if let Revocation::Subject { tenant, subject } = revocation {
        if let Some(logout) =
            SubjectLogout::begin_if_large(c, tenant, subject, audit, REMOVAL_CHUNK)?
        {
            return Ok(match logout.chunk(c, marks, now, REMOVAL_CHUNK)? {
                Progress::More => Applied::Chunked(logout),
                Progress::Ended(event) => Applied::Done(event),
            });
        }
    }
    // The tokens this write marked revoked, and where.
    let mut marked = Vec::new();
    let killed = match Target::of(revocation) {
        Target::Token(hash) => {
            let read = read.filter(|t| t.hash == *hash);
            let revoked = revoke_token(c, marks, hash, now, read)?;
            // Killed only if live by this clock; dead for the clocks that lag it either way.
            let live = revoked.is_some_and(|(_, expires_at)| expires_at > now);
            marked.extend(revoked.map(|(m, _)| (MarkOf::Token(*hash), m)));
            Killed {
                grants: 0,
                tokens: u64::from(live),
            }
        }
        Target::Grants(columns) => {
            let condition = grant_condition(&columns, |n| format!("?{n}"));
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&now];
            values.extend(columns.iter().map(|(_, v)| v as &dyn rusqlite::ToSql));
            revoke_grants_where(c, marks, now, &condition, &values, &mut marked)?
        }
    };
    let event = if killed.is_nothing() && !audit.reason.always_recorded() {
        None
    } else {
        Some(insert_audit(c, audit, killed)?)
    };
    count_marks(marks, now, marked);
    Ok(Applied::Done(event))
}

/// Hands the marks a write made to the batch, once nothing of the write can fail any more:
/// the batch then counts on them (made for tokens expired within the clocks' allowance too,
/// which nothing counts as killed).
pub(super) fn count_marks(marks: &RevocationMarks, now: UnixTime, marked: Vec<(MarkOf, Marked)>) {
    for (of, marked) in marked {
        marks.marked_in_batch(of, now, marked);
    }
}

/// Revokes the unrevoked grants matching `condition` (its parameters `values`, the time
/// first) and their tokens, pushing the marks it makes to `marked`. Returns what was live and
/// died (expired grants are revoked too, for the clocks that lag this one).
pub(super) fn revoke_grants_where(
    c: &Connection,
    marks: &RevocationMarks,
    now: UnixTime,
    condition: &str,
    values: &[&dyn ToSql],
    marked: &mut Vec<(MarkOf, Marked)>,
) -> rusqlite::Result<Killed> {
    let (tokens, marks_full) = mark_owned_grants(c, marks, now, condition, values, marked)?;
    if marks_full {
        c.prepare_cached(&revoke_owned_tokens_sql(condition))?
            .execute(values)?;
    }
    // Only the grants live by `now` count as killed.
    let grants = c
        .prepare_cached(&format!(
            "{} RETURNING expires_at > ?1",
            revoke_grants_sql("?1", condition)
        ))?
        .query_map(values, |r| r.get::<_, bool>(0))?
        .try_fold(0u64, |n, live| {
            Ok::<_, rusqlite::Error>(n + u64::from(live?))
        })?;
    Ok(Killed {
        grants,
        tokens: if grants > 0 { tokens } else { 0 },
    })
}

/// Records a revocation that killed `killed` in the audit trail.
fn insert_audit(
    c: &Connection,
    audit: &AuditContext,
    killed: Killed,
) -> rusqlite::Result<AuditEvent> {
    c.prepare_cached(
        "INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, grants, \
           tokens, address) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        audit.tenant.as_str(),
        audit.at,
        audit.actor,
        audit.route,
        audit.reason.as_str(),
        audit.grant_id.as_ref().map(|g| g.as_str()),
        audit.subject.as_ref().map(|s| s.as_str()),
        killed.grants,
        killed.tokens,
        audit.address.map(|a| a.to_string()),
    ])?;
    Ok(audit.event(c.last_insert_rowid(), killed))
}

/// Reads the live tokens of the live grants matching the condition (`values` its parameters,
/// `now` the first), before the UPDATE that kills the grants, and counts those not already
/// revoked alone. Each grant holding an access token that carries its owner, and so is read
/// without the grant (schema version 6), gets one row in the revocation log (pushed to
/// `marked`), which those tokens' reads look up by their grant id: one row and one mark per
/// grant, however many live access tokens it holds, each costing what a token's did
/// (docs/benchmarks.md, round of 2026-12-03 13:08); marking the tokens' own rows instead
/// writes one more random page per token (twice the cost of log out everywhere, round of
/// 10:39). Returns the count, and whether the index of the log filled up, in which case the
/// caller marks those tokens' rows instead ([`revoke_owned_tokens_sql`]).
///
/// Row by row, as a tenant's tokens may be millions, and without holding the marks' lock
/// throughout, which every read takes.
fn mark_owned_grants(
    c: &Connection,
    marks: &RevocationMarks,
    now: UnixTime,
    condition: &str,
    values: &[&dyn ToSql],
    marked: &mut Vec<(MarkOf, Marked)>,
) -> rusqlite::Result<(u64, bool)> {
    let (mut tokens, mut full) = (0u64, false);
    let mut logged = HashSet::new();
    let mut live = c.prepare_cached(&live_tokens_sql(condition))?;
    let mut log = c.prepare_cached(
        "INSERT INTO revocation_log (hash, revoked_at, expires_at, grant_id) \
         VALUES (x'', ?1, ?2, ?3)",
    )?;
    let mut rows = live.query(values)?;
    while let Some(row) = rows.next()? {
        let hash = TokenHash::from_stored(row.get_ref(0)?.as_blob()?);
        if hash.is_some_and(|h| marks.mark_in_write(&h).is_some()) {
            continue;
        }
        let unexpired: bool = row.get(4)?;
        tokens += u64::from(unexpired);
        let owned: bool = row.get(1)?;
        let grant = row.get_ref(2)?.as_str()?;
        if !owned || full || logged.contains(grant) {
            continue;
        }
        full = !marks.has_room(marked.len());
        if !full {
            // A grant outlives each of its tokens, so its mark lasts as long as they do.
            let expires_at: UnixTime = row.get(3)?;
            log.execute(params![now, expires_at, grant])?;
            let seq = c.last_insert_rowid();
            logged.insert(grant.to_owned());
            let grant = GrantId::from_stored(grant.to_owned());
            marked.push((MarkOf::Grant(grant), Marked::Logged { seq, expires_at }));
        }
    }
    Ok((tokens, full))
}

/// Revokes one token, unless it is already revoked; returns where it was marked and the
/// token's expiry (`None`: nothing was revoked). The mark is a row appended to the revocation log, or, once the index
/// of the log is full, the token's own row ([`super::marks`]). Only access tokens are revoked
/// alone (a refresh token takes its grant with it: `latch_core::revoke`), which is why a
/// refresh token's rotation (`tokens.rs`), whose precondition reads the row alone, never has
/// a log mark to miss. `read` is the token as this transaction read it, if it did.
fn revoke_token(
    c: &Connection,
    marks: &RevocationMarks,
    hash: &TokenHash,
    now: UnixTime,
    read: Option<&TokenRecord>,
) -> rusqlite::Result<Option<(Marked, UnixTime)>> {
    if marks.mark_in_write(hash).is_some() {
        return Ok(None);
    }
    if !marks.has_room(0) {
        return c
            .prepare_cached(
                "UPDATE tokens SET revoked_at = ?2 WHERE hash = ?1 AND revoked_at IS NULL \
                 RETURNING expires_at",
            )?
            .query_row(params![hash.as_bytes(), now], |r| {
                Ok((Marked::InRow, r.get(0)?))
            })
            .optional();
    }
    let logged = |seq, expires_at| (Marked::Logged { seq, expires_at }, expires_at);
    match read {
        // Read in this transaction, which no other write can interleave with: the row is as
        // read. Measured: the second lookup was 5-10% of a revocation's instructions.
        Some(token) if token.revoked_at.is_some() => Ok(None),
        Some(token) => {
            c.prepare_cached(
                "INSERT INTO revocation_log (hash, revoked_at, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![hash.as_bytes(), now, token.expires_at])?;
            Ok(Some(logged(c.last_insert_rowid(), token.expires_at)))
        }
        None => c
            .prepare_cached(
                "INSERT INTO revocation_log (hash, revoked_at, expires_at) \
                 SELECT hash, ?2, expires_at FROM tokens WHERE hash = ?1 AND revoked_at IS NULL \
                 RETURNING seq, expires_at",
            )?
            .query_row(params![hash.as_bytes(), now], |r| {
                Ok(logged(r.get(0)?, r.get(1)?))
            })
            .optional(),
    }
}

/// The keys of the live tokens of the live grants matching the condition (before the UPDATE
/// that kills them), whether each carries its grant's owner, its grant's id and expiry, and
/// whether it is unexpired; the time of the revocation is parameter 1. Tokens revoked through
/// the log are among them, for the caller to leave out. So are tokens expired by less than
/// the clocks' allowance ([`EXPIRY_GRACE`]), which no longer count as killed but must still be
/// marked: they do not read the grant, and a clock stepped back (or a node whose clock lags
/// this one) would otherwise take them as live. Their rows outlive them by as long.
fn live_tokens_sql(condition: &str) -> String {
    format!(
        "SELECT t.hash, t.subject IS NOT NULL, g.id, g.expires_at, t.expires_at > ?1 \
         FROM tokens t JOIN grants g ON g.id = t.grant_id \
         WHERE g.revoked_at IS NULL AND t.revoked_at IS NULL AND t.rotated_at IS NULL \
           AND t.expires_at > ?1 - {EXPIRY_GRACE} AND {condition}"
    )
}

/// Marks revoked, at parameter 1, the access tokens that carry their grant's owner
/// (`tokens.subject` set) in the live grants matching the condition, and that have not
/// expired by more than the clocks' allowance ([`live_tokens_sql`]): in their own rows, for
/// when the index of the revocation log is full ([`mark_owned_grants`]).
fn revoke_owned_tokens_sql(condition: &str) -> String {
    format!(
        "UPDATE tokens SET revoked_at = ?1 \
         WHERE tokens.subject IS NOT NULL AND tokens.revoked_at IS NULL \
           AND tokens.expires_at > ?1 - {EXPIRY_GRACE} \
           AND tokens.grant_id IN (SELECT g.id FROM grants g \
                                   WHERE g.revoked_at IS NULL AND {condition})"
    )
}

#[async_trait]
impl RevocationStore for SqliteStore {
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditContext,
    ) -> StoreResult<Option<AuditEvent>> {
        let (revocation, context) = (revocation.clone(), audit.clone());
        let marks = self.marks.clone();
        let applied = self
            .write(move |c| apply(c, &marks, &revocation, &context))
            .await?;
        self.run_rest(applied, audit.at).await
    }

    async fn revoke_client_grants(
        &self,
        tenant: &TenantId,
        client_id: &ClientId,
        audit: &AuditContext,
        recorded: &mut (dyn FnMut(AuditEvent) + Send),
    ) -> StoreResult<()> {
        // Recorded as under way first, then in chunks, each its own audited revocation
        // (`client_grants.rs`). Its bound is read first, off the writer (a scan of the
        // client's live grants) and off the async workers: this read begins after every
        // write committed before the request, a compromised client's issuances on its old
        // secret among them.
        let grants = LiveGrants::of_client(tenant, client_id);
        let latest = self
            .read_off_workers(move |c| grants.latest_issued(c))
            .await?;
        let issued_by = latest.map_or(audit.at, |latest| latest.max(audit.at));
        let (t, id, context) = (tenant.clone(), client_id.clone(), audit.clone());
        let revocation = self
            .write(move |c| ClientGrantsRevocation::begin(c, &t, &id, &context, issued_by))
            .await?;
        self.run_client_grants_revocation(revocation, audit.at, recorded)
            .await
    }

    async fn finish_subject_logout(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        now: UnixTime,
    ) -> StoreResult<Option<AuditEvent>> {
        let (t, s) = (tenant.clone(), subject.clone());
        match self.read(move |c| SubjectLogout::under_way(c, &t, &s))? {
            Some(logout) => self.run_subject_logout(logout, now).await,
            None => Ok(None),
        }
    }
}

/// The audit record this connection inserted last.
pub(super) fn last_audit_event(c: &Connection) -> rusqlite::Result<AuditEvent> {
    c.prepare_cached(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE id = ?1"))?
        .query_row([c.last_insert_rowid()], event_from_row)
}

/// An audit record, from a row of [`AUDIT_COLUMNS`].
pub(super) fn event_from_row(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
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
    async fn audit_events(&self, tenant: &TenantId, query: &AuditQuery) -> StoreResult<AuditPage> {
        // Off the async workers: a page may read up to `AUDIT_SINCE_SPAN` records.
        let (tenant, query) = (tenant.clone(), query.clone());
        self.read_off_workers(move |c| {
            let last: i64 =
                c.query_row("SELECT coalesce(max(id), 0) FROM audit", [], |r| r.get(0))?;
            let first = match query.since {
                Some(_) => c
                    .prepare_cached(&audit_first_after_sql(|n| format!("?{n}")))?
                    .query_row(params![tenant.as_str(), query.after.unwrap_or(0)], |r| {
                        r.get(0)
                    })?,
                None => None,
            };
            let read_to = query.read_to(first, last);
            let events = match &query.subject {
                None => {
                    // The bound is parameter 7 of the shared query, here the sixth.
                    let sql = audit_events_sql(AuditSelect::All, true, |n| match n {
                        7 => "?6".into(),
                        n => format!("?{n}"),
                    });
                    let mut stmt = c.prepare_cached(&sql)?;
                    let rows = stmt.query_map(
                        params![
                            tenant.as_str(),
                            None::<&str>,
                            query.since,
                            query.after.unwrap_or(0),
                            query.limit,
                            read_to,
                        ],
                        event_from_row,
                    )?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                }
                Some(subject) => subject_events(c, &tenant, subject, &query, read_to)?,
            };
            Ok(AuditPage::new(events, &query, read_to, last))
        })
        .await
    }
}

/// One subject's audit events up to id `read_to`, read block by block through the index
/// keyed by block (schema version 10, [`crate::audit_query::AUDIT_BLOCK_BITS`]), from the
/// block after `query.after` until `query.limit` events are found or `read_to`'s block ends.
fn subject_events(
    c: &Connection,
    tenant: &TenantId,
    subject: &Subject,
    query: &AuditQuery,
    read_to: i64,
) -> rusqlite::Result<Vec<AuditEvent>> {
    let (after, first) = audit_query_start(query.after);
    let sql = audit_events_sql(AuditSelect::SubjectInBlock, true, |n| format!("?{n}"));
    let mut stmt = c.prepare_cached(&sql)?;
    let mut events = Vec::new();
    let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
    for block in first..=audit_block(read_to) {
        if events.len() >= limit {
            break;
        }
        let rows = stmt.query_map(
            params![
                tenant.as_str(),
                subject.as_str(),
                query.since,
                after,
                limit - events.len(),
                block,
                read_to,
            ],
            event_from_row,
        )?;
        for event in rows {
            events.push(event?);
        }
    }
    Ok(events)
}

/// One batch of an expiry sweep (`CleanupStore::purge_expired`): deletes the expired rows
/// among the `limit` rows past `from`. Returns how many it deleted and where the next batch
/// starts.
fn sweep(
    c: &Connection,
    now: UnixTime,
    from: &Sweep,
    limit: u32,
) -> rusqlite::Result<(usize, Option<Sweep>)> {
    let table = Swept::of(from);
    let param = |n: usize| format!("?{n}");
    let after = SweepKey::after(from);
    let mut end_stmt = c.prepare_cached(&sweep_end_sql(table, param))?;
    let mut rows = end_stmt.query(params![after, limit.saturating_sub(1)])?;
    let end = match (rows.next()?, table) {
        (None, _) => None,
        (Some(row), Swept::Tokens) => {
            token_sweep_end(TokenHash::from_stored(row.get_ref(0)?.as_blob()?))
        }
        (Some(row), Swept::Grants) => Some(Sweep::Grants(Some(GrantId::from_stored(row.get(0)?)))),
    };
    drop(rows);
    let deleted = match &end {
        Some(end) => {
            let until = SweepKey::after(end);
            c.prepare_cached(&sweep_delete_sql(table, true, false, param))?
                .execute(params![after, now, until])?
        }
        None => c
            .prepare_cached(&sweep_delete_sql(table, false, false, param))?
            .execute(params![after, now])?,
    };
    Ok((deleted, next_sweep(from, end)))
}

impl ToSql for SweepKey<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SweepKey::Token(key) => ValueRef::Blob(key),
            SweepKey::Grant(id) => ValueRef::Text(id.as_bytes()),
        }))
    }
}

/// Deletes the revocation log's rows whose tokens expired at `now`, among the `limit` rows
/// past `from`, so that a clean-up batch reads a bounded stretch of the log however long
/// it is. Returns how many it deleted and where the next batch starts: past this stretch, or
/// back at the start once the end is reached. Rows are appended while their tokens live, so
/// the oldest are usually the first to expire; but they need not be (a client's long-lived
/// tokens), and a stretch that always began at the oldest row could stay stuck on live ones.
/// The newest row stays, so that a new row never takes a `seq` a reader has already passed
/// (`schema_v4.sql`). So does a row whose token is still stored, or any token of whose grant
/// is: the sweep deletes token rows in key order over many batches, and a run cut off
/// part-way (a stop, a failed batch) on a clock gone ahead would otherwise leave such a
/// token without its mark once the clock was set right and the marks loaded from the log
/// again: read live. A later run deletes the row once the tokens are gone.
fn purge_log(
    c: &Connection,
    now: UnixTime,
    limit: u32,
    from: i64,
) -> rusqlite::Result<(usize, i64)> {
    let stretch = i64::from(limit);
    let (rows, end): (i64, Option<i64>) = c
        .prepare_cached(
            "SELECT count(*), max(seq) FROM \
             (SELECT seq FROM revocation_log WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
        )?
        .query_row(params![from, stretch], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let Some(end) = end else {
        return Ok((0, 0));
    };
    let deleted = c
        .prepare_cached(
            "DELETE FROM revocation_log WHERE seq > ?1 AND seq <= ?2 AND expires_at <= ?3 \
             AND seq < (SELECT max(seq) FROM revocation_log) \
             AND CASE WHEN grant_id IS NULL \
                   THEN NOT EXISTS (SELECT 1 FROM tokens t WHERE t.hash = revocation_log.hash) \
                   ELSE NOT EXISTS \
                        (SELECT 1 FROM tokens t WHERE t.grant_id = revocation_log.grant_id) END",
        )?
        .execute(params![from, end, now])?;
    Ok((deleted, if rows < stretch { 0 } else { end }))
}

#[async_trait]
impl CleanupStore for SqliteStore {
    async fn purge_expired(
        &self,
        expired_by: UnixTime,
        from: Sweep,
        limit: u32,
    ) -> StoreResult<(Purged, Option<Sweep>)> {
        let log_from = self.log_purge_from.load(Ordering::Relaxed);
        let (purged, next, log_next) = self
            .write(move |c| {
                let (deleted, next) = sweep(c, expired_by, &from, limit)?;
                let (_, log_next) = purge_log(c, expired_by, limit, log_from)?;
                Ok((swept(&from, deleted as u64), next, log_next))
            })
            .await?;
        // Moved on only once the write has committed (a replayed batch runs it twice).
        self.log_purge_from.store(log_next, Ordering::Relaxed);
        self.pause_between_chunks().await;
        Ok((purged, next))
    }

    fn forget_expired(&self, expired_by: UnixTime) {
        self.marks.forget_expired(expired_by);
    }

    async fn purge_audit(&self, before: UnixTime, limit: u32) -> StoreResult<u64> {
        let deleted = self
            .write(move |c| {
                let sql = purge_audit_sql(|n| format!("?{n}"));
                let head = u64::from(limit) * u64::from(AUDIT_PURGE_HEAD);
                Ok(c.prepare_cached(&sql)?
                    .execute(params![before, limit, head])? as u64)
            })
            .await?;
        self.pause_between_chunks().await;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of the query `audit_events` runs for `select`.
    fn plan(conn: &Connection, select: AuditSelect) -> String {
        // The block parameter (6) exists only in the block-wise query; the other takes the
        // id it reads to (7) as its sixth.
        let sql = audit_events_sql(select, true, |n| match (n, select) {
            (7, AuditSelect::All) => "?6".into(),
            (n, _) => format!("?{n}"),
        });
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let block = (select == AuditSelect::SubjectInBlock).then_some(3);
        let values: Vec<&dyn ToSql> = [&"default" as &dyn ToSql, &"alice", &None::<i64>, &0, &10]
            .into_iter()
            .chain(block.as_ref().map(|b| b as &dyn ToSql))
            .chain([&1_000_000 as &dyn ToSql])
            .collect();
        let rows = stmt
            .query_map(values.as_slice(), |r| r.get::<_, String>(3))
            .unwrap();
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
            .join("; ")
    }

    fn migrated() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        conn
    }

    #[test]
    fn the_audit_query_reads_one_subject_through_its_index() {
        let conn = migrated();
        let by_subject = plan(&conn, AuditSelect::SubjectInBlock);
        assert!(
            by_subject.contains(
                "USING INDEX audit_by_subject_in_block \
                 (tenant_id=? AND <expr>=? AND subject=? AND id>? AND id<?)"
            ),
            "{by_subject}"
        );
        let all = plan(&conn, AuditSelect::All);
        assert!(
            all.contains("USING INDEX audit_by_tenant (tenant_id=? AND id>? AND id<?)"),
            "{all}"
        );
        assert!(!by_subject.contains("TEMP B-TREE") && !all.contains("TEMP B-TREE"));
    }

    /// A migrated database holding one live access token per name, expiring at 1,000.
    fn database(tokens: &[&str]) -> (Connection, Vec<TokenHash>) {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        conn.execute(
            "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, \
             expires_at) VALUES ('g', 'default', 'app', 'alice', 'read', 0, 1000)",
            [],
        )
        .unwrap();
        let hashes: Vec<TokenHash> = tokens.iter().map(|t| TokenHash::of(t)).collect();
        for hash in &hashes {
            conn.execute(
                "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
                 VALUES (?1, 'g', 0, 'read', 0, 1000)",
                [hash.as_bytes()],
            )
            .unwrap();
        }
        (conn, hashes)
    }

    fn audit() -> AuditContext {
        let tenant = TenantId::default_tenant();
        AuditContext::new(tenant, "app", "test", Reason::ClientRequest, None, 300)
    }

    /// Revokes `hash` in a batch of its own, as the writer would; returns the tokens killed.
    fn revoke_in_batch(conn: &Connection, marks: &RevocationMarks, hash: TokenHash) -> u64 {
        apply_in_batch(conn, marks, &Revocation::Token(hash)).1
    }

    /// Applies `revocation` in a batch of its own, as the writer would; returns the grants
    /// and the tokens killed.
    fn apply_in_batch(
        conn: &Connection,
        marks: &RevocationMarks,
        revocation: &Revocation,
    ) -> (u64, u64) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        marks.begin_batch(conn).unwrap();
        let Applied::Done(event) = apply(conn, marks, revocation, &audit()).unwrap() else {
            panic!("a revocation of a chunk or less is done in one write");
        };
        conn.execute_batch("COMMIT").unwrap();
        marks.batch_committed();
        event.map_or((0, 0), |e| (e.grants, e.tokens))
    }

    #[test]
    fn a_revoked_grant_is_one_log_row_and_past_the_capacity_marks_its_access_tokens_rows() {
        let (conn, _) = database(&[]);
        // Grant `g` (alice's) and grant `h` (bob's), each with two access tokens that carry
        // their owner and a refresh token that does not (as `tokens.rs` writes them).
        conn.execute(
            "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, \
             expires_at) VALUES ('h', 'default', 'app', 'bob', 'read', 0, 1000)",
            [],
        )
        .unwrap();
        let token = |name: &str, grant: &str, owner: Option<&str>| {
            let hash = TokenHash::of(name);
            conn.execute(
                "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at, \
                   tenant_id, client_id, subject) \
                 VALUES (?1, ?2, ?3, 'read', 0, 900, 'default', 'app', ?4)",
                params![hash.as_bytes(), grant, i64::from(owner.is_none()), owner],
            )
            .unwrap();
            hash
        };
        let g = [
            token("g1", "g", Some("alice")),
            token("g2", "g", Some("alice")),
        ];
        token("g-refresh", "g", None);
        token("h1", "h", Some("bob"));
        token("h2", "h", Some("bob"));
        token("h-refresh", "h", None);
        let in_rows = "SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL";
        let logged = "SELECT count(*) FROM revocation_log";
        let grant_id = |id: &str| GrantId::from_stored(id.to_owned());
        let grant = |id: &str| Revocation::Grant(grant_id(id));

        // Room for one mark: grant g's, one row in the log for its three tokens, none in
        // their rows; it lasts until the grant expires (1,000), which its tokens do not pass.
        let marks = RevocationMarks::new(1);
        assert_eq!(apply_in_batch(&conn, &marks, &grant("g")), (1, 3));
        assert_eq!(count(&conn, logged), 1);
        let row = "SELECT hash = x'' AND grant_id = 'g' AND revoked_at = 300 \
                   AND expires_at = 1000 FROM revocation_log";
        assert_eq!(count(&conn, row), 1);
        assert_eq!(count(&conn, in_rows), 0);
        assert_eq!(marks.indexed_grant(&grant_id("g")), Some(300));
        assert_eq!(marks.indexed(&g[0]), None, "no mark of its own");
        // No room for grant h's: both its access tokens are marked in their rows (the
        // refresh token reads its grant).
        assert_eq!(apply_in_batch(&conn, &marks, &grant("h")), (1, 3));
        assert_eq!(count(&conn, logged), 1);
        assert_eq!(marks.indexed_grant(&grant_id("h")), None);
        let hs_access_in_rows = "SELECT count(*) FROM tokens \
                                 WHERE revoked_at = 300 AND grant_id = 'h' AND kind = 0";
        assert_eq!(count(&conn, hs_access_in_rows), 2);
        assert_eq!(count(&conn, in_rows), 2);
        // Nothing is left alive to revoke, either way.
        assert_eq!(apply_in_batch(&conn, &marks, &grant("g")), (0, 0));
        assert_eq!(apply_in_batch(&conn, &marks, &grant("h")), (0, 0));
        assert_eq!(marks.len(), 1);
    }

    #[test]
    fn a_grant_revoked_earlier_in_the_batch_kills_its_tokens_for_the_rest_of_it() {
        let (conn, _) = database(&[]);
        let hash = TokenHash::of("owned");
        conn.execute(
            "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at, \
               tenant_id, client_id, subject) \
             VALUES (?1, 'g', 0, 'read', 0, 900, 'default', 'app', 'alice')",
            [hash.as_bytes()],
        )
        .unwrap();
        let marks = RevocationMarks::new(10);
        let read = |marks: &RevocationMarks| {
            let mut record = super::super::tokens::select_token(&conn, &hash)
                .unwrap()
                .unwrap();
            marks.apply_in_write(&mut record);
            record.grant_revoked_at
        };
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        marks.begin_batch(&conn).unwrap();
        assert_eq!(read(&marks), None);
        let grant = Revocation::Grant(GrantId::from_stored("g".to_owned()));
        apply(&conn, &marks, &grant, &audit()).unwrap();
        // The token row says nothing: the batch's own mark of its grant does.
        assert_eq!(read(&marks), Some(300));
        conn.execute_batch("ROLLBACK").unwrap();
        // A replay of the batch starts without it.
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        marks.begin_batch(&conn).unwrap();
        assert_eq!(read(&marks), None);
        conn.execute_batch("ROLLBACK").unwrap();
    }

    #[test]
    fn a_committed_batch_puts_its_own_marks_in_the_index_with_no_catch_up() {
        let (conn, hashes) = database(&["a", "b", "c"]);
        let marks = RevocationMarks::new(10);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        marks.begin_batch(&conn).unwrap();
        for hash in &hashes[..2] {
            apply(&conn, &marks, &Revocation::Token(*hash), &audit()).unwrap();
        }
        assert_eq!(marks.indexed(&hashes[0]), None, "not before the commit");
        conn.execute_batch("COMMIT").unwrap();
        marks.batch_committed();
        // A read that does not catch up (no SQL) already sees both, and the log's rows are
        // accounted for: the next catch-up has nothing to load.
        assert_eq!(marks.indexed(&hashes[0]), Some(300));
        assert_eq!(marks.indexed(&hashes[1]), Some(300));
        assert_eq!(marks.indexed(&hashes[2]), None);
        assert_eq!(marks.through(), 2);
        assert_eq!(marks.len(), 2);
    }

    #[test]
    fn a_batch_whose_rows_are_not_the_whole_log_after_its_base_leaves_them_to_the_catch_up() {
        let (conn, hashes) = database(&["a", "b"]);
        let marks = RevocationMarks::new(10);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        marks.begin_batch(&conn).unwrap();
        // A row the batch's marks do not know of, before the batch's own (row 2).
        conn.execute(
            "INSERT INTO revocation_log (hash, revoked_at, expires_at) VALUES (?1, 200, 1000)",
            [hashes[1].as_bytes()],
        )
        .unwrap();
        apply(&conn, &marks, &Revocation::Token(hashes[0]), &audit()).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        marks.batch_committed();
        // Indexing row 2 and moving past row 1 would lose row 1 for good.
        assert_eq!(marks.through(), 0);
        assert_eq!(marks.indexed(&hashes[0]), None);
        marks.catch_up(&conn).unwrap();
        assert_eq!(marks.indexed(&hashes[1]), Some(200));
        assert_eq!(marks.indexed(&hashes[0]), Some(300));
        assert_eq!(marks.through(), 2);
    }

    #[test]
    fn a_revocation_not_through_a_read_token_is_indexed_at_the_commit_too() {
        // `apply` (admin and profile paths) finds the token's expiry in the log insert itself.
        let (conn, hashes) = database(&["a"]);
        let marks = RevocationMarks::new(10);
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[0]), 1);
        assert_eq!(marks.indexed(&hashes[0]), Some(300));
        assert_eq!(marks.through(), 1);
        // And a row-marked revocation (the index full) leaves `through` alone.
        let (conn, hashes) = database(&["a", "b"]);
        let marks = RevocationMarks::new(1);
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[0]), 1);
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[1]), 1);
        assert_eq!(marks.through(), 1);
        assert_eq!(marks.len(), 1);
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_revocation_appends_to_the_log_and_past_the_capacity_marks_the_row() {
        let (conn, hashes) = database(&["a", "b"]);
        let marks = RevocationMarks::new(1);
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[0]), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM revocation_log"), 1);
        let marked_rows = "SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL";
        assert_eq!(count(&conn, marked_rows), 0);
        // The commit put that mark in the index: it is full.
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[1]), 1);
        assert_eq!(marks.len(), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM revocation_log"), 1);
        assert_eq!(count(&conn, marked_rows), 1);
        // Either way, a second revocation finds the token dead.
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[0]), 0);
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[1]), 0);
        assert_eq!(count(&conn, "SELECT count(*) FROM audit"), 2);
    }

    #[test]
    fn a_batch_replayed_after_a_rollback_forgets_the_marks_of_its_first_run() {
        let (conn, hashes) = database(&["a"]);
        let marks = RevocationMarks::new(10);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        marks.begin_batch(&conn).unwrap();
        apply(&conn, &marks, &Revocation::Token(hashes[0]), &audit()).unwrap();
        assert!(
            marks.mark_in_write(&hashes[0]).is_some(),
            "seen within its batch"
        );
        conn.execute_batch("ROLLBACK").unwrap();
        // The replay: the token is alive again, and its revocation counts.
        assert_eq!(revoke_in_batch(&conn, &marks, hashes[0]), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM revocation_log"), 1);
    }

    #[test]
    fn the_log_purge_takes_expired_rows_but_never_the_newest() {
        let (conn, hashes) = database(&["a", "b", "c"]);
        let marks = RevocationMarks::new(10);
        for hash in &hashes {
            assert_eq!(revoke_in_batch(&conn, &marks, *hash), 1);
        }
        let purge = |now: i64| purge_log(&conn, now, 100, 0).unwrap().0;
        assert_eq!(purge(999), 0, "nothing has expired yet");
        assert_eq!(purge(1000), 0, "their tokens are still stored");
        conn.execute("DELETE FROM tokens", []).unwrap(); // as the sweep does
        assert_eq!(purge(1000), 2);
        assert_eq!(count(&conn, "SELECT max(seq) FROM revocation_log"), 3);
        // So the next row is 4, past what every reader has seen.
        conn.execute(
            "INSERT INTO revocation_log (hash, revoked_at, expires_at) VALUES (x'00', 0, 0)",
            [],
        )
        .unwrap();
        assert_eq!(count(&conn, "SELECT max(seq) FROM revocation_log"), 4);
    }

    #[test]
    fn the_log_purge_moves_past_a_stretch_of_live_rows_and_comes_back() {
        let (conn, _) = database(&[]);
        // Rows 1-4 for long-lived tokens, 5-8 for tokens expired at 1,000.
        for expires_at in [5000, 5000, 5000, 5000, 1000, 1000, 1000, 1000] {
            conn.execute(
                "INSERT INTO revocation_log (hash, revoked_at, expires_at) VALUES (x'00', 0, ?1)",
                [expires_at],
            )
            .unwrap();
        }
        // A limit of 4 reads 4 rows a batch.
        assert_eq!(
            purge_log(&conn, 1000, 4, 0).unwrap(),
            (0, 4),
            "all four live"
        );
        assert_eq!(
            purge_log(&conn, 1000, 4, 4).unwrap(),
            (3, 8),
            "the newest row stays"
        );
        assert_eq!(
            purge_log(&conn, 1000, 4, 8).unwrap(),
            (0, 0),
            "the end: start again"
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM revocation_log"), 5);
        // Once the long-lived tokens have expired, the next sweep takes them.
        assert_eq!(purge_log(&conn, 5000, 4, 0).unwrap(), (4, 4));
        assert_eq!(count(&conn, "SELECT count(*) FROM revocation_log"), 1);
    }
}
