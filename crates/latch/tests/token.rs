//! `POST /oauth2/token`: the `client_credentials` grant (RFC 6749 §4.4), the token response
//! (§5.1) and its errors (§5.2), and the `refresh_token` grant (§6) with rotation and reuse
//! detection (RFC 9700 §4.14.2), including concurrent refreshes of one token.

#[macro_use]
mod common;

use common::{assert_error, basic_header, Auth, TestClient, TestServer};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// A string field of a JSON body, owned.
fn field(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

/// POSTs to the token endpoint.
async fn token(s: &TestServer, auth: Auth<'_>, pairs: &[(&str, &str)]) -> Response {
    s.post_form("/oauth2/token", auth, pairs).await
}

/// A refresh that must succeed; returns the token response.
async fn refresh_ok(s: &TestServer, client: &TestClient, rt: &str) -> Value {
    let resp = s.refresh(Auth::Basic(client), rt).await;
    assert_eq!(resp.status(), StatusCode::OK, "refresh of {rt}");
    resp.json().await.unwrap()
}

/// `app`, allowed the refresh-token grant and scope `read`, its refresh tokens living `ttl`
/// seconds.
async fn refreshing_app(s: &TestServer, ttl: u32) -> TestClient {
    s.create_client(
        "default",
        json!({
            "client_id": "app",
            "client_secret": "app-secret",
            "grant_types": ["refresh_token"],
            "scope": "read",
            "refresh_token_ttl": ttl,
        }),
    )
    .await
}

/// A refresh that must fail with `invalid_grant`.
async fn refresh_rejected(s: &TestServer, client: &TestClient, rt: &str) {
    assert_error(
        s.refresh(Auth::Basic(client), rt).await,
        400,
        "invalid_grant",
    )
    .await;
}

/// Asserts that every token is inactive.
async fn assert_all_inactive(s: &TestServer, tokens: &[&str]) {
    for t in tokens {
        assert!(!s.is_active(t).await, "{t} is still active");
    }
}

/// Asserts that every token is active.
async fn assert_all_active(s: &TestServer, tokens: &[&str]) {
    for t in tokens {
        assert!(s.is_active(t).await, "{t} is not active");
    }
}

/// A confidential client with both grants and a rotation grace period.
async fn client_with_grace(s: &TestServer, id: &str, grace: u32) -> TestClient {
    s.create_client(
        "default",
        json!({
            "client_id": id,
            "client_secret": format!("{id}-secret"),
            "grant_types": ["client_credentials", "refresh_token"],
            "scope": "read write",
            "rotation_grace_period": grace,
        }),
    )
    .await
}

// ---- client_credentials (RFC 6749 §4.4, §5.1) ------------------------------------------

backend_test! {
    async fn client_credentials_issues_a_bearer_access_token_and_no_refresh_token() {
        let s = TestServer::start().await;
        let svc = s
            .create_client(
                "default",
                json!({
                    "client_id": "svc",
                    "client_secret": "svc-secret",
                    "grant_types": ["client_credentials"],
                    "scope": "read write",
                    "access_token_ttl": 600,
                }),
            )
            .await;

        let resp = token(&s, Auth::Basic(&svc), &[("grant_type", "client_credentials")]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["pragma"], "no-cache");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.unwrap();
        let at = field(&body, "access_token");
        assert!(at.starts_with("latch_at_"), "{at}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 600);
        assert_eq!(body["scope"], "read write");
        assert!(
            body.get("refresh_token").is_none(),
            "§4.4.3: no refresh token: {body}"
        );

        let info = s.introspect(&at).await;
        assert_eq!(info["active"], true);
        assert_eq!(info["sub"], "svc");
        assert_eq!(info["client_id"], "svc");
        assert_eq!(info["scope"], "read write");
    }
}

backend_test! {
    async fn client_credentials_accepts_client_secret_post() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let resp = token(&s, Auth::Post(&svc), &[("grant_type", "client_credentials")]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.unwrap();
        let at = field(&body, "access_token");
        assert!(at.starts_with("latch_at_"));
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["expires_in"].as_u64().is_some_and(|n| n > 0), "{body}");
        assert!(body.get("refresh_token").is_none());
        let info = s.introspect(&at).await;
        assert_eq!(info["active"], true);
        assert_eq!(info["sub"], "svc");
    }
}

backend_test! {
    async fn client_credentials_is_refused_to_public_clients_and_clients_without_the_grant() {
        let s = TestServer::start().await;
        // §4.4: "MUST only be used by confidential clients": a public client is not
        // registered for it, and one registered without grant types gets refresh_token.
        let spa_for_it = json!({
            "client_id": "spa",
            "token_endpoint_auth_method": "none",
            "grant_types": ["client_credentials", "refresh_token"],
            "scope": "read",
        });
        let path = "/tenants/default/clients";
        let refused = s.admin(reqwest::Method::POST, path, Some(spa_for_it)).await;
        let body = assert_error(refused, 400, "invalid_request").await;
        let why = body["error_description"].as_str().unwrap_or_default();
        assert!(why.contains("client_credentials"), "{body}");
        let spa = s
            .create_client(
                "default",
                json!({ "client_id": "spa", "token_endpoint_auth_method": "none", "scope": "read" }),
            )
            .await;
        let shown = s.admin(reqwest::Method::GET, &format!("{path}/spa"), None).await;
        let shown: Value = shown.json().await.unwrap();
        assert_eq!(shown["grant_types"], json!(["refresh_token"]), "{shown}");
        let resp = token(&s, Auth::Public(&spa), &[("grant_type", "client_credentials")]).await;
        assert_error(resp, 400, "unauthorized_client").await;

        // A confidential client registered for refresh_token only.
        let refresher = s
            .create_client(
                "default",
                json!({
                    "client_id": "refresher",
                    "client_secret": "refresher-secret",
                    "grant_types": ["refresh_token"],
                    "scope": "read",
                }),
            )
            .await;
        let resp = token(
            &s,
            Auth::Basic(&refresher),
            &[("grant_type", "client_credentials")],
        )
        .await;
        assert_error(resp, 400, "unauthorized_client").await;
    }
}

backend_test! {
    async fn an_access_token_issued_beside_a_refresh_token_never_outlives_it() {
        let s = TestServer::start().await;
        let lifetime = |info: &Value| info["exp"].as_i64().unwrap() - info["iat"].as_i64().unwrap();
        // Access tokens of an hour, refresh tokens of ten minutes: a session's access tokens
        // end with its refresh token (revoking it, or its expiry, ends them all).
        let long = s
            .create_client(
                "default",
                json!({
                    "client_id": "long",
                    "client_secret": "long-secret",
                    "grant_types": ["client_credentials", "refresh_token"],
                    "scope": "read",
                    "access_token_ttl": 3600,
                    "refresh_token_ttl": 600,
                }),
            )
            .await;
        let granted = s.grant_for(&long, "alice", None).await;
        assert_eq!(granted["expires_in"], 600);
        let info = s.introspect(&field(&granted, "access_token")).await;
        assert_eq!(lifetime(&info), 600, "{info}");
        s.advance(100);
        let refreshed = refresh_ok(&s, &long, &field(&granted, "refresh_token")).await;
        assert_eq!(refreshed["expires_in"], 600);
        let info = s.introspect(&field(&refreshed, "access_token")).await;
        assert_eq!(lifetime(&info), 600, "{info}");
        // Without a refresh token, the client's own lifetime.
        let own = s.client_credentials(&long).await;
        assert_eq!(own["expires_in"], 3600);
        assert_eq!(lifetime(&s.introspect(&field(&own, "access_token")).await), 3600);
        // Shorter than the refresh token's, an access token's lifetime is the client's.
        let short = s
            .create_client(
                "default",
                json!({
                    "client_id": "short",
                    "client_secret": "short-secret",
                    "grant_types": ["refresh_token"],
                    "scope": "read",
                    "access_token_ttl": 300,
                    "refresh_token_ttl": 600,
                }),
            )
            .await;
        let granted = s.grant_for(&short, "bob", None).await;
        assert_eq!(granted["expires_in"], 300);
        let refreshed = refresh_ok(&s, &short, &field(&granted, "refresh_token")).await;
        assert_eq!(refreshed["expires_in"], 300);
        assert_eq!(lifetime(&s.introspect(&field(&refreshed, "access_token")).await), 300);
    }
}

backend_test! {
    async fn the_refresh_token_grant_is_refused_to_a_client_without_it() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read").await;
        let rt = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        // The harness's introspector is registered for client_credentials only.
        let resp = s.refresh(Auth::Basic(&s.introspector), &rt).await;
        assert_error(resp, 400, "unauthorized_client").await;
        assert!(s.is_active(&rt).await);
    }
}

