//! The OAuth 2.0 endpoints, one file each, and what they share.

pub(crate) mod introspect;
pub(crate) mod metadata;
pub(crate) mod revoke;
pub(crate) mod token;

use axum::http::HeaderMap;
use latch_core::client::Client;
use latch_core::id::TenantId;
use latch_core::IssuedTokens;
use serde::Serialize;

use crate::credentials;
use crate::error::ApiError;
use crate::form::Form;
use crate::AppState;

/// Extracts and checks the client's credentials. The one client-authentication path of every
/// OAuth route and profile.
pub(crate) async fn authenticate(
    state: &AppState,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Client, ApiError> {
    let presented = credentials::extract(headers, form)?;
    state
        .authority
        .authenticate(tenant, &presented.credentials)
        .await
        .map_err(|e| ApiError::from(e).with_basic_challenge(presented.basic))
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
