//! Revocation marks of single tokens: an append-only log in the database, indexed in memory.
//!
//! Revoking one access token used to `UPDATE` its row, a random leaf of the largest table, and
//! each such leaf is a page of its own in the commit's WAL write, its `fsync` and the next
//! checkpoint (docs/benchmarks.md, round of 2026-12-02). A mark is now a row appended to
//! `revocation_log` (rowid order, no index by token), so the revocations of one commit share
//! its pages, and "is this token revoked?" is answered from [`RevocationMarks`], an index of
//! the log kept in memory.
//!
//! The log is the truth; the index only follows it, and only from committed rows:
//! - every read of tokens first catches up with the log ([`RevocationMarks::catch_up`]: the
//!   rows past the last one seen, usually none), so a revocation committed by this process or
//!   any other on the file before the read began is seen;
//! - the writer catches up when it opens a batch, before the batch writes anything
//!   ([`RevocationMarks::begin_batch`]); the marks its own batch adds are kept apart until
//!   they commit ([`RevocationMarks::mark_in_write`] sees both), recorded only once the
//!   revocation's whole write has succeeded, and dropped when the next batch (or the replay
//!   of a failed one) begins;
//! - a mark leaves the index only once its token has expired, when it no longer matters.
//!
//! So the index holds one entry per revoked, unexpired token revoked this way. To keep that
//! bounded whatever clients do, past [`MAX_MARKS`] a revocation marks the token's row
//! instead, as before (`tokens.revoked_at`, which every read also honours).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use latch_core::clock::UnixTime;
use latch_core::grant::TokenRecord;
use latch_core::token::TokenHash;
use rusqlite::Connection;

/// The most marks the index holds; past it, revocations write the token's row. A mark takes
/// about 80 bytes of memory, so at most about 160 MB.
pub(super) const MAX_MARKS: usize = 2_000_000;

/// A revoked token's mark.
#[derive(Clone, Copy, Debug)]
struct Mark {
    revoked_at: UnixTime,
    expires_at: UnixTime,
}

#[derive(Default)]
struct Index {
    /// The last log row loaded; every committed row up to it is in `marks` (or has expired).
    through: i64,
    marks: HashMap<TokenHash, Mark>,
}

/// The in-memory index of `revocation_log` (see the module documentation).
pub(super) struct RevocationMarks {
    index: Mutex<Index>,
    /// The marks the writer's open batch has added (the writer thread's alone).
    batch: Mutex<HashMap<TokenHash, UnixTime>>,
    capacity: usize,
}

impl RevocationMarks {
    /// An empty index holding at most `capacity` marks; the first catch-up loads the log.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            index: Mutex::new(Index::default()),
            batch: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn batch(&self) -> MutexGuard<'_, HashMap<TokenHash, UnixTime>> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the log rows committed since the last catch-up, as `conn` sees the log. Outside a
    /// write transaction, or in one before it has written, that is committed rows only.
    pub(super) fn catch_up(&self, conn: &Connection) -> rusqlite::Result<()> {
        let from = self.index().through;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, hash, revoked_at, expires_at FROM revocation_log \
             WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([from])?;
        let mut loaded = Vec::new();
        let mut last = from;
        while let Some(row) = rows.next()? {
            last = row.get(0)?;
            if let Some(hash) = TokenHash::from_stored(row.get_ref(1)?.as_blob()?) {
                let mark = Mark {
                    revoked_at: row.get(2)?,
                    expires_at: row.get(3)?,
                };
                loaded.push((hash, mark));
            }
        }
        if last == from {
            return Ok(());
        }
        let mut index = self.index();
        // Another catch-up may have run meanwhile; marks are facts, so loading one twice is
        // harmless, and `through` only moves forward, each catch-up having loaded every row
        // up to its own end.
        for (hash, mark) in loaded {
            index.marks.entry(hash).or_insert(mark);
        }
        index.through = index.through.max(last);
        Ok(())
    }

    /// The writer's start of a batch, in its transaction before any write: catches up with
    /// the log (the previous batch's marks, committed, are in it now) and forgets the marks
    /// of the previous batch, or of this batch's first run if it is being replayed.
    pub(super) fn begin_batch(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.batch().clear();
        self.catch_up(conn)
    }

    /// Records that the open batch has appended a mark for `hash` to the log. Call it only
    /// once the revocation's write can no longer fail, so that a write rolled back alone (in
    /// its savepoint) leaves no mark here.
    pub(super) fn marked_in_batch(&self, hash: &TokenHash, revoked_at: UnixTime) {
        self.batch().insert(*hash, revoked_at);
    }

    /// Sets a token's revocation time from its mark, if the index has one (reads, after a
    /// catch-up).
    pub(super) fn apply(&self, record: &mut TokenRecord) {
        if record.revoked_at.is_none() {
            record.revoked_at = self.index().marks.get(&record.hash).map(|m| m.revoked_at);
        }
    }

    /// The mark of `hash`, in a write: in the index (caught up when the batch began) or
    /// added by the batch itself.
    pub(super) fn mark_in_write(&self, hash: &TokenHash) -> Option<UnixTime> {
        let committed = self.index().marks.get(hash).map(|m| m.revoked_at);
        committed.or_else(|| self.batch().get(hash).copied())
    }

    /// [`apply`](Self::apply), in a write ([`mark_in_write`](Self::mark_in_write)).
    pub(super) fn apply_in_write(&self, record: &mut TokenRecord) {
        if record.revoked_at.is_none() {
            record.revoked_at = self.mark_in_write(&record.hash);
        }
    }

    /// Whether a new mark may go in the log (or must go in the token's row).
    pub(super) fn has_room(&self) -> bool {
        self.index().marks.len() + self.batch().len() < self.capacity
    }

    /// Drops the marks of tokens expired at `now`.
    pub(super) fn forget_expired(&self, now: UnixTime) {
        self.index().marks.retain(|_, m| m.expires_at > now);
    }

    /// How many marks the index holds.
    pub(super) fn len(&self) -> usize {
        self.index().marks.len()
    }
}
