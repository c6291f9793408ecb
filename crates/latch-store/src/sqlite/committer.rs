//! Group commit: one writer thread owns the write connection and commits whatever writes are
//! queued in one transaction.
//!
//! A `200` for a revocation must mean the revocation is on disk (`synchronous=FULL`), and one
//! fsync per request caps SQLite at a few thousand writes per second. So writers queue their
//! work here; the thread takes everything queued (up to [`MAX_BATCH`]), applies them in one
//! transaction, commits once, and only then answers every waiter. Under light load a batch is
//! one write and adds no latency; under heavy load dozens of requests share one fsync. If the
//! commit fails, every waiter gets the error.
//!
//! One failing write must not spoil the others. A savepoint around each write would ensure
//! that, but a savepoint copies every page the write touches into its sub-journal, which was
//! a tenth of a revocation's instructions. So writes run bare, and in the rare batch where
//! one fails, the transaction is rolled back and the batch replayed with a savepoint around
//! each write (writes are closures that can run twice; nothing of the first run survives).

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use latch_core::commits::CommitMeter;
use latch_core::store::StoreResult;
use latch_core::StoreError;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::checkpointer::{sync_failed, Checkpointer};
use super::{execute_cached, unavailable};

/// The most writes committed in one transaction. Large enough to amortise an fsync over a
/// burst from many clients, small enough to keep a batch's latency well under a millisecond.
const MAX_BATCH: usize = 256;

/// Writes waiting for the writer thread; past this, writers wait for room (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// What the writer tells the rest of the store about its batches (the revocation marks,
/// which follow their log: `marks`).
pub(super) trait BatchObserver: Send + Sync {
    /// Runs in each batch's transaction before any of its writes, so it sees only committed
    /// rows. An error aborts the batch.
    fn begin(&self, conn: &Connection) -> rusqlite::Result<()>;

    /// Runs once the batch has committed, before any of its writers is answered.
    fn committed(&self);
}

/// A queued write: run inside the batch's transaction, then told how the commit went.
trait PendingWrite: Send {
    /// Runs the write in the open transaction, in a savepoint of its own if `isolated`, and
    /// says whether it succeeded. A second call replaces the first call's result.
    fn apply(&mut self, conn: &Connection, isolated: bool) -> bool;
    fn finish(self: Box<Self>, commit: Result<(), &StoreError>);
}

struct Write<F, T> {
    work: F,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<F, T> PendingWrite for Write<F, T>
where
    F: Fn(&Connection) -> StoreResult<T> + Send,
    T: Send,
{
    fn apply(&mut self, conn: &Connection, isolated: bool) -> bool {
        let result = if isolated {
            in_savepoint(conn, &self.work)
        } else {
            (self.work)(conn)
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), &StoreError>) {
        let answer = match (commit, self.result) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(unavailable("write was not applied")),
        };
        // The waiter may have gone away (client disconnected); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

/// [`execute_cached`], as a [`StoreResult`].
fn run_cached(conn: &Connection, sql: &str) -> StoreResult<()> {
    execute_cached(conn, sql).map_err(super::store_error)
}

fn in_savepoint<T>(
    conn: &Connection,
    work: impl Fn(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    run_cached(conn, "SAVEPOINT w")?;
    let result = work(conn);
    if result.is_err() {
        run_cached(conn, "ROLLBACK TO w")?;
    }
    run_cached(conn, "RELEASE w")?;
    result
}

/// The handle writers use to reach the writer thread.
#[derive(Clone)]
pub(crate) struct Committer {
    queue: mpsc::Sender<Box<dyn PendingWrite>>,
}

impl Committer {
    /// True once the writer thread has ended (it panicked, or the store was dropped).
    pub(crate) fn stopped(&self) -> bool {
        self.queue.is_closed()
    }

    /// Starts the writer thread over `conn`, nudging `checkpointer` (a file database's)
    /// after each commit, counting batches and checkpoints in `meter`, and telling
    /// `observer` of each batch. The thread stops when every handle is dropped.
    pub(crate) fn start(
        conn: Arc<Mutex<Connection>>,
        checkpointer: Option<Checkpointer>,
        meter: Arc<CommitMeter>,
        observer: Arc<dyn BatchObserver>,
    ) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        thread::Builder::new()
            .name("latch-committer".into())
            .spawn(move || run(&conn, rx, checkpointer.as_ref(), &meter, &*observer))?;
        Ok(Self { queue })
    }

    /// Runs `work` in the next batch and returns its result once the batch is durable.
    /// `work` may run twice (see the module documentation): only its last run's effects and
    /// result count.
    pub(crate) async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let write = Box::new(Write {
            work,
            result: None,
            reply,
        });
        self.queue
            .send(write)
            .await
            .map_err(|_| unavailable("the writer has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the writer stopped before answering"))?
    }
}

fn run(
    conn: &Mutex<Connection>,
    mut rx: mpsc::Receiver<Box<dyn PendingWrite>>,
    checkpointer: Option<&Checkpointer>,
    meter: &CommitMeter,
    observer: &dyn BatchObserver,
) {
    let lock = || conn.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = checkpointer {
        c.watch(&lock());
    }
    let mut batch: Vec<Box<dyn PendingWrite>> = Vec::with_capacity(MAX_BATCH);
    // Waits for a write, then takes every other one already queued.
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let started = Instant::now();
        let writer = lock();
        let outcome = commit_batch(&writer, &mut batch, observer);
        drop(writer);
        meter.batch(batch.len(), started.elapsed(), outcome.is_ok());
        match &outcome {
            Ok(()) => observer.committed(),
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "commit failed; every write in the batch answers unavailable");
            }
        }
        for write in batch.drain(..) {
            write.finish(outcome.as_ref().map(|_| ()));
        }
        if let (Some(c), Ok(())) = (checkpointer, &outcome) {
            let started = Instant::now();
            if c.after_commit(&lock()) {
                meter.writer_checkpoint(started.elapsed());
            }
        }
    }
    if let Some(c) = checkpointer {
        c.unwatch(&lock());
    }
}

