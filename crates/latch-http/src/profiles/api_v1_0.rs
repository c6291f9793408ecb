//! Profile for seed `002_c340f25d330ec403.txt`: `POST /api/v1.0/oauth2/revoke`.
//!
//! RFC 7009 semantics (revoking a refresh token revokes its access tokens) with the
//! document's parameters: `client_id`, `client_secret` (confidential clients only), `token`,
//! and an optional `token_type` hint, which, like `token_type_hint`, cannot change the
//! outcome. The document's second `curl` example puts a line break inside the `-d` body, so
//! raw whitespace around names and values is ignored here.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use latch_core::revoke::Effect;

use crate::error::ApiError;
use crate::form::Form;
use crate::oauth2::revoke::{revoke, revoked};
use crate::tenant::Tenant;
use crate::{AppState, Peer};

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    peer: Peer,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, form) = Form::from_request_trimming(request).await?;
    let headers = &parts.headers;
    revoke(
        &state,
        &tenant,
        peer,
        "api_v1_0",
        headers,
        &form,
        Effect::Token,
    )
    .await?;
    Ok(revoked())
}
