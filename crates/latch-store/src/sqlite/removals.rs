//! Removing a client or a tenant in chunks (schema version 11). SQLite has one writer, and
//! every write waits for the one it is running: one transaction revoking every grant of a
//! large client held all of them up for its whole length (13-14 s per 1,000,000 grants), and
//! a server's writes beside a command doing it gave up after the busy timeout. So a removal
//! is recorded as under way first (a `removals` row, with what its audit record will say);
//! then chunks of its grants are revoked, each a write of its own, adding what died to that
//! row; and the last write removes the client's (or the tenant's) rows, revokes the grants
//! issued since the chunks passed, and turns the row into the audit record. The caller
//! answers after that last write.
//!
//! Until that last write the client (the tenant) exists, as it did until a one-transaction
//! removal committed: a removal interrupted between chunks (a crash, a killed command)
//! leaves it in place with some of its grants revoked, never gone with live grants. The next
//! server start finishes it (`ClientStore::finish_interrupted_removals`), as does removing
//! it again.
//!
//! [`LiveGrants`] picks the chunks, here and for the revocation of every grant of a client
//! that stays (`client_grants.rs`).

use latch_core::audit::{AuditContext, AuditEvent, Killed};
use latch_core::clock::UnixTime;
use latch_core::id::{ClientId, TenantId};
use latch_core::StoreError;
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use super::live_clients;
use super::marks::{MarkOf, Marked, RevocationMarks};
use super::revocations::{count_marks, last_audit_event, revoke_grants_where};
use super::subject_logouts::SubjectLogout;

/// What a removal takes away: a tenant's client, or the whole tenant, with their grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Removal {
    /// The key of its `removals` row: the tenant, and the client (`''` for the whole tenant).
    tenant: String,
    client: String,
    grants: LiveGrants,
}

impl Removal {
    /// The removal of a tenant's client.
    pub(super) fn client(tenant: &TenantId, id: &ClientId) -> Self {
        Self::of_row(tenant.to_string(), id.to_string())
    }

    /// The removal of a whole tenant.
    pub(super) fn tenant(tenant: &TenantId) -> Self {
        Self::of_row(tenant.to_string(), String::new())
    }

    /// The removal a `removals` row keys (`client` empty: the whole tenant).
    fn of_row(tenant: String, client: String) -> Self {
        let holder = if client.is_empty() {
            Holder::Tenant
        } else {
            Holder::Client(client.clone())
        };
        Self {
            grants: LiveGrants {
                tenant: tenant.clone(),
                holder,
                issued_by: None,
            },
            tenant,
            client,
        }
    }

