//! WAL checkpoints off the writer's critical path.
//!
//! Left to itself, SQLite checkpoints inside the `COMMIT` that takes the WAL past 1,000
//! pages: it copies every page in the WAL into the database file and fsyncs it, while that
//! batch and every write queued behind it wait. Measured, that was most of the writes' p99.
//!
//! Here the copying happens ahead of time on a thread of its own: the writer nudges it after
//! each commit, and it runs a `PASSIVE` checkpoint (which never blocks the writer or the
//! readers) of whatever the WAL holds. Each pass that copies everything ends with an fsync of
//! the database file, which on this class of disk costs several commits' worth of fsync and
//! delays the writer's own commit fsyncs behind it; so passes start at most every
//! [`WalPolicy::pass_interval`], and a page rewritten by many commits in between is copied
//! once.
//!
//! The thread runs at a lower priority (nice +10) than the rest of latch: a pass copies a
//! few thousand pages in one go, and on a core shared with the writer and the HTTP workers
//! that burst delayed commits and responses alike (measured at N = 1M, 5 rounds: revocations
//! 8% faster, their p99 13% shorter). At nice +19 a pass could lag so far that the writer
//! waited for it: in one run of five the p99 more than doubled.
//!
//! A background pass alone never catches up with a writer that keeps committing, and SQLite
//! only rewinds the WAL when a write transaction starts with every page copied. So once the
//! WAL is [`WalPolicy::rewind_at_pages`] long, the writer itself copies the pages committed
//! since the last pass, after answering its batch and before starting the next one, and the
//! next transaction rewinds the WAL. That copy stalls every write, so it is rare (a long WAL) and
//! short: the writer takes it in a gap between background passes, when the pages left are the
//! few committed since the last pass, and waits for a pass in progress only once the WAL is
//! twice that long. The writer knows the WAL's length after each of its commits (SQLite's WAL
//! hook), so a pass slowed down by its low priority cannot let the WAL grow unseen. The two
//! never checkpoint at once (a mutex, so neither gets `SQLITE_BUSY` from the other).
//!
//! Under steady commits no background pass syncs the database file: SQLite syncs it only at
//! the end of a pass that copied the whole WAL, and the writer appends while a pass copies.
//! The pages the passes copy wait in the kernel's page cache until the writer's own copy,
//! whose `fsync` writes them all back: 63-132 ms per rewind under refresh-token rotation,
//! which dirties random pages. Syncing after every background pass, or once ahead of each
//! rewind, made the commits' own syncs wait behind those write-backs instead: issuance and
//! rotation slower or their p99 longer (docs/benchmarks.md, round of 2026-12-03).
//!
//! When the server stops, [`Turns`] runs one last checkpoint (`TRUNCATE`, which empties the
//! WAL into the database file) on the checkpoint thread's connection, after a pass in
//! progress instead of failing beside it. That connection, not a fresh one: Linux reports a
//! failed write-back of the database file to every descriptor open when it failed, but not
//! to one opened after another has seen it (another process's checkpoint, a CLI command's),
//! so a fresh connection's sync could succeed, and TRUNCATE empty the WAL over pages never
//! written back.
//!
//! Durability does not depend on any of it: a commit is durable once its WAL frames are
//! fsynced; a checkpoint only moves committed pages into the database file, and SQLite
//! fsyncs the database file before it records a complete pass, after which the WAL may be
//! rewound. That sync failing is the one error a checkpoint cannot shrug off: the process
//! stops at once and the next start replays the WAL ([`stop_if_write_back_failed`]).

use std::ffi::{c_char, c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{ffi, Connection};

/// How a file database's WAL is checkpointed and kept short (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalPolicy {
    /// WAL pages past which the writer copies the rest itself so that the WAL is rewound.
    /// The WAL file stays under about twice this (the writer waits for a pass in progress
    /// and copies the rest once the WAL is that long).
    pub rewind_at_pages: i64,
    /// The least time from the start of one background pass to the start of the next.
    pub pass_interval: Duration,
}

