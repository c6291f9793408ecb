//! The storage latch needs, as narrow traits, one per capability (as ory/fosite separates its
//! storage interfaces). `latch-store` implements them once per database.
//!
//! Every write method returns only after its effect is durable; an `Err` means it did not
//! happen.

use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::{AuditContext, AuditEvent, AuditPage, AuditQuery};
use crate::client::{Client, SecretHash};
use crate::clock::UnixTime;
use crate::commits::CommitStats;
use crate::error::StoreError;
use crate::grant::{Grant, NewToken, Revocation, Rotation, RotationOutcome, TokenRecord};
use crate::id::{ClientId, GrantId, Subject, TenantId};
use crate::token::TokenHash;

/// Shorthand for storage results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A token presented for revocation, as [`Storage::client_for_revocation`] left it.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "moved twice per revocation; a box would be an allocation for nothing"
)]
pub enum TokenRead {
    /// Read with the client: the token as it was then (`None`: unknown).
    Ahead(Option<TokenRecord>),
    /// Not read yet: [`Storage::revoke_presented`] reads it inside its write.
    InWrite,
}

/// What to revoke, decided from a presented token as storage reads it: a revocation and its
/// audit context, or `None` to revoke nothing. A pure function of the token: storage may call
/// it more than once (see [`Storage::revoke_presented`]).
pub type RevocationPlan =
    Arc<dyn Fn(&TokenRecord) -> Option<(Revocation, AuditContext)> + Send + Sync>;

/// Tenants.
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// True when the tenant exists.
    async fn tenant_exists(&self, tenant: &TenantId) -> StoreResult<bool>;
    /// Tenants, sorted by id: a page of them, or all.
    async fn list_tenants(&self, page: Option<&TenantPage>) -> StoreResult<Vec<TenantId>>;
    /// Creates a tenant; `Conflict` if it exists.
    async fn create_tenant(&self, tenant: &TenantId, now: UnixTime) -> StoreResult<()>;
    /// Removes a tenant, revoking all of its grants (audited) and removing its clients, and
    /// returns once all of it is committed: in one transaction, or on SQLite in chunks, as
    /// [`ClientStore::delete_client`] says. `None` when it did not exist, else the removal's
    /// audit record (made whether or not a grant was alive); `Conflict`, changing nothing,
    /// when it holds a client the configuration declares ([`Client::declared`]).
    async fn delete_tenant(
        &self,
        tenant: &TenantId,
        audit: &AuditContext,
    ) -> StoreResult<Option<Option<AuditEvent>>>;
}

/// Registered clients.
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// One client.
    async fn client(&self, tenant: &TenantId, id: &ClientId) -> StoreResult<Option<Client>>;
    /// A tenant's clients, sorted by id: every one, or a page.
    async fn list_clients(
        &self,
        tenant: &TenantId,
        page: Option<&ClientPage>,
    ) -> StoreResult<Vec<Client>>;
    /// Registers a new client; `Conflict` if the id is taken in that tenant.
    async fn create_client(&self, client: &Client) -> StoreResult<()>;
    /// Registers or replaces a client (declarative configuration), [`Client::declared`]
    /// included.
    async fn upsert_client(&self, client: &Client) -> StoreResult<()>;
    /// Marks every declared client but those listed as no longer declared, and returns the
    /// ones it changed.
    async fn undeclare_clients_except(
        &self,
        declared: &[(TenantId, ClientId)],
    ) -> StoreResult<Vec<(TenantId, ClientId)>>;
    /// Replaces a client's secret hash `replaced` (the one its caller read) by `secret`.
    /// `false` when there is no such client, it is declared (the configuration file alone
    /// changes it), or its secret is no longer `replaced`: a rotation racing another, or the
    /// client's removal and re-creation, must not overwrite a secret it never saw.
    async fn set_client_secret(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        replaced: &SecretHash,
        secret: &SecretHash,
    ) -> StoreResult<bool>;
    /// Removes a client and revokes every grant issued to it (audited), and returns once all
    /// of it is committed. PostgreSQL does it in one transaction. SQLite, whose one writer
    /// every write waits for, revokes its grants in chunks of their own, other writes passing
    /// in between, and removes the client's row with the last (a removal a crash interrupts
    /// leaves the client in place, and is finished by
    /// [`finish_interrupted_removals`](Self::finish_interrupted_removals) or by removing the
    /// client again). `None` when there is no such client or it is declared, else the
    /// removal's audit record (made whether or not a grant was alive; `None` too when another
    /// caller removing it at the same time wrote it).
    async fn delete_client(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        audit: &AuditContext,
    ) -> StoreResult<Option<Option<AuditEvent>>>;
    /// Finishes the removals of clients and tenants a crash (or a killed command) left under
    /// way, and the revocations of a client's grants ([`RevocationStore::revoke_client_grants`])
    /// and the log-outs of a subject everywhere a crash, a stop or a failure cut off,
    /// revoking what remains at `now`, and returns their audit records (each with the time
    /// its removal or revocation began): SQLite's, which run in chunks
    /// ([`delete_client`](Self::delete_client)); nothing to do where each is one
    /// transaction. A server runs it as it starts, before serving.
    async fn finish_interrupted_removals(&self, _now: UnixTime) -> StoreResult<Vec<AuditEvent>> {
        Ok(Vec::new())
    }
}

