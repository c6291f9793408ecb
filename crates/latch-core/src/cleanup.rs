//! Expiry clean-up: deleting rows that can never be active again, and audit records past
//! their retention period, in bounded batches so the database is never locked for long and
//! serving goes on.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::authority::Authority;
use crate::clock::UnixTime;
use crate::error::{Error, StoreError};
use crate::store::{Purged, Sweep};

/// Audit records deleted per batch: each batch is one short transaction.
pub const BATCH: u32 = 1_000;

/// Token or grant rows an expiry sweep reads per batch (each of them may be deleted): each
/// batch is one short transaction, and one that deletes nothing writes nothing.
pub const SWEEP_BATCH: u32 = 4_000;

/// How long after its expiry a token or grant row is kept: the customary allowance for the
/// skew between the clocks of the nodes sharing a database. An access token carries its
/// grant's owner and learns of the grant's revocation from the grant (or its mark), not from
/// its own row; a node whose clock lags the sweeping node's may still take that token as
/// live while its own clock says so, and must still find the grant revoked then.
pub const EXPIRY_GRACE: UnixTime = 300;

/// The most a node's clock may be off the database's ([`Authority::check_clock`]): half of
/// [`EXPIRY_GRACE`], so that two nodes within it of the database are within the allowance
/// of each other, less what the measure itself may miss by ([`SKEW_MEASURE_ERROR`]).
pub const MAX_CLOCK_SKEW: UnixTime = EXPIRY_GRACE / 2 - SKEW_MEASURE_ERROR;

/// How far a measured skew may be off the true one: both clocks are read in whole seconds
/// (up to a second each), a round trip apart. Two nodes each measured at exactly half the
/// allowance could otherwise be a few seconds further apart than the allowance.
const SKEW_MEASURE_ERROR: UnixTime = 5;

// Two nodes at the bound, each measured short by the error, stay within the allowance.
const _: () = assert!(2 * (MAX_CLOCK_SKEW + SKEW_MEASURE_ERROR) <= EXPIRY_GRACE);

/// A node's clock off the database's by more than this is logged as a warning.
const CLOCK_SKEW_WARNING: UnixTime = 10;

/// This node's clock against the database's ([`Authority::clock_offset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockOffset {
    /// Nothing to compare with: the database has no clock of its own (SQLite), or this
    /// node's clock is not the machine's (a test's).
    Unknown,
    /// Ahead of the database's by so many seconds (negative: behind), within
    /// [`MAX_CLOCK_SKEW`].
    InStep(UnixTime),
    /// Further off than [`MAX_CLOCK_SKEW`], by so many seconds.
    Off(UnixTime),
}

/// Counters for metrics: what the clean-up has deleted since start-up, and when it last ran.
#[derive(Debug, Default)]
pub struct CleanupStats {
    tokens: AtomicU64,
    grants: AtomicU64,
    audit: AtomicU64,
    runs: AtomicU64,
    last_run: AtomicI64,
}

/// A snapshot of [`CleanupStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanupSnapshot {
    /// Token rows deleted since start-up.
    pub tokens_deleted: u64,
    /// Grant rows deleted since start-up.
    pub grants_deleted: u64,
    /// Audit records deleted since start-up (past the retention period).
    pub audit_deleted: u64,
    /// Completed runs since start-up.
    pub runs: u64,
    /// When the last run finished (Unix seconds; 0 = never).
    pub last_run: i64,
}

impl CleanupStats {
    /// The current counters.
    pub fn snapshot(&self) -> CleanupSnapshot {
        CleanupSnapshot {
            tokens_deleted: self.tokens.load(Ordering::Relaxed),
            grants_deleted: self.grants.load(Ordering::Relaxed),
            audit_deleted: self.audit.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            last_run: self.last_run.load(Ordering::Relaxed),
        }
    }
}

impl Authority {
    /// How far this node's clock is ahead of the database's (negative: behind), where the
    /// database has a clock of its own ([`crate::store::Storage::database_time`]). Every
    /// expiry is judged by the judging node's clock, and the rows of a revoked grant are
    /// deleted [`EXPIRY_GRACE`] after its expiry by the sweeping node's: a node whose clock
    /// is further off than that from another's can take a token as live whose grant's
    /// revocation the other has already deleted.
    async fn clock_skew(&self) -> Result<Option<UnixTime>, Error> {
        if !self.clock.tells_the_machines_time() {
            return Ok(None);
        }
        Ok(self
            .store
            .database_time()
            .await?
            .map(|database| self.clock.now().saturating_sub(database)))
    }

