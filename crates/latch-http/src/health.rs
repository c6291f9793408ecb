//! Liveness and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::log_budget::LogBudget;
use crate::AppState;

/// `GET /healthz`: the process is up and can still write. A writer that stopped for good
/// (it panicked) fails every write until a restart, so the process reports itself dead for
/// its supervisor to restart it; an unreachable database does not (a restart would not help).
pub(crate) async fn live(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    if state.authority.store().writer_stopped() {
        // Bounded: a supervisor or a load balancer may probe at any rate.
        static BUDGET: LogBudget = LogBudget::new();
        if let Some(left_out) = BUDGET.admit() {
            tracing::error!(
                left_out,
                "the writer has stopped: every write fails until latch restarts"
            );
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "writer_stopped" })),
        );
    }
    (StatusCode::OK, Json(json!({ "status": "ok" })))
}

/// `GET /readyz`: the database answers and the writer runs.
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    match state.authority.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => {
            static BUDGET: LogBudget = LogBudget::new();
            if let Some(left_out) = BUDGET.admit() {
                tracing::warn!(error = %e, left_out, "not ready");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "error": "temporarily_unavailable" })),
            )
        }
    }
}
