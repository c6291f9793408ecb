//! The SQLite back-end: WAL mode, `synchronous=FULL`, a pool of read connections used inline
//! (a primary-key lookup is a few microseconds, cheaper than a hop to another thread), and a
//! single writer thread doing group commit ([`committer`]).

mod checkpointer;
mod client_grants;
mod clients;
mod committer;
mod live_clients;
mod marks;
mod read_batches;
mod removals;
mod revocations;
mod subject_logouts;
mod tenants;
mod tokens;
mod wal_writes;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use latch_core::audit::AuditEvent;
use latch_core::client::Client;
use latch_core::clock::UnixTime;
use latch_core::commits::{CommitMeter, CommitStats};
use latch_core::grant::TokenRecord;
use latch_core::id::{ClientId, TenantId};
use latch_core::store::{ClientStore, RevocationPlan, Storage, StoreResult, TokenRead};
use latch_core::token::{TokenHash, TokenKind};
use latch_core::StoreError;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

pub use checkpointer::WalPolicy;
use checkpointer::{Checkpointer, Turns};
use client_grants::ClientGrantsRevocation;
use committer::Committer;
use marks::RevocationMarks;
use read_batches::{ReadBatches, SnapshotMemo};
use removals::Removal;
use revocations::Applied;
use subject_logouts::{Progress, SubjectLogout};

/// Schema migrations, applied in order at start-up; `PRAGMA user_version` records progress.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
    include_str!("schema_v5.sql"),
    include_str!("schema_v6.sql"),
    include_str!("schema_v7.sql"),
    include_str!("schema_v8.sql"),
    include_str!("schema_v9.sql"),
    include_str!("schema_v10.sql"),
    include_str!("schema_v11.sql"),
    include_str!("schema_v12.sql"),
    include_str!("schema_v13.sql"),
    include_str!("schema_v14.sql"),
    include_str!("schema_v15.sql"),
];

/// How long a connection waits for a lock held by another process before giving up.
const BUSY_TIMEOUT_MS: u32 = 5_000;

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 16;

pub(crate) fn unavailable(msg: impl Into<String>) -> StoreError {
    StoreError::Unavailable(msg.into())
}

pub(crate) fn store_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict,
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// Runs one statement without parameters from the connection's statement cache: parsed once
/// per connection, where `execute_batch` parses it on every call (a transaction's `BEGIN` and
/// `COMMIT`, once per batch of writes or reads).
pub(crate) fn execute_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
}

/// Where reads are served from.
enum Readers {
    /// A file database: independent WAL readers, opened on demand and reused.
    Pool {
        path: PathBuf,
        idle: Mutex<Vec<Connection>>,
    },
    /// An in-memory database has exactly one connection, shared with the writer. The writer
    /// holds it for a whole batch, so a read never sees a batch half-applied.
    Shared(Arc<Mutex<Connection>>),
}

impl Readers {
    /// Runs `f` on a read connection, on the calling thread.
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> StoreResult<T> {
        match self {
            Readers::Shared(conn) => {
                let conn = conn.lock().unwrap_or_else(|poisoned| {
                    // The writer panicked holding it, inside its batch's transaction: that
                    // batch is undone, or reads would see what it never committed.
                    let conn = poisoned.into_inner();
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    conn
                });
                f(&conn).map_err(store_error)
            }
            Readers::Pool { path, idle } => {
                let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let conn = match pooled {
                    Some(c) => c,
                    None => open_reader(path).map_err(store_error)?,
                };
                let result = f(&conn).map_err(store_error);
                // A connection that just failed may be broken (file replaced, I/O error):
                // drop it rather than hand it to the next request.
                if result.is_ok() {
                    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
                    if idle.len() < MAX_IDLE_READERS {
                        idle.push(conn);
                    }
                }
                result
            }
        }
    }
}

/// latch's storage on SQLite.
pub struct SqliteStore {
    readers: Arc<Readers>,
    /// Started on the first hot-path read (it needs the tokio runtime); `None` when that
    /// read came from outside one.
    batches: OnceLock<Option<ReadBatches>>,
    committer: Committer,
    /// The in-memory index of single-token revocations ([`marks`]).
    marks: Arc<RevocationMarks>,
    /// Where the next expiry clean-up looks for expired rows of the revocation log.
    log_purge_from: AtomicI64,
    /// The writer's batches and checkpoints, counted.
    commits: Arc<CommitMeter>,
    /// A file database's turns at checkpointing, for the last one ([`Storage::close`]).
    checkpoints: Option<Turns>,
    /// How long a removal, a revocation of a client's grants or a clean-up lets go of the
    /// write lock between its chunks ([`REMOVAL_PAUSE`] for a command beside a server, none
    /// for a server).
    removal_pause: Duration,
}

