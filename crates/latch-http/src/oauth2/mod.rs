//! The OAuth 2.0 endpoints, one file each, and what they share.

pub(crate) mod introspect;
pub(crate) mod metadata;
pub(crate) mod revoke;
pub(crate) mod token;

use axum::http::HeaderMap;
use latch_core::client::Client;
use latch_core::grant::TokenRecord;
use latch_core::id::TenantId;
use latch_core::IssuedTokens;
use serde::Serialize;

use crate::credentials;
use crate::error::ApiError;
use crate::form::Form;
use crate::{AppState, Peer};

/// Extracts and checks the client's credentials. The one client-authentication path of every
/// OAuth route and profile, and so the one place failures are rate-limited.
pub(crate) async fn authenticate(
    state: &AppState,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
    peer: Peer,
) -> Result<Client, ApiError> {
    authenticate_and_find(state, tenant, headers, form, peer, None)
        .await
        .map(|(client, _)| client)
}

/// [`authenticate`], also looking up the `token` the client presents in the same read of
/// the store (introspection and revocation need both).
pub(crate) async fn authenticate_presenting(
    state: &AppState,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
    peer: Peer,
    token: &str,
) -> Result<(Client, Option<TokenRecord>), ApiError> {
    authenticate_and_find(state, tenant, headers, form, peer, Some(token)).await
}

async fn authenticate_and_find(
    state: &AppState,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
    peer: Peer,
    token: Option<&str>,
) -> Result<(Client, Option<TokenRecord>), ApiError> {
    let presented = credentials::extract(headers, form)?;
    let credentials = &presented.credentials;
    let client_id = credentials.client_id();
    let limiter = &state.auth_limiter;
    if let Some(wait) = limiter.blocked(tenant, client_id, peer.0, state.authority.now()) {
        return Err(ApiError::too_many_requests(wait));
    }
    let authority = &state.authority;
    let outcome = match token {
        Some(token) => {
            authority
                .authenticate_presenting(tenant, credentials, token)
                .await
        }
        None => authority
            .authenticate(tenant, credentials)
            .await
            .map(|client| (client, None)),
    };
    outcome.map_err(|e| {
        if matches!(e, latch_core::Error::InvalidClient) {
            limiter.failed(tenant, client_id, peer.0, state.authority.now());
            tracing::info!(tenant = %tenant, client_id = %client_id.escape_debug(), "client authentication failed");
        }
        ApiError::from(e).with_basic_challenge(presented.basic)
    })
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Serialize)]
pub(crate) struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "String::is_empty")]
    scope: String,
    /// Only in admin responses: the grant, so a backend can revoke it later.
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_id: Option<&'a str>,
}

impl<'a> TokenResponse<'a> {
    pub(crate) fn new(issued: &'a IssuedTokens, with_grant_id: bool) -> Self {
        Self {
            access_token: issued.access_token.expose(),
            token_type: "Bearer",
            expires_in: issued.expires_in,
            refresh_token: issued.refresh_token.as_ref().map(|t| t.expose()),
            scope: issued.scope.to_string(),
            grant_id: with_grant_id.then(|| issued.grant_id.as_str()),
        }
    }
}
