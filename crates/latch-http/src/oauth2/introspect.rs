//! `POST /oauth2/introspect` (RFC 7662).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use latch_core::token::TokenKind;
use serde::Serialize;

use super::authenticate_presenting;
use crate::error::ApiError;
use crate::form::Form;
use crate::tenant::Tenant;
use crate::{no_store, AppState, Peer};

#[derive(Serialize)]
struct Active<'a> {
    active: bool,
    /// Left out for a token without scope: RFC 7662 §2.2's `scope` is one or more scope
    /// values (RFC 6749 §3.3), which an empty string is not.
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
    client_id: &'a str,
    sub: &'a str,
    exp: i64,
    iat: i64,
    /// `Bearer` for access tokens (RFC 6749 §7.1). Refresh tokens have no RFC 6749 §5.1
    /// token type, so the field is absent for them; `token_use` tells the kinds apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    /// Which kind of token this is, in RFC 7009 hint vocabulary.
    token_use: &'static str,
    iss: String,
    jti: &'a str,
    grant_id: &'a str,
}

#[derive(Serialize)]
struct Inactive {
    active: bool,
}

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    peer: Peer,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, form) = Form::from_request(request).await?;
    let headers = &parts.headers;
    let token = form.require("token")?;
    let (client, record) =
        authenticate_presenting(&state, &tenant, headers, &form, peer, token).await?;
    let response = match state.authority.introspect(&client, record)? {
        Some(t) => Json(Active {
            active: true,
            scope: t.scope.as_str(),
            client_id: t.client_id.as_str(),
            sub: t.subject.claim(),
            exp: t.exp,
            iat: t.iat,
            token_type: (t.kind == TokenKind::Access).then_some("Bearer"),
            token_use: t.kind.hint_name(),
            iss: state.issuer_for(&tenant),
            jti: &t.jti,
            grant_id: t.grant_id.as_str(),
        })
        .into_response(),
        None => Json(Inactive { active: false }).into_response(),
    };
    Ok(no_store(response))
}
