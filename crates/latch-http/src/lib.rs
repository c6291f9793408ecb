//! # latch-http: the HTTP face of latch
//!
//! This crate only translates: an HTTP request becomes a call on
//! [`latch_core::Authority`], and its result (or [`error::ApiError`]) becomes a response.
//! No OAuth rule is decided here.
//!
//! ## Layout
//! - [`router`] wires the routes a listener [`Serves`] (every route, or the clients' and the
//!   operators' on listeners of their own); [`AppState`] is what handlers share; [`serve`]
//!   runs a router on a listener, with read and write timeouts, a connection limit and a
//!   graceful stop.
//! - [`form`]: strict form-body parsing (content type, size limit, duplicates, encoding),
//!   and [`credentials`]: client credentials from Basic or the body. Both are written once
//!   and used by every route.
//! - [`ratelimit`]: failed client authentication, limited per client id and source address.
//! - [`error`]: the single mapping from domain errors to status codes and JSON bodies.
//! - [`tenant`]: the tenant a request addresses (root paths are the `default` tenant).
//! - `oauth2/`: one file per endpoint: `token.rs`, `revoke.rs`, `introspect.rs`,
//!   `metadata.rs`.
//! - `profiles/`: the seed documents' revocation APIs, one file each (`sentinel.rs`,
//!   `id_v1.rs`, `api_v1_0.rs`); each translates shapes and calls the shared revocation path.
//! - `admin/`: the admin API, one file per resource: `tenants.rs`, `clients.rs`, `grants.rs`,
//!   `cleanup.rs`.
//! - `health.rs`: liveness and readiness; `metrics.rs`: `/metrics` (Prometheus text), with
//!   the responses counted by endpoint and status.

mod admin;
pub mod credentials;
pub mod error;
pub mod form;
mod health;
mod log_budget;
mod metrics;
mod oauth2;
pub mod profiles;
pub mod ratelimit;
pub mod serve;
pub mod tenant;

use std::sync::Arc;

use axum::handler::Handler;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use latch_core::id::TenantId;
use latch_core::Authority;
use sha2::{Digest, Sha256};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use error::{ApiError, ErrorStyle};
use metrics::Endpoint;
pub use profiles::Profiles;
pub use ratelimit::{AuthLimiter, AuthLimits};

/// What every handler shares.
pub struct AppState {
    /// The domain.
    pub authority: Arc<Authority>,
    /// The issuer identifier of the `default` tenant as configured, e.g.
    /// `http://127.0.0.1:8080`, served byte for byte, a terminating `/` included: clients
    /// compare it so with the one they built the metadata's URL from (RFC 8414 §3.3).
    issuer: String,
    /// The issuer without a terminating `/`, which other tenants' issuers (plus
    /// `/tenants/{tenant}`) and every endpoint URL extend.
    base: String,
    /// SHA-256 of the admin bearer token; `None` turns the admin API off.
    admin_token: Option<[u8; 32]>,
    /// The compatibility profiles served.
    pub profiles: Profiles,
    /// Counters of failed client authentication.
    pub auth_limiter: AuthLimiter,
    /// Responses by endpoint and status, for `/metrics`.
    responses: Arc<metrics::ResponseCounters>,
    /// Each listener's connections, by the name `/metrics` gives it.
    listeners: Vec<(&'static str, Arc<serve::ConnectionStats>)>,
}

impl AppState {
    /// Builds the shared state. `admin_token` of `None` (or empty) disables the admin API.
    pub fn new(authority: Arc<Authority>, issuer: String, admin_token: Option<&str>) -> Self {
        Self {
            authority,
            base: issuer.trim_end_matches('/').to_owned(),
            issuer,
            admin_token: admin_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            profiles: Profiles::default(),
            auth_limiter: AuthLimiter::new(AuthLimits::default()),
            responses: Arc::default(),
            listeners: Vec::new(),
        }
    }

