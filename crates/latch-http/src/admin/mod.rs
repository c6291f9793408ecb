//! The admin API, for operators and trusted first-party backends. Every route needs
//! `Authorization: Bearer <admin token>`; JSON in, JSON out.

mod audit;
mod cleanup;
mod clients;
mod grants;
mod tenants;

use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::form::{printable, read_body, Form};
use crate::log_budget::LogBudget;
use crate::serve::Connection;
use crate::AppState;

/// The admin routes, mounted under `/admin/v1`.
pub(crate) fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/cleanup", post(cleanup::run))
        .route("/tenants", post(tenants::create).get(tenants::list))
        .route("/tenants/{tenant}", delete(tenants::remove))
        .route(
            "/tenants/{tenant}/clients",
            post(clients::create).get(clients::list),
        )
        .route(
            "/tenants/{tenant}/clients/{client_id}",
            get(clients::show).delete(clients::remove),
        )
        .route(
            "/tenants/{tenant}/clients/{client_id}/secret",
            post(clients::rotate_secret),
        )
        .route(
            "/tenants/{tenant}/clients/{client_id}/grants",
            delete(clients::revoke_grants),
        )
        .route("/tenants/{tenant}/audit", get(audit::list))
        .route("/tenants/{tenant}/grants", post(grants::create))
        .route(
            "/tenants/{tenant}/grants/{grant_id}",
            delete(grants::revoke),
        )
        .route(
            "/tenants/{tenant}/subjects/{subject}/grants",
            get(grants::list_for_subject).delete(grants::logout_everywhere),
        )
        .route_layer(middleware::from_fn_with_state(state, unread_parts_refused))
}

/// Authenticates the request first (a caller without the token learns nothing of the rest,
/// and is counted by the rate limiter), then refuses what its handler would not read: a
/// query on a write (every method but `GET` and `HEAD`), and a body on a request of any
/// other method than `POST` (and on `POST /cleanup`, [`NoBody`]). A filter a write does not
/// know (`DELETE …/subjects/alice/grants?client_id=app`) would revoke everything as if it
/// had narrowed it, as a filter in a listing's body would list everything (a listing's
/// query is checked by [`listing_query`]). The query is named by its parameters alone: a
/// value may be a secret.
async fn unread_parts_refused(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Err(refused) = Admin::from_request_parts(&mut parts, &state).await {
        return refused.into_response();
    }
    let method = &parts.method;
    let write = method != Method::GET && method != Method::HEAD;
    if let Some(query) = parts.uri.query().filter(|_| write) {
        let names = Form::parse(query.as_bytes()).map(|form| {
            let names: Vec<_> = form.pairs().map(|(name, _)| printable(name)).collect();
            names.join(", ")
        });
        let description = format!(
            "the admin API's {method} requests read no query parameters; got {}",
            names.unwrap_or_else(|_| "a malformed query".into())
        );
        return ApiError::invalid_request(description).into_response();
    }
    if method != Method::POST && body.size_hint().exact() != Some(0) {
        let description = format!("the admin API's {method} requests read no body");
        return ApiError::invalid_request(description).into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// A request whose body, if any, is refused: for a `POST` that reads none.
pub(crate) struct NoBody;

impl FromRequest<Arc<AppState>> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if req.body().size_hint().exact() == Some(0) {
            Ok(NoBody)
        } else {
            Err(ApiError::invalid_request("this request reads no body"))
        }
    }
}

/// A listing's query, holding only the parameters it reads (`names`), each with a value.
/// Scripts and people looking into an incident read these listings: a filter the listing
/// does not know (`?client_id=`, `?until=`) or one left empty (`?subject=$UNSET`) would
/// answer everything as if it were filtered.
pub(crate) fn listing_query(query: Option<&str>, names: &[&str]) -> Result<Form, ApiError> {
    let form = Form::parse(query.unwrap_or_default().as_bytes())?;
    for (name, value) in form.pairs() {
        if !names.contains(&name) {
            return Err(ApiError::invalid_request(format!(
                "unknown query parameter {}; this listing reads {}",
                crate::form::printable(name),
                names.join(", ")
            )));
        }
        if value.is_empty() {
            return Err(ApiError::invalid_request(format!(
                "query parameter {name} is empty"
            )));
        }
    }
    Ok(form)
}