// ---- scope (RFC 6749 §3.3) --------------------------------------------------------------

backend_test! {
    async fn requesting_a_subset_of_the_clients_scope_narrows_the_token() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read write admin").await;
        let resp = token(
            &s,
            Auth::Basic(&svc),
            &[("grant_type", "client_credentials"), ("scope", "write read")],
        )
        .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["scope"], "read write");
        let info = s.introspect(&field(&body, "access_token")).await;
        assert_eq!(info["scope"], "read write");

        // No scope parameter: the client's whole scope.
        let body = s.client_credentials(&svc).await;
        assert_eq!(body["scope"], "admin read write");
    }
}

backend_test! {
    async fn a_scope_beyond_the_clients_or_malformed_is_invalid_scope() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        // Forbidden characters, and spaces naming no token (`scope=+++`): RFC 6749 §3.3.
        for scope in ["read write", "admin", "a\"b", "a\\b", "caf\u{e9}", " ", "   "] {
            let resp = token(
                &s,
                Auth::Basic(&svc),
                &[("grant_type", "client_credentials"), ("scope", scope)],
            )
            .await;
            assert_error(resp, 400, "invalid_scope").await;
        }
    }
}

// ---- request errors (RFC 6749 §5.2) -----------------------------------------------------

backend_test! {
    async fn malformed_requests_are_invalid_request_or_unsupported_grant_type() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;

        // Missing grant_type, and an empty one (§3.1: empty counts as absent).
        assert_error(token(&s, Auth::Basic(&svc), &[]).await, 400, "invalid_request").await;
        assert_error(
            token(&s, Auth::Basic(&svc), &[("grant_type", "")]).await,
            400,
            "invalid_request",
        )
        .await;
        // Grant types latch does not support.
        for grant in ["password", "authorization_code", "CLIENT_CREDENTIALS", "nope"] {
            let resp = token(&s, Auth::Basic(&svc), &[("grant_type", grant)]).await;
            assert_error(resp, 400, "unsupported_grant_type").await;
        }
        // The refresh grant without its refresh_token.
        assert_error(
            token(&s, Auth::Basic(&svc), &[("grant_type", "refresh_token")]).await,
            400,
            "invalid_request",
        )
        .await;
        // A parameter twice (§3.2).
        for body in [
            &b"grant_type=client_credentials&grant_type=client_credentials"[..],
            &b"grant_type=client_credentials&scope=read&scope=read"[..],
        ] {
            let resp = s
                .post_raw(
                    "/oauth2/token",
                    &[
                        ("content-type", "application/x-www-form-urlencoded"),
                        ("authorization", &basic_header("svc", "svc-secret")),
                    ],
                    body.to_vec(),
                )
                .await;
            assert_error(resp, 400, "invalid_request").await;
        }
        // GET.
        let resp = s.http.get(s.url("/oauth2/token")).send().await.unwrap();
        assert_eq!(resp.headers()["allow"], "POST");
        assert_error(resp, 405, "invalid_request").await;
    }
}