    /// Records the removal as under way, with what its audit record will say, once the
    /// caller has checked that what it removes exists; a removal of it already under way (one
    /// a crash interrupted, or another caller's) is joined instead, as it was recorded.
    pub(super) fn begin(&self, c: &Connection, audit: &AuditContext) -> rusqlite::Result<()> {
        c.prepare_cached(
            "INSERT OR IGNORE INTO removals (tenant_id, client_id, reason, at, actor, route, \
               subject, address) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            self.tenant,
            self.client,
            audit.reason.as_str(),
            audit.at,
            audit.actor,
            audit.route,
            audit.subject.as_ref().map(|s| s.as_str()),
            audit.address.map(|a| a.to_string()),
        ])?;
        Ok(())
    }

    /// Every removal under way.
    pub(super) fn all_under_way(c: &Connection) -> rusqlite::Result<Vec<Self>> {
        c.prepare("SELECT tenant_id, client_id FROM removals")?
            .query_map([], |r| Ok(Self::of_row(r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// One chunk: revokes up to `limit` of the unrevoked grants it removes, with their
    /// tokens, at `now`, and adds what died to its row. Returns whether others may remain;
    /// `false` too when the removal has ended (another caller finished it).
    ///
    /// `now` is the time of whatever drives the removal: the request that began it, or, for
    /// one a crash interrupted, the start or the request finishing it. Its audit record keeps
    /// the time it began.
    pub(super) fn chunk(
        &self,
        c: &Connection,
        marks: &RevocationMarks,
        now: UnixTime,
        limit: u32,
    ) -> rusqlite::Result<bool> {
        if !self.under_way(c)? {
            return Ok(false);
        }
        let mut marked = Vec::new();
        let (killed, full) = (self.grants).revoke_chunk(c, marks, now, limit, &mut marked)?;
        c.prepare_cached(
            "UPDATE removals SET grants = grants + ?3, tokens = tokens + ?4 \
             WHERE tenant_id = ?1 AND client_id = ?2",
        )?
        .execute(params![
            self.tenant,
            self.client,
            killed.grants,
            killed.tokens
        ])?;
        count_marks(marks, now, marked);
        Ok(full)
    }

    /// Ends it once its chunks have revoked every grant: removes the client's rows (the
    /// tenant's and its clients'), revokes (at `now`) the grants issued since the chunks passed them,
    /// records it in the audit trail with what all its writes killed, and deletes its row
    /// (a tenant's, the rows of its clients' removals too: those clients are gone, and their
    /// ids may be given again). `Ok(None)` when it had ended (another caller finished it).
    /// `Err(Conflict)` when what it removes is now declared by the configuration (a start
    /// declared it while the removal ran): the removal is then given up, its row deleted, the
    /// grants its chunks revoked staying revoked; also when another process gave it up so
    /// (its row gone, what it removes still there).
    pub(super) fn finish(
        &self,
        c: &Connection,
        marks: &RevocationMarks,
        now: UnixTime,
    ) -> rusqlite::Result<Result<Option<AuditEvent>, StoreError>> {
        if !self.under_way(c)? {
            return Ok(if self.removes_something(c)? {
                Err(StoreError::Conflict)
            } else {
                Ok(None)
            });
        }
        let (of, values) = self.grants.rows(1);
        let declared: bool = c
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM clients WHERE {of} AND declared)"
            ))?
            .query_row(values.as_slice(), |r| r.get(0))?;
        if declared {
            record_chunks(c, &self.tenant, Some(&self.client))?;
            c.prepare_cached("DELETE FROM removals WHERE tenant_id = ?1 AND client_id = ?2")?
                .execute(params![self.tenant, self.client])?;
            return Ok(Err(StoreError::Conflict));
        }
        live_clients::forget();
        if self.client.is_empty() {
            // Clients reference the tenant, so they go first.
            c.execute("DELETE FROM clients WHERE tenant_id = ?1", [&self.tenant])?;
            c.execute("DELETE FROM tenants WHERE id = ?1", [&self.tenant])?;
        } else {
            c.execute(
                "DELETE FROM clients WHERE tenant_id = ?1 AND client_id = ?2",
                params![self.tenant, self.client],
            )?;
        }
        if self.client.is_empty() {
            // The removals of its clients and the log-outs of its subjects under way end
            // with it, before its own record.
            record_chunks(c, &self.tenant, None)?;
            SubjectLogout::end_with_tenant(c, &self.tenant)?;
        }
        // Its marks count once this write can no longer fail: kept until then.
        let mut marked = Vec::new();
        let killed = (self.grants).revoke_first(c, marks, now, None, &mut marked)?;
        c.prepare_cached(
            "INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, grants, \
               tokens, address) \
             SELECT tenant_id, at, actor, route, reason, NULL, subject, grants + ?3, \
               tokens + ?4, address \
             FROM removals WHERE tenant_id = ?1 AND client_id = ?2",
        )?
        .execute(params![
            self.tenant,
            self.client,
            killed.grants,
            killed.tokens
        ])?;
        let event = last_audit_event(c)?;
        if self.client.is_empty() {
            c.prepare_cached("DELETE FROM removals WHERE tenant_id = ?1")?
                .execute([&self.tenant])?;
        } else {
            c.prepare_cached("DELETE FROM removals WHERE tenant_id = ?1 AND client_id = ?2")?
                .execute(params![self.tenant, self.client])?;
        }
        count_marks(marks, now, marked);
        Ok(Ok(Some(event)))
    }

    /// Whether it is under way (its row there).
    fn under_way(&self, c: &Connection) -> rusqlite::Result<bool> {
        c.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM removals WHERE tenant_id = ?1 AND client_id = ?2)",
        )?
        .query_row(params![self.tenant, self.client], |r| r.get(0))
    }

    /// Whether what it removes (the client, or the tenant) is still there: once its row is
    /// gone, it was given up rather than finished.
    fn removes_something(&self, c: &Connection) -> rusqlite::Result<bool> {
        if self.client.is_empty() {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = ?1)")?
                .query_row(params![self.tenant], |r| r.get(0))
        } else {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM clients WHERE tenant_id = ?1 AND client_id = ?2)",
            )?
            .query_row(params![self.tenant, self.client], |r| r.get(0))
        }
    }
}