/// Applies and commits a batch. One that did not commit leaves nothing gathered for the WAL
/// ([`super::wal_writes::discard`]) before it returns: those frames lie past the last commit,
/// where another process may commit next, and must not be written there later, be it by
/// the writer's next batch or by the checkpoint SQLite runs when it closes the connection
/// (a command ending on a failed batch), which syncs the WAL first.
fn commit_batch(
    conn: &Connection,
    batch: &mut [Box<dyn PendingWrite>],
    observer: &dyn BatchObserver,
) -> StoreResult<()> {
    apply_and_commit(conn, batch, observer).inspect_err(|_| super::wal_writes::discard(conn))
}

fn apply_and_commit(
    conn: &Connection,
    batch: &mut [Box<dyn PendingWrite>],
    observer: &dyn BatchObserver,
) -> StoreResult<()> {
    if !apply_batch(conn, batch, false, observer)? {
        // A write failed, and only a rollback of everything can undo what it did before
        // failing: start again with each write in a savepoint.
        run_cached(conn, "ROLLBACK")?;
        apply_batch(conn, batch, true, observer)?;
    }
    execute_cached(conn, "COMMIT")
        .inspect_err(|e| {
            stop_if_outcome_unknown(e);
            // Leave the connection usable for the next batch.
            let _ = conn.execute_batch("ROLLBACK");
        })
        .map_err(super::store_error)
}

/// Stops the process at once if a COMMIT failed to sync the WAL ([`sync_failed`]): its
/// frames were written, commit frame included, and may be on the disk all the same, so a
/// crash before the next commit overwrites them would have the next start replay the batch.
/// Its writes can be answered neither as committed nor as failed (a refresh-token exchange
/// answered `503`, then retried, would read as a reuse of a token already exchanged and
/// revoke its grant). Stopped, no answer goes out (the clients' connections close: outcome
/// unknown, which is the truth), and the next start settles it by replaying the WAL as the
/// disk has it; as a failed checkpoint sync does, and PostgreSQL on a failed `fsync`.
fn stop_if_outcome_unknown(e: &rusqlite::Error) {
    if sync_failed(e) {
        tracing::error!(
            error = %e,
            "a commit could not sync the write-ahead log: stopping at once, its writes \
             unanswered; the next start replays the log as the disk has it (check the disk)"
        );
        std::process::abort();
    }
}