/// The grants one chunk of a removal (or of a revocation of a client's grants, or of a
/// subject's log-out) revokes, in a transaction of its own ([`removals`], [`client_grants`],
/// [`subject_logouts`]): some 60 ms of the writer's
/// time, as long as other writes wait for it (13-14 s per 1,000,000 grants in one
/// transaction).
const REMOVAL_CHUNK: u32 = 5_000;

/// How long a command revoking a client's or tenant's grants in chunks, or cleaning up
/// (`latch gc`) in batches, lets go of the write lock between them. A server on the same file waits for the lock in steps of up to 100 ms
/// (SQLite's busy handler), so a pause as long as one step lets its writes in; a command that
/// took the lock straight back could keep them out past the busy timeout, which answers them
/// `503`.
const REMOVAL_PAUSE: Duration = Duration::from_millis(100);

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

/// Settings every connection gets.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
    // Query-planner stability: with statistics present (after an ANALYZE), SQLite would
    // otherwise re-prepare a cached statement whenever a bound value might change its plan,
    // i.e. on every token lookup. Measured: re-preparing took a third of an introspection.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    configure(conn)?;
    // WAL lets readers run beside the writer; FULL fsyncs the WAL on every commit, so a
    // committed revocation survives power loss, not only a process crash. The writer's
    // VFS (`wal_writes`) also relies on that sync to publish its gathered WAL writes.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // No automatic checkpoint, even before the checkpointer's WAL hook replaces it: one run
    // inside a migration's commit would drop a failed sync's error unseen
    // (`checkpointer::stop_if_write_back_failed`).
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // SQLite's default page cache (2 MB). A 64 MiB cache was tried: SQLite scans the whole
    // cache's hash table at the end of every write transaction once the database grows
    // (`pcache1TruncateUnsafe`), which took 10-12% of the writer thread's time during
    // issuance, more than the page reads the bigger cache saved.
    conn.pragma_update(None, "cache_size", -2_000)?;
    // A batch replayed after one of its writes failed runs each write in a savepoint
    // (`committer`), whose sub-journal (the pages' old contents, needed only to roll the
    // savepoint back) would otherwise go to a temporary file: a pwrite per touched page, a
    // quarter of the writer's time when every write had one. Durability is the WAL's job
    // and is unaffected.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

fn migrate(conn: &mut Connection, migrations: Migrations) -> rusqlite::Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if migrations == Migrations::OnlyNew && current > 0 && current < MIGRATIONS.len() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!(
                "the database's schema is version {current}, older than this latch's {}: \
                 start `latch serve` of this version on it once to migrate it (a command must \
                 not change the schema under a running older server, which would misread it)",
                MIGRATIONS.len()
            )),
        ));
    }
    if current > MIGRATIONS.len() {
        // A newer latch wrote this database: this one would misread it (from version 4 on,
        // it would not see the revocations in the log, and revoked tokens would read live).
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!(
                "the database's schema is version {current}, newer than this latch's {}: \
                 run a latch at least as new as the one that last opened it",
                MIGRATIONS.len()
            )),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(())
}

/// Whether opening a database file may migrate its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrations {
    /// Apply the pending migrations: a server starting.
    Apply,
    /// Create a new database's schema, but refuse an existing one with migrations pending: a
    /// command of a newer latch run beside an older server on the same file (during an
    /// upgrade) would otherwise change the schema under that server, which reads it as the
    /// version it knows (from version 4 on, it would miss revocations).
    OnlyNew,
}

impl SqliteStore {
    /// Opens (creating if needed) a database file and applies pending migrations.
    pub fn open_file(path: &Path) -> StoreResult<Self> {
        Self::open_file_with(path, WalPolicy::default())
    }

    /// [`open_file`](Self::open_file), with the WAL checkpointed as `wal` says.
    pub fn open_file_with(path: &Path, wal: WalPolicy) -> StoreResult<Self> {
        Self::open_file_migrating(path, wal, Migrations::Apply)
    }

