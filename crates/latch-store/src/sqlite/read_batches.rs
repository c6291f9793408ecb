//! The hot path's reads (a client, a token, or both: every introspection, revocation and
//! issuance) share one read transaction across concurrent requests.
//!
//! A read on its own is an implicit transaction, and beginning and ending one costs more
//! than the lookup's B-tree search: SQLite takes and releases a POSIX lock on the WAL index
//! (two `fcntl` calls), re-checks the WAL header and, when the WAL is empty, the file's size
//! (`fstat`). Measured on the benchmark's 1M database: 25-27 µs per lookup each in its own
//! transaction, 18-19 µs with 32 lookups per transaction.
//!
//! Requests queue their reads; a task takes everything queued (up to [`MAX_BATCH`]),
//! having first yielded once so that the other requests already runnable can queue theirs,
//! and runs them all in one read transaction on one reader connection. There is one such
//! task (a lane) per core the process may run on, requests taking lanes in turn, so that
//! reads still run in parallel on a machine with more cores than this one. Every read in a batch
//! was queued before the transaction began, so each sees every write committed (and
//! answered) before its request reached the store: batching changes no answer. Under light
//! load a batch is one read, run as before.
//!
//! Since a batch's reads share one snapshot, what one of them read holds for the others: a
//! [`SnapshotMemo`] keeps the clients read so far in the transaction, so a batch of one
//! client's requests reads and decodes that client once, not once per request (as the
//! PostgreSQL lookups do).
//!
//! The same pattern as the PostgreSQL back-end's `postgres/lookups.rs`, where the shared
//! cost is a statement's execution instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use latch_core::client::Client;
use latch_core::id::{ClientId, TenantId};
use latch_core::store::StoreResult;
use latch_core::StoreError;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::marks::RevocationMarks;
use super::{execute_cached, store_error, Readers};

/// The most reads in one transaction.
const MAX_BATCH: usize = 256;
/// Reads waiting for the task; past this, requests wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// The most clients a [`SnapshotMemo`] keeps; a batch naming more reads the others as if
/// unbatched.
const MEMO_CLIENTS: usize = 8;

/// A read and where its answer goes; it sends the answer itself and returns whether the
/// read succeeded.
type Job = Box<dyn FnOnce(&Connection, &mut SnapshotMemo) -> bool + Send>;

/// What the reads of one read transaction have read so far, for the reads after them in
/// the same transaction: every one sees the same snapshot, so a client read once is the
/// client for all of them. A read outside a shared transaction gets a memo of its own.
#[derive(Default)]
pub(super) struct SnapshotMemo {
    clients: Vec<(TenantId, ClientId, Option<Client>)>,
}

impl SnapshotMemo {
    /// The client as this snapshot has it (`Some(None)`: it does not exist), if read yet.
    pub(super) fn client(&self, tenant: &TenantId, id: &ClientId) -> Option<&Option<Client>> {
        self.clients
            .iter()
            .find(|(t, c, _)| c == id && t == tenant)
            .map(|(_, _, client)| client)
    }

    /// Records what this snapshot holds for `tenant`/`id`.
    pub(super) fn remember_client(
        &mut self,
        tenant: TenantId,
        id: ClientId,
        client: &Option<Client>,
    ) {
        if self.clients.len() < MEMO_CLIENTS && self.client(&tenant, &id).is_none() {
            self.clients.push((tenant, id, client.clone()));
        }
    }

    /// The client, read with `read` unless this snapshot already has it.
    pub(super) fn client_or_read(
        &mut self,
        tenant: &TenantId,
        id: &ClientId,
        read: impl FnOnce() -> rusqlite::Result<Option<Client>>,
    ) -> rusqlite::Result<Option<Client>> {
        if let Some(client) = self.client(tenant, id) {
            return Ok(client.clone());
        }
        let client = read()?;
        self.remember_client(tenant.clone(), id.clone(), &client);
        Ok(client)
    }
}

