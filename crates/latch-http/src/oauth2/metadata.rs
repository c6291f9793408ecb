//! `GET /.well-known/oauth-authorization-server[/tenants/{tenant}]` (RFC 8414). A tenant's
//! metadata sits at the well-known path with the issuer's path appended (§3).

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use latch_core::client::GrantType;
use serde::Serialize;

use crate::error::ApiError;
use crate::tenant::Tenant;
use crate::AppState;

#[derive(Serialize)]
pub(crate) struct Metadata {
    issuer: String,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    grant_types_supported: Vec<&'static str>,
    /// latch has no authorization endpoint, so no response type.
    response_types_supported: [&'static str; 0],
    /// Sorted, each once.
    scopes_supported: Vec<String>,
    token_endpoint_auth_methods_supported: [&'static str; 3],
    revocation_endpoint_auth_methods_supported: [&'static str; 3],
    introspection_endpoint_auth_methods_supported: [&'static str; 2],
}

/// Where the metadata of an issuer without a path is (RFC 8414 §3).
const WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    uri: Uri,
) -> Result<Json<Metadata>, ApiError> {
    // A client must discard metadata whose issuer is not the one its well-known URL was
    // built from (§3.3). The default tenant's issuer has no path, so its metadata is not
    // also served at `/tenants/default`, where it would name an issuer no client may accept.
    if uri.path() != format!("{WELL_KNOWN}{}", AppState::tenant_path(&tenant)) {
        return Err(ApiError::not_found(format!(
            "the {tenant} tenant's metadata is at {WELL_KNOWN}{}",
            AppState::tenant_path(&tenant)
        )));
    }
    let issuer = state.issuer_for(&tenant);
    // The scopes a tenant's clients may obtain, together.
    let scopes_supported = state.authority.scopes_supported(&tenant).await?.to_vec();
    Ok(Json(Metadata {
        token_endpoint: format!("{issuer}/oauth2/token"),
        revocation_endpoint: format!("{issuer}/oauth2/revoke"),
        introspection_endpoint: format!("{issuer}/oauth2/introspect"),
        issuer,
        grant_types_supported: GrantType::ALL.iter().map(|g| g.as_str()).collect(),
        response_types_supported: [],
        scopes_supported,
        token_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        revocation_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        introspection_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
        ],
    }))
}