    /// [`open_file_with`](Self::open_file_with), migrating as `migrations` says.
    pub fn open_file_migrating(
        path: &Path,
        wal: WalPolicy,
        migrations: Migrations,
    ) -> StoreResult<Self> {
        if is_uri(path) {
            return Err(unavailable(format!(
                "{} would be read by SQLite as a URI: give the file's plain path",
                path.display()
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        // The writer alone goes through the WAL-gathering VFS: it is the only connection
        // that writes the WAL, and it syncs at every commit, which that VFS relies on.
        wal_writes::register().map_err(unavailable)?;
        let mut conn =
            Connection::open_with_flags_and_vfs(path, OpenFlags::default(), wal_writes::VFS_NAME)
                .map_err(store_error)?;
        configure_writer(&conn).map_err(store_error)?;
        // Checked, not assumed: a file system without shared memory (some network mounts)
        // leaves a database in its rollback journal, which the readers beside the writer and
        // the WAL-gathering VFS both rely on not being the case; and a commit is durable only
        // if the writer syncs at every one.
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .map_err(store_error)?;
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .map_err(store_error)?;
        if !journal.eq_ignore_ascii_case("wal") || synchronous != 2 {
            return Err(unavailable(format!(
                "{} could not be put in WAL mode with synchronous=FULL (journal_mode={journal}, \
                 synchronous={synchronous}): put it on a local file system",
                path.display()
            )));
        }
        if let Err(e) = migrate(&mut conn, migrations) {
            // What the failed migration left gathered is never written (see `commit_batch`).
            wal_writes::discard(&conn);
            return Err(store_error(e));
        }
        let marks = load_marks(&conn)?;
        // Checkpoints are the checkpointer's job: its WAL hook on this connection replaces
        // SQLite's automatic checkpoint (`wal_autocheckpoint`), and the writer itself copies
        // what is left once the WAL grows long (`checkpointer`).
        let checkpoints = Connection::open(path)
            .and_then(|c| configure(&c).map(|()| c))
            .map_err(store_error)?;
        let checkpointer = Checkpointer::start(checkpoints, wal)
            .map_err(|e| unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        let turns = checkpointer.turns();
        let commits = Arc::new(CommitMeter::default());
        let committer = Committer::start(
            Arc::new(Mutex::new(conn)),
            Some(checkpointer),
            commits.clone(),
            marks.clone(),
        )
        .map_err(|e| unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            readers: Arc::new(Readers::Pool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            checkpoints: Some(turns),
            // Opened so, the file is a command's, beside a server perhaps.
            removal_pause: if migrations == Migrations::OnlyNew {
                REMOVAL_PAUSE
            } else {
                Duration::ZERO
            },
            batches: OnceLock::new(),
            committer,
            marks,
            log_purge_from: AtomicI64::new(0),
            commits,
        })
    }

    /// Opens a fresh in-memory database (for tests and throw-away servers).
    pub fn open_memory() -> StoreResult<Self> {
        let mut conn = Connection::open_in_memory().map_err(store_error)?;
        configure(&conn).map_err(store_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(store_error)?;
        migrate(&mut conn, Migrations::Apply).map_err(store_error)?;
        let marks = load_marks(&conn)?;
        let shared = Arc::new(Mutex::new(conn));
        let commits = Arc::new(CommitMeter::default());
        let committer = Committer::start(shared.clone(), None, commits.clone(), marks.clone())
            .map_err(|e| unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            readers: Arc::new(Readers::Shared(shared)),
            batches: OnceLock::new(),
            committer,
            marks,
            log_purge_from: AtomicI64::new(0),
            commits,
            checkpoints: None,
            removal_pause: Duration::ZERO,
        })
    }

    /// Runs a removal under way ([`removals`], schema version 11) to its end, revoking at
    /// `now`: chunk after chunk of its grants revoked, then its audit record. `None` when
    /// another caller ended it; `Conflict` when the configuration declared what it removes
    /// meanwhile (given up).
    async fn run_removal(
        &self,
        removal: Removal,
        now: UnixTime,
    ) -> StoreResult<Option<AuditEvent>> {
        loop {
            let (chunk, marks) = (removal.clone(), self.marks.clone());
            let more = self
                .write(move |c| chunk.chunk(c, &marks, now, REMOVAL_CHUNK))
                .await?;
            if !more {
                break;
            }
            self.pause_between_chunks().await;
        }
        let marks = self.marks.clone();
        self.write(move |c| removal.finish(c, &marks, now)).await?
    }

    /// Runs a revocation of a client's grants under way ([`client_grants`], schema version 12)
    /// to its end, revoking at `now`: chunk after chunk, each record handed to `recorded` as
    /// its chunk commits.
    async fn run_client_grants_revocation(
        &self,
        revocation: ClientGrantsRevocation,
        now: UnixTime,
        recorded: &mut (dyn FnMut(AuditEvent) + Send),
    ) -> StoreResult<()> {
        loop {
            let (chunk, marks) = (revocation.clone(), self.marks.clone());
            let (event, more) = self
                .write(move |c| chunk.chunk(c, &marks, now, REMOVAL_CHUNK))
                .await?;
            if let Some(event) = event {
                recorded(event);
            }
            if !more {
                return Ok(());
            }
            self.pause_between_chunks().await;
        }
    }

    /// Runs what a revocation's write left of it ([`revocations::Applied`]) to its end, at
    /// `now`: the chunks of a subject's log-out after its first, one write each. Returns the
    /// revocation's audit record.
    async fn run_rest(&self, applied: Applied, now: UnixTime) -> StoreResult<Option<AuditEvent>> {
        match applied {
            Applied::Done(event) => Ok(event),
            Applied::Chunked(logout) => self.run_subject_logout(logout, now).await,
        }
    }

    /// Runs a subject's log-out under way ([`subject_logouts`], schema version 14) to its
    /// end, revoking at `now`: chunk after chunk, the last writing its audit record.
    async fn run_subject_logout(
        &self,
        logout: SubjectLogout,
        now: UnixTime,
    ) -> StoreResult<Option<AuditEvent>> {
        loop {
            let (chunk, marks) = (logout.clone(), self.marks.clone());
            match self
                .write(move |c| chunk.chunk(c, &marks, now, REMOVAL_CHUNK))
                .await?
            {
                Progress::More => self.pause_between_chunks().await,
                Progress::Ended(event) => return Ok(event),
            }
        }
    }

    /// Lets a server's writes pass between two chunks of a large revocation or two batches
    /// of a clean-up when this store is a command's beside a server ([`REMOVAL_PAUSE`]); a
    /// server's own goes straight on.
    async fn pause_between_chunks(&self) {
        if !self.removal_pause.is_zero() {
            tokio::time::sleep(self.removal_pause).await;
        }
    }

    /// Runs a long read (a scan) on a reader connection, on a thread of tokio's blocking
    /// pool, so that it holds up no request.
    async fn read_off_workers<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with_connection(f))
            .await
            .map_err(|e| unavailable(format!("a read did not finish: {e}")))?
    }

    /// Runs a read on a reader connection, on the calling thread.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        self.readers.with_connection(f)
    }

    /// Runs a hot-path read in the next shared read transaction ([`read_batches`]), after
    /// the revocation marks have caught up with the log, with what the transaction's earlier
    /// reads have read.
    async fn read_batched<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection, &mut SnapshotMemo) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        match self
            .batches
            .get_or_init(|| ReadBatches::start(self.readers.clone(), self.marks.clone()))
        {
            Some(batches) => batches.read(f).await,
            None => self.read(|c| {
                self.marks.catch_up(c)?;
                f(c, &mut SnapshotMemo::default())
            }),
        }
    }

