//! WAL checkpoints off the writer's critical path.
//!
//! Left to itself, SQLite checkpoints inside the `COMMIT` that takes the WAL past 1,000
//! pages: it copies every page in the WAL into the database file and fsyncs it, while that
//! batch and every write queued behind it wait. Measured, that was most of the writes' p99.
//!
//! Here the copying happens ahead of time on a thread of its own: the writer nudges it after
//! each commit, and it runs a `PASSIVE` checkpoint (which never blocks the writer or the
//! readers) of whatever the WAL holds. A background pass alone never catches up with a writer
//! that keeps committing, and SQLite only rewinds the WAL when a write transaction starts with
//! every page copied, so once the WAL is long the writer itself copies the few pages
//! committed since the last pass, after answering its batch and before starting the next
//! one; the next transaction then rewinds the WAL. The two never checkpoint at once (a mutex,
//! so neither gets `SQLITE_BUSY` from the other).
//!
//! Durability does not depend on any of it: a commit is durable once its WAL frames are
//! fsynced; a checkpoint only moves committed pages into the database file.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use rusqlite::Connection;

/// WAL pages past which the writer copies the rest itself so that the WAL is rewound
/// (SQLite's own automatic checkpoint threshold).
pub(crate) const REWIND_AT_PAGES: i64 = 1_000;

/// What the writer and the checkpoint thread share.
#[derive(Default)]
struct Shared {
    /// Held for the length of a checkpoint, by whichever thread runs it.
    running: Mutex<()>,
    /// Pages in the WAL at the end of the last checkpoint.
    wal_pages: AtomicI64,
}

impl Shared {
    /// Runs a passive checkpoint on `conn`, recording the WAL's length.
    fn checkpoint(&self, conn: &Connection) {
        let _running = self.running.lock().unwrap_or_else(|p| p.into_inner());
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
}

impl Checkpointer {
    /// Starts the checkpoint thread over its own connection to the database file. The
    /// thread stops when the handle is dropped.
    pub(crate) fn start(conn: Connection) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        // One pending nudge at most: nudges that arrive during a pass coalesce into one more.
        let (nudge, nudges) = sync_channel::<()>(1);
        let background = shared.clone();
        thread::Builder::new()
            .name("latch-checkpoint".into())
            .spawn(move || {
                while nudges.recv().is_ok() {
                    background.checkpoint(&conn);
                }
            })?;
        Ok(Self { shared, nudge })
    }

    /// Called by the writer after each commit, once the batch is answered and before the next
    /// transaction begins, on the write connection.
    pub(crate) fn after_commit(&self, writer: &Connection) {
        if self.shared.wal_pages.load(Ordering::Relaxed) >= REWIND_AT_PAGES {
            // Waits for a background pass in progress (it is copying the last few batches),
            // then copies what is left. Skipping it instead when a pass is running was tried:
            // with a pass nearly always running, the WAL then grew past 19 MB.
            self.shared.checkpoint(writer);
            // Everything committed is copied, so the next transaction rewinds the WAL; until
            // a background pass says otherwise, assume it did.
            self.shared.wal_pages.store(0, Ordering::Relaxed);
            return;
        }
        let _ = self.nudge.try_send(());
    }
}