backend_test! {
    async fn bad_client_credentials_are_401_invalid_client_with_a_basic_challenge_for_basic() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let wrong = TestClient {
            id: "svc".into(),
            secret: Some("nope".into()),
        };
        let ghost = TestClient {
            id: "ghost".into(),
            secret: Some("x".into()),
        };
        let cc = [("grant_type", "client_credentials")];

        let resp = token(&s, Auth::Basic(&wrong), &cc).await;
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        assert_error(resp, 401, "invalid_client").await;

        let resp = token(&s, Auth::Basic(&ghost), &cc).await;
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        assert_error(resp, 401, "invalid_client").await;

        let resp = token(&s, Auth::Post(&wrong), &cc).await;
        assert!(resp.headers().get("www-authenticate").is_none());
        assert_error(resp, 401, "invalid_client").await;

        assert_error(token(&s, Auth::None, &cc).await, 401, "invalid_client").await;
        // A confidential client naming itself without its secret.
        assert_error(token(&s, Auth::Public(&svc), &cc).await, 401, "invalid_client").await;

        // A refresh with bad credentials is refused before the token is looked at, and
        // does not consume it.
        let rt = field(&s.grant_for(&svc, "alice", None).await, "refresh_token");
        assert_error(s.refresh(Auth::Basic(&wrong), &rt).await, 401, "invalid_client").await;
        refresh_ok(&s, &svc, &rt).await;
    }
}

// ---- refresh rotation (RFC 6749 §6, RFC 9700 §4.14.2) -----------------------------------

backend_test! {
    async fn refreshing_rotates_both_tokens_and_retires_the_old_refresh_token() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read write").await;
        let g = s.grant_for(&app, "alice", None).await;
        let (at0, rt0) = (field(&g, "access_token"), field(&g, "refresh_token"));
        assert!(rt0.starts_with("latch_rt_"), "{rt0}");

        let resp = s.refresh(Auth::Basic(&app), &rt0).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["pragma"], "no-cache");
        let body: Value = resp.json().await.unwrap();
        let (at1, rt1) = (field(&body, "access_token"), field(&body, "refresh_token"));
        assert!(at1.starts_with("latch_at_"), "{at1}");
        assert!(rt1.starts_with("latch_rt_"), "{rt1}");
        assert_ne!(at1, at0);
        assert_ne!(rt1, rt0);
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["expires_in"].as_u64().is_some_and(|n| n > 0), "{body}");
        assert_eq!(body["scope"], "read write");

        assert!(!s.is_active(&rt0).await, "the rotated refresh token is retired");
        assert_all_active(&s, &[&at1, &rt1]).await;
        let info = s.introspect(&at1).await;
        assert_eq!(info["sub"], "alice");
        assert_eq!(info["client_id"], "app");
        assert_eq!(info["grant_id"], g["grant_id"]);

        // The new refresh token works in turn (with client_secret_post this time).
        let resp = s.refresh(Auth::Post(&app), &rt1).await;
        assert_eq!(resp.status(), 200);
    }
}

backend_test! {
    async fn a_public_client_refreshes_with_its_client_id_alone() {
        let s = TestServer::start().await;
        let spa = s.public("spa", "read").await;
        let rt = field(&s.grant_for(&spa, "alice", None).await, "refresh_token");
        let resp = s.refresh(Auth::Public(&spa), &rt).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert!(s.is_active(&field(&body, "refresh_token")).await);
        assert!(!s.is_active(&rt).await);
    }
}

backend_test! {
    async fn a_narrowed_refresh_narrows_the_access_token_only() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read write").await;
        let rt0 = field(&s.grant_for(&app, "alice", None).await, "refresh_token");

        let resp = token(
            &s,
            Auth::Basic(&app),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt0),
                ("scope", "read"),
            ],
        )
        .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["scope"], "read");
        let (at1, rt1) = (field(&body, "access_token"), field(&body, "refresh_token"));
        assert_eq!(s.introspect(&at1).await["scope"], "read");
        // §6: the new refresh token carries the original scope.
        assert_eq!(s.introspect(&rt1).await["scope"], "read write");

        // So the next refresh, without a scope, gets the whole grant back.
        let body = refresh_ok(&s, &app, &rt1).await;
        assert_eq!(body["scope"], "read write");
        assert_eq!(
            s.introspect(&field(&body, "access_token")).await["scope"],
            "read write"
        );
    }
}

