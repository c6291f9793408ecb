//! `POST /oauth2/revoke` (RFC 7009).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use latch_core::audit::Origin;
use latch_core::id::TenantId;
use latch_core::revoke::{Effect, Outcome};

use super::authenticate_revoking;
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
    revoke(
        &state,
        &tenant,
        peer,
        "oauth2/revoke",
        headers,
        &form,
        Effect::Token,
    )
    .await?;
    Ok(revoked())
}

/// The revocation every route shares, standard or profile: the form's `token`, revoked on
/// behalf of the authenticated client with the given effect.
///
/// `token_type_hint` is read by no one here: any value, known or not, leaves the outcome
/// unchanged (RFC 7009 §2.2). Every outcome that is not an error (revoked, already dead,
/// unknown, or a public caller's foreign token) is the same success.
pub(crate) async fn revoke(
    state: &AppState,
    tenant: &TenantId,
    peer: Peer,
    route: &'static str,
    headers: &HeaderMap,
    form: &Form,
    effect: Effect,
) -> Result<Outcome, ApiError> {
    let token = form.require("token")?;
    let (client, token) = authenticate_revoking(state, tenant, headers, form, peer, token).await?;
    let origin = Origin {
        route,
        address: peer.0,
    };
    Ok(state
        .authority
        .revoke(client, token, effect, origin)
        .await?)
}

/// RFC 7009's success: `200` with an empty body.
pub(crate) fn revoked() -> Response {
    no_store(StatusCode::OK.into_response())
}