    /// Queues a write for the next group commit and waits until it is durable. `work` may
    /// run twice, the first run rolled back (see [`committer`]).
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.committer
            .write(move |conn| work(conn).map_err(store_error))
            .await
    }
}

/// Copies every committed page from the WAL into the database file and truncates the WAL
/// to nothing (a `TRUNCATE` checkpoint), on the checkpoint thread's connection, in its turn
/// ([`Turns`]): a checkpoint running elsewhere would make it fail at once; a write in
/// progress, or a read, it waits out (busy timeout).
fn empty_the_wal(conn: &Connection) -> StoreResult<()> {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(|e| {
            checkpointer::stop_if_write_back_failed(&e);
            store_error(e)
        })?;
    if busy != 0 {
        return Err(unavailable(
            "the write-ahead log could not be emptied: the database stayed busy",
        ));
    }
    Ok(())
}

/// Whether SQLite reads `path` as a URI (`file:…`: this build takes URIs on every
/// connection) rather than as a file's name. Its options (`nolock`, `immutable`, `psow`,
/// `vfs`…) could undo what the store relies on: locking between processes, and the writer's
/// WAL-gathering VFS ([`wal_writes`]), which needs each commit's frames whole before its sync
/// (`psow=0` pads a commit with a frame partly written after it).
pub fn is_uri(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().starts_with(b"file:")
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

#[async_trait]
impl Storage for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        if self.writer_stopped() {
            return Err(unavailable("the writer has stopped"));
        }
        self.read(|c| c.query_row("SELECT count(*) FROM tenants", [], |r| r.get::<_, i64>(0)))
            .map(|_| ())
    }

    fn writer_stopped(&self) -> bool {
        self.committer.stopped()
    }

    fn commit_stats(&self) -> CommitStats {
        self.commits.snapshot()
    }

    fn revocation_marks(&self) -> u64 {
        self.marks.len() as u64
    }

    async fn close(&self) -> StoreResult<()> {
        let Some(checkpoints) = self.checkpoints.clone() else {
            return Ok(()); // an in-memory database has no file
        };
        // Whatever keeps it from running, the WAL stays as it is, for the next start to
        // replay.
        match tokio::task::spawn_blocking(move || checkpoints.take(empty_the_wal)).await {
            Ok(Some(emptied)) => emptied,
            Ok(None) => Err(unavailable(
                "the final checkpoint did not run: the checkpoint thread has stopped",
            )),
            Err(e) => Err(unavailable(format!("the final checkpoint failed: {e}"))),
        }
    }

    async fn client_and_token(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        hash: &TokenHash,
    ) -> StoreResult<(Option<Client>, Option<TokenRecord>)> {
        // One statement, so one implicit read transaction and one step: the client and the
        // token are independent primary-key lookups, LEFT JOINed to a one-row table so that
        // either may be missing. Separate statements inside BEGIN … COMMIT cost two more
        // statement executions per request.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {}, {} FROM (SELECT 1) \
                 LEFT JOIN clients c ON c.tenant_id = ?1 AND c.client_id = ?2 \
                 LEFT JOIN tokens t ON t.hash = ?3 \
                 LEFT JOIN grants g {}",
                clients::qualified_columns("c"),
                tokens::TOKEN_COLUMNS,
                tokens::ON_GRANT
            )
        });
        const TOKEN_BASE: usize = clients::COLUMN_COUNT;
        let (tenant, id, hash) = (tenant.clone(), id.clone(), *hash);
        let marks = self.marks.clone();
        self.read_batched(move |c, memo| {
            let live = |mut token: TokenRecord| {
                marks.apply(&mut token);
                token
            };
            // An earlier read of the batch has the client: the token alone.
            if let Some(client) = memo.client(&tenant, &id) {
                let client = client.clone();
                return Ok((client, tokens::select_token(c, &hash)?.map(live)));
            }
            let (client, token) = c.prepare_cached(&SQL)?.query_row(
                params![tenant.as_str(), id.as_str(), hash.as_bytes()],
                |r| {
                    // The client's id is NOT NULL: NULL means no row.
                    let client = match r.get_ref(1)? {
                        ValueRef::Null => None,
                        _ => Some(clients::client_at(r, 0)?),
                    };
                    Ok((client, tokens::token_at(r, TOKEN_BASE, &hash)?.map(live)))
                },
            )?;
            memo.remember_client(tenant, id, &client);
            Ok((client, token))
        })
        .await
    }

    /// The client only: the token is read by [`Storage::revoke_presented`], in the write.
    async fn client_for_revocation(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        _hash: &TokenHash,
    ) -> StoreResult<(Option<Client>, TokenRead)> {
        Ok((self.client(tenant, id).await?, TokenRead::InWrite))
    }

    /// The token is read in the write transaction, on the writer's connection, whatever was
    /// read ahead: the writer's page cache survives commits (it makes them), where a
    /// reader's is emptied by each one, so the token's pages are read once, not twice.
    async fn revoke_presented(
        &self,
        hash: &TokenHash,
        _read: TokenRead,
        plan: RevocationPlan,
    ) -> StoreResult<(Option<TokenRecord>, Option<AuditEvent>)> {
        let hash = *hash;
        let marks = self.marks.clone();
        let (record, applied) = self
            .write(move |c| {
                let Some(mut record) = tokens::select_token(c, &hash)? else {
                    return Ok((None, None));
                };
                marks.apply_in_write(&mut record);
                // An access token's `revoked_at` may be its grant's (written to the grant's token
                // rows when the marks' index is full), and an access token carrying its owner is
                // read without its grant: a revocation judged on the grant must know which it is.
                if record.kind == TokenKind::Access
                    && record.revoked_at.is_some()
                    && record.grant_revoked_at.is_none()
                {
                    record.grant_revoked_at = c
                        .prepare_cached("SELECT revoked_at FROM grants WHERE id = ?1")?
                        .query_row([record.grant_id.as_str()], |r| r.get(0))
                        .optional()?
                        .flatten();
                }
                let applied = match plan(&record) {
                    Some((revocation, audit)) => Some((
                        revocations::apply_to_read(c, &marks, &record, &revocation, &audit)?,
                        audit.at,
                    )),
                    None => None,
                };
                Ok((Some(record), applied))
            })
            .await?;
        let event = match applied {
            Some((applied, at)) => self.run_rest(applied, at).await?,
            None => None,
        };
        Ok((record, event))
    }
}

