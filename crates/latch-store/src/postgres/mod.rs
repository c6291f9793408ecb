//! The PostgreSQL back-end, for several stateless latch nodes on one database.
//!
//! Reads use a connection pool, except the hot path's, which share a few pipelined
//! connections ([`pipelined`]). Writes go through a per-node committer ([`committer`]): one
//! dedicated connection that applies every queued write in one transaction and commits once,
//! as the SQLite back-end does (and a second one for the writes with no bound on their work,
//! removals and log-outs, so that none of them holds the others up). Atomicity across nodes comes from PostgreSQL's row locks: the
//! conditional UPDATEs (`rotated_at IS NULL`, `revoked_at IS NULL`) re-check their condition
//! after waiting for a concurrent writer, so of two nodes exchanging one refresh token exactly
//! one sees its row change.

/// The key of the advisory lock that settles the audit trail's ids, as SQL: "laud" (in
/// ASCII) in its high half, and in its low half the `audit` table's oid, which tells apart the
/// trails of deployments in other schemas of one database (advisory locks are the
/// database's), whatever each node's `search_path` names first. Record ids come from one
/// sequence, taken mid-transaction, and transactions commit in the order they end: with
/// several nodes writing, record 101 can be visible while record 100 is not yet, and a reader
/// paging with `?after=101` would never see 100. So every write batch holds this lock shared
/// from its start to its end (`committer::BEGIN_BATCH_SQL`), and a read of the trail first
/// takes it exclusively, for a moment, which waits for the batches then writing
/// (`reads::settled_audit_id`): every id the sequence had handed out by then is settled,
/// committed or rolled back, and the read returns no record past it.
macro_rules! audit_lock_key {
    () => {
        "((1818326372::BIGINT << 32) | 'audit'::regclass::oid::BIGINT)"
    };
}

/// [`audit_lock_key!`], for SQL built outside this module (tests playing another node).
pub const AUDIT_LOCK_KEY: &str = audit_lock_key!();

mod cleanup;
mod committer;
mod deadline;
mod lookups;
mod pipelined;
mod reads;
mod tls;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use latch_core::audit::{AuditContext, AuditEvent, AuditPage, AuditQuery};
use latch_core::client::{Client, SecretHash};
use latch_core::clock::UnixTime;
use latch_core::commits::{CommitMeter, CommitStats};
use latch_core::grant::{Grant, NewToken, Revocation, Rotation, RotationOutcome, TokenRecord};
use latch_core::id::{ClientId, GrantId, Subject, TenantId};
use latch_core::store::{
    AuditStore, CleanupStore, ClientPage, ClientStore, GrantPage, Purged, RevocationStore, Storage,
    StoreResult, Sweep, TenantPage, TenantStore, TokenStore,
};
use latch_core::token::TokenHash;
use latch_core::StoreError;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use committer::{Committer, Op, Reply};
use deadline::{cancel_backend, Deadline};
use lookups::Lookups;
use pipelined::Pipelined;

/// A schema migration, and whether nodes that do not know it may go on using the database
/// once it is applied.
struct Migration {
    sql: &'static str,
    /// Whether a latch that knows only the versions before this one still reads and writes
    /// the database correctly after it. Many nodes share one database, so a rolling upgrade
    /// has older nodes running, and restarting, beside a migrated schema: a migration should
    /// keep them correct (add, never change what they rely on). One that cannot (as SQLite's
    /// revocation log could not: older readers would miss revocations) says so here, and
    /// older nodes then refuse to start on it.
    older_nodes_safe: bool,
}

/// Schema migrations, applied in order at start-up under an advisory lock, so nodes starting
/// together do not race. A node refuses a database only past the last migration it knows
/// that is not [`Migration::older_nodes_safe`]. Versions 1 to 4 predate that flag (rows
/// recorded before it read as safe, and no latch knowing fewer than four versions checks it).
const MIGRATIONS: &[Migration] = &[
    Migration {
        sql: include_str!("schema_v1.sql"),
        older_nodes_safe: true,
    },
    // The audit trail: a node from before it would revoke without an audit record.
    Migration {
        sql: include_str!("schema_v2.sql"),
        older_nodes_safe: false,
    },
    // The "C" collation: the same comparisons an older node's queries expect.
    Migration {
        sql: include_str!("schema_v3.sql"),
        older_nodes_safe: true,
    },
    // Indexes on expiry times dropped: an older node's clean-up scans instead (slower).
    Migration {
        sql: include_str!("schema_v4.sql"),
        older_nodes_safe: true,
    },
    // Access tokens carry their grant's owner: an older node writes them without it (read
    // with their grant) and revokes grants as before (the index of revoked grants follows).
    Migration {
        sql: include_str!("schema_v5.sql"),
        older_nodes_safe: true,
    },
    // A grant records its fork: an older node's grace uses are recorded by the trigger, and
    // it retires a sibling as before (for clients with a grace period).
    Migration {
        sql: include_str!("schema_v6.sql"),
        older_nodes_safe: true,
    },
    // A client records that the configuration declares it: an older node ignores the
    // column (and so does not refuse to change a declared client).
    Migration {
        sql: include_str!("schema_v7.sql"),
        older_nodes_safe: true,
    },
    // The audit trail's index by subject keyed by block first: an older node's queries by
    // subject read the tenant's trail instead, slower but the same answer.
    Migration {
        sql: include_str!("schema_v8.sql"),
        older_nodes_safe: true,
    },
    // A grant's tokens indexed by kind and rotation time too: an older node's queries by
    // grant read it by its first column.
    Migration {
        sql: include_str!("schema_v9.sql"),
        older_nodes_safe: true,
    },
    // Which tokens a client may introspect: older nodes let every client read any, as
    // before.
    Migration {
        sql: include_str!("schema_v10.sql"),
        older_nodes_safe: true,
    },
];

