//! `/admin/v1/tenants[/{tenant}]`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use latch_core::id::TenantId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{origin, Admin, JsonBody, Params};
use crate::error::ApiError;
use crate::tenant::named;
use crate::{AppState, Peer};

/// `POST /admin/v1/tenants` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTenant {
    tenant_id: String,
}

pub(crate) async fn create(
    _: Admin,
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = TenantId::parse(&body.tenant_id)?;
    state.authority.create_tenant(&tenant).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "tenant_id": tenant.as_str(), "issuer": state.issuer_for(&tenant) })),
    ))
}

pub(crate) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Value>, ApiError> {
    let tenants = state.authority.tenants().await?;
    let ids: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
    Ok(Json(json!({ "tenants": ids })))
}

pub(crate) async fn remove(
    _: Admin,
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Params(tenant): Params<String>,
) -> Result<Json<Value>, ApiError> {
    let id = named(&tenant)?;
    state.authority.delete_tenant(&id, origin(peer)).await?;
    Ok(Json(json!({ "tenant_id": tenant, "deleted": true })))
}