backend_test! {
    async fn widening_the_scope_on_refresh_is_invalid_scope_and_consumes_nothing() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read write").await;
        let rt = field(
            &s.grant_for(&app, "alice", Some("read")).await,
            "refresh_token",
        );
        for scope in ["read write", "admin", "a\"b"] {
            let resp = token(
                &s,
                Auth::Basic(&app),
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("scope", scope),
                ],
            )
            .await;
            assert_error(resp, 400, "invalid_scope").await;
        }
        // The refused requests neither rotated the token nor counted as a reuse.
        let body = refresh_ok(&s, &app, &rt).await;
        assert_eq!(body["scope"], "read");
    }
}

// ---- reuse detection ----------------------------------------------------------------------

backend_test! {
    async fn reusing_a_rotated_refresh_token_revokes_the_whole_grant() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read").await;
        let g = s.grant_for(&app, "alice", None).await;
        let (at0, rt0) = (field(&g, "access_token"), field(&g, "refresh_token"));
        let r1 = refresh_ok(&s, &app, &rt0).await;
        let (at1, rt1) = (field(&r1, "access_token"), field(&r1, "refresh_token"));
        assert_all_active(&s, &[&at0, &at1, &rt1]).await;

        // Strict rotation (grace 0): a second use, even immediately, is a reuse.
        let body = assert_error(s.refresh(Auth::Basic(&app), &rt0).await, 400, "invalid_grant").await;
        assert!(!body["error_description"].as_str().unwrap().is_empty());

        assert_all_inactive(&s, &[&rt0, &rt1, &at0, &at1]).await;
        // The legitimate holder of the latest token is locked out too.
        refresh_rejected(&s, &app, &rt1).await;
        // Other grants of the same client and subject are untouched.
        let other = s.grant_for(&app, "alice", None).await;
        refresh_ok(&s, &app, &field(&other, "refresh_token")).await;
    }
}

backend_test! {
    async fn a_rotated_refresh_token_replayed_or_revoked_after_its_own_expiry_still_kills_its_grant() {
        let s = TestServer::start().await;
        let app = refreshing_app(&s, 1000).await;
        let replayed = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        let revoked = field(&s.grant_for(&app, "bob", None).await, "refresh_token");
        s.advance(500);
        let alice = refresh_ok(&s, &app, &replayed).await;
        let bob = refresh_ok(&s, &app, &revoked).await;
        // Both old tokens expired at 1000, their rows kept (no clean-up runs here) past the
        // clocks' allowance for expired tokens; their successors live until 1500.
        s.advance(1000 + latch_core::cleanup::EXPIRY_GRACE + 1 - 500);
        let alice = [field(&alice, "access_token"), field(&alice, "refresh_token")];
        let bob = [field(&bob, "access_token"), field(&bob, "refresh_token")];
        assert_all_active(&s, &[&alice[0], &alice[1], &bob[0], &bob[1]]).await;

        // A thief replaying alice's stolen old token is a reuse: her grant dies.
        refresh_rejected(&s, &app, &replayed).await;
        assert_all_inactive(&s, &[&alice[0], &alice[1]]).await;
        // Bob signing out with the token his app kept signs him out.
        let response = s.revoke(Auth::Basic(&app), &revoked).await;
        assert_eq!(response.status(), 200);
        assert_all_inactive(&s, &[&bob[0], &bob[1]]).await;
    }
}

backend_test! {
    async fn a_scope_taken_off_a_client_is_no_longer_in_the_access_tokens_its_grants_mint() {
        // `app` declared in the configuration with `read write admin`, then, at the next
        // start, with `read write`, then with `other` alone.
        let declare = |scope: &'static str| {
            move |settings: &mut latch::config::Settings| {
                settings.clients = vec![latch_core::admin::ClientSpec {
                    tenant: latch_core::id::TenantId::default_tenant(),
                    id: latch_core::id::ClientId::parse("app").unwrap(),
                    auth_method: latch_core::client::AuthMethod::ClientSecretBasic,
                    secret: latch_core::admin::SecretSpec::Plain("app-secret".into()),
                    grant_types: vec![latch_core::client::GrantType::RefreshToken],
                    scope: latch_core::scope::Scope::parse(scope).unwrap(),
                    redirect_uris: vec![],
                    access_token_ttl: 3600,
                    refresh_token_ttl: 86_400,
                    rotation_grace: 0,
                    access_token_revocation: Default::default(),
                    introspects: Default::default(),
                }];
            }
        };
        let app = TestClient { id: "app".into(), secret: Some("app-secret".into()) };
        let s = TestServer::start_with(declare("read write admin")).await;
        let rt = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        let s = TestServer::start_configured(s.stop().await, declare("read write")).await;

        let r1 = refresh_ok(&s, &app, &rt).await;
        assert_eq!(r1["scope"], "read write", "narrowed to what the client may have now");
        let at1 = field(&r1, "access_token");
        assert_eq!(s.introspect(&at1).await["scope"], "read write");
        // Asking for the scope taken off is refused, and consumes nothing.
        let rt1 = field(&r1, "refresh_token");
        let asked = s
            .post_form(
                "/oauth2/token",
                Auth::Basic(&app),
                &[("grant_type", "refresh_token"), ("refresh_token", &rt1), ("scope", "admin")],
            )
            .await;
        assert_error(asked, 400, "invalid_scope").await;
        // The grant keeps its scope (RFC 6749 §6): given back to the client, it comes back.
        let s = TestServer::start_configured(s.stop().await, declare("read write admin")).await;
        let r2 = refresh_ok(&s, &app, &rt1).await;
        assert_eq!(r2["scope"], "admin read write");
        // With none of the grant's scope left, nothing is minted.
        let s = TestServer::start_configured(s.stop().await, declare("other")).await;
        let rt2 = field(&r2, "refresh_token");
        assert_error(s.refresh(Auth::Basic(&app), &rt2).await, 400, "invalid_scope").await;
        assert_all_active(&s, &[&rt2]).await;
    }
}

