//! Profile for seed `001_433190c9bdaff277.txt`: `POST /api/id/v1/auth/token/revoke`.
//!
//! Form body with `token` and the token type (`token_type_hint` or `token_type`; only
//! `access_token` and `refresh_token` are allowed). Client credentials are required (Basic or
//! body), and checked for first: a request without them is answered 401 whatever else it
//! lacks; a public client proves nothing and is refused. Every error body is the document's
//! camelCase `{"error": ..., "errorDescription": ...}`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::response::Response;
use latch_core::id::TenantId;
use latch_core::revoke::Effect;
use latch_core::token::TokenKind;

use crate::error::{ApiError, ErrorStyle};
use crate::form::Form;
use crate::oauth2::revoke::{revoke, revoked};
use crate::tenant::Tenant;
use crate::{AppState, Peer};

pub(crate) async fn handle(
    state: axum::extract::State<Arc<AppState>>,
    tenant: Result<Tenant, ApiError>,
    peer: Peer,
    request: Request,
) -> Response {
    let result = match tenant {
        Ok(Tenant(tenant)) => serve(&state, &tenant, peer, request).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(|e| e.into_response_styled(ErrorStyle::CamelCase))
}

async fn serve(
    state: &AppState,
    tenant: &TenantId,
    peer: Peer,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, form) = Form::from_request(request).await?;
    let headers = &parts.headers;
    // The document's first rule: without credentials, 401, whatever else the request lacks
    // (a secret without its client's id names no client). Checked before the token, as
    // client authentication comes first on the OAuth routes of the mature servers.
    let has_credentials = headers.contains_key(header::AUTHORIZATION)
        || (form.get("client_id").is_some() && form.get("client_secret").is_some());
    if !has_credentials {
        return Err(ApiError::invalid_client(false));
    }
    form.require("token")?;
    let kinds: Vec<&str> = ["token_type_hint", "token_type"]
        .iter()
        .filter_map(|k| form.get(k))
        .collect();
    for kind in &kinds {
        if TokenKind::from_hint(kind).is_none() {
            return Err(ApiError::invalid_request(
                "the token type must be access_token or refresh_token",
            ));
        }
    }
    if kinds.len() == 2 && kinds[0] != kinds[1] {
        return Err(ApiError::invalid_request(
            "token_type_hint and token_type disagree",
        ));
    }
    revoke(state, tenant, peer, "id_v1", headers, &form, Effect::Token).await?;
    Ok(revoked())
}

/// `405` in this profile's error shape.
pub(crate) async fn method_not_allowed() -> Response {
    crate::method_not_allowed_styled(ErrorStyle::CamelCase)
}