    /// Names the listeners whose connections `/metrics` shows, with what [`serve::serve`]
    /// counts of each.
    pub fn with_listeners(
        mut self,
        listeners: Vec<(&'static str, Arc<serve::ConnectionStats>)>,
    ) -> Self {
        self.listeners = listeners;
        self
    }

    /// Sets the limits on failed client authentication.
    pub fn with_auth_limits(mut self, limits: AuthLimits) -> Self {
        self.auth_limiter = AuthLimiter::new(limits);
        self
    }

    /// Chooses the compatibility profiles to serve.
    pub fn with_profiles(mut self, profiles: Profiles) -> Self {
        self.profiles = profiles;
        self
    }

    /// The path prefix under which a tenant's OAuth endpoints live.
    pub fn tenant_path(tenant: &TenantId) -> String {
        if tenant.as_str() == TenantId::DEFAULT {
            String::new()
        } else {
            format!("/tenants/{tenant}")
        }
    }

    /// A tenant's issuer identifier (RFC 8414 §2).
    pub fn issuer_for(&self, tenant: &TenantId) -> String {
        if tenant.as_str() == TenantId::DEFAULT {
            self.issuer.clone()
        } else {
            format!("{}{}", self.base, Self::tenant_path(tenant))
        }
    }

    /// The URL of a tenant's endpoint at `path` (`/oauth2/token`).
    pub fn endpoint_url(&self, tenant: &TenantId, path: &str) -> String {
        format!("{}{}{path}", self.base, Self::tenant_path(tenant))
    }

    /// The path of the issuer identifier, `/latch` in `https://auth.example/latch`: empty when
    /// it has none (latch then serves at its root, or behind a proxy that strips the path).
    pub fn issuer_path(&self) -> &str {
        let rest = self.base.split_once("://").map_or("", |(_, rest)| rest);
        rest.find('/').map_or("", |at| &rest[at..])
    }
}

/// The address a request came from, when the server recorded it (never fails).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<serve::Connection>()
                .map(|c| c.peer.ip()),
        ))
    }
}

/// Marks a response as uncacheable (RFC 6749 §5.1): every response that carries a token or
/// token metadata gets this.
pub(crate) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A method the route does not serve: the JSON error, for every route but the one profile
/// that spells errors its own way (axum adds `Allow`, naming the methods the route serves).
async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// `405` for a POST-only endpoint, in the given error style.
pub(crate) fn method_not_allowed_styled(style: ErrorStyle) -> Response {
    let mut response = ApiError::method_not_allowed().into_response_styled(style);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// `method(handler)` with its `405` made inside it (by `fallback`; the JSON error unless
/// given), and every response it makes counted as `endpoint`'s. The count wraps the
/// handlers, not the route: a layer on the route would box it again, and run axum's
/// response fix-ups (`Content-Length`, `HEAD`) twice.
macro_rules! counted {
    ($state:expr, $endpoint:expr, $method:ident($handler:expr)) => {
        counted!($state, $endpoint, $method($handler), method_not_allowed)
    };
    ($state:expr, $endpoint:expr, $method:ident($handler:expr), $fallback:expr) => {{
        let count = metrics::counted($state, $endpoint);
        $method($handler.layer(count.clone())).fallback($fallback.layer(count))
    }};
}

/// The OAuth endpoints of one tenant, mounted at `/` (default tenant) and under
/// `/tenants/{tenant}`, with the tenant-scoped profiles that are on.
fn oauth_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let profiles = state.profiles;
    let mut routes = Router::new();
    if profiles.id_v1 {
        // Its panics too are answered in its camelCase (outside its count, as every route's).
        let count = metrics::counted(state, Endpoint::IdV1);
        let panics = answer_panics(ErrorStyle::CamelCase, state.responses.clone());
        routes = routes.route(
            "/api/id/v1/auth/token/revoke",
            post(profiles::id_v1::handle.layer(count.clone()).layer(panics))
                .fallback(profiles::id_v1::method_not_allowed.layer(count)),
        );
    }
    if profiles.api_v1_0 {
        routes = routes.route(
            "/api/v1.0/oauth2/revoke",
            counted!(state, Endpoint::ApiV10, post(profiles::api_v1_0::handle)),
        );
    }
    routes
        .route(
            "/oauth2/token",
            counted!(state, Endpoint::Token, post(oauth2::token::handle)),
        )
        .route(
            "/oauth2/revoke",
            counted!(state, Endpoint::Revoke, post(oauth2::revoke::handle)),
        )
        .route(
            "/oauth2/introspect",
            counted!(
                state,
                Endpoint::Introspect,
                post(oauth2::introspect::handle)
            ),
        )
}

/// The span of a request: method and path only. The query string is left out, so a client
/// that wrongly puts a token or secret there does not get it written to the logs.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
}

/// Which of latch's routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// Every route, on one listener (the default).
    Everything,
    /// What clients and resource servers call: the OAuth endpoints, the metadata, the
    /// profiles, and the health checks (for a load balancer in front).
    Clients,
    /// What operators and their tools call: the health checks, `/metrics` and the admin API,
    /// on a listener of their own, so that clients holding every connection of the other
    /// cannot starve a liveness probe (which would restart the node), and the admin API and
    /// metrics need not be reachable where clients are.
    Operations,
}