/// Items per page of a listing by default, and at most.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;

/// The page size a listing's query asks for (`limit`): [`DEFAULT_PAGE`] when absent, else 1
/// to [`MAX_PAGE`].
pub(crate) fn page_limit(query: &Form) -> Result<u32, ApiError> {
    let limit = number::<u32>(query, "limit")?.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

/// The cursor `key` of a listing's query, if given, read by `parse`: `400` saying it must be
/// `what` when it is not one.
pub(crate) fn cursor<T, E>(
    query: &Form,
    key: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, ApiError> {
    query
        .get(key)
        .map(|v| parse(v).map_err(|_| ApiError::invalid_request(format!("{key} must be {what}"))))
        .transpose()
}

/// The cursor for the page after `page`: its last item's `key`, when the page is full (a
/// short page is the last, and a full last page is followed by an empty one).
pub(crate) fn next_cursor<'a, T, K>(
    page: &'a [T],
    limit: u32,
    key: impl FnOnce(&'a T) -> K,
) -> Option<K> {
    (page.len() == limit as usize)
        .then(|| page.last().map(key))
        .flatten()
}

/// The number `key` of a query, if given: digits alone. Rust's parsers take a sign, so a
/// cursor gone wrong (`after=-5`) would read as the trail's start, and `limit=+5` pass.
pub(crate) fn number<T: std::str::FromStr>(query: &Form, key: &str) -> Result<Option<T>, ApiError> {
    query
        .get(key)
        .map(|v| {
            let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| v.parse().ok()).flatten().ok_or_else(|| {
                ApiError::invalid_request(format!("{key} must be a number, digits alone"))
            })
        })
        .transpose()
}

/// The audit origin of an admin request.
pub(crate) fn origin(peer: crate::Peer) -> latch_core::audit::Origin {
    latch_core::audit::Origin {
        route: "admin",
        address: peer.0,
    }
}

/// Proof that the request carried the admin token. The token is compared as SHA-256
/// digests in constant time, so neither its content nor its length leaks through timing.
pub(crate) struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // Which of several would be the token? As on the OAuth routes, refused.
        if parts
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(ApiError::invalid_request(
                "several Authorization headers: send one",
            ));
        }
        let presented = bearer(&parts.headers);
        let expected =
            (state.admin_token).ok_or_else(|| ApiError::admin_unauthorized(presented.is_some()))?;
        let presented = presented.ok_or_else(|| ApiError::admin_unauthorized(false))?;
        // Checked before the token, as client secrets are: otherwise a blocked guesser would
        // still learn from a 200 which guess was right.
        let address = parts.extensions.get::<Connection>().map(|c| c.peer.ip());
        let now = state.authority.now();
        if let Some(wait) = address.and_then(|a| state.auth_limiter.blocked_admin(a, now)) {
            return Err(ApiError::too_many_requests(wait));
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&expected)) {
            Ok(Admin)
        } else {
            if let Some(a) = address {
                state.auth_limiter.failed_admin(a, now);
            }
            // Bounded: past the per-address limit, many addresses could still log at
            // request rate.
            static BUDGET: LogBudget = LogBudget::new();
            if let Some(left_out) = BUDGET.admit() {
                tracing::info!(left_out, "admin authentication failed");
            }
            Err(ApiError::admin_unauthorized(true))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Path parameters, with a JSON error instead of axum's plain-text rejection.
pub(crate) struct Params<T>(pub T);

impl<T> FromRequestParts<Arc<AppState>> for Params<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Params(t))
            .map_err(|e| ApiError::invalid_request(format!("bad path: {e}")))
    }
}

/// The largest admin request body.
const MAX_JSON_BYTES: usize = 64 * 1024;

/// A JSON request body, with JSON errors for a wrong content type, an oversized body or
/// malformed or unexpected fields.
pub(crate) struct JsonBody<T>(pub T);

impl<T> FromRequest<Arc<AppState>> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let (parts, body): (_, Body) = req.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::invalid_request(
                "Content-Type must be application/json",
            ));
        }
        let bytes = read_body(&parts, body, MAX_JSON_BYTES).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
    }
}