/// The handle requests use; the tasks stop when it is dropped.
pub(super) struct ReadBatches {
    lanes: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

impl ReadBatches {
    /// Starts the batching tasks on the current tokio runtime; `None` outside one (a store
    /// used from another executor then reads without batching). Each batch begins by
    /// bringing `marks` up to date with the revocation log.
    pub(super) fn start(readers: Arc<Readers>, marks: Arc<RevocationMarks>) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lanes = (0..cores)
            .map(|_| {
                let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
                runtime.spawn(run(readers.clone(), marks.clone(), rx));
                queue
            })
            .collect();
        Some(Self {
            lanes,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `read` in the next batch's transaction, with what the batch has read before it.
    pub(super) async fn read<T, F>(&self, read: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection, &mut SnapshotMemo) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn, memo| {
            let answer = read(conn, memo).map_err(store_error);
            let ok = answer.is_ok();
            // The request may have gone (client disconnected); its answer is then unwanted.
            let _ = reply.send(answer);
            ok
        });
        // The job was dropped unrun: no connection could be had, or the tasks have stopped
        // (the runtime is shutting down).
        let stopped = || StoreError::Unavailable("the read could not be run".into());
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[lane].send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(readers: Arc<Readers>, marks: Arc<RevocationMarks>, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Let the request tasks that are already runnable queue their reads too.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let catch_up = |conn: &Connection| marks.catch_up(conn);
        if let Err(e) = readers.with_connection(|conn| run_batch(conn, &catch_up, batch.drain(..)))
        {
            tracing::warn!(error = %e, "a batch of reads failed");
        }
        // If no connection could be had, the jobs are dropped unrun and their requests get
        // `Unavailable` (their reply senders are gone).
        batch.clear();
    }
}

/// Runs `first`, then the jobs, in one read transaction (a lone job in its own implicit one).
/// If `first` fails, no job runs (each gets `Unavailable`). Otherwise an error here only
/// means the connection is not to be reused (as after any failed read): each job has
/// answered for itself.
fn run_batch(
    conn: &Connection,
    first: &dyn Fn(&Connection) -> rusqlite::Result<()>,
    jobs: impl ExactSizeIterator<Item = Job>,
) -> rusqlite::Result<()> {
    // DEFERRED: the read transaction (the snapshot) begins at the first statement, after
    // every job in the batch was queued.
    let shared = jobs.len() > 1 && execute_cached(conn, "BEGIN DEFERRED").is_ok();
    if let Err(e) = first(conn) {
        if shared {
            let _ = execute_cached(conn, "ROLLBACK");
        }
        return Err(e);
    }
    // Without the transaction (a lone job, or BEGIN failed), each job runs in its own
    // implicit one, with a memo of its own, and reports whatever is wrong with the connection
    // itself.
    let mut memo = SnapshotMemo::default();
    let failed = jobs
        .into_iter()
        .map(|job| {
            if !shared {
                memo = SnapshotMemo::default();
            }
            job(conn, &mut memo)
        })
        .filter(|ok| !ok)
        .count();
    if shared {
        execute_cached(conn, "COMMIT")?;
    }
    match failed {
        0 => Ok(()),
        n => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("{n} read(s) of the batch failed")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn job(ran: &Arc<AtomicUsize>, sql: &'static str) -> Job {
        let ran = ran.clone();
        Box::new(move |conn, _| {
            ran.fetch_add(1, Ordering::Relaxed);
            conn.query_row(sql, [], |r| r.get::<_, i64>(0)).is_ok()
        })
    }

    #[test]
    fn every_job_runs_and_one_failure_marks_the_connection_unfit() {
        let conn = Connection::open_in_memory().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let good = || (0..3).map(|_| job(&ran, "SELECT 1")).collect::<Vec<_>>();
        assert!(run_batch(&conn, &|_| Ok(()), good().into_iter()).is_ok());
        let mut mixed = good();
        mixed.insert(1, job(&ran, "SELECT * FROM no_such_table"));
        assert!(
            run_batch(&conn, &|_| Ok(()), mixed.into_iter()).is_err(),
            "a failed read is reported"
        );
        assert_eq!(
            ran.load(Ordering::Relaxed),
            7,
            "the reads after it still ran"
        );
        // The batch's transaction was closed either way.
        assert!(conn.is_autocommit());
    }

    #[test]
    fn the_reads_of_one_batch_share_a_memo_and_the_next_batch_starts_afresh() {
        let conn = Connection::open_in_memory().unwrap();
        let tenant = TenantId::default_tenant();
        let id = ClientId::parse("app").unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Records whether the memo already had the client, then remembers it (as absent).
        let job = || -> Job {
            let (seen, tenant, id) = (seen.clone(), tenant.clone(), id.clone());
            Box::new(move |_, memo| {
                seen.lock()
                    .unwrap()
                    .push(memo.client(&tenant, &id).is_some());
                memo.remember_client(tenant, id, &None);
                true
            })
        };
        run_batch(&conn, &|_| Ok(()), vec![job(), job(), job()].into_iter()).unwrap();
        run_batch(&conn, &|_| Ok(()), vec![job()].into_iter()).unwrap();
        run_batch(&conn, &|_| Ok(()), vec![job(), job()].into_iter()).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [false, true, true, false, false, true]
        );
    }

    #[test]
    fn a_memo_tells_tenants_apart_and_reads_what_it_lacks() {
        let (home, away) = (TenantId::default_tenant(), TenantId::parse("away").unwrap());
        let id = ClientId::parse("app").unwrap();
        let mut memo = SnapshotMemo::default();
        memo.remember_client(home.clone(), id.clone(), &None);
        assert!(memo.client(&home, &id).is_some());
        assert!(memo.client(&away, &id).is_none());
        let mut reads = 0;
        for _ in 0..2 {
            let read = memo.client_or_read(&away, &id, || {
                reads += 1;
                Ok(None)
            });
            assert!(read.unwrap().is_none());
        }
        assert_eq!(reads, 1, "the second read comes from the memo");
    }
}