/// Connections in the read pool of one node, [`PIPELINED_CONNECTIONS`] of them included.
const POOL_SIZE: usize = 16;

/// Connections shared, pipelined, by the hot-path reads ([`pipelined`]). Nearly all of them
/// are the batched lookups (`lookups`), one statement at a time, so a second connection
/// bought no parallelism: it only handed alternate batches to a second backend whose caches
/// were cold. One: introspection +5.5% (5 interleaved rounds on one core shared with
/// PostgreSQL, order swapped in two; docs/benchmarks.md). A node's hot reads thus use one
/// backend; more nodes use more.
const PIPELINED_CONNECTIONS: usize = 1;

/// Run first in a transaction latch gives no deadline (a removal, a log-out, the schema's
/// migrations), before it waits for any lock: a `statement_timeout` or `lock_timeout` set on
/// the server, the database, the role or in the URL's options would otherwise fail every
/// such transaction slower than it allows, each time it is asked again (a node starting
/// while another migrates waits on the migrations' lock; a migration may build an index on
/// a large table); and so would PostgreSQL 17's `transaction_timeout`, where the server
/// knows it. Local to the transaction (`SET LOCAL`), as behind a transaction pooler a
/// session's setting would not follow it; everything else keeps the server's timeouts.
pub(crate) const LIFT_TIMEOUTS_SQL: &str = "SELECT set_config('statement_timeout', '0', true), \
     set_config('lock_timeout', '0', true), \
     CASE WHEN current_setting('transaction_timeout', true) IS NOT NULL \
          THEN set_config('transaction_timeout', '0', true) END";

/// The advisory lock that serialises migrations ("latch" in ASCII).
const MIGRATION_LOCK: i64 = 0x006c_6174_6368;

pub(crate) fn store_error(e: &tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::FOREIGN_KEY_VIOLATION => {
            StoreError::Conflict
        }
        _ => StoreError::Unavailable(describe(e)),
    }
}

/// A pool that could not hand out a connection, with the connection error's cause.
pub(crate) fn no_connection(e: &deadpool_postgres::PoolError) -> StoreError {
    let why = match e {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    };
    StoreError::Unavailable(format!("no database connection: {why}"))
}

/// An error with its cause: tokio-postgres's own text is only its kind ("db error", "error
/// performing TLS handshake"), and what went wrong is in the source.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// latch's storage on PostgreSQL.
pub struct PgStore {
    pool: Pool,
    /// How long a read may wait for PostgreSQL ([`deadline`]).
    deadline: Deadline,
    /// To reach the server for a cancel request.
    tls: MakeRustlsConnect,
    hot: Arc<Pipelined>,
    lookups: Lookups,
    committer: Committer,
    /// The committer's batches, counted.
    commits: Arc<CommitMeter>,
    /// The latest audit id this node has seen settled (`reads::audit_events`).
    settled_audit: AtomicI64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl PgStore {
    /// Connects, applies pending migrations and starts the committer. Must be called within
    /// a tokio runtime.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let tls::Target {
            config,
            tls,
            deadline,
        } = tls::parse(url)?;
        migrate(&config, &tls).await?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let hot = Arc::new(Pipelined::new(
            pool.clone(),
            PIPELINED_CONNECTIONS,
            deadline,
            tls.clone(),
        ));
        let commits = Arc::new(CommitMeter::default());
        Ok(Self {
            lookups: Lookups::start(hot.clone()),
            hot,
            pool,
            deadline,
            committer: Committer::start(config, tls.clone(), commits.clone(), deadline),
            tls,
            commits,
            settled_audit: AtomicI64::new(0),
        })
    }

    /// Runs `read` on a pooled connection, within the deadline. A connection that misses it
    /// has its backend asked to cancel, and is closed instead of going back to the pool,
    /// where the next query given it would wait behind the one that got no answer.
    async fn pooled<T>(
        &self,
        read: impl AsyncFnOnce(&ClientWrapper) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let client = self
            .deadline
            .within(self.pool.get())
            .await?
            .map_err(|e| no_connection(&e))?;
        match self.deadline.within(read(&client)).await {
            Ok(answer) => answer,
            Err(late) => {
                cancel_backend(client.cancel_token(), &self.tls, self.deadline);
                drop(Object::take(client));
                Err(late.into())
            }
        }
    }

    async fn write(&self, op: Op) -> StoreResult<Reply> {
        self.committer.submit(op).await
    }
}

