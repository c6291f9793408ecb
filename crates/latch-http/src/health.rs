//! Liveness and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use latch_core::cleanup::ClockOffset;

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

/// `GET /readyz`: the database answers, and this node's clock is within the allowance of the
/// database's ([`latch_core::Authority::clock_offset`]): a node whose clock drifted since it
/// started could take a token as live whose revocation another node has cleaned up, so it is
/// taken out of rotation until its clock is set right.
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let authority = &state.authority;
    let checked = match authority.store().ping().await {
        Ok(()) => authority.clock_offset().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (status, error) = match checked {
        Ok(ClockOffset::Off(skew)) => (
            "clock_off",
            format!("this node's clock is {skew} s off the database's"),
        ),
        Ok(_) => return (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => ("unavailable", e),
    };
    // Bounded: a load balancer may probe at any rate.
    static BUDGET: LogBudget = LogBudget::new();
    if let Some(left_out) = BUDGET.admit() {
        tracing::warn!(error = %error, left_out, "not ready");
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": status, "error": "temporarily_unavailable" })),
    )
}
