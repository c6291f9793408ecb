//! `POST /oauth2/token` (RFC 6749 §4.4 `client_credentials`, §6 `refresh_token`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use axum::Json;
use latch_core::audit::Origin;
use latch_core::client::GrantType;
use latch_core::scope::Scope;

use super::{authenticate, TokenResponse};
use crate::error::ApiError;
use crate::form::Form;
use crate::tenant::Tenant;
use crate::{no_store, AppState, Peer};

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    peer: Peer,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, form) = Form::from_request(request).await?;
    let headers = &parts.headers;
    // Check the request's shape before spending anything on client authentication.
    let grant_type = form.require("grant_type")?;
    let grant = GrantType::parse(grant_type).ok_or_else(|| {
        ApiError::from(latch_core::Error::UnsupportedGrantType(
            "supported grant types: client_credentials, refresh_token".into(),
        ))
    })?;
    let scope = form
        .get("scope")
        .map(Scope::parse_requested)
        .transpose()
        .map_err(ApiError::from)?;
    let refresh_token = match grant {
        GrantType::RefreshToken => Some(form.require("refresh_token")?),
        GrantType::ClientCredentials => None,
    };

    let client = authenticate(&state, &tenant, headers, &form, peer).await?;
    let authority = &state.authority;
    let issued = match refresh_token {
        Some(token) => {
            let origin = Origin {
                route: "oauth2/token",
                address: peer.0,
            };
            authority
                .refresh(&client, token, scope.as_ref(), origin)
                .await
        }
        None => authority.client_credentials(&client, scope.as_ref()).await,
    }
    // The client authenticated, yet its credentials stopped holding before the write (a
    // secret rotated, the client removed): `invalid_client`, with the challenge RFC 6749 §5.2
    // asks for when it authenticated with Basic (an Authorization header, which
    // authentication accepted, is Basic).
    .map_err(|e| ApiError::from(e).with_basic_challenge(headers.contains_key(AUTHORIZATION)))?;
    Ok(no_store(
        Json(TokenResponse::new(&issued, false)).into_response(),
    ))
}
