//! Group commit: one writer thread owns the write connection and commits whatever writes are
//! queued in one transaction.
//!
//! A `200` for a revocation must mean the revocation is on disk (`synchronous=FULL`), and one
//! fsync per request caps SQLite at a few thousand writes per second. So writers queue their
//! work here; the thread takes everything queued (up to [`MAX_BATCH`]), runs each write in its
//! own savepoint (one failing write cannot spoil the others), commits once, and only then
//! answers every waiter. Under light load a batch is one write and adds no latency; under heavy
//! load dozens of requests share one fsync. If the commit fails, every waiter gets the error.

use std::sync::{Arc, Mutex};
use std::thread;

use latch_core::store::StoreResult;
use latch_core::StoreError;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::checkpointer::Checkpointer;
use super::unavailable;

/// The most writes committed in one transaction. Large enough to amortise an fsync over a
/// burst from many clients, small enough to keep a batch's latency well under a millisecond.
const MAX_BATCH: usize = 256;

/// Writes waiting for the writer thread; past this, writers wait for room (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// A queued write: run inside the batch's transaction, then told how the commit went.
trait PendingWrite: Send {
    fn apply(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, commit: Result<(), &StoreError>);
}

struct Write<F, T> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<F, T> PendingWrite for Write<F, T>
where
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
    T: Send,
{
    fn apply(&mut self, conn: &Connection) {
        if let Some(work) = self.work.take() {
            self.result = Some(in_savepoint(conn, work));
        }
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

/// Runs one statement from the connection's statement cache (parsed once, not per write).
fn run_cached(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(super::store_error)
}

fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> StoreResult<T>,
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
    /// Starts the writer thread over `conn`, nudging `checkpointer` (a file database's)
    /// after each commit. The thread stops when every handle is dropped.
    pub(crate) fn start(
        conn: Arc<Mutex<Connection>>,
        checkpointer: Option<Checkpointer>,
    ) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        thread::Builder::new()
            .name("latch-committer".into())
            .spawn(move || run(&conn, rx, checkpointer.as_ref()))?;
        Ok(Self { queue })
    }

    /// Runs `work` in the next batch and returns its result once the batch is durable.
    pub(crate) async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let write = Box::new(Write {
            work: Some(work),
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
) {
    let mut batch: Vec<Box<dyn PendingWrite>> = Vec::with_capacity(MAX_BATCH);
    // Waits for a write, then takes every other one already queued.
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let writer = conn.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = commit_batch(&writer, &mut batch);
        drop(writer);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, writes = batch.len(), "commit failed; every write in the batch answers unavailable");
        }
        for write in batch.drain(..) {
            write.finish(outcome.as_ref().map(|_| ()));
        }
        if let (Some(c), Ok(())) = (checkpointer, &outcome) {
            c.after_commit(&conn.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

fn commit_batch(conn: &Connection, batch: &mut [Box<dyn PendingWrite>]) -> StoreResult<()> {
    run_cached(conn, "BEGIN IMMEDIATE")?;
    for write in batch.iter_mut() {
        // Some errors (disk full, I/O) make SQLite roll the whole transaction back. Applying
        // further writes would then run in autocommit mode, outside this batch's atomicity.
        if conn.is_autocommit() {
            return Err(unavailable("the transaction was aborted by the database"));
        }
        write.apply(conn);
    }
    run_cached(conn, "COMMIT").inspect_err(|_| {
        // Leave the connection usable for the next batch.
        let _ = conn.execute_batch("ROLLBACK");
    })
}