async fn migrate(config: &tokio_postgres::Config, tls: &MakeRustlsConnect) -> StoreResult<()> {
    let (mut client, connection) =
        (config.connect(tls.clone()).await).map_err(|e| store_error(&e))?;
    let conn = tokio::spawn(connection);
    // A migration that locks tables (version 6) may deadlock with the writes of nodes
    // already running; PostgreSQL aborts one of the two, and either is simply run again.
    let mut attempt = 0;
    let result = loop {
        match migrate_once(&mut client).await {
            Err(e) if committer::is_retryable(&e) && attempt < MIGRATION_RETRIES => attempt += 1,
            other => break other,
        }
    };
    drop(client);
    let _ = conn.await;
    result.map_err(|e| store_error(&e))?
}

/// How often a migration aborted by a deadlock is run again.
const MIGRATION_RETRIES: usize = 3;

/// Applies the pending migrations in one transaction; the inner error is a schema this latch
/// must not use.
async fn migrate_once(
    client: &mut tokio_postgres::Client,
) -> Result<StoreResult<()>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.query_one(LIFT_TIMEOUTS_SQL, &[]).await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS latch_migrations (\
           version INTEGER PRIMARY KEY, \
           applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
         ALTER TABLE latch_migrations \
           ADD COLUMN IF NOT EXISTS older_nodes_safe BOOLEAN NOT NULL DEFAULT true",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0), \
               COALESCE(MAX(version) FILTER (WHERE NOT older_nodes_safe), 0) \
             FROM latch_migrations",
            &[],
        )
        .await?;
    let (current, floor): (i32, i32) = (row.get(0), row.get(1));
    let known = MIGRATIONS.len() as i32;
    if floor > known {
        return Ok(Err(newer_schema(current, floor)));
    }
    if current > known {
        tracing::warn!(
            schema = current,
            known,
            "the database's schema is newer than this latch's; its later migrations \
             keep older nodes correct, so this one runs (upgrade it to match)"
        );
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO latch_migrations (version, older_nodes_safe) VALUES ($1, $2)",
            &[&(i as i32 + 1), &migration.older_nodes_safe],
        )
        .await?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    tx.commit().await.map(Ok)
}

/// A database a newer latch migrated past what this one can use correctly (migration
/// `floor` is not [`Migration::older_nodes_safe`]): it refuses to start instead.
fn newer_schema(current: i32, floor: i32) -> StoreError {
    StoreError::Unavailable(format!(
        "the database's schema is version {current}, and from version {floor} on it is not \
         safe for a latch that knows only up to version {}: run a latch at least as new as \
         version {floor} requires",
        MIGRATIONS.len()
    ))
}

#[async_trait]
impl TenantStore for PgStore {
    async fn tenant_exists(&self, tenant: &TenantId) -> StoreResult<bool> {
        self.hot
            .read(async |c| reads::tenant_exists(c, tenant).await)
            .await
    }

    async fn list_tenants(&self, page: Option<&TenantPage>) -> StoreResult<Vec<TenantId>> {
        self.pooled(async |c| reads::list_tenants(c, page).await)
            .await
    }

    async fn create_tenant(&self, tenant: &TenantId, now: UnixTime) -> StoreResult<()> {
        self.write(Op::CreateTenant(tenant.clone(), now))
            .await
            .map(|_| ())
    }

    async fn delete_tenant(
        &self,
        tenant: &TenantId,
        audit: &AuditContext,
    ) -> StoreResult<Option<Option<AuditEvent>>> {
        self.write(Op::DeleteTenant(tenant.clone(), audit.clone()))
            .await?
            .removed()
    }
}

#[async_trait]
impl ClientStore for PgStore {
    async fn client(&self, tenant: &TenantId, id: &ClientId) -> StoreResult<Option<Client>> {
        self.hot
            .read(async |c| reads::client(c, tenant, id).await)
            .await
    }

    async fn list_clients(
        &self,
        tenant: &TenantId,
        page: Option<&ClientPage>,
    ) -> StoreResult<Vec<Client>> {
        self.pooled(async |c| reads::list_clients(c, tenant, page).await)
            .await
    }

