//! `/admin/v1/tenants[/{tenant}]`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use latch_core::id::TenantId;
use latch_core::store::TenantPage;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{cursor, listing_query, next_cursor, origin, page_limit, Admin, JsonBody, Params};
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

/// `GET /admin/v1/tenants?after=…&limit=…`: a page of tenant ids, sorted; `next_after` is
/// the cursor for the next page (`null` once a page comes back short).
pub(crate) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let query = listing_query(query.as_deref(), &["after", "limit"])?;
    let page = TenantPage {
        after: cursor(&query, "after", "a tenant id", TenantId::parse)?,
        limit: page_limit(&query)?,
    };
    let tenants = state.authority.tenants(Some(&page)).await?;
    let next_after = next_cursor(&tenants, page.limit, TenantId::as_str);
    let ids: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
    Ok(Json(json!({ "tenants": ids, "next_after": next_after })))
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