// ---- grace period --------------------------------------------------------------------------

backend_test! {
    async fn within_the_grace_period_the_previous_refresh_token_works_once_more() {
        let s = TestServer::start().await;
        let app = client_with_grace(&s, "app", 30).await;
        let g = s.grant_for(&app, "alice", None).await;
        let rt0 = field(&g, "refresh_token");
        let r1 = refresh_ok(&s, &app, &rt0).await;

        s.advance(10);
        let r2 = refresh_ok(&s, &app, &rt0).await;
        let (at2, rt2) = (field(&r2, "access_token"), field(&r2, "refresh_token"));
        assert!(rt2.starts_with("latch_rt_"));
        assert_eq!(r2["scope"], "read write");
        assert_all_active(&s, &[&at2, &rt2]).await;

        // The grace use is spent: a third use of rt0 is a reuse.
        refresh_rejected(&s, &app, &rt0).await;
        assert_all_inactive(
            &s,
            &[
                &field(&g, "access_token"),
                &field(&r1, "access_token"),
                &field(&r1, "refresh_token"),
                &at2,
                &rt2,
            ],
        )
        .await;
    }
}

backend_test! {
    async fn after_the_grace_period_the_previous_refresh_token_is_a_reuse() {
        let s = TestServer::start().await;
        let app = client_with_grace(&s, "app", 30).await;
        let rt0 = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        let r1 = refresh_ok(&s, &app, &rt0).await;

        s.advance(31);
        refresh_rejected(&s, &app, &rt0).await;
        assert_all_inactive(
            &s,
            &[&field(&r1, "access_token"), &field(&r1, "refresh_token")],
        )
        .await;
    }
}

backend_test! {
    async fn the_grace_period_covers_only_the_immediately_previous_refresh_token() {
        let s = TestServer::start().await;
        let app = client_with_grace(&s, "app", 30).await;
        let rt0 = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        let r1 = refresh_ok(&s, &app, &rt0).await;
        let r2 = refresh_ok(&s, &app, &field(&r1, "refresh_token")).await;

        // rt0 is two rotations old: a reuse, well within 30 s.
        refresh_rejected(&s, &app, &rt0).await;
        assert_all_inactive(
            &s,
            &[
                &field(&r1, "access_token"),
                &field(&r2, "access_token"),
                &field(&r2, "refresh_token"),
            ],
        )
        .await;
        refresh_rejected(&s, &app, &field(&r2, "refresh_token")).await;
    }
}

backend_test! {
    async fn after_a_grace_use_the_first_of_the_two_new_refresh_tokens_exchanged_retires_the_other() {
        let s = TestServer::start().await;
        let app = client_with_grace(&s, "app", 30).await;
        // A grace use leaves two unused refresh tokens in the grant: rt1 from the first
        // exchange of rt0, rt2 from its grace use. Whichever is exchanged first retires the
        // other, in both orders, so the grant does not go on as two chains (a thief's and
        // the client's) once the window is over (RFC 9700 §4.14.2).
        for keep_first in [true, false] {
            let rt0 = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
            let r1 = refresh_ok(&s, &app, &rt0).await;
            s.advance(5);
            let r2 = refresh_ok(&s, &app, &rt0).await;
            let (rt1, rt2) = (field(&r1, "refresh_token"), field(&r2, "refresh_token"));
            assert_all_active(&s, &[&rt1, &rt2]).await;
            let (kept, other) = if keep_first { (rt1, rt2) } else { (rt2, rt1) };

            s.advance(3600);
            let r3 = refresh_ok(&s, &app, &kept).await;
            assert!(!s.is_active(&other).await, "the other token is retired");
            assert_all_active(&s, &[&field(&r3, "access_token"), &field(&r3, "refresh_token")])
                .await;
            // Presenting the retired one is a reuse: the whole grant dies.
            refresh_rejected(&s, &app, &other).await;
            assert_all_inactive(
                &s,
                &[
                    &field(&r2, "access_token"),
                    &field(&r3, "access_token"),
                    &field(&r3, "refresh_token"),
                ],
            )
            .await;
        }
    }
}

// ---- invalid refresh tokens ----------------------------------------------------------------

backend_test! {
    async fn another_clients_refresh_token_is_invalid_grant_and_stays_usable_by_its_owner() {
        let s = TestServer::start().await;
        let owner = s.confidential("owner", "read").await;
        let thief = s.confidential("thief", "read").await;
        let g = s.grant_for(&owner, "alice", None).await;
        let rt = field(&g, "refresh_token");

        // Answered exactly as a token that does not exist: the thief learns nothing.
        let unknown = format!("latch_rt_{}", "A".repeat(rt.len() - "latch_rt_".len()));
        let foreign = assert_error(s.refresh(Auth::Basic(&thief), &rt).await, 400, "invalid_grant").await;
        let none = assert_error(s.refresh(Auth::Basic(&thief), &unknown).await, 400, "invalid_grant").await;
        assert_eq!(foreign, none);
        assert_all_active(&s, &[&rt, &field(&g, "access_token")]).await;
        refresh_ok(&s, &owner, &rt).await;
    }
}