impl Default for WalPolicy {
    /// 16,384 pages, i.e. 64 MiB of 4 KiB pages, four of SQLite's 4,096-frame WAL-index
    /// segments: the longer the WAL, the rarer the writer's stalls, for a WAL file of that
    /// size and readers searching up to four hash segments (rather than one) for a page. A
    /// pass at most every 100 ms: at most ten database fsyncs a second.
    fn default() -> Self {
        Self {
            rewind_at_pages: 16_384,
            pass_interval: Duration::from_millis(100),
        }
    }
}

/// What the writer (with its WAL hook) and the checkpoint thread share.
#[derive(Default)]
struct Shared {
    /// Held for the length of a checkpoint, by whichever thread runs it.
    running: Mutex<()>,
    /// Pages in the WAL after the writer's last commit (set by its WAL hook).
    wal_pages: AtomicI64,
}

impl Shared {
    /// Waits for the checkpoint in progress, if any, to end.
    fn wait_turn(&self) -> MutexGuard<'_, ()> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the checkpoint in progress, if any, and runs one on `conn`.
    fn checkpoint(&self, conn: &Connection) {
        checkpoint_holding(self.wait_turn(), conn);
    }
}

/// Runs a passive checkpoint on `conn`; `_running` is the lock that keeps the other thread
/// from checkpointing meanwhile.
fn checkpoint_holding(_running: MutexGuard<'_, ()>, conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        stop_if_write_back_failed(&e);
        // Nothing is lost: the pages stay in the WAL for the next checkpoint.
        tracing::warn!(error = %e, "WAL checkpoint failed");
    }
}

/// Whether `e` says a sync failed (of a file, or of its directory). For a checkpoint: pages
/// copied into the database file, by this pass or an earlier one that recorded its progress
/// without a sync (a pass that cannot copy everything), may never have reached the disk.
/// Linux reports a failed write-back to one `fsync` only and may then drop the pages, so the
/// next pass's sync succeeds, SQLite counts them as copied, rewinds the WAL over their only
/// good copy, and readers read the database file's stale ones (a revoked token active
/// again). For a commit, see `committer::stop_if_outcome_unknown`.
pub(super) fn sync_failed(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == ffi::SQLITE_IOERR_FSYNC
                || f.extended_code == ffi::SQLITE_IOERR_DIR_FSYNC
    )
}

/// Stops the process at once if `e` is a checkpoint's [`sync_failed`], as PostgreSQL stops on a
/// failed `fsync`: no further pass may record the pages as copied, no reader may go on from
/// the database file, and no connection may checkpoint when it closes. The WAL, which still
/// holds every page since its last rewind, is replayed into the database file from its
/// start at the next start (the first connection rebuilds SQLite's WAL index).
pub(super) fn stop_if_write_back_failed(e: &rusqlite::Error) {
    if sync_failed(e) {
        tracing::error!(
            error = %e,
            "a WAL checkpoint could not sync the database file: stopping at once; the next \
             start replays the write-ahead log (check the disk)"
        );
        std::process::abort();
    }
}

/// SQLite's WAL hook on the writer connection: records the WAL's length after each commit.
/// Registering it replaces SQLite's automatic checkpoint (which is that same hook), as
/// intended: checkpoints are this module's job.
unsafe extern "C" fn on_commit(
    shared: *mut c_void,
    _db: *mut ffi::sqlite3,
    _schema: *const c_char,
    pages: c_int,
) -> c_int {
    // SAFETY: `shared` is a reference to `Shared` the hook holds (see `watch`).
    let shared = unsafe { &*shared.cast::<Shared>() };
    shared.wal_pages.store(pages.into(), Ordering::Relaxed);
    ffi::SQLITE_OK
}

/// Lowers the calling thread's priority by 10 nice levels (Linux keeps a nice value per
/// thread). Failing that, checkpoints merely compete with the rest as before.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: nice() changes the calling thread's scheduling priority only. It returns
        // the new value, which may legitimately be -1, so errno tells failure apart.
        let failed = unsafe {
            *libc::__errno_location() = 0;
            libc::nice(10) == -1 && *libc::__errno_location() != 0
        };
        if failed {
            tracing::debug!("could not lower the checkpoint thread's priority");
        }
    }
}

/// What the checkpoint thread is asked to do.
enum Job {
    /// A background pass (a nudge after a commit).
    Pass,
    /// Another checkpoint, in its turn ([`Turns::take`]).
    Run(Box<dyn FnOnce(&Connection) + Send>),
}