    async fn create_client(&self, client: &Client) -> StoreResult<()> {
        self.write(Op::PutClient(client.clone(), false))
            .await
            .map(|_| ())
    }

    async fn upsert_client(&self, client: &Client) -> StoreResult<()> {
        self.write(Op::PutClient(client.clone(), true))
            .await
            .map(|_| ())
    }

    async fn undeclare_clients_except(
        &self,
        declared: &[(TenantId, ClientId)],
    ) -> StoreResult<Vec<(TenantId, ClientId)>> {
        match self.write(Op::UndeclareClients(declared.to_vec())).await? {
            Reply::Clients(undeclared) => Ok(undeclared),
            other => Err(other.unexpected()),
        }
    }

    async fn set_client_secret(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        replaced: &SecretHash,
        secret: &SecretHash,
    ) -> StoreResult<bool> {
        self.write(Op::SetSecret(
            tenant.clone(),
            id.clone(),
            replaced.clone(),
            secret.clone(),
        ))
        .await?
        .flag()
    }

    async fn delete_client(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        audit: &AuditContext,
    ) -> StoreResult<Option<Option<AuditEvent>>> {
        self.write(Op::DeleteClient(tenant.clone(), id.clone(), audit.clone()))
            .await?
            .removed()
    }
}

#[async_trait]
impl TokenStore for PgStore {
    async fn token(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        self.hot.read(async |c| reads::token(c, hash).await).await
    }

    async fn issue(
        &self,
        grant: &Grant,
        tokens: &[NewToken],
        client_secret: Option<&SecretHash>,
    ) -> StoreResult<bool> {
        self.write(Op::Issue(
            grant.clone(),
            tokens.to_vec(),
            client_secret.cloned(),
        ))
        .await?
        .flag()
    }

    async fn rotate(&self, rotation: &Rotation) -> StoreResult<RotationOutcome> {
        match self.write(Op::Rotate(rotation.clone())).await? {
            Reply::Rotation(outcome) => Ok(outcome),
            other => Err(other.unexpected()),
        }
    }

    async fn grant(&self, tenant: &TenantId, id: &GrantId) -> StoreResult<Option<Grant>> {
        self.pooled(async |c| reads::grant(c, tenant, id).await)
            .await
    }

    async fn live_grants(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        now: UnixTime,
        page: &GrantPage,
    ) -> StoreResult<Vec<Grant>> {
        self.pooled(async |c| reads::live_grants(c, tenant, subject, now, page).await)
            .await
    }
}

#[async_trait]
impl RevocationStore for PgStore {
    async fn revoke(
        &self,
        revocation: &Revocation,
        audit: &AuditContext,
    ) -> StoreResult<Option<AuditEvent>> {
        match self
            .write(Op::Revoke(revocation.clone(), audit.clone()))
            .await?
        {
            Reply::Audited(event) => Ok(event),
            other => Err(other.unexpected()),
        }
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn audit_events(&self, tenant: &TenantId, query: &AuditQuery) -> StoreResult<AuditPage> {
        self.pooled(async |c| reads::audit_events(c, tenant, query, &self.settled_audit).await)
            .await
    }
}

#[async_trait]
impl CleanupStore for PgStore {
    async fn purge_expired(
        &self,
        expired_by: UnixTime,
        from: Sweep,
        limit: u32,
    ) -> StoreResult<(Purged, Option<Sweep>)> {
        self.pooled(async |c| {
            cleanup::sweep(&**c, expired_by, &from, limit)
                .await
                .map_err(|e| store_error(&e))
        })
        .await
    }

    async fn purge_audit(&self, before: UnixTime, limit: u32) -> StoreResult<u64> {
        self.pooled(async |c| {
            cleanup::purge_audit(&**c, before, limit)
                .await
                .map_err(|e| store_error(&e))
        })
        .await
    }
}

#[async_trait]
impl Storage for PgStore {
    async fn database_time(&self) -> StoreResult<Option<UnixTime>> {
        self.pooled(async |c| {
            c.query_one(
                "SELECT floor(extract(epoch FROM clock_timestamp()))::BIGINT",
                &[],
            )
            .await
            .map(|row| Some(row.get(0)))
            .map_err(|e| store_error(&e))
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.writer_stopped() {
            return Err(StoreError::Unavailable("the writer has stopped".into()));
        }
        self.pooled(async |c| {
            c.query_one("SELECT count(*) FROM tenants", &[])
                .await
                .map(|_| ())
                .map_err(|e| store_error(&e))
        })
        .await
    }

    fn writer_stopped(&self) -> bool {
        self.committer.stopped()
    }

    fn commit_stats(&self) -> CommitStats {
        self.commits.snapshot()
    }

    async fn client_and_token(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        hash: &TokenHash,
    ) -> StoreResult<(Option<Client>, Option<TokenRecord>)> {
        self.lookups.client_and_token(tenant, id, hash).await
    }
}