backend_test! {
    async fn an_expired_refresh_token_is_invalid_grant() {
        let s = TestServer::start().await;
        let app = refreshing_app(&s, 100).await;
        let fresh = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        let stale = field(&s.grant_for(&app, "bob", None).await, "refresh_token");

        s.advance(99);
        refresh_ok(&s, &app, &fresh).await;
        s.advance(2);
        refresh_rejected(&s, &app, &stale).await;
    }
}

backend_test! {
    async fn an_access_token_or_garbage_as_refresh_token_is_invalid_grant() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read").await;
        let g = s.grant_for(&app, "alice", None).await;
        let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));

        let unknown = format!("latch_rt_{}", "A".repeat(rt.len() - "latch_rt_".len()));
        let relabelled = rt.replacen("latch_rt_", "latch_at_", 1);
        for bad in [
            at.as_str(),
            "garbage",
            &unknown,
            &relabelled,
            "latch_rt_",
            &rt[..rt.len() - 1],
        ] {
            refresh_rejected(&s, &app, bad).await;
        }
        // None of that touched the real grant.
        assert_all_active(&s, &[&at, &rt]).await;
    }
}

backend_test! {
    async fn a_revoked_refresh_token_is_invalid_grant() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read").await;
        let rt = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        assert_eq!(s.revoke(Auth::Basic(&app), &rt).await.status(), 200);
        refresh_rejected(&s, &app, &rt).await;
    }
}

// ---- concurrency ---------------------------------------------------------------------------