/// Grants and their tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Looks a token up by hash, with its grant's state.
    async fn token(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>>;
    /// Stores a new grant with its first tokens, if its client still exists when the write
    /// runs, and with `client_secret`, the stored secret hash the request was authenticated
    /// against (`None`: a client without a secret); `false` (nothing stored) otherwise. So a
    /// removal revokes every grant the client will ever have, not only those stored before
    /// it, and a client removed and created again under its id (or given a new secret) since
    /// the request authenticated is not issued a grant on the old credentials.
    async fn issue(
        &self,
        grant: &Grant,
        tokens: &[NewToken],
        client_secret: Option<&SecretHash>,
    ) -> StoreResult<bool>;
    /// Exchanges a refresh token atomically; see [`Rotation`]. An exchange of an unused
    /// token of a grant that a grace use forked at that token's generation (recorded on the
    /// grant when the grace use is stored) also retires, as used with its grace spent, the
    /// grant's other unused refresh token, which only a grace use leaves; whatever the
    /// client's grace period has become since.
    async fn rotate(&self, rotation: &Rotation) -> StoreResult<RotationOutcome>;
    /// One grant of a tenant.
    async fn grant(&self, tenant: &TenantId, id: &GrantId) -> StoreResult<Option<Grant>>;
    /// A page of a subject's live grants (not revoked, not expired), newest first by id.
    async fn live_grants(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        now: UnixTime,
        page: &GrantPage,
    ) -> StoreResult<Vec<Grant>>;
}

/// A page of a listing sorted by key `K`.
#[derive(Clone, Debug)]
pub struct Page<K> {
    /// Only items whose key sorts after this one (the previous page's last).
    pub after: Option<K>,
    /// At most this many items.
    pub limit: u32,
}

/// A page of a tenant's clients, by id.
pub type ClientPage = Page<ClientId>;

/// A page of tenants, by id.
pub type TenantPage = Page<TenantId>;

/// A page of grants, newest first: grant ids are time-ordered
/// ([`GrantId::generate`]), so their order is a stable cursor. (Ids of grants issued before
/// they were, random, sort anywhere among the others; ids minted on nodes whose clocks
/// disagree, in their clocks' order.)
#[derive(Clone, Debug)]
pub struct GrantPage {
    /// Only grants whose id sorts before this one (the previous page's last).
    pub before: Option<GrantId>,
    /// At most this many grants.
    pub limit: u32,
}