/// Records what the chunks of removals that will not finish revoked (the removal of
/// `client`, given up; or, without one, those of the tenant's clients, which its removal
/// ends), each in an audit record of its own as its row describes it: its grants stay
/// revoked, and no revocation goes without its record. Rows whose chunks revoked nothing
/// leave none.
fn record_chunks(c: &Connection, tenant: &str, client: Option<&str>) -> rusqlite::Result<()> {
    let which = if client.is_some() {
        "client_id = ?2"
    } else {
        "client_id <> ''"
    };
    let sql = format!(
        "INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, grants, \
           tokens, address) \
         SELECT tenant_id, at, actor, route, reason, NULL, subject, grants, tokens, address \
         FROM removals WHERE tenant_id = ?1 AND {which} AND (grants > 0 OR tokens > 0)"
    );
    let mut insert = c.prepare_cached(&sql)?;
    match client {
        Some(client) => insert.execute(params![tenant, client])?,
        None => insert.execute([tenant])?,
    };
    Ok(())
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.grants.fmt(f)
    }
}

/// The live grants of a tenant's client, of one of its subjects, or of the whole tenant,
/// revoked a chunk at a time: by a removal, by a revocation of every grant of a client that
/// stays (`client_grants.rs`), which takes only those issued by a time, and by a log-out of a
/// subject everywhere (`subject_logouts.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LiveGrants {
    tenant: String,
    holder: Holder,
    /// The latest creation time of those it takes, if it has one.
    issued_by: Option<UnixTime>,
}

/// Whose grants, in the tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    Tenant,
    Client(String),
    Subject(String),
}

impl LiveGrants {
    /// A tenant's client's.
    pub(super) fn of_client(tenant: &TenantId, id: &ClientId) -> Self {
        Self::of(tenant, Holder::Client(id.to_string()))
    }

