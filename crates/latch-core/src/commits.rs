//! How the storage's group commit is going: counters a back-end's writer updates and
//! `/metrics` reads.
//!
//! Every write (a revocation, an issuance, a rotation) waits for a group commit, so the
//! commits' rate, size and duration are what an operator needs to see when writes slow down:
//! small batches mean light load, long commits mean a slow disk or database, and the SQLite
//! writer's own checkpoints (see `latch-store`'s `sqlite/checkpointer.rs`) are pauses in
//! which no write commits at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit-duration histogram's buckets, in seconds (a last bucket,
/// `+Inf`, takes the rest). From a fast local commit (well under a millisecond) to one that
/// no client should ever wait for.
pub const COMMIT_SECONDS_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counters of the group commit since start-up, updated by a back-end's writer. Cheap
/// enough for every commit: a handful of relaxed atomic additions.
#[derive(Debug, Default)]
pub struct CommitMeter {
    commits: AtomicU64,
    failed: AtomicU64,
    writes: AtomicU64,
    /// Per bucket of [`COMMIT_SECONDS_BUCKETS`], then `+Inf`; not cumulative.
    buckets: [AtomicU64; COMMIT_SECONDS_BUCKETS.len() + 1],
    micros: AtomicU64,
    writer_checkpoints: AtomicU64,
    writer_checkpoint_micros: AtomicU64,
}

impl CommitMeter {
    /// Records one batch of `writes` writes that took `took` from its first write to its
    /// commit's end, and whether it committed.
    pub fn batch(&self, writes: usize, took: Duration, committed: bool) {
        if committed {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        let bucket = COMMIT_SECONDS_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(COMMIT_SECONDS_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros(took), Ordering::Relaxed);
    }

    /// Records a checkpoint the writer ran itself, between two batches, for `took`.
    pub fn writer_checkpoint(&self, took: Duration) {
        self.writer_checkpoints.fetch_add(1, Ordering::Relaxed);
        self.writer_checkpoint_micros
            .fetch_add(micros(took), Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CommitStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CommitStats {
            commits: load(&self.commits),
            failed: load(&self.failed),
            writes: load(&self.writes),
            duration_buckets: self.buckets.each_ref().map(load),
            duration_seconds: seconds(load(&self.micros)),
            writer_checkpoints: load(&self.writer_checkpoints),
            writer_checkpoint_seconds: seconds(load(&self.writer_checkpoint_micros)),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn seconds(micros: u64) -> f64 {
    Duration::from_micros(micros).as_secs_f64()
}

/// A [`CommitMeter`]'s counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitStats {
    /// Batches committed.
    pub commits: u64,
    /// Batches whose commit failed (every write in them was answered with an error).
    pub failed: u64,
    /// Writes in the committed batches.
    pub writes: u64,
    /// Batches (committed or failed) per bucket of [`COMMIT_SECONDS_BUCKETS`], then `+Inf`;
    /// not cumulative.
    pub duration_buckets: [u64; COMMIT_SECONDS_BUCKETS.len() + 1],
    /// The batches' durations, summed.
    pub duration_seconds: f64,
    /// Checkpoints the writer ran itself, holding up every write meanwhile (SQLite; zero
    /// elsewhere).
    pub writer_checkpoints: u64,
    /// Their durations, summed.
    pub writer_checkpoint_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_in_the_bucket_of_their_duration_and_count_once() {
        let meter = CommitMeter::default();
        meter.batch(3, Duration::from_micros(400), true);
        meter.batch(1, Duration::from_micros(500), true); // on a bound: that bucket
        meter.batch(5, Duration::from_millis(3), true);
        meter.batch(2, Duration::from_secs(2), false);
        meter.writer_checkpoint(Duration::from_millis(70));
        meter.writer_checkpoint(Duration::from_millis(30));
        let stats = meter.snapshot();
        assert_eq!((stats.commits, stats.failed, stats.writes), (3, 1, 9));
        assert_eq!(stats.duration_buckets, [2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert!((stats.duration_seconds - 2.0039).abs() < 1e-9);
        assert_eq!(stats.writer_checkpoints, 2);
        assert!((stats.writer_checkpoint_seconds - 0.1).abs() < 1e-9);
    }
}
