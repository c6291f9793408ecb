//! The tenant a request addresses: the `{tenant}` path segment, or `default` on root paths.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use latch_core::id::TenantId;

use crate::error::ApiError;
use crate::form::printable;
use crate::AppState;

/// An existing tenant, resolved from the path.
#[derive(Debug, Clone)]
pub struct Tenant(pub TenantId);

impl FromRequestParts<Arc<AppState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("no such tenant"))?;
        let Some((_, raw)) = params.iter().find(|(name, _)| *name == "tenant") else {
            return Ok(Self(TenantId::default_tenant()));
        };
        let raw = raw.to_owned();
        let raw = raw.as_str();
        resolve(state, raw)
            .await?
            .map(Self)
            .ok_or_else(|| ApiError::not_found(format!("no tenant {}", printable(raw))))
    }
}

/// Looks a tenant up by its path segment: `None` when it does not exist (or cannot, being
/// malformed). A route decides how to answer that (404 by default; a profile may say 401).
pub async fn resolve(state: &AppState, raw: &str) -> Result<Option<TenantId>, ApiError> {
    let Ok(tenant) = TenantId::parse(raw) else {
        return Ok(None);
    };
    // `default` always exists; any other tenant costs one indexed lookup.
    if tenant.as_str() == TenantId::DEFAULT {
        return Ok(Some(tenant));
    }
    let exists = state
        .authority
        .store()
        .tenant_exists(&tenant)
        .await
        .map_err(|e| ApiError::from(latch_core::Error::from(e)))?;
    Ok(exists.then_some(tenant))
}

/// Parses a tenant id named in a path; a malformed one names no tenant (`404`).
pub(crate) fn named(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|_| ApiError::not_found(format!("no tenant {}", printable(raw))))
}