    /// A tenant's subject's, across all of its clients.
    pub(super) fn of_subject(tenant: &str, subject: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            holder: Holder::Subject(subject.to_owned()),
            issued_by: None,
        }
    }

    fn of(tenant: &TenantId, holder: Holder) -> Self {
        Self {
            tenant: tenant.to_string(),
            holder,
            issued_by: None,
        }
    }

    /// Only those of them created by `at`.
    pub(super) fn issued_by(self, at: UnixTime) -> Self {
        Self {
            issued_by: Some(at),
            ..self
        }
    }

    /// The latest creation time among them, if there are any.
    pub(super) fn latest_issued(&self, c: &Connection) -> rusqlite::Result<Option<UnixTime>> {
        let (of, values) = self.rows(1);
        c.prepare_cached(&format!(
            "SELECT max(created_at) FROM grants WHERE {of} AND revoked_at IS NULL"
        ))?
        .query_row(values.as_slice(), |r| r.get(0))
    }

    /// Revokes, at `now`, a chunk of them: the first `limit`, with their tokens
    /// ([`revoke_first`](Self::revoke_first)). Returns what died, and whether others may
    /// remain (it was a full chunk).
    pub(super) fn revoke_chunk(
        &self,
        c: &Connection,
        marks: &RevocationMarks,
        now: UnixTime,
        limit: u32,
        marked: &mut Vec<(MarkOf, Marked)>,
    ) -> rusqlite::Result<(Killed, bool)> {
        let full = self.at_least(c, limit)?;
        let killed = self.revoke_first(c, marks, now, Some(limit), marked)?;
        Ok((killed, full))
    }

    /// Whether there are at least `n` unrevoked ones: a chunk of `n` is then a full one,
    /// which others may follow.
    pub(super) fn at_least(&self, c: &Connection, n: u32) -> rusqlite::Result<bool> {
        let (of, values) = self.rows(1);
        Ok(c.prepare_cached(&format!(
            "SELECT 1 FROM grants WHERE {of} AND revoked_at IS NULL LIMIT 1 OFFSET {}",
            n.saturating_sub(1)
        ))?
        .query_row(values.as_slice(), |_| Ok(()))
        .optional()?
        .is_some())
    }

    /// Revokes, at `now`, the first `limit` unrevoked ones (all of them without one), with
    /// their tokens, pushing the marks it makes to `marked` (the caller counts them once its
    /// write can no longer fail); returns what died.
    pub(super) fn revoke_first(
        &self,
        c: &Connection,
        marks: &RevocationMarks,
        now: UnixTime,
        limit: Option<u32>,
        marked: &mut Vec<(MarkOf, Marked)>,
    ) -> rusqlite::Result<Killed> {
        // Ordered in full (the grants' key breaks ties), so each statement selects the same
        // grants; through `grants_live_by_client` (`grants_live_by_subject` for a subject's),
        // which holds them in that order.
        let limit = limit.map_or(-1, i64::from);
        let (of, rows) = self.rows(2);
        let order = match self.holder {
            Holder::Subject(_) => "subject, id",
            Holder::Tenant | Holder::Client(_) => "client_id, id",
        };
        let condition = format!(
            "g.id IN (SELECT id FROM grants WHERE {of} AND revoked_at IS NULL \
                      ORDER BY {order} LIMIT {limit})"
        );
        let mut values: Vec<&dyn ToSql> = vec![&now];
        values.extend(rows);
        revoke_grants_where(c, marks, now, &condition, &values, marked)
    }

    /// The condition on `tenant_id` (and `client_id` or `subject`, and `created_at` when
    /// they have a bound) selecting the rows of their holder, its parameters numbered from
    /// `first`, and their values.
    fn rows(&self, first: usize) -> (String, Vec<&dyn ToSql>) {
        let mut of = format!("tenant_id = ?{first}");
        let mut values = vec![&self.tenant as &dyn ToSql];
        let holder = match &self.holder {
            Holder::Tenant => None,
            Holder::Client(client) => Some(("client_id", client)),
            Holder::Subject(subject) => Some(("subject", subject)),
        };
        if let Some((column, value)) = holder {
            of.push_str(&format!(" AND {column} = ?{}", first + 1));
            values.push(value);
        }
        if let Some(at) = &self.issued_by {
            of.push_str(&format!(" AND created_at <= ?{}", first + values.len()));
            values.push(at);
        }
        (of, values)
    }
}

impl std::fmt::Display for LiveGrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.holder {
            Holder::Tenant => write!(f, "tenant {}", self.tenant),
            Holder::Client(client) => write!(f, "client {client} of tenant {}", self.tenant),
            Holder::Subject(subject) => write!(
                f,
                "subject {} of tenant {}",
                subject.escape_debug(),
                self.tenant
            ),
        }
    }
}
