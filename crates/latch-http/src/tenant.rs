//! The tenant a request addresses: the `{tenant}` path segment, or `default` on root paths.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use latch_core::id::TenantId;

use crate::error::ApiError;
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
        let tenant = TenantId::parse(raw).map_err(|_| ApiError::not_found("no such tenant"))?;
        // `default` always exists; any other tenant costs one indexed lookup.
        if tenant.as_str() != TenantId::DEFAULT
            && !state
                .authority
                .store()
                .tenant_exists(&tenant)
                .await
                .map_err(|e| ApiError::from(latch_core::Error::from(e)))?
        {
            return Err(ApiError::not_found(format!("no tenant {tenant}")));
        }
        Ok(Self(tenant))
    }
}
