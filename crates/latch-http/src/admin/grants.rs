//! `/admin/v1/tenants/{tenant}/grants[/{grant_id}]` and
//! `/admin/v1/tenants/{tenant}/subjects/{subject}/grants`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use latch_core::grant::Grant;
use latch_core::id::{ClientId, GrantId, Subject};
use latch_core::scope::Scope;
use latch_core::store::GrantPage;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{cursor, listing_query, next_cursor, origin, page_limit, Admin, JsonBody, Params};
use crate::error::ApiError;
use crate::oauth2::TokenResponse;
use crate::tenant::named;
use crate::{no_store, AppState, Peer};

/// `POST …/grants` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGrant {
    client_id: String,
    subject: String,
    scope: Option<String>,
}

/// A grant as the admin API shows it; never a token value.
#[derive(Serialize)]
struct GrantView<'a> {
    grant_id: &'a str,
    client_id: &'a str,
    subject: &'a str,
    scope: String,
    created_at: i64,
    expires_at: i64,
}

impl<'a> From<&'a Grant> for GrantView<'a> {
    fn from(g: &'a Grant) -> Self {
        Self {
            grant_id: g.id.as_str(),
            client_id: g.client_id.as_str(),
            subject: g.subject.claim(),
            scope: g.scope.to_string(),
            created_at: g.created_at,
            expires_at: g.expires_at,
        }
    }
}

pub(crate) async fn create(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Params(tenant): Params<String>,
    JsonBody(body): JsonBody<NewGrant>,
) -> Result<Response, ApiError> {
    let tenant = named(&tenant)?;
    let client_id = ClientId::parse(&body.client_id)?;
    let subject = Subject::parse(&body.subject)?;
    let scope = body
        .scope
        .as_deref()
        .map(Scope::parse_requested)
        .transpose()?;
    let issued = state
        .authority
        .issue_for_subject(&tenant, &client_id, subject, scope.as_ref())
        .await?;
    Ok(no_store(
        (StatusCode::CREATED, Json(TokenResponse::new(&issued, true))).into_response(),
    ))
}

pub(crate) async fn revoke(
    _: Admin,
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Params((tenant, grant_id)): Params<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = GrantId::parse(&grant_id).map_err(|_| ApiError::not_found("no such grant"))?;
    let killed = state
        .authority
        .revoke_grant(&named(&tenant)?, &id, origin(peer))
        .await?;
    Ok(Json(json!({
        "grant_id": grant_id,
        "revoked": killed.grants > 0,
        "revoked_tokens": killed.tokens,
    })))
}

/// `GET …/subjects/{subject}/grants?before=…&limit=…`: a page of the subject's live grants,
/// newest first; `next_before` is the cursor for the next page (`null` once a page comes
/// back short).
pub(crate) async fn list_for_subject(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Params((tenant, subject)): Params<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let subject = Subject::parse(&subject)?;
    let query = listing_query(query.as_deref(), &["before", "limit"])?;
    let page = GrantPage {
        before: cursor(&query, "before", "a grant id", GrantId::parse)?,
        limit: page_limit(&query)?,
    };
    let grants = state
        .authority
        .live_grants(&named(&tenant)?, &subject, &page)
        .await?;
    let next_before = next_cursor(&grants, page.limit, |g| g.id.as_str());
    let views: Vec<GrantView<'_>> = grants.iter().map(GrantView::from).collect();
    Ok(Json(json!({
        "subject": subject.as_str(),
        "grants": views,
        "next_before": next_before,
    })))
}

pub(crate) async fn logout_everywhere(
    _: Admin,
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Params((tenant, subject)): Params<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let subject = Subject::parse(&subject)?;
    let killed = state
        .authority
        .logout_everywhere(&named(&tenant)?, &subject, origin(peer))
        .await?;
    Ok(Json(json!({
        "subject": subject.as_str(),
        "revoked_grants": killed.grants,
        "revoked_tokens": killed.tokens,
    })))
}
