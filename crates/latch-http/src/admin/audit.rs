//! `GET /admin/v1/tenants/{tenant}/audit?subject=…&since=…&after=…&limit=…`: the revocation
//! audit trail, oldest first, paged by id (`next_after` is the cursor for the next page,
//! `null` at the trail's end; a page with `since` may come back short of `limit` before it,
//! `latch_core::audit::AUDIT_SINCE_SPAN`).
//! `subject` names a user; `client_subject` names a client acting for itself (its
//! `client_credentials` grants) and the client's removal, a subject of its own that a
//! user's id never equals.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use latch_core::audit::{AuditEvent, AuditQuery};
use latch_core::id::{ClientId, Subject};
use serde::Serialize;
use serde_json::{json, Value};

use super::{listing_query, number, page_limit, Admin, Params};
use crate::error::ApiError;
use crate::tenant::named;
use crate::AppState;

#[derive(Serialize)]
struct EventView<'a> {
    id: i64,
    at: i64,
    actor: &'a str,
    route: &'a str,
    reason: &'static str,
    grant_id: Option<&'a str>,
    subject: Option<&'a str>,
    /// `user`, or `client` for a client's own grants (`subject` is then its client id).
    #[serde(skip_serializing_if = "Option::is_none")]
    subject_kind: Option<&'static str>,
    grants: u64,
    tokens: u64,
    address: Option<&'a str>,
}

impl<'a> From<&'a AuditEvent> for EventView<'a> {
    fn from(e: &'a AuditEvent) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor: &e.actor,
            route: &e.route,
            reason: e.reason.as_str(),
            grant_id: e.grant_id.as_ref().map(|g| g.as_str()),
            subject: e.subject.as_ref().map(|s| s.claim()),
            subject_kind: (e.subject.as_ref()).map(|s| {
                if s.client().is_some() {
                    "client"
                } else {
                    "user"
                }
            }),
            grants: e.grants,
            tokens: e.tokens,
            address: e.address.as_deref(),
        }
    }
}

pub(crate) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Params(tenant): Params<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let tenant = named(&tenant)?;
    let form = listing_query(
        query.as_deref(),
        &["subject", "client_subject", "since", "after", "limit"],
    )?;
    let limit = page_limit(&form)?;
    let query = AuditQuery {
        subject: match (form.get("subject"), form.get("client_subject")) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_request(
                    "give subject (a user) or client_subject (a client), not both",
                ))
            }
            (Some(user), None) => Some(Subject::parse(user)?),
            (None, Some(client)) => Some(Subject::of_client(&ClientId::parse(client)?)),
            (None, None) => None,
        },
        since: number(&form, "since")?,
        after: number(&form, "after")?,
        limit,
    };
    let page = state.authority.audit_events(&tenant, &query).await?;
    let views: Vec<EventView<'_>> = page.events.iter().map(EventView::from).collect();
    Ok(Json(
        json!({ "events": views, "next_after": page.next_after }),
    ))
}