/// Fires `n` refreshes of one token at once, each on its own task and connection pool, and
/// returns their statuses and bodies.
async fn race(s: &TestServer, client: &TestClient, rt: &str, n: usize) -> Vec<(u16, Value)> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, base, client, rt, start) = (
                reqwest::Client::new(),
                s.base.clone(),
                client.clone(),
                rt.to_owned(),
                start.clone(),
            );
            tokio::spawn(async move {
                start.wait().await;
                let resp = common::post_form_at(
                    &http,
                    &base,
                    "/oauth2/token",
                    Auth::Basic(&client),
                    &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
                )
                .await;
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Runs `rounds` races of `n` refreshes, each on a fresh grant, and checks the outcome:
/// exactly one winner, every loser `invalid_grant`, and the grant dead afterwards (a loser's
/// attempt is a reuse).
async fn concurrent_refreshes(n: usize, rounds: usize) {
    let s = TestServer::start().await;
    let app = s.confidential("app", "read").await;
    for round in 0..rounds {
        let g = s.grant_for(&app, &format!("user{round}"), None).await;
        let rt = field(&g, "refresh_token");
        let results = race(&s, &app, &rt, n).await;

        let winners: Vec<&Value> = results
            .iter()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (status, body) in results.iter().filter(|(status, _)| *status != 200) {
            assert_eq!(*status, 400, "round {round}: {body}");
            assert_eq!(body["error"], "invalid_grant", "round {round}: {body}");
            assert!(body["error_description"].is_string());
        }
        let winner = winners[0];
        assert_all_inactive(
            &s,
            &[
                &rt,
                &field(&g, "access_token"),
                &field(winner, "access_token"),
                &field(winner, "refresh_token"),
            ],
        )
        .await;
        refresh_rejected(&s, &app, &field(winner, "refresh_token")).await;
    }
}

backend_test! {
    async fn two_simultaneous_refreshes_of_one_token_one_wins_and_the_grant_dies() {
        concurrent_refreshes(2, 20).await;
    }
}

backend_test! {
    async fn four_simultaneous_refreshes_of_one_token_one_wins_and_the_grant_dies() {
        concurrent_refreshes(4, 10).await;
    }
}

// ---- grace-period races ----------------------------------------------------------------------

/// Races two refreshes of `rt` by `client` (which has a grace period) and checks that both
/// are answered 200 with tokens of their own, in the grant of `grant_id`, both new refresh
/// tokens active and `rt` retired; returns the two responses.
async fn raced_within_grace(
    s: &TestServer,
    client: &TestClient,
    rt: &str,
    grant_id: &Value,
) -> [Value; 2] {
    let results = race(s, client, rt, 2).await;
    for (status, _) in &results {
        assert_eq!(
            *status, 200,
            "both refreshes succeed within the grace period: {results:?}"
        );
    }
    let [(_, a), (_, b)]: [(u16, Value); 2] = results.try_into().unwrap();
    let (rt_a, rt_b) = (field(&a, "refresh_token"), field(&b, "refresh_token"));
    let (at_a, at_b) = (field(&a, "access_token"), field(&b, "access_token"));
    assert_ne!(rt_a, rt_b, "each refresh gets a refresh token of its own");
    assert_ne!(at_a, at_b, "each refresh gets an access token of its own");
    assert!(rt_a != rt && rt_b != rt);
    assert_all_active(s, &[&at_a, &rt_a, &at_b, &rt_b]).await;
    assert!(!s.is_active(rt).await, "the raced refresh token is retired");
    for t in [&rt_a, &rt_b] {
        assert_eq!(
            &s.introspect(t).await["grant_id"],
            grant_id,
            "same grant, not a new one"
        );
    }
    [a, b]
}

backend_test! {
    async fn two_raced_refreshes_within_grace_both_succeed_and_either_new_one_retires_the_other() {
        let s = TestServer::start().await;
        let app = client_with_grace(&s, "app", 30).await;
        // Whichever of the two responses' refresh tokens is exchanged first (the first in
        // even rounds, the second in odd ones) retires the other: presenting that one
        // afterwards is a reuse (RFC 9700 §4.14.2), which kills the whole grant.
        for round in 0..10 {
            let g = s.grant_for(&app, &format!("user{round}"), None).await;
            let rt0 = field(&g, "refresh_token");
            let [a, b] = raced_within_grace(&s, &app, &rt0, &g["grant_id"]).await;
            let (kept, other) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let (kept_rt, other_rt) = (field(kept, "refresh_token"), field(other, "refresh_token"));

            let r3 = refresh_ok(&s, &app, &kept_rt).await;
            let (at3, rt3) = (field(&r3, "access_token"), field(&r3, "refresh_token"));
            assert!(!s.is_active(&other_rt).await, "round {round}: the other token is retired");
            assert_all_active(&s, &[&at3, &rt3, &field(other, "access_token")]).await;

            refresh_rejected(&s, &app, &other_rt).await;
            assert_all_inactive(
                &s,
                &[
                    &field(&g, "access_token"),
                    &field(&a, "access_token"),
                    &field(&b, "access_token"),
                    &at3,
                    &rt3,
                ],
            )
            .await;
            refresh_rejected(&s, &app, &rt3).await;
        }
    }
}

backend_test! {
    async fn a_third_use_of_a_refresh_token_raced_twice_within_the_grace_period_is_a_reuse() {
        let s = TestServer::start().await;
        let app = client_with_grace(&s, "app", 30).await;
        for round in 0..5 {
            let g = s.grant_for(&app, &format!("user{round}"), None).await;
            let (at0, rt0) = (field(&g, "access_token"), field(&g, "refresh_token"));
            let [a, b] = raced_within_grace(&s, &app, &rt0, &g["grant_id"]).await;

            // Still well within the 30 s: the one grace use is spent, so this is a reuse.
            let body =
                assert_error(s.refresh(Auth::Basic(&app), &rt0).await, 400, "invalid_grant").await;
            assert!(
                body["error_description"].as_str().unwrap().contains("already used"),
                "round {round}: {body}"
            );
            let grant = [
                at0.as_str(),
                &rt0,
                &field(&a, "access_token"),
                &field(&a, "refresh_token"),
                &field(&b, "access_token"),
                &field(&b, "refresh_token"),
            ];
            assert_all_inactive(&s, &grant).await;
            refresh_rejected(&s, &app, &field(&a, "refresh_token")).await;
            refresh_rejected(&s, &app, &field(&b, "refresh_token")).await;
        }
    }
}

backend_test! {
    async fn three_concurrent_refreshes_within_the_grace_period_two_succeed_and_the_grant_dies() {
        let s = TestServer::start().await;
        let app = client_with_grace(&s, "app", 30).await;
        // One first use, one grace use; the third, whenever it is looked at, finds the grace
        // use spent (or loses it to the other) and is a reuse.
        for round in 0..10 {
            let g = s.grant_for(&app, &format!("user{round}"), None).await;
            let rt0 = field(&g, "refresh_token");
            let results = race(&s, &app, &rt0, 3).await;
            let winners: Vec<&Value> =
                results.iter().filter(|(st, _)| *st == 200).map(|(_, b)| b).collect();
            assert_eq!(winners.len(), 2, "round {round}: {results:?}");
            for (status, body) in results.iter().filter(|(st, _)| *st != 200) {
                assert_eq!(*status, 400, "round {round}: {body}");
                assert_eq!(body["error"], "invalid_grant", "round {round}: {body}");
            }
            let mut grant = vec![field(&g, "access_token"), rt0.clone()];
            for w in &winners {
                grant.push(field(w, "access_token"));
                grant.push(field(w, "refresh_token"));
            }
            assert_ne!(grant[3], grant[5], "round {round}: distinct refresh tokens");
            let grant: Vec<&str> = grant.iter().map(String::as_str).collect();
            assert_all_inactive(&s, &grant).await;
        }
    }
}

// ---- the exact expiry of a refresh token ---------------------------------------------------

backend_test! {
    async fn a_refresh_token_is_refused_at_exactly_its_expiry_and_presenting_it_revokes_nothing() {
        use latch_core::clock::Clock as _;
        let s = TestServer::start().await;
        let app = s
            .create_client(
                "default",
                json!({
                    "client_id": "app",
                    "client_secret": "app-secret",
                    "grant_types": ["refresh_token"],
                    "scope": "read",
                    "refresh_token_ttl": 100,
                }),
            )
            .await;
        let early = s.grant_for(&app, "alice", None).await;
        let g = s.grant_for(&app, "bob", None).await;
        let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));
        let issued = s.clock.now();
        let exp = s.introspect(&rt).await["exp"].as_i64().unwrap();
        assert_eq!(exp, issued + 100);

        // One second before: still exchanged.
        s.advance(exp - 1 - s.clock.now());
        refresh_ok(&s, &app, &field(&early, "refresh_token")).await;
        // now == expires_at: refused, as expired, not as a reuse.
        s.advance(1);
        assert_eq!(s.clock.now(), exp);
        // Presented twice, it is refused as expired both times, never taken for a reuse (which
        // says "already used" and revokes the grant).
        for _ in 0..2 {
            let resp = s.refresh(Auth::Basic(&app), &rt).await;
            let body = assert_error(resp, 400, "invalid_grant").await;
            assert!(
                !body["error_description"].as_str().unwrap().contains("already used"),
                "{body}"
            );
        }
        assert!(!s.is_active(&rt).await);
        // Its access token ended with it (an access token never outlives its refresh token).
        assert!(!s.is_active(&at).await);
    }
}