/// The index of the revocation log, loaded at start-up rather than by the first request.
fn load_marks(conn: &Connection) -> StoreResult<Arc<RevocationMarks>> {
    let marks = RevocationMarks::new(marks::MAX_MARKS);
    marks.load(conn).map_err(store_error)?;
    Ok(Arc::new(marks))
}

/// Joins identifiers for a space-separated column.
fn join<T: AsRef<str>>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build options `.cargo/config.toml` gives the bundled SQLite: without them every
    /// page fetch takes a global mutex (measured in docs/benchmarks.md).
    #[test]
    fn sqlite_is_built_without_shared_page_caches_or_memory_statistics() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    #[test]
    fn a_version_4_database_loses_its_indexes_on_expiry_times_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        let mut conn = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS[..4].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i + 1).unwrap();
        }
        conn.execute(
            "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
             VALUES (x'01', 'g', 0, 'read', 0, 1000)",
            [],
        )
        .unwrap();
        let on_expiry = |conn: &mut Connection| -> i64 {
            conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND sql LIKE '%(expires_at)%'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(on_expiry(&mut conn), 2);
        migrate(&mut conn, Migrations::Apply).unwrap();
        assert_eq!(on_expiry(&mut conn), 0);
        let tokens: i64 = conn
            .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tokens, 1);
    }

    /// "Durable means durable": a write is answered only after a sync of the WAL. Awaited
    /// alone (a run of writes one by one, the writer idle in between), that sync is its own
    /// commit's; sent at once with others (group commits), each is answered after a sync
    /// completed since it was sent, and there are at least as many syncs as commits. With
    /// the writer on `synchronous=NORMAL` no commit syncs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_is_answered_once_its_commit_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap().join("latch.db");
        let store = SqliteStore::open_file(&path).unwrap();
        let wal = path.with_file_name("latch.db-wal");
        let syncs = || wal_writes::tests::syncs_of(&wal);
        let add_tenant = |name: String| {
            store.write(move |c| {
                c.execute(
                    "INSERT INTO tenants (id, created_at) VALUES (?1, 1)",
                    [&name],
                )
            })
        };
        for i in 0..20 {
            let before = syncs();
            add_tenant(format!("alone{i}")).await.unwrap();
            assert!(syncs() > before, "write {i} answered before its sync");
        }
        let (syncs_before, commits_before) = (syncs(), store.commit_stats().commits);
        let grouped = (0..64).map(|i| {
            let write = add_tenant(format!("grouped{i}"));
            async move {
                // Before the write is sent (a future does nothing until polled).
                let sent = syncs();
                write.await.unwrap();
                (sent, syncs())
            }
        });
        let seen = futures_util::future::join_all(grouped).await;
        assert!(
            seen.iter().all(|(sent, answered)| answered > sent),
            "{seen:?}"
        );
        // And every batch committed synced: none was answered on another's sync.
        let commits = store.commit_stats().commits - commits_before;
        assert!(syncs() - syncs_before >= commits, "{commits} commits");
        let tenants: i64 = store
            .read(|c| c.query_row("SELECT count(*) FROM tenants", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(tenants, 1 + 20 + 64, "the default tenant and each write's");
    }

    /// A write that panics ends the writer thread (a bug, which the batch cannot outlive):
    /// from then on every write fails, and the store says so, so that liveness and readiness
    /// report it instead of a node that answers 503 to every write for ever.
    #[tokio::test]
    async fn a_writer_that_panicked_is_reported_stopped() {
        let store = SqliteStore::open_memory().unwrap();
        store.ping().await.unwrap();
        assert!(!store.writer_stopped());
        let panicked = store
            .write(|c| -> rusqlite::Result<()> {
                c.execute(
                    "INSERT INTO tenants (id, created_at) VALUES ('ghost', 1)",
                    [],
                )?;
                panic!("a bug in a write")
            })
            .await;
        assert!(panicked.is_err());
        // The thread lets go of its queue as it unwinds, just after the write's answer.
        for _ in 0..100_000 {
            if store.writer_stopped() {
                break;
            }
            std::thread::yield_now();
        }
        assert!(store.writer_stopped());
        assert!(store.ping().await.is_err());
        assert!(store.write(|_| Ok(())).await.is_err());
        // In memory, reads share the writer's connection: what the batch wrote before the
        // panic was never committed, and is not read.
        use latch_core::store::TenantStore;
        let ghost = TenantId::parse("ghost").unwrap();
        assert!(!store.tenant_exists(&ghost).await.unwrap());
    }

    /// Access tokens written before version 6 carry nothing of their grant: they are read
    /// with it, including a revocation of the grant from before the migration.
    #[tokio::test]
    async fn a_version_5_databases_access_tokens_are_read_with_their_grant() {
        use latch_core::store::TokenStore;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        let conn = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS[..5].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", i + 1).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, \
               expires_at, revoked_at) \
             VALUES ('g1', 'default', 'app', 'alice', 'read', 0, 9000000000, NULL), \
                    ('g2', 'default', 'app', 'bob', 'read', 0, 9000000000, 50);",
        )
        .unwrap();
        let (alices, bobs) = (TokenHash::of("alice's"), TokenHash::of("bob's"));
        for (hash, grant) in [(alices, "g1"), (bobs, "g2")] {
            conn.execute(
                "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
                 VALUES (?1, ?2, 0, 'read', 0, 9000000000)",
                params![hash.as_bytes(), grant],
            )
            .unwrap();
        }
        drop(conn);

        let store = SqliteStore::open_file(&path).unwrap();
        let live = store
            .token(&alices)
            .await
            .unwrap()
            .expect("the token exists");
        assert_eq!(
            (
                live.tenant.as_str(),
                live.client_id.as_str(),
                live.subject.as_str()
            ),
            ("default", "app", "alice")
        );
        assert!(!live.is_revoked());
        let revoked = store.token(&bobs).await.unwrap().expect("the token exists");
        assert_eq!(revoked.subject.as_str(), "bob");
        assert_eq!(revoked.grant_revoked_at, Some(50));
    }

    #[test]
    fn a_database_written_by_a_newer_latch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        drop(SqliteStore::open_file(&path).unwrap());
        let newer = MIGRATIONS.len() + 1;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        let error = SqliteStore::open_file(&path).unwrap_err();
        assert!(
            format!("{error:?}").contains(&format!("version {newer}, newer than this latch")),
            "{error:?}"
        );
    }

    #[test]
    fn a_command_creates_a_new_database_but_never_migrates_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        let open =
            |migrations| SqliteStore::open_file_migrating(&path, WalPolicy::default(), migrations);
        drop(open(Migrations::OnlyNew).expect("a new database is created"));
        drop(open(Migrations::OnlyNew).expect("and opened again"));
        let older = MIGRATIONS.len() - 1;
        let version = |p: &Path| -> usize {
            Connection::open(p)
                .unwrap()
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap()
        };
        // The latest version's change undone, as a database of the version before.
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!(
                "ALTER TABLE clients DROP COLUMN introspects; PRAGMA user_version = {older};"
            ))
            .unwrap();
        // The latest version's column: which tokens a client may introspect.
        let latest_table = |p: &Path| -> bool {
            Connection::open(p)
                .unwrap()
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('clients') WHERE name = 'introspects'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                == 1
        };
        let error = open(Migrations::OnlyNew).unwrap_err();
        assert!(
            format!("{error:?}").contains(&format!("version {older}, older than this latch")),
            "{error:?}"
        );
        assert_eq!(version(&path), older, "left as it was");
        assert!(!latest_table(&path));
        drop(open(Migrations::Apply).expect("a server migrates it"));
        assert_eq!(version(&path), MIGRATIONS.len());
        assert!(latest_table(&path));
        drop(open(Migrations::OnlyNew).expect("then commands open it"));
    }
}
