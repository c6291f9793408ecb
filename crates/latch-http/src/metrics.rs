//! `GET /metrics`: counters in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;

pub(crate) async fn handle(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let c = state.authority.cleanup_stats();
    let mut body = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, value: i128| {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    counter(
        "latch_cleanup_tokens_deleted_total",
        "Expired token rows deleted by the clean-up since start-up.",
        "counter",
        c.tokens_deleted.into(),
    );
    counter(
        "latch_cleanup_grants_deleted_total",
        "Expired grant rows deleted by the clean-up since start-up.",
        "counter",
        c.grants_deleted.into(),
    );
    counter(
        "latch_cleanup_audit_deleted_total",
        "Audit records past the retention period deleted by the clean-up since start-up.",
        "counter",
        c.audit_deleted.into(),
    );
    counter(
        "latch_cleanup_runs_total",
        "Completed clean-up runs since start-up.",
        "counter",
        c.runs.into(),
    );
    counter(
        "latch_cleanup_last_run_timestamp_seconds",
        "When the last clean-up run finished (0 = never).",
        "gauge",
        c.last_run.into(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