/// Turns at checkpointing on the checkpoint thread's connection, shared with a
/// [`Checkpointer`]: SQLite answers a checkpoint started while another runs with
/// `SQLITE_BUSY` at once, without waiting.
#[derive(Clone)]
pub(crate) struct Turns {
    shared: Arc<Shared>,
    jobs: SyncSender<Job>,
}

impl Turns {
    /// Runs `checkpoint` on the checkpoint thread's connection once no other checkpoint
    /// runs, and none starts until it is done; `None` if the thread has stopped. A panic in
    /// `checkpoint` is the caller's, and leaves the thread running.
    pub(crate) fn take<T: Send + 'static>(
        &self,
        checkpoint: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = sync_channel(1);
        let shared = self.shared.clone();
        let job = Job::Run(Box::new(move |conn| {
            let _turn = shared.wait_turn();
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| checkpoint(conn)));
            let _ = reply.send(outcome);
        }));
        self.jobs.send(job).ok()?;
        match answer.recv().ok()? {
            Ok(done) => Some(done),
            Err(panicked) => panic::resume_unwind(panicked),
        }
    }
}

/// The writer's handle on the checkpoint thread.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    jobs: SyncSender<Job>,
    rewind_at_pages: i64,
}

impl Checkpointer {
    /// Starts the checkpoint thread over its own connection to the database file. The
    /// thread stops once this handle and every [`Turns`] are dropped.
    pub(crate) fn start(conn: Connection, policy: WalPolicy) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        // One pending job at most: nudges that arrive during a pass coalesce into one more.
        let (jobs, queue) = sync_channel::<Job>(1);
        let background = shared.clone();
        let (lowered, ready) = sync_channel::<()>(0);
        thread::Builder::new()
            .name("latch-checkpoint".into())
            .spawn(move || {
                lower_priority();
                let _ = lowered.send(());
                // A pass starts at most every `pass_interval`: a nudge waits out the rest of
                // it (nudges arriving meanwhile coalesce into it), while a checkpoint taken
                // in turn runs at once (a stopping server waits for none of that interval).
                let mut next_pass = Instant::now();
                while let Ok(job) = queue.recv() {
                    if let Job::Run(checkpoint) = job {
                        checkpoint(&conn);
                        continue;
                    }
                    while let Some(rest) = next_pass.checked_duration_since(Instant::now()) {
                        match queue.recv_timeout(rest) {
                            Ok(Job::Run(checkpoint)) => checkpoint(&conn),
                            Ok(Job::Pass) | Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    next_pass = Instant::now() + policy.pass_interval;
                    background.checkpoint(&conn);
                }
            })?;
        // Once `start` returns, the thread runs at its lower priority.
        let _ = ready.recv();
        Ok(Self {
            shared,
            jobs,
            rewind_at_pages: policy.rewind_at_pages,
        })
    }

    /// A handle for running a checkpoint of another kind ([`Turns::take`]) that never
    /// overlaps a background pass or the writer's own copying.
    pub(crate) fn turns(&self) -> Turns {
        Turns {
            shared: self.shared.clone(),
            jobs: self.jobs.clone(),
        }
    }

    /// Registers the WAL hook on the writer connection, so that [`after_commit`] knows the
    /// WAL's length after each commit, until [`unwatch`].
    ///
    /// [`after_commit`]: Self::after_commit
    /// [`unwatch`]: Self::unwatch
    pub(crate) fn watch(&self, writer: &Connection) {
        // The hook holds a reference to `Shared` of its own, released when it is replaced or
        // removed, so its argument outlives it whatever happens to this `Checkpointer`.
        let shared = Arc::into_raw(self.shared.clone())
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: the handle is the writer's open connection, and `on_commit` only reads
        // `shared` while registered.
        let previous = unsafe { ffi::sqlite3_wal_hook(writer.handle(), Some(on_commit), shared) };
        self.release(previous);
    }

    /// Removes the hook [`watch`](Self::watch) registered.
    pub(crate) fn unwatch(&self, writer: &Connection) {
        // SAFETY: the handle is the writer's open connection.
        let previous =
            unsafe { ffi::sqlite3_wal_hook(writer.handle(), None, std::ptr::null_mut()) };
        self.release(previous);
    }

    /// Releases the reference a replaced hook held, if that hook was this one's.
    fn release(&self, previous: *mut c_void) {
        if std::ptr::eq(
            previous.cast_const().cast::<Shared>(),
            Arc::as_ptr(&self.shared),
        ) {
            // SAFETY: a hook argument equal to this `Shared` can only come from `watch`'s
            // `Arc::into_raw`, whose reference is released here once.
            drop(unsafe { Arc::from_raw(previous.cast_const().cast::<Shared>()) });
        }
    }

    /// Called by the writer after each commit, once the batch is answered and before the next
    /// transaction begins, on the write connection. Returns whether the writer checkpointed
    /// (copied the rest of the WAL itself, holding up every write meanwhile).
    pub(crate) fn after_commit(&self, writer: &Connection) -> bool {
        let pages = self.shared.wal_pages.load(Ordering::Relaxed);
        if pages >= self.rewind_at_pages {
            let running = if pages >= 2 * self.rewind_at_pages {
                // The WAL outgrew the gaps between passes: wait for the pass in progress.
                Some(self.shared.wait_turn())
            } else {
                match self.shared.running.try_lock() {
                    Ok(guard) => Some(guard),
                    Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                    // A pass is copying; the writer takes the gap after it.
                    Err(TryLockError::WouldBlock) => None,
                }
            };
            if let Some(running) = running {
                // Everything committed is copied, so the next transaction rewinds the WAL
                // (unless a reader still holds an older snapshot: then a later commit tries
                // again).
                checkpoint_holding(running, writer);
                return true;
            }
        }
        let _ = self.jobs.try_send(Job::Pass);
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_sync_counts_as_a_failed_write_back() {
        let failure = |code: c_int| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some("checkpoint".into()))
        };
        assert!(sync_failed(&failure(ffi::SQLITE_IOERR_FSYNC)));
        assert!(sync_failed(&failure(ffi::SQLITE_IOERR_DIR_FSYNC)));
        // A failed write or read leaves the pass unrecorded and its pages in the WAL; a busy
        // database only postpones the pass.
        for code in [
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_READ,
            ffi::SQLITE_BUSY,
            ffi::SQLITE_FULL,
        ] {
            assert!(!sync_failed(&failure(code)), "{code}");
        }
    }

