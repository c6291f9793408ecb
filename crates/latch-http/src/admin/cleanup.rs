//! `POST /admin/v1/cleanup`: delete expired rows, and audit records past their retention,
//! now (the background job does this periodically).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{Admin, NoBody};
use crate::error::ApiError;
use crate::AppState;

pub(crate) async fn run(
    _: Admin,
    State(state): State<Arc<AppState>>,
    _: NoBody,
) -> Result<Json<Value>, ApiError> {
    let purged = state.authority.purge_expired().await?;
    Ok(Json(json!({
        "tokens_deleted": purged.tokens,
        "grants_deleted": purged.grants,
        "audit_deleted": purged.audit,
    })))
}