/// Opens the batch's transaction and applies its writes, each `isolated` in a savepoint or
/// not. Bare, it stops at the first write that fails and returns `false`, leaving the
/// transaction open for the caller to roll back.
fn apply_batch(
    conn: &Connection,
    batch: &mut [Box<dyn PendingWrite>],
    isolated: bool,
    observer: &dyn BatchObserver,
) -> StoreResult<bool> {
    // Some errors (disk full, I/O) make SQLite roll the whole transaction back. Applying
    // further writes would then run in autocommit mode, outside this batch's atomicity.
    let aborted = || unavailable("the transaction was aborted by the database");
    if !conn.is_autocommit() {
        // An earlier batch's rollback failed (an I/O error, say) and left its transaction
        // open: every `BEGIN` would fail for ever after. Roll it back now, or fail this
        // batch alone and try again with the next.
        run_cached(conn, "ROLLBACK")?;
    }
    // What a batch that did not commit left gathered for the WAL is dropped unwritten.
    super::wal_writes::discard(conn);
    run_cached(conn, "BEGIN IMMEDIATE")?;
    super::live_clients::forget();
    if let Err(e) = observer.begin(conn) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(super::store_error(e));
    }
    for write in batch.iter_mut() {
        let applied = write.apply(conn, isolated);
        if conn.is_autocommit() {
            return Err(aborted());
        }
        if !applied && !isolated {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn database() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        conn
    }

    type Reply<T> = oneshot::Receiver<StoreResult<T>>;

    fn queued<T: Send + 'static>(
        work: impl Fn(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> (Box<dyn PendingWrite>, Reply<T>) {
        let (reply, answer) = oneshot::channel();
        let write = Write {
            work,
            result: None,
            reply,
        };
        (Box::new(write), answer)
    }

    fn insert(conn: &Connection, k: i64) -> StoreResult<i64> {
        conn.execute("INSERT INTO t (k) VALUES (?1)", [k])
            .map_err(crate::sqlite::store_error)?;
        Ok(k)
    }

    fn keys(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT k FROM t ORDER BY k").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    fn commit(conn: &Connection, mut batch: Vec<Box<dyn PendingWrite>>) {
        let outcome = commit_batch(conn, &mut batch, &Counting::default());
        assert!(outcome.is_ok(), "{outcome:?}");
        for write in batch {
            write.finish(Ok(()));
        }
    }

    #[test]
    fn a_transaction_a_failed_rollback_left_open_is_rolled_back_before_the_next_batch() {
        let conn = database();
        // As if an earlier batch's ROLLBACK had failed: its transaction, and a write in it,
        // are still open.
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (k) VALUES (9);")
            .unwrap();
        let (write, answer) = queued(|c| insert(c, 1));
        commit(&conn, vec![write]);
        drop(answer);
        assert_eq!(
            keys(&conn),
            vec![1],
            "the open transaction's write was undone"
        );
        assert!(conn.is_autocommit());
    }

    #[test]
    fn a_batch_commits_every_write_and_answers_each_its_own_result() {
        let conn = database();
        let (a, mut ra) = queued(|c| insert(c, 1));
        let (b, mut rb) = queued(|c| insert(c, 2));
        commit(&conn, vec![a, b]);
        assert_eq!(ra.try_recv().unwrap().unwrap(), 1);
        assert_eq!(rb.try_recv().unwrap().unwrap(), 2);
        assert_eq!(keys(&conn), [1, 2]);
        assert!(conn.is_autocommit(), "the transaction is closed");
    }

    #[test]
    fn a_write_that_fails_halfway_is_undone_alone() {
        let conn = database();
        let (a, mut ra) = queued(|c| insert(c, 1));
        // Inserts 2, then collides with the 1 the first write inserted: the 2 must go too.
        let (b, mut rb) = queued(|c| {
            insert(c, 2)?;
            insert(c, 1)
        });
        let (d, mut rd) = queued(|c| insert(c, 3));
        commit(&conn, vec![a, b, d]);
        assert_eq!(ra.try_recv().unwrap().unwrap(), 1);
        assert!(matches!(rb.try_recv().unwrap(), Err(StoreError::Conflict)));
        assert_eq!(rd.try_recv().unwrap().unwrap(), 3);
        assert_eq!(keys(&conn), [1, 3]);
        assert!(conn.is_autocommit(), "the transaction is closed");
    }

    /// Counts the batches it is told of.
    #[derive(Default)]
    struct Counting {
        begun: AtomicUsize,
        committed: AtomicUsize,
    }

    impl BatchObserver for Counting {
        fn begin(&self, _: &Connection) -> rusqlite::Result<()> {
            self.begun.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn committed(&self) {
            self.committed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A writer connection through the WAL-gathering VFS, with a cache of 10 pages (so that
    /// a big batch spills frames to the WAL, which the VFS gathers) and a deferred foreign
    /// key (so that a batch's COMMIT can fail).
    fn failing_writer(path: &std::path::Path) -> Connection {
        super::super::wal_writes::register().unwrap();
        let conn = Connection::open_with_flags_and_vfs(
            path,
            rusqlite::OpenFlags::default(),
            super::super::wal_writes::VFS_NAME,
        )
        .unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = 10; \
             PRAGMA foreign_keys = ON; \
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB); \
             CREATE TABLE p (k INTEGER PRIMARY KEY); \
             CREATE TABLE c (k INTEGER REFERENCES p (k) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        conn
    }

    /// A write that spills frames, then leaves a dangling key that fails its batch's COMMIT.
    fn spilling_then_dangling() -> Box<dyn PendingWrite> {
        queued(|c: &Connection| {
            for k in 2..2_000i64 {
                c.execute("INSERT INTO t VALUES (?1, randomblob(300))", [k])
                    .map_err(crate::sqlite::store_error)?;
            }
            c.execute("INSERT INTO c (k) VALUES (1)", [])
                .map_err(crate::sqlite::store_error)
        })
        .0
    }

    /// A writer at `path` whose batch failed after spilling frames, and another connection
    /// (another process) that committed keys -1 and -2 since, where those frames would go.
    fn a_failed_batch_then_anothers_commit(path: &std::path::Path) -> (Connection, Connection) {
        let conn = failing_writer(path);
        let mut failing = vec![spilling_then_dangling()];
        assert!(commit_batch(&conn, &mut failing, &Counting::default()).is_err());
        let other = Connection::open(path).unwrap();
        other
            .execute_batch("INSERT INTO t (k) VALUES (-1); INSERT INTO t (k) VALUES (-2);")
            .unwrap();
        (conn, other)
    }

    #[test]
    fn a_batch_that_did_not_commit_leaves_nothing_to_overwrite_another_connections_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // The other: a CLI command beside the server.
        let (conn, other) = a_failed_batch_then_anothers_commit(&path);
        commit(&conn, vec![queued(|c| insert(c, 1)).0]);
        drop((conn, other));
        assert_eq!(
            super::super::wal_writes::tests::intact_keys(&path),
            [-2, -1, 1],
            "every commit, the other's included"
        );
    }

    #[test]
    fn a_batch_that_did_not_commit_leaves_nothing_for_the_writers_close_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // The other (the server beside a CLI command) stops; closed while the writer is open,
        // it does not checkpoint (as if killed).
        let (conn, other) = a_failed_batch_then_anothers_commit(&path);
        drop(other);
        // The command ends with no other batch: closing its writer, the last connection of
        // the process, checkpoints, and SQLite syncs the WAL first.
        drop(conn);
        assert_eq!(
            super::super::wal_writes::tests::intact_keys(&path),
            [-2, -1],
            "the other's commit"
        );
    }

    #[tokio::test]
    async fn only_a_batch_that_committed_is_reported_committed() {
        // A deferred foreign key: the insert succeeds, and its COMMIT fails.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; \
             CREATE TABLE p (k INTEGER PRIMARY KEY); \
             CREATE TABLE c (k INTEGER REFERENCES p (k) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        let observer = Arc::new(Counting::default());
        let meter = Arc::new(CommitMeter::default());
        let committer =
            Committer::start(Arc::new(Mutex::new(conn)), None, meter, observer.clone()).unwrap();
        let insert = |sql: &'static str| {
            move |c: &Connection| c.execute(sql, []).map_err(crate::sqlite::store_error)
        };

        let dangling = committer
            .write(insert("INSERT INTO c (k) VALUES (1)"))
            .await;
        assert!(dangling.is_err(), "{dangling:?}");
        assert_eq!(observer.begun.load(Ordering::SeqCst), 1);
        assert_eq!(
            observer.committed.load(Ordering::SeqCst),
            0,
            "its COMMIT failed"
        );

        committer
            .write(insert("INSERT INTO p (k) VALUES (1)"))
            .await
            .unwrap();
        assert_eq!(observer.committed.load(Ordering::SeqCst), 1);
    }
}
