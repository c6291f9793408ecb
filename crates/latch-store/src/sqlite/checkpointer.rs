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
//! A background pass alone never catches up with a writer that keeps committing, and SQLite
//! only rewinds the WAL when a write transaction starts with every page copied. So once the
//! WAL is [`WalPolicy::rewind_at_pages`] long, the writer itself copies the pages committed
//! since the last pass, after answering its batch and before starting the next one, and the
//! next transaction rewinds the WAL. That copy stalls every write, so it is rare (a long WAL) and
//! short: the writer takes it in a gap between background passes, when the pages left are the
//! few committed since the last pass, and waits for a pass in progress only once the WAL is
//! twice that long. The two never checkpoint at once (a mutex, so neither gets `SQLITE_BUSY`
//! from the other).
//!
//! Durability does not depend on any of it: a commit is durable once its WAL frames are
//! fsynced; a checkpoint only moves committed pages into the database file, and SQLite
//! fsyncs the database file before it records a complete pass, after which the WAL may be
//! rewound.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How a file database's WAL is checkpointed and kept short (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalPolicy {
    /// WAL pages past which the writer copies the rest itself so that the WAL is rewound.
    /// The writer learns the WAL's length from the background passes, so the WAL file can
    /// grow to about twice this, plus what is committed in one `pass_interval`.
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

/// What the writer and the checkpoint thread share.
#[derive(Default)]
struct Shared {
    /// Held for the length of a checkpoint, by whichever thread runs it.
    running: Mutex<()>,
    /// Pages in the WAL at the end of the last checkpoint.
    wal_pages: AtomicI64,
}

impl Shared {
    /// Waits for the checkpoint in progress, if any, to end.
    fn wait_turn(&self) -> MutexGuard<'_, ()> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the checkpoint in progress, if any, and runs one on `conn`.
    fn checkpoint(&self, conn: &Connection) {
        self.checkpoint_holding(self.wait_turn(), conn);
    }

    /// Runs a passive checkpoint on `conn`, recording the WAL's length; `_running` is the
    /// lock that keeps the other thread from checkpointing meanwhile.
    fn checkpoint_holding(&self, _running: MutexGuard<'_, ()>, conn: &Connection) {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(pages) => self.wal_pages.store(pages, Ordering::Relaxed),
            // Nothing is lost: the pages stay in the WAL for the next checkpoint.
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// The writer's handle on the checkpoint thread.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    nudge: SyncSender<()>,
    rewind_at_pages: i64,
}

impl Checkpointer {
    /// Starts the checkpoint thread over its own connection to the database file. The
    /// thread stops when the handle is dropped.
    pub(crate) fn start(conn: Connection, policy: WalPolicy) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        // One pending nudge at most: nudges that arrive during a pass coalesce into one more.
        let (nudge, nudges) = sync_channel::<()>(1);
        let background = shared.clone();
        thread::Builder::new()
            .name("latch-checkpoint".into())
            .spawn(move || {
                while nudges.recv().is_ok() {
                    let started = Instant::now();
                    background.checkpoint(&conn);
                    // Nudges arriving meanwhile wait in the channel for the next pass.
                    if let Some(rest) = policy.pass_interval.checked_sub(started.elapsed()) {
                        thread::sleep(rest);
                    }
                }
            })?;
        Ok(Self {
            shared,
            nudge,
            rewind_at_pages: policy.rewind_at_pages,
        })
    }

    /// Called by the writer after each commit, once the batch is answered and before the next
    /// transaction begins, on the write connection.
    pub(crate) fn after_commit(&self, writer: &Connection) {
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
                self.shared.checkpoint_holding(running, writer);
                // Everything committed is copied, so the next transaction rewinds the WAL;
                // until a background pass says otherwise, assume it did.
                self.shared.wal_pages.store(0, Ordering::Relaxed);
                return;
            }
        }
        let _ = self.nudge.try_send(());
    }
}
