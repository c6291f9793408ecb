//! `GET /metrics`: the clean-up's and the group commit's counters in the Prometheus text
//! format.

use std::fmt::{Display, Write as _};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use latch_core::commits::{CommitStats, COMMIT_SECONDS_BUCKETS};

use crate::AppState;

pub(crate) async fn handle(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let c = state.authority.cleanup_stats();
    let mut body = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, value: &dyn Display| {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    counter(
        "latch_cleanup_tokens_deleted_total",
        "Expired token rows deleted by the clean-up since start-up.",
        "counter",
        &c.tokens_deleted,
    );
    counter(
        "latch_cleanup_grants_deleted_total",
        "Expired grant rows deleted by the clean-up since start-up.",
        "counter",
        &c.grants_deleted,
    );
    counter(
        "latch_cleanup_audit_deleted_total",
        "Audit records past the retention period deleted by the clean-up since start-up.",
        "counter",
        &c.audit_deleted,
    );
    counter(
        "latch_cleanup_runs_total",
        "Completed clean-up runs since start-up.",
        "counter",
        &c.runs,
    );
    counter(
        "latch_cleanup_last_run_timestamp_seconds",
        "When the last clean-up run finished (0 = never).",
        "gauge",
        &c.last_run,
    );
    let w = state.authority.store().commit_stats();
    counter(
        "latch_store_commits_total",
        "Group commits since start-up: transactions that made one or more writes durable.",
        "counter",
        &w.commits,
    );
    counter(
        "latch_store_commit_failures_total",
        "Batches of writes that failed to commit (each write in them was answered 503).",
        "counter",
        &w.failed,
    );
    counter(
        "latch_store_writes_total",
        "Writes (issuances, rotations, revocations, admin changes) in the committed batches.",
        "counter",
        &w.writes,
    );
    counter(
        "latch_store_writer_checkpoints_total",
        "SQLite: checkpoints the writer ran itself to rewind the WAL, holding up every write meanwhile.",
        "counter",
        &w.writer_checkpoints,
    );
    counter(
        "latch_store_writer_checkpoint_seconds_total",
        "SQLite: time the writer spent in its own checkpoints.",
        "counter",
        &w.writer_checkpoint_seconds,
    );
    counter(
        "latch_store_revocation_marks",
        "SQLite: access tokens revoked alone, and revoked grants holding access tokens, whose \
         marks are held in memory (the index of the revocation log) until they expire; at the \
         bound (docs/deploy.md) a revocation marks the tokens' rows instead.",
        "gauge",
        &state.authority.store().revocation_marks(),
    );
    commit_histogram(&mut body, &w);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// The batches' durations as a Prometheus histogram (cumulative buckets, sum and count).
fn commit_histogram(body: &mut String, w: &CommitStats) {
    let name = "latch_store_commit_duration_seconds";
    let _ = writeln!(
        body,
        "# HELP {name} Time from a batch's first write to the end of its commit.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    let bounds = COMMIT_SECONDS_BUCKETS.iter().map(|b| b.to_string());
    for (le, count) in bounds.chain(["+Inf".to_owned()]).zip(w.duration_buckets) {
        cumulative += count;
        let _ = writeln!(body, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(body, "{name}_sum {}", w.duration_seconds);
    let _ = writeln!(body, "{name}_count {cumulative}");
}