/// Revocation: the one write that must be durable before latch answers, and the one that
/// storage should batch (group commit).
#[async_trait]
pub trait RevocationStore: Send + Sync {
    /// Applies a revocation at `audit.at` and, in the same transaction, records it in the
    /// audit trail with what died. Returns the record, or `None` when nothing was alive to
    /// kill (then nothing is recorded), unless the reason is always recorded
    /// ([`Reason::always_recorded`](crate::audit::Reason::always_recorded): a removal).
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditContext,
    ) -> StoreResult<Option<AuditEvent>>;

    /// Revokes every grant issued to a client, which stays (a compromised client's tokens
    /// all killed), recording it in the audit trail as [`revoke`](Self::revoke) does, and
    /// hands each record to `recorded` once it is committed. One transaction, one record (or
    /// none, nothing alive) by default, as on PostgreSQL. SQLite, whose one writer every
    /// write waits for, revokes a chunk of grants at a time, each chunk a write of its own
    /// with its own record (when it killed something), other writes passing in between, and
    /// only the grants issued by then (`audit.at`, or the latest creation time among the
    /// client's grants, should a clock have stepped back since one): it is recorded as under
    /// way before its first chunk, so that one a failure, a stop or a crash cuts off part-way
    /// (its grants revoked so far each recorded and handed over) is finished by
    /// [`finish_interrupted_removals`](ClientStore::finish_interrupted_removals), and those
    /// issued since belong to the client as it is since.
    async fn revoke_client_grants(
        &self,
        tenant: &TenantId,
        client_id: &ClientId,
        audit: &AuditContext,
        recorded: &mut (dyn FnMut(AuditEvent) + Send),
    ) -> StoreResult<()> {
        let revocation = Revocation::Client {
            tenant: tenant.clone(),
            client_id: client_id.clone(),
        };
        if let Some(event) = self.revoke(&revocation, audit).await? {
            recorded(event);
        }
        Ok(())
    }

    /// Finishes, revoking at `now`, a log-out of `subject` everywhere that is under way: one
    /// a failure cut off part-way (SQLite runs a large one in chunks; its caller was answered
    /// with the error), asked for again through a token whose grant it has already revoked,
    /// which judged alone revokes nothing. Returns its audit record when this call ended it.
    /// Nothing to do where a log-out is one transaction, as on PostgreSQL (the default).
    async fn finish_subject_logout(
        &self,
        _tenant: &TenantId,
        _subject: &Subject,
        _now: UnixTime,
    ) -> StoreResult<Option<AuditEvent>> {
        Ok(None)
    }
}

/// Reading the audit trail.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// A page of a tenant's audit events, oldest first, filtered and paged by `query`.
    async fn audit_events(&self, tenant: &TenantId, query: &AuditQuery) -> StoreResult<AuditPage>;
}

/// What one clean-up batch deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired token rows deleted.
    pub tokens: u64,
    /// Expired grant rows deleted.
    pub grants: u64,
    /// Audit records deleted for being older than the retention period.
    pub audit: u64,
}

/// Where an expiry sweep has got to. A sweep reads `tokens` in key order, then `grants` in id
/// order, a batch of rows at a time, and deletes the expired rows among them. No index on
/// expiry times is kept for it: each would be one more B-tree entry written by every
/// issuance, the hottest write (docs/benchmarks.md, round of 2026-12-03 08:29).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Token rows past this key (`None`: from the first).
    Tokens(Option<TokenHash>),
    /// Grant rows past this id (`None`: from the first).
    Grants(Option<GrantId>),
}

impl Sweep {
    /// Where every sweep starts.
    pub const START: Sweep = Sweep::Tokens(None);
}

/// Deleting what can never be active again.
#[async_trait]
pub trait CleanupStore: Send + Sync {
    /// Reads at most `limit` rows of the table `from` names, past its key, and deletes those
    /// that had expired by `expired_by` (`expires_at <= expired_by`), in one short
    /// transaction. Returns what went and where the next batch starts: further in the same
    /// table, at the start of `grants` once `tokens` is done, `None` once both are. Only
    /// expired rows go: a revoked but unexpired token keeps its row, so it keeps reading as
    /// revoked. The caller allows for skewed clocks ([`crate::cleanup::EXPIRY_GRACE`]):
    /// `expired_by` is some minutes before now.
    async fn purge_expired(
        &self,
        expired_by: UnixTime,
        from: Sweep,
        limit: u32,
    ) -> StoreResult<(Purged, Option<Sweep>)>;

    /// Once a run of [`purge_expired`](Self::purge_expired) has swept everything by
    /// `expired_by`: forgets what the back-end holds in memory of the rows it deleted
    /// (SQLite's revocation marks). An expired token is inactive whatever its mark says.
    fn forget_expired(&self, _expired_by: UnixTime) {}