/// The routes a listener that `serves` them answers.
pub fn router(state: Arc<AppState>, serves: Serves) -> Router {
    let clients = serves != Serves::Operations;
    let operations = serves != Serves::Clients;
    let mut app = Router::new()
        .route(
            "/healthz",
            counted!(&state, Endpoint::Health, get(health::live)),
        )
        .route(
            "/readyz",
            counted!(&state, Endpoint::Health, get(health::ready)),
        );
    if clients {
        app = app
            .merge(oauth_routes(&state))
            .nest("/tenants/{tenant}", oauth_routes(&state));
        for path in oauth2::metadata::paths(state.issuer_path()) {
            app = app.route(
                &path,
                counted!(&state, Endpoint::Metadata, get(oauth2::metadata::handle)),
            );
        }
        if state.profiles.sentinel {
            app = app.route(
                "/sentinel/api/account/{accountid}/token/revoke",
                counted!(&state, Endpoint::Sentinel, post(profiles::sentinel::handle)),
            );
        }
    }
    if operations {
        app = app.route(
            "/metrics",
            counted!(&state, Endpoint::Metrics, get(metrics::handle)),
        );
        if state.admin_token.is_some() {
            // The admin routes' `405`s are made inside them, so that the layer counts them.
            let admin =
                admin::routes(state.clone()).method_not_allowed_fallback(method_not_allowed);
            app = app.nest(
                "/admin/v1",
                admin.layer(metrics::counted(&state, Endpoint::Admin)),
            );
        }
    }
    let app = app
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found.layer(metrics::counted(&state, Endpoint::Other)));
    let responses = state.responses.clone();
    let app = catch_panics(app.with_state(state), responses);
    // A request's span and its events cost two clock reads and a wrapped body per request,
    // a tenth of the bare HTTP stack's own work: they are layered on only when the log
    // filter would record them.
    if tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG) {
        app.layer(TraceLayer::new_for_http().make_span_with(request_span))
    } else {
        app
    }
}

/// Answers a panicking handler's request with a 500, logged (the panic hook has already
/// written the message and where) and counted: the handler's own counting layer never saw a
/// response.
fn catch_panics(app: Router, responses: Arc<metrics::ResponseCounters>) -> Router {
    app.layer(answer_panics(ErrorStyle::Rfc6749, responses))
}

/// The layer of [`catch_panics`], answering in `style`: a profile whose errors have another
/// shape (seed 001's camelCase) puts its own around its handler, inside the one of every route.
fn answer_panics(
    style: ErrorStyle,
    responses: Arc<metrics::ResponseCounters>,
) -> CatchPanicLayer<impl Fn(Box<dyn std::any::Any + Send>) -> Response + Clone> {
    CatchPanicLayer::custom(move |_: Box<dyn std::any::Any + Send>| {
        tracing::error!("a request handler panicked; answered 500");
        let response = ApiError::internal().into_response_styled(style);
        responses.count(Endpoint::Panicked, response.status());
        response
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    /// A handler that panics.
    async fn boom() {
        panic!("boom");
    }

    /// `GET /boom` on `app`: the answer's status and JSON body, and whether `responses` counted
    /// one panicked 500.
    async fn panicked(
        app: Router,
        responses: &metrics::ResponseCounters,
    ) -> (StatusCode, serde_json::Value, bool) {
        let request = Request::get("/boom").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let mut text = String::new();
        responses.render(&mut text);
        let counted =
            text.contains(r#"latch_http_responses_total{endpoint="panicked",status="500"} 1"#);
        (status, serde_json::from_slice(&body).unwrap(), counted)
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_in_json_and_counted() {
        let responses = Arc::new(metrics::ResponseCounters::default());
        let app = catch_panics(Router::new().route("/boom", get(boom)), responses.clone());
        let (status, body, counted) = panicked(app, &responses).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"error": "server_error", "error_description": "internal error"})
        );
        assert!(counted);
    }

    #[tokio::test]
    async fn a_profile_with_camel_case_errors_answers_its_panics_in_camel_case() {
        let responses = Arc::new(metrics::ResponseCounters::default());
        let camel = answer_panics(ErrorStyle::CamelCase, responses.clone());
        let app = Router::new().route("/boom", get(boom.layer(camel)));
        let app = catch_panics(app, responses.clone());
        let (status, body, counted) = panicked(app, &responses).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"error": "server_error", "errorDescription": "internal error"})
        );
        assert!(counted, "counted once");
    }
}
