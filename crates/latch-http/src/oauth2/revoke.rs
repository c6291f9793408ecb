//! `POST /oauth2/revoke` (RFC 7009).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use latch_core::revoke::Effect;

use super::authenticate;
use crate::error::ApiError;
use crate::form::Form;
use crate::tenant::Tenant;
use crate::{no_store, AppState};

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let form = Form::from_request(&headers, body).await?;
    let token = form.require("token")?;
    // `token_type_hint` is read by no one: any value, known or not, leaves the outcome
    // unchanged (RFC 7009 §2.2).
    let client = authenticate(&state, &tenant, &headers, &form).await?;
    // Every outcome that is not an error (revoked, already dead, unknown, or a public
    // caller's foreign token) is the same empty 200 (RFC 7009 §2.2).
    state
        .authority
        .revoke(&client, token, Effect::Token)
        .await?;
    Ok(no_store(StatusCode::OK.into_response()))
}