// ---- a client's secret rotated --------------------------------------------------------------

backend_test! {
    async fn a_refresh_with_a_secret_rotated_away_is_401_invalid_client_and_mints_nothing() {
        let s = TestServer::start().await;
        let old = s.confidential("app", "read").await;
        let g = s.grant_for(&old, "alice", None).await;
        // Used once with each method before the rotation, so the node's verification cache
        // knows the old secret.
        let r1 = refresh_ok(&s, &old, &field(&g, "refresh_token")).await;
        let resp = s.refresh(Auth::Post(&old), &field(&r1, "refresh_token")).await;
        assert_eq!(resp.status(), 200);
        let r2: Value = resp.json().await.unwrap();
        let (at, rt) = (field(&r2, "access_token"), field(&r2, "refresh_token"));

        let resp = s
            .admin(
                reqwest::Method::POST,
                "/tenants/default/clients/app/secret",
                Some(json!({ "client_secret": "new-secret" })),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let new = TestClient { id: "app".into(), secret: Some("new-secret".into()) };
        let tokens = s.db.query_i64("SELECT count(*) FROM tokens").await;

        // Basic: 401 with the Basic challenge (RFC 6749 §5.2).
        let resp = s.refresh(Auth::Basic(&old), &rt).await;
        assert_eq!(resp.status(), 401, "the old secret is refused");
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(
            challenge.as_deref().is_some_and(|c| c.starts_with("Basic")),
            "{challenge:?}"
        );
        assert_error(resp, 401, "invalid_client").await;
        // client_secret_post: 401, no challenge.
        let resp = s.refresh(Auth::Post(&old), &rt).await;
        assert!(resp.headers().get("www-authenticate").is_none());
        assert_error(resp, 401, "invalid_client").await;

        // Nothing minted, nothing consumed, nothing revoked.
        assert_eq!(s.db.query_i64("SELECT count(*) FROM tokens").await, tokens);
        assert_all_active(&s, &[&at, &rt]).await;
        // The refresh token was not rotated (a second use would be a reuse): it is exchanged
        // with the new secret, and the grant goes on.
        let r3 = refresh_ok(&s, &new, &rt).await;
        assert_all_active(&s, &[&field(&r3, "access_token"), &field(&r3, "refresh_token")]).await;
        refresh_ok(&s, &new, &field(&r3, "refresh_token")).await;
    }
}

/// PostgreSQL only: another node's change of the client's secret, committed after the refresh
/// authenticated with the old one and before its write, makes the exchange claim nothing
/// (`RotationOutcome::ClientChanged`): 401 `invalid_client` with the Basic challenge, nothing
/// minted, the refresh token unconsumed. (Over HTTP alone nothing holds a refresh between its
/// authentication and its write for a test to put the admin API's rotation there: both are
/// writes of the node's one committer, or of SQLite's one writer; hence the other node.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_secret_changed_before_a_refreshs_write_is_401_and_mints_nothing() {
    let db = common::TestDb::fresh_on(common::Backend::Postgres).await;
    let s = TestServer::start_on(db).await;
    let app = s.confidential("app", "read").await;
    let g = s.grant_for(&app, "alice", None).await;
    let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));
    let tokens = s.db.query_i64("SELECT count(*) FROM tokens").await;

    // The other node's new secret, uncommitted: the refresh authenticates with the old one,
    // and its write waits for the client's row.
    let other = common::OtherNode::begin(
        &s.db,
        "UPDATE clients SET secret_hash = 'changed' \
         WHERE tenant_id = 'default' AND client_id = 'app'",
    )
    .await;
    let refreshing = tokio::spawn({
        let (http, base, app, rt) = (s.http.clone(), s.base.clone(), app.clone(), rt.clone());
        async move {
            common::post_form_at(
                &http,
                &base,
                "/oauth2/token",
                Auth::Basic(&app),
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            )
            .await
        }
    });
    other.until_waited_on(&s.db, "FOR SHARE", &refreshing).await;
    other.commit().await;
    let resp = refreshing.await.unwrap();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert!(
        challenge.as_deref().is_some_and(|c| c.starts_with("Basic")),
        "{challenge:?}"
    );

    assert_eq!(
        s.db.query_i64("SELECT count(*) FROM tokens").await,
        tokens,
        "nothing minted"
    );
    assert_all_active(&s, &[&at, &rt]).await;
    // Given a secret again through the admin API, the client exchanges the same refresh
    // token: the refused request consumed nothing.
    let resp = s
        .admin(
            reqwest::Method::POST,
            "/tenants/default/clients/app/secret",
            Some(json!({ "client_secret": "new-secret" })),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let new = TestClient {
        id: "app".into(),
        secret: Some("new-secret".into()),
    };
    let r1 = refresh_ok(&s, &new, &rt).await;
    assert_all_active(&s, &[&field(&r1, "refresh_token")]).await;
}