    /// The nice value of thread `tid` of this process, from `/proc`.
    fn nice(tid: &str) -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[19 - 3].parse().unwrap()
    }

    /// The checkpoint thread runs at a lower priority, and a checkpoint taken in its turn
    /// (the final `TRUNCATE`) runs on it, with its connection. Asked of the thread itself: a
    /// scan of `/proc` would also see other tests' checkpoint threads, starting or ending.
    #[test]
    fn the_checkpoint_thread_runs_at_a_lower_priority_and_takes_the_turns() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("latch.db")).unwrap();
        let checkpointer = Checkpointer::start(conn, WalPolicy::default()).unwrap();
        let tid = || unsafe { libc::gettid() }.to_string();
        let here = nice(&tid());
        let (thread, its_nice, file) = (checkpointer.turns())
            .take(move |conn| {
                let thread = thread::current().name().map(String::from);
                (thread, nice(&tid()), conn.path().map(String::from))
            })
            .expect("the checkpoint thread runs");
        assert_eq!(thread.as_deref(), Some("latch-checkpoint"));
        assert_eq!(its_nice, (here + 10).min(19));
        assert!(file.is_some_and(|f| f.ends_with("latch.db")));
        // A panic in a checkpoint taken in turn is its caller's; the thread runs on.
        let turns = checkpointer.turns();
        let panicked = panic::catch_unwind(|| turns.take(|_| panic!("a checkpoint's bug")));
        assert!(panicked.is_err(), "the caller panics");
        assert_eq!(turns.take(|_| 7), Some(7), "the thread runs on");
        // The writer's handle gone (its thread ended), the final checkpoint still runs.
        let turns = checkpointer.turns();
        drop(checkpointer);
        assert!(turns.take(|_| ()).is_some(), "the turns keep the thread");
    }
}