    /// Deletes audit records written before `before`, at most `limit` of them, oldest first,
    /// in one short transaction; returns how many went. Only the oldest `limit` records are
    /// looked at, so a batch costs the same however long the trail is.
    async fn purge_audit(&self, before: UnixTime, limit: u32) -> StoreResult<u64>;
}

/// Everything the engine needs, as one object.
#[async_trait]
pub trait Storage:
    TenantStore + ClientStore + TokenStore + RevocationStore + AuditStore + CleanupStore
{
    /// Succeeds when the database answers a query and the writer is running (for
    /// readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// The database's own clock, where it runs on another machine and is the one clock every
    /// node sharing the database can compare theirs with (PostgreSQL); `None` where the
    /// database is this process's own file (SQLite).
    async fn database_time(&self) -> StoreResult<Option<UnixTime>> {
        Ok(None)
    }

    /// True once the writer has stopped for good (it panicked): every write fails until the
    /// process restarts, so liveness reports it. A database that is merely unreachable is
    /// not this (the writer reconnects); readiness reports that.
    fn writer_stopped(&self) -> bool;

    /// Leaves the database self-contained on disk, for when the server stops, after its last
    /// request: SQLite copies its write-ahead log into the database file and empties it, so
    /// that the file alone holds every commit (a copy of it is a whole database). A write
    /// after this still works and is still durable, in the log again. The default does
    /// nothing (a server database needs nothing of the kind).
    async fn close(&self) -> StoreResult<()> {
        Ok(())
    }

    /// How the group commit has gone since start-up. The default, for a back-end without
    /// one, is all zeros.
    fn commit_stats(&self) -> CommitStats {
        CommitStats::default()
    }

    /// How many revocations (of single tokens, and of grants for their access tokens) the
    /// back-end holds in memory to answer reads (SQLite's index of its revocation log, which
    /// has a bound); zero for a back-end that keeps none.
    fn revocation_marks(&self) -> u64 {
        0
    }

    /// A client and a token, read together: [`ClientStore::client`] and
    /// [`TokenStore::token`] in one statement, so in one read transaction (SQLite) or one
    /// round trip (PostgreSQL). Introspection needs both on every request.
    async fn client_and_token(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        hash: &TokenHash,
    ) -> StoreResult<(Option<Client>, Option<TokenRecord>)>;

    /// The client, ahead of revoking the token `hash` on its behalf, and the token too
    /// unless the back-end reads it inside the revoking write. The default reads both now,
    /// in one statement ([`Storage::client_and_token`]).
    async fn client_for_revocation(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        hash: &TokenHash,
    ) -> StoreResult<(Option<Client>, TokenRead)> {
        let (client, token) = self.client_and_token(tenant, id, hash).await?;
        Ok((client, TokenRead::Ahead(token)))
    }

    /// Applies what `plan` makes of the token `hash` (as `read` ahead, or read now), as
    /// [`RevocationStore::revoke`] does: durably, audited. Returns the token as `plan` saw it
    /// (`None`: unknown) and the audit record (`None`: nothing revoked).
    ///
    /// A back-end that reads the token inside the write transaction (SQLite: its writer's
    /// page cache survives commits, where a reader's is emptied by each one, so the token's
    /// pages are read once instead of once per connection) answers
    /// [`Storage::client_for_revocation`] with [`TokenRead::InWrite`] and overrides this;
    /// `plan` then sees the token exactly as the revocation finds it.
    async fn revoke_presented(
        &self,
        hash: &TokenHash,
        read: TokenRead,
        plan: RevocationPlan,
    ) -> StoreResult<(Option<TokenRecord>, Option<AuditEvent>)> {
        let record = match read {
            TokenRead::Ahead(record) => record,
            TokenRead::InWrite => self.token(hash).await?,
        };
        let Some(record) = record else {
            return Ok((None, None));
        };
        let event = match plan(&record) {
            Some((revocation, audit)) => self.revoke(&revocation, &audit).await?,
            None => None,
        };
        Ok((Some(record), event))
    }
}