    /// Fails if this node's clock is more than [`MAX_CLOCK_SKEW`] off the database's (see
    /// [`clock_skew`](Self::clock_skew)), so that a node so far off neither starts nor
    /// cleans up; warns past a few seconds.
    pub async fn check_clock(&self) -> Result<(), Error> {
        match self.clock_offset().await? {
            ClockOffset::Off(skew) => Err(StoreError::Unavailable(format!(
                "this node's clock is {skew} s off the database's (PostgreSQL's \
                 clock_timestamp()): nodes sharing a database must keep within \
                 {MAX_CLOCK_SKEW} s of it, or one could take a token as live whose revocation \
                 another has already cleaned up; set the time right (NTP)"
            ))
            .into()),
            ClockOffset::InStep(skew) if skew.abs() > CLOCK_SKEW_WARNING => {
                tracing::warn!(
                    skew_seconds = skew,
                    "this node's clock is off the database's; keep the nodes' clocks in step (NTP)"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// This node's clock against the database's. Logs nothing: readiness probes ask it at
    /// any rate, so that a node whose clock drifted since it started is taken out of
    /// rotation.
    pub async fn clock_offset(&self) -> Result<ClockOffset, Error> {
        Ok(match self.clock_skew().await? {
            None => ClockOffset::Unknown,
            Some(skew) if skew.abs() > MAX_CLOCK_SKEW => ClockOffset::Off(skew),
            Some(skew) => ClockOffset::InStep(skew),
        })
    }

    /// Sweeps every token and grant once, [`SWEEP_BATCH`] rows at a time, deleting those that
    /// expired more than [`EXPIRY_GRACE`] ago; then deletes the audit records older than the
    /// retention period, if one is set. Revoked but unexpired tokens stay, so they keep
    /// reading as revoked until they expire.
    pub async fn purge_expired(&self) -> Result<Purged, Error> {
        // A clock far off the database's (one that drifted or was stepped since the start)
        // would delete too early.
        self.check_clock().await?;
        let mut total = Purged::default();
        let mut from = Sweep::START;
        // One cut-off for the whole run: a grant expires no earlier than any of its tokens,
        // so every token of a grant the run deletes goes in the same run, before it. Read
        // anew for each batch, a later batch's (a clock stepped forward meanwhile, or just
        // time passing) could delete a grant whose tokens an earlier batch's had kept.
        let started = self.clock.now();
        let expired_by = started.saturating_sub(EXPIRY_GRACE);
        // The clock stepped back since the run began: a token minted since may sort in a
        // stretch already swept (kept) yet expire by the run's cut-off, and the run's end
        // would forget its revocation mark (SQLite) or a later batch delete its grant's row
        // while it lives by the clock now. Then the run stops; the next starts afresh.
        let stepped_back = || self.clock.now() < started;
        let stopped = loop {
            if from != Sweep::START && stepped_back() {
                break true;
            }
            let (batch, next) = self
                .store
                .purge_expired(expired_by, from, SWEEP_BATCH)
                .await?;
            total.tokens += batch.tokens;
            total.grants += batch.grants;
            self.cleanup
                .tokens
                .fetch_add(batch.tokens, Ordering::Relaxed);
            self.cleanup
                .grants
                .fetch_add(batch.grants, Ordering::Relaxed);
            let Some(next) = next else {
                if stepped_back() {
                    break true;
                }
                self.store.forget_expired(expired_by);
                break false;
            };
            from = next;
            // Let queued requests' writes go first between batches.
            tokio::task::yield_now().await;
        };
        if stopped {
            // Not counted as a run: `/metrics` shows the sweeps that went through.
            tracing::warn!(
                "the clock stepped back during an expiry clean-up: stopped it; the next one \
                 goes on"
            );
            return Ok(total);
        }
        if let Some(retention) = self.audit_retention {
            total.audit = self.purge_audit(retention).await?;
        }
        self.cleanup.runs.fetch_add(1, Ordering::Relaxed);
        self.cleanup
            .last_run
            .store(self.clock.now(), Ordering::Relaxed);
        if total.tokens + total.grants + total.audit > 0 {
            tracing::info!(
                tokens = total.tokens,
                grants = total.grants,
                audit = total.audit,
                "expired rows deleted"
            );
        }
        Ok(total)
    }

    /// Deletes the audit records older than `retention` seconds, [`BATCH`] at a time.
    async fn purge_audit(&self, retention: UnixTime) -> Result<u64, Error> {
        let mut total = 0;
        let before = self.clock.now().saturating_sub(retention);
        loop {
            let deleted = self.store.purge_audit(before, BATCH).await?;
            total += deleted;
            self.cleanup.audit.fetch_add(deleted, Ordering::Relaxed);
            if deleted < u64::from(BATCH) {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// The clean-up counters.
    pub fn cleanup_stats(&self) -> CleanupSnapshot {
        self.cleanup.snapshot()
    }
}
