//! The admin API under `/admin/v1`: the bearer token, client management (never showing a
//! secret), secret rotation, client removal, grants issued for a subject, and revocation by
//! grant or by subject.

#[macro_use]
mod common;

use common::{assert_error, Auth, Process, TestClient, TestServer, ADMIN_TOKEN};
use reqwest::{Method, Response};
use serde_json::{json, Value};

/// `latch serve` with its data in `data` and the admin API on, with `extra` arguments; its
/// logs in `dir`.
fn serve_with_admin(dir: &std::path::Path, data: &std::path::Path, extra: &[&str]) -> Process {
    let mut args = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--admin-token",
        ADMIN_TOKEN,
    ];
    args.extend_from_slice(extra);
    Process::serve(dir, &args, &[])
}

/// A request to the admin API with exactly the given `Authorization` header (or none).
async fn admin_as(
    s: &TestServer,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut req = s.http.request(method, s.url(&format!("/admin/v1{path}")));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("admin request")
}

/// POSTs a raw body to the admin API with the admin token and the given content type.
async fn admin_raw(s: &TestServer, path: &str, content_type: Option<&str>, body: &str) -> Response {
    let mut req = s
        .http
        .post(s.url(&format!("/admin/v1{path}")))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(body.to_owned())
        .send()
        .await
        .expect("admin request")
}

/// The body of a response as text, after checking its status.
async fn text_of(resp: Response, status: u16) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    resp.text().await.unwrap()
}

/// A `client_credentials` request; returns the raw response.
async fn token_request(s: &TestServer, auth: Auth<'_>) -> Response {
    s.post_form(
        "/oauth2/token",
        auth,
        &[("grant_type", "client_credentials")],
    )
    .await
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// A subject's live grants, as the admin API lists them; also checks no token leaks.
async fn live_grants(s: &TestServer, subject: &str) -> Vec<Value> {
    let resp = s
        .admin(
            Method::GET,
            &format!("/tenants/default/subjects/{subject}/grants"),
            None,
        )
        .await;
    let text = text_of(resp, 200).await;
    assert!(
        !text.contains("latch_at_") && !text.contains("latch_rt_"),
        "a grant listing shows token values: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["subject"], subject);
    body["grants"].as_array().expect("grants array").clone()
}

/// One page of an admin listing at `path`: the `id` of each item of its `list`, and its
/// `cursor` for the next page.
async fn listed(
    s: &TestServer,
    path: String,
    list: &str,
    id: &str,
    cursor: &str,
) -> (Vec<String>, Option<String>) {
    let body: Value = s
        .admin(Method::GET, &path, None)
        .await
        .json()
        .await
        .unwrap();
    let ids = body[list]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|item| str_of(item, id).to_owned())
        .collect();
    (ids, body[cursor].as_str().map(str::to_owned))
}

/// Each query on the admin listing at `path` is refused with `400 invalid_request`, saying
/// why.
async fn refused_queries(s: &TestServer, path: &str, queries: &[(&str, &str)]) {
    for (query, why) in queries {
        let resp = s.admin(Method::GET, &format!("{path}{query}"), None).await;
        let body = assert_error(resp, 400, "invalid_request").await;
        assert_eq!(body["error_description"], *why, "{query}");
    }
}

fn grant_ids(grants: &[Value]) -> Vec<&str> {
    let mut ids: Vec<&str> = grants.iter().map(|g| str_of(g, "grant_id")).collect();
    ids.sort_unstable();
    ids
}

backend_test! {
    async fn the_admin_api_needs_the_admin_bearer_token() {
        let s = TestServer::start().await;
        let routes: [(Method, &str, Option<Value>); 5] = [
            (Method::GET, "/tenants/default/clients", None),
            (
                Method::POST,
                "/tenants/default/clients",
                Some(json!({ "client_id": "sneaky", "client_secret": "x" })),
            ),
            (Method::GET, "/tenants", None),
            (
                Method::POST,
                "/tenants/default/grants",
                Some(json!({ "client_id": "introspector", "subject": "alice" })),
            ),
            (Method::DELETE, "/tenants/default/subjects/alice/grants", None),
        ];
        let wrong_bearer = "Bearer not-the-admin-token".to_owned();
        let prefix_bearer = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
        let basic = common::basic_header("admin", ADMIN_TOKEN);
        let bare = ADMIN_TOKEN.to_owned();
        for (method, path, body) in routes {
            // RFC 6750 §3: the challenge names the error only for a wrong bearer token (the
            // client sends `Bearer ` without its trailing space: no token at all).
            let (none, wrong) = (
                "Bearer realm=\"latch-admin\"",
                "Bearer realm=\"latch-admin\", error=\"invalid_token\"",
            );
            for (authorization, expected) in [
                (None, none),
                (Some("Bearer"), none),
                (Some("Bearer "), none),
                (Some(wrong_bearer.as_str()), wrong),
                (Some(prefix_bearer.as_str()), wrong),
                (Some(basic.as_str()), none),
                (Some(bare.as_str()), none),
            ] {
                let resp = admin_as(&s, method.clone(), path, authorization, body.clone()).await;
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                assert_eq!(
                    challenge, expected,
                    "{method} {path} with {authorization:?}"
                );
                assert_error(resp, 401, "invalid_token").await;
            }
        }

        // Nothing happened behind the 401s.
        let list = s
            .admin(Method::GET, "/tenants/default/clients", None)
            .await;
        let text = text_of(list, 200).await;
        assert!(!text.contains("sneaky"), "{text}");

        // The right token, with the scheme in any case, works.
        let resp = admin_as(
            &s,
            Method::GET,
            "/tenants/default/clients",
            Some(&format!("bearer {ADMIN_TOKEN}")),
            None,
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
}

backend_test! {
    async fn wrong_admin_tokens_are_limited_per_address_apart_from_client_secrets() {
        let s = TestServer::start_with(|settings| {
            settings.auth_limits = latch_http::AuthLimits {
                per_client: 10,
                per_address: 3,
                window: 60,
            }
        })
        .await;
        let svc = s.confidential("svc", "read").await;
        let grant = [("grant_type", "client_credentials")];
        for _ in 0..3 {
            let resp = admin_as(&s, Method::GET, "/tenants", Some("Bearer guess"), None).await;
            assert_error(resp, 401, "invalid_token").await;
        }
        // Blocked before the token is checked, the right one too: a guesser learns nothing
        // more from this address until the window ends.
        let resp = admin_as(&s, Method::GET, "/tenants", Some("Bearer guess"), None).await;
        let wait: u32 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        assert_error(resp, 429, "too_many_requests").await;
        let resp = s.admin(Method::GET, "/tenants", None).await;
        assert_error(resp, 429, "too_many_requests").await;
        // In a budget of their own: clients authenticating from the same address (a load
        // balancer's, say) are not locked out by them, nor the other way round.
        let resp = s.post_form("/oauth2/token", Auth::Basic(&svc), &grant).await;
        assert_eq!(resp.status(), 200);
        s.advance(60);
        assert_eq!(s.admin(Method::GET, "/tenants", None).await.status(), 200);
        let wrong = TestClient {
            secret: Some("wrong".into()),
            ..svc.clone()
        };
        for _ in 0..3 {
            let resp = s.post_form("/oauth2/token", Auth::Basic(&wrong), &grant).await;
            assert_error(resp, 401, "invalid_client").await;
        }
        let resp = s.post_form("/oauth2/token", Auth::Basic(&svc), &grant).await;
        assert_error(resp, 429, "too_many_requests").await;
        assert_eq!(s.admin(Method::GET, "/tenants", None).await.status(), 200);
    }
}

/// Wrong admin tokens are logged at most 10 a second (the rest counted in the next line's
/// `left_out`): past the per-address limit, an attacker with many addresses logged one line
/// per guess. Here the 50 guesses one address is allowed, sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_logged_within_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = serve_with_admin(dir.path(), data.path(), &[]);
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let guesses = (0..50).map(|i| {
        let req = http.get(format!("{}/admin/v1/tenants", p.base));
        async move { req.bearer_auth(format!("guess-{i}")).send().await.unwrap() }
    });
    for resp in futures_util::future::join_all(guesses).await {
        assert_error(resp, 401, "invalid_token").await;
    }
    // Each second the guesses spanned logs 10 lines at most.
    let seconds = started.elapsed().as_secs() + 2;
    let logs = p.stderr_path.clone();
    assert!(p.terminate().success());
    let logs = std::fs::read_to_string(logs).unwrap();
    let lines = logs.matches("admin authentication failed").count() as u64;
    assert!(lines >= 1, "{logs}");
    assert!(
        lines <= 10 * seconds,
        "{lines} lines in {seconds} s: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_an_admin_token_has_no_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = Process::serve(
        dir.path(),
        &["--data-dir", data.path().to_str().unwrap()],
        &[],
    );
    let http = reqwest::Client::new();
    for (method, path) in [
        (Method::GET, "/admin/v1/tenants/default/clients"),
        (Method::POST, "/admin/v1/tenants/default/clients"),
        (Method::GET, "/admin/v1/tenants"),
        (
            Method::DELETE,
            "/admin/v1/tenants/default/subjects/alice/grants",
        ),
    ] {
        for token in [Some(ADMIN_TOKEN), Some(""), None] {
            let mut req = http.request(method.clone(), format!("{}{path}", p.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if method == Method::POST {
                req = req.json(&json!({ "client_id": "x", "client_secret": "y" }));
            }
            let resp = req.send().await.unwrap();
            assert_error(resp, 404, "not_found").await;
        }
    }
    // The server itself is up.
    let resp = http
        .get(format!("{}/healthz", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

backend_test! {
    async fn creating_clients_shows_a_generated_secret_once_and_never_again() {
        let s = TestServer::start().await;

        // A confidential client without a secret: one is generated and shown once.
        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients",
                Some(json!({
                    "client_id": "gen",
                    "grant_types": ["client_credentials"],
                    "scope": "read write",
                })),
            )
            .await;
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let created: Value = resp.json().await.unwrap();
        assert_eq!(created["client_id"], "gen");
        assert_eq!(created["tenant"], "default");
        assert_eq!(created["token_endpoint_auth_method"], "client_secret_basic");
        assert_eq!(created["grant_types"], json!(["client_credentials"]));
        assert_eq!(created["scope"], "read write");
        let generated = str_of(&created, "client_secret").to_owned();
        assert!(generated.len() >= 32, "a weak generated secret: {generated:?}");
        assert!(!created.to_string().contains("argon2"), "{created}");

        // The generated secret works at the token endpoint, with both auth methods' shapes.
        let gen = TestClient {
            id: "gen".into(),
            secret: Some(generated.clone()),
        };
        let tok = token_request(&s, Auth::Basic(&gen)).await;
        assert_eq!(tok.status(), 200);
        let tok: Value = tok.json().await.unwrap();
        assert!(s.is_active(str_of(&tok, "access_token")).await);

        // A confidential client with its own secret: the secret is not echoed.
        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients",
                Some(json!({
                    "client_id": "chosen",
                    "client_secret": "chosen-secret-value",
                    "grant_types": ["client_credentials", "refresh_token"],
                    "scope": "read",
                })),
            )
            .await;
        let text = text_of(resp, 201).await;
        assert!(!text.contains("chosen-secret-value"), "{text}");
        assert!(!text.contains("argon2"), "{text}");
        let chosen: Value = serde_json::from_str(&text).unwrap();
        assert!(chosen.get("client_secret").is_none(), "{chosen}");

        // A public client: no secret at all.
        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients",
                Some(json!({
                    "client_id": "spa",
                    "token_endpoint_auth_method": "none",
                    "grant_types": ["refresh_token"],
                    "scope": "read",
                })),
            )
            .await;
        let spa: Value = serde_json::from_str(&text_of(resp, 201).await).unwrap();
        assert_eq!(spa["token_endpoint_auth_method"], "none");
        assert!(spa.get("client_secret").is_none(), "{spa}");

        // Reading clients back never shows a secret or its hash.
        let secrets = [
            generated.as_str(),
            "chosen-secret-value",
            "introspector-secret",
            "argon2",
            "client_secret\"",
            "$argon",
        ];
        let list = text_of(
            s.admin(Method::GET, "/tenants/default/clients", None).await,
            200,
        )
        .await;
        for needle in secrets {
            assert!(!list.contains(needle), "list shows {needle:?}: {list}");
        }
        let list: Value = serde_json::from_str(&list).unwrap();
        let mut ids: Vec<&str> = list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| str_of(c, "client_id"))
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["chosen", "gen", "introspector", "spa"]);

        for id in ["gen", "chosen", "spa", "introspector"] {
            let one = text_of(
                s.admin(Method::GET, &format!("/tenants/default/clients/{id}"), None)
                    .await,
                200,
            )
            .await;
            for needle in secrets {
                assert!(!one.contains(needle), "GET {id} shows {needle:?}: {one}");
            }
            let one: Value = serde_json::from_str(&one).unwrap();
            assert_eq!(one["client_id"], id);
        }
        let missing = s
            .admin(Method::GET, "/tenants/default/clients/nobody", None)
            .await;
        assert_error(missing, 404, "not_found").await;
    }
}

backend_test! {
    async fn invalid_client_registrations_are_rejected_with_json_errors() {
        let s = TestServer::start().await;
        s.confidential("taken", "read").await;

        // Duplicate id.
        let dup = s
            .admin(
                Method::POST,
                "/tenants/default/clients",
                Some(json!({ "client_id": "taken", "client_secret": "other" })),
            )
            .await;
        assert_error(dup, 409, "conflict").await;
        // The original keeps its secret.
        let taken = TestClient {
            id: "taken".into(),
            secret: Some("taken-secret".into()),
        };
        assert_eq!(token_request(&s, Auth::Basic(&taken)).await.status(), 200);

        let bad_bodies = [
            (
                "unknown grant type",
                json!({ "client_id": "a1", "grant_types": ["password"] }),
            ),
            (
                "unknown grant type among known ones",
                json!({ "client_id": "a2", "grant_types": ["client_credentials", "implicit"] }),
            ),
            (
                "unknown field",
                json!({ "client_id": "a3", "client_secret": "s", "is_admin": true }),
            ),
            (
                "public client with a secret",
                json!({
                    "client_id": "a4",
                    "token_endpoint_auth_method": "none",
                    "client_secret": "s",
                    "grant_types": ["refresh_token"],
                }),
            ),
            (
                "unknown auth method",
                json!({ "client_id": "a5", "token_endpoint_auth_method": "private_key_jwt" }),
            ),
            ("missing client_id", json!({ "client_secret": "s" })),
            (
                "wrong type",
                json!({ "client_id": "a6", "grant_types": "client_credentials" }),
            ),
        ];
        for (what, body) in bad_bodies {
            let resp = s
                .admin(Method::POST, "/tenants/default/clients", Some(body))
                .await;
            assert_eq!(resp.status(), 400, "{what}");
            assert_error(resp, 400, "invalid_request").await;
        }

        // Malformed JSON, and a wrong or missing content type.
        let raw = [
            ("malformed JSON", Some("application/json"), r#"{"client_id": "a7","#),
            ("empty body", Some("application/json"), ""),
            (
                "form content type",
                Some("application/x-www-form-urlencoded"),
                r#"{"client_id":"a8","client_secret":"s"}"#,
            ),
            (
                "text content type",
                Some("text/plain"),
                r#"{"client_id":"a9","client_secret":"s"}"#,
            ),
            (
                "no content type",
                None,
                r#"{"client_id":"a10","client_secret":"s"}"#,
            ),
        ];
        for (what, ct, body) in raw {
            let resp = admin_raw(&s, "/tenants/default/clients", ct, body).await;
            assert_eq!(resp.status(), 400, "{what}");
            assert_error(resp, 400, "invalid_request").await;
        }

        // Unknown tenant.
        let resp = s
            .admin(
                Method::POST,
                "/tenants/nowhere/clients",
                Some(json!({ "client_id": "lost", "client_secret": "s" })),
            )
            .await;
        assert_error(resp, 404, "not_found").await;
        let resp = s.admin(Method::GET, "/tenants/nowhere/clients", None).await;
        assert_error(resp, 404, "not_found").await;

        // None of the rejected clients exists.
        let list: Value = s
            .admin(Method::GET, "/tenants/default/clients", None)
            .await
            .json()
            .await
            .unwrap();
        let mut ids: Vec<&str> = list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| str_of(c, "client_id"))
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["introspector", "taken"]);
    }
}

backend_test! {
    async fn rotating_a_secret_stops_the_old_one_at_once() {
        let s = TestServer::start().await;
        let old = s.confidential("svc", "read").await;
        // Used once, so the verification cache knows it.
        assert_eq!(token_request(&s, Auth::Basic(&old)).await.status(), 200);
        assert_eq!(token_request(&s, Auth::Post(&old)).await.status(), 200);

        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients/svc/secret",
                Some(json!({})),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["client_id"], "svc");
        let new = TestClient {
            id: "svc".into(),
            secret: Some(str_of(&body, "client_secret").to_owned()),
        };
        assert_ne!(new.secret, old.secret);

        assert_error(token_request(&s, Auth::Basic(&old)).await, 401, "invalid_client").await;
        assert_error(token_request(&s, Auth::Post(&old)).await, 401, "invalid_client").await;
        assert_eq!(token_request(&s, Auth::Basic(&new)).await.status(), 200);
        assert_eq!(token_request(&s, Auth::Post(&new)).await.status(), 200);

        // A chosen secret replaces the generated one the same way.
        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients/svc/secret",
                Some(json!({ "client_secret": "third-secret" })),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        // Not sent back: the caller has it.
        assert_eq!(body, json!({ "client_id": "svc", "rotated": true }));
        let third = TestClient {
            id: "svc".into(),
            secret: Some("third-secret".into()),
        };
        assert_error(token_request(&s, Auth::Basic(&new)).await, 401, "invalid_client").await;
        assert_error(token_request(&s, Auth::Basic(&old)).await, 401, "invalid_client").await;
        assert_eq!(token_request(&s, Auth::Basic(&third)).await.status(), 200);

        // The old secrets no longer work at the other endpoints either.
        let at = s.client_credentials(&third).await;
        let at = str_of(&at, "access_token");
        assert_error(s.revoke(Auth::Basic(&old), at).await, 401, "invalid_client").await;
        assert!(s.is_active(at).await);

        // Errors: unknown client, public client, unknown field.
        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients/nobody/secret",
                Some(json!({})),
            )
            .await;
        assert_error(resp, 404, "not_found").await;
        s.public("spa", "read").await;
        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients/spa/secret",
                Some(json!({})),
            )
            .await;
        assert_error(resp, 400, "invalid_request").await;
        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/clients/svc/secret",
                Some(json!({ "secret": "x" })),
            )
            .await;
        assert_error(resp, 400, "invalid_request").await;
        assert_eq!(token_request(&s, Auth::Basic(&third)).await.status(), 200);
    }
}

backend_test! {
    async fn deleting_a_client_revokes_its_grants_and_its_credentials() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let other = s.confidential("other", "read").await;
        let cc = s.client_credentials(&svc).await;
        let g = s.grant_for(&svc, "alice", None).await;
        let kept = s.grant_for(&other, "alice", None).await;
        let tokens = [
            str_of(&cc, "access_token"),
            str_of(&g, "access_token"),
            str_of(&g, "refresh_token"),
        ];
        for t in tokens {
            assert!(s.is_active(t).await);
        }

        let resp = s
            .admin(Method::DELETE, "/tenants/default/clients/svc", None)
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["client_id"], "svc");
        assert_eq!(body["deleted"], true);
        // The client-credentials token's grant and alice's.
        assert_eq!(body["revoked_grants"], 2, "revoked_grants in {body}");

        for t in tokens {
            assert_eq!(s.introspect(t).await, json!({ "active": false }), "{t}");
        }
        let resp = s
            .admin(Method::GET, "/tenants/default/clients/svc", None)
            .await;
        assert_error(resp, 404, "not_found").await;
        assert_error(token_request(&s, Auth::Basic(&svc)).await, 401, "invalid_client").await;
        assert_error(token_request(&s, Auth::Post(&svc)).await, 401, "invalid_client").await;
        assert_error(
            s.refresh(Auth::Basic(&svc), str_of(&g, "refresh_token")).await,
            401,
            "invalid_client",
        )
        .await;

        // The other client's grant for the same subject is untouched.
        assert!(s.is_active(str_of(&kept, "access_token")).await);
        assert!(s.is_active(str_of(&kept, "refresh_token")).await);
        assert_eq!(grant_ids(&live_grants(&s, "alice").await), [str_of(&kept, "grant_id")]);

        // Deleting again: 404.
        let resp = s
            .admin(Method::DELETE, "/tenants/default/clients/svc", None)
            .await;
        assert_error(resp, 404, "not_found").await;
        let resp = s
            .admin(Method::DELETE, "/tenants/nowhere/clients/other", None)
            .await;
        assert_error(resp, 404, "not_found").await;
    }
}

backend_test! {
    async fn recreating_a_deleted_client_does_not_revive_its_tokens() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let cc = s.client_credentials(&svc).await;
        let g = s.grant_for(&svc, "alice", None).await;
        let old = [
            str_of(&cc, "access_token").to_owned(),
            str_of(&g, "access_token").to_owned(),
            str_of(&g, "refresh_token").to_owned(),
        ];
        let resp = s
            .admin(Method::DELETE, "/tenants/default/clients/svc", None)
            .await;
        assert_eq!(resp.status(), 200);

        // Same id, same secret, same grant types.
        let again = s.confidential("svc", "read").await;
        for t in &old {
            assert_eq!(s.introspect(t).await, json!({ "active": false }), "{t} revived");
        }
        assert_error(
            s.refresh(Auth::Basic(&again), &old[2]).await,
            400,
            "invalid_grant",
        )
        .await;
        assert!(live_grants(&s, "alice").await.is_empty());

        // The new client works, with new tokens.
        let fresh = s.client_credentials(&again).await;
        assert!(s.is_active(str_of(&fresh, "access_token")).await);
        for t in &old {
            assert!(!s.is_active(t).await, "{t} revived");
        }
    }
}

backend_test! {
    async fn issuing_a_grant_for_a_subject_returns_tokens_and_its_grant_id() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read write").await;

        let resp = s
            .admin(
                Method::POST,
                "/tenants/default/grants",
                Some(json!({ "client_id": "svc", "subject": "alice", "scope": "read" })),
            )
            .await;
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let g: Value = resp.json().await.unwrap();
        assert!(str_of(&g, "grant_id").starts_with("g_"), "{g}");
        assert!(str_of(&g, "access_token").starts_with("latch_at_"), "{g}");
        assert!(str_of(&g, "refresh_token").starts_with("latch_rt_"), "{g}");
        assert_eq!(g["token_type"], "Bearer");
        assert_eq!(g["expires_in"], 3600);
        assert_eq!(g["scope"], "read");

        let info = s.introspect(str_of(&g, "access_token")).await;
        assert_eq!(info["active"], true);
        assert_eq!(info["sub"], "alice");
        assert_eq!(info["client_id"], "svc");
        assert_eq!(info["scope"], "read");

        // Without a scope: the client's whole scope.
        let all = s.grant_for(&svc, "bob", None).await;
        let mut scope: Vec<&str> = str_of(&all, "scope").split(' ').collect();
        scope.sort_unstable();
        assert_eq!(scope, ["read", "write"]);
        assert_ne!(all["grant_id"], g["grant_id"]);

        // The refresh token works at the token endpoint.
        let resp = s
            .refresh(Auth::Basic(&svc), str_of(&g, "refresh_token"))
            .await;
        assert_eq!(resp.status(), 200);
        let refreshed: Value = resp.json().await.unwrap();
        assert!(s.is_active(str_of(&refreshed, "access_token")).await);
    }
}

backend_test! {
    async fn grant_issuance_errors() {
        let s = TestServer::start().await;
        s.confidential("svc", "read").await;

        let post = |body: Value| {
            let s = &s;
            async move {
                s.admin(Method::POST, "/tenants/default/grants", Some(body))
                    .await
            }
        };
        // Wider than the client's scope.
        assert_error(
            post(json!({ "client_id": "svc", "subject": "alice", "scope": "read admin" })).await,
            400,
            "invalid_scope",
        )
        .await;
        assert_error(
            post(json!({ "client_id": "svc", "subject": "alice", "scope": "admin" })).await,
            400,
            "invalid_scope",
        )
        .await;
        // A scope naming no token is malformed, not a request for an empty scope.
        assert_error(
            post(json!({ "client_id": "svc", "subject": "alice", "scope": "  " })).await,
            400,
            "invalid_scope",
        )
        .await;
        // Unknown client, unknown tenant.
        assert_error(
            post(json!({ "client_id": "ghost", "subject": "alice" })).await,
            404,
            "not_found",
        )
        .await;
        let resp = s
            .admin(
                Method::POST,
                "/tenants/nowhere/grants",
                Some(json!({ "client_id": "svc", "subject": "alice" })),
            )
            .await;
        assert_error(resp, 404, "not_found").await;
        // Shape errors; a subject of dots alone, which no URL path of the admin API can name.
        for body in [
            json!({ "client_id": "svc" }),
            json!({ "subject": "alice" }),
            json!({ "client_id": "svc", "subject": "alice", "ttl": 5 }),
            json!({ "client_id": "svc", "subject": ".." }),
        ] {
            assert_error(post(body).await, 400, "invalid_request").await;
        }
        // Nor a client so named: `DELETE …/clients/./grants` would reach `…/clients/grants`.
        for id in [".", ".."] {
            let client = Some(json!({ "client_id": id, "scope": "read" }));
            let resp = s.admin(Method::POST, "/tenants/default/clients", client).await;
            let body = assert_error(resp, 400, "invalid_request").await;
            assert_eq!(body["error_description"], "client_id is dots alone, which a URL path cannot name");
        }
        let resp = admin_raw(&s, "/tenants/default/grants", Some("application/json"), "{").await;
        assert_error(resp, 400, "invalid_request").await;

        // Nothing was issued.
        assert!(live_grants(&s, "alice").await.is_empty());
    }
}

backend_test! {
    async fn a_client_without_the_refresh_grant_gets_no_refresh_token() {
        let s = TestServer::start().await;
        let cc_only = s
            .create_client(
                "default",
                json!({
                    "client_id": "cc-only",
                    "client_secret": "cc-only-secret",
                    "grant_types": ["client_credentials"],
                    "scope": "read",
                }),
            )
            .await;
        let g = s.grant_for(&cc_only, "alice", None).await;
        assert!(g.get("refresh_token").is_none(), "{g}");
        assert!(g["grant_id"].is_string(), "{g}");
        assert!(s.is_active(str_of(&g, "access_token")).await);
    }
}

backend_test! {
    async fn a_subjects_grants_are_listed_without_tokens_and_revoked_ones_vanish() {
        let s = TestServer::start().await;
        let a = s.confidential("app-a", "read").await;
        let b = s.confidential("app-b", "read").await;
        assert!(live_grants(&s, "alice").await.is_empty());

        let g1 = s.grant_for(&a, "alice", None).await;
        let g2 = s.grant_for(&b, "alice", None).await;
        let g3 = s.grant_for(&a, "alice", None).await;
        let other = s.grant_for(&a, "bob", None).await;

        let listed = live_grants(&s, "alice").await;
        let mut expected = vec![
            str_of(&g1, "grant_id"),
            str_of(&g2, "grant_id"),
            str_of(&g3, "grant_id"),
        ];
        expected.sort_unstable();
        assert_eq!(grant_ids(&listed), expected);
        for g in &listed {
            assert_eq!(g["subject"], "alice");
            assert_eq!(g["scope"], "read");
            assert!(g["client_id"] == "app-a" || g["client_id"] == "app-b", "{g}");
            assert!(g["created_at"].is_i64() && g["expires_at"].is_i64(), "{g}");
        }
        assert_eq!(grant_ids(&live_grants(&s, "bob").await), [str_of(&other, "grant_id")]);

        // Revoked through RFC 7009: gone from the list.
        assert_eq!(
            s.revoke(Auth::Basic(&b), str_of(&g2, "refresh_token"))
                .await
                .status(),
            200
        );
        let mut expected = vec![str_of(&g1, "grant_id"), str_of(&g3, "grant_id")];
        expected.sort_unstable();
        assert_eq!(grant_ids(&live_grants(&s, "alice").await), expected);

        // Revoked through the admin API: gone too.
        let resp = s
            .admin(
                Method::DELETE,
                &format!("/tenants/default/grants/{}", str_of(&g1, "grant_id")),
                None,
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(grant_ids(&live_grants(&s, "alice").await), [str_of(&g3, "grant_id")]);

        // Refreshing keeps the grant listed once.
        let resp = s.refresh(Auth::Basic(&a), str_of(&g3, "refresh_token")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(grant_ids(&live_grants(&s, "alice").await), [str_of(&g3, "grant_id")]);

        // An unknown tenant.
        let resp = s
            .admin(Method::GET, "/tenants/nowhere/subjects/alice/grants", None)
            .await;
        assert_error(resp, 404, "not_found").await;
    }
}

backend_test! {
    async fn logging_out_everywhere_revokes_every_grant_of_the_subject_and_nothing_else() {
        let s = TestServer::start().await;
        let a = s.confidential("app-a", "read").await;
        let b = s.confidential("app-b", "read").await;
        let alice_a = s.grant_for(&a, "alice", None).await;
        let alice_b = s.grant_for(&b, "alice", None).await;
        // A rotated pair in one of alice's grants.
        let rotated: Value = s
            .refresh(Auth::Basic(&a), str_of(&alice_a, "refresh_token"))
            .await
            .json()
            .await
            .unwrap();
        let bob_a = s.grant_for(&a, "bob", None).await;
        let bob_b = s.grant_for(&b, "bob", None).await;
        let svc_token = s.client_credentials(&a).await;

        let resp = s
            .admin(Method::DELETE, "/tenants/default/subjects/alice/grants", None)
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["subject"], "alice");
        assert_eq!(body["revoked_grants"], 2);

        for (what, t) in [
            ("alice@a access", str_of(&alice_a, "access_token")),
            ("alice@a refresh", str_of(&alice_a, "refresh_token")),
            ("alice@a rotated access", str_of(&rotated, "access_token")),
            ("alice@a rotated refresh", str_of(&rotated, "refresh_token")),
            ("alice@b access", str_of(&alice_b, "access_token")),
            ("alice@b refresh", str_of(&alice_b, "refresh_token")),
        ] {
            assert_eq!(s.introspect(t).await, json!({ "active": false }), "{what}");
        }
        assert_error(
            s.refresh(Auth::Basic(&b), str_of(&alice_b, "refresh_token")).await,
            400,
            "invalid_grant",
        )
        .await;
        for (what, t) in [
            ("bob@a access", str_of(&bob_a, "access_token")),
            ("bob@a refresh", str_of(&bob_a, "refresh_token")),
            ("bob@b access", str_of(&bob_b, "access_token")),
            ("bob@b refresh", str_of(&bob_b, "refresh_token")),
            ("client token", str_of(&svc_token, "access_token")),
        ] {
            assert!(s.is_active(t).await, "{what} was revoked too");
        }
        assert!(live_grants(&s, "alice").await.is_empty());
        assert_eq!(live_grants(&s, "bob").await.len(), 2);

        // Again: nothing left to revoke.
        let resp = s
            .admin(Method::DELETE, "/tenants/default/subjects/alice/grants", None)
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["revoked_grants"], 0);
        // A subject with no grants at all.
        let resp = s
            .admin(Method::DELETE, "/tenants/default/subjects/nobody/grants", None)
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["revoked_grants"], 0);

        // Alice can sign in again afterwards.
        let back = s.grant_for(&a, "alice", None).await;
        assert!(s.is_active(str_of(&back, "access_token")).await);
    }
}

backend_test! {
    async fn revoking_one_grant_leaves_the_subjects_other_grants_alive() {
        let s = TestServer::start().await;
        let a = s.confidential("app-a", "read").await;
        let g1 = s.grant_for(&a, "alice", None).await;
        let g2 = s.grant_for(&a, "alice", None).await;

        let path = format!("/tenants/default/grants/{}", str_of(&g1, "grant_id"));
        let resp = s.admin(Method::DELETE, &path, None).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["grant_id"], g1["grant_id"]);
        assert_eq!(body["revoked"], true);

        for t in ["access_token", "refresh_token"] {
            assert_eq!(
                s.introspect(str_of(&g1, t)).await,
                json!({ "active": false }),
                "{t}"
            );
            assert!(s.is_active(str_of(&g2, t)).await, "the other grant's {t}");
        }
        assert_eq!(grant_ids(&live_grants(&s, "alice").await), [str_of(&g2, "grant_id")]);

        // Revoking a dead grant again is fine and kills nothing.
        let resp = s.admin(Method::DELETE, &path, None).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["revoked"], false);
        assert!(s.is_active(str_of(&g2, "access_token")).await);

        // Unknown grants: 404.
        for id in ["g_AAAAAAAAAAAAAAAAAAAAAA", "no-such-grant"] {
            let resp = s
                .admin(Method::DELETE, &format!("/tenants/default/grants/{id}"), None)
                .await;
            assert_error(resp, 404, "not_found").await;
        }
        // A grant addressed through another tenant: 404, and it survives.
        let resp = s
            .admin(Method::POST, "/tenants", Some(json!({ "tenant_id": "acme" })))
            .await;
        assert_eq!(resp.status(), 201);
        let resp = s
            .admin(
                Method::DELETE,
                &format!("/tenants/acme/grants/{}", str_of(&g2, "grant_id")),
                None,
            )
            .await;
        assert_error(resp, 404, "not_found").await;
        assert!(s.is_active(str_of(&g2, "access_token")).await);
    }
}

/// A client created while its tenant is being removed (PostgreSQL: by another node, whose
/// removal holds the tenant's row) is a `404` naming the tenant once the removal commits,
/// not a `409` claiming the client id is taken.
#[tokio::test]
async fn postgres_a_client_created_as_its_tenant_goes_is_not_found() {
    let db = common::TestDb::fresh_on(common::Backend::Postgres).await;
    let s = TestServer::start_on(db).await;
    let resp = s
        .admin(Method::POST, "/tenants", Some(json!({ "tenant_id": "t" })))
        .await;
    assert_eq!(resp.status(), 201);
    let remover = common::OtherNode::begin(&s.db, "DELETE FROM tenants WHERE id = 't'").await;
    let creating = tokio::spawn({
        let (http, base) = (s.http.clone(), s.base.clone());
        async move {
            let body = json!({ "client_id": "late", "client_secret": "late-secret" });
            common::admin_at(&http, &base, Method::POST, "/tenants/t/clients", Some(body)).await
        }
    });
    // Until the client's INSERT waits for the removal's lock on the tenant's row.
    remover
        .until_waited_on(&s.db, "INSERT INTO clients", &creating)
        .await;
    remover.commit().await;
    assert_error(creating.await.unwrap(), 404, "not_found").await;
}

/// A grant issued for a subject while the client's secret is rotated (PostgreSQL: by another
/// node, committed between the issuance's read of the client and its write) is issued with the
/// client as it now is, not refused as a client that does not exist.
#[tokio::test]
async fn postgres_a_grant_issued_as_its_clients_secret_is_rotated_is_issued() {
    let db = common::TestDb::fresh_on(common::Backend::Postgres).await;
    let s = TestServer::start_on(db).await;
    s.confidential("svc", "read").await;
    // The other node holds the grants table until it commits its rotation: the issuance has
    // read the client as it was, and its write waits.
    let rotation = common::OtherNode::begin(
        &s.db,
        "LOCK TABLE grants IN SHARE MODE; \
         UPDATE clients SET secret_hash = 'rotated' WHERE client_id = 'svc'",
    )
    .await;
    let issuing = tokio::spawn({
        let (http, base) = (s.http.clone(), s.base.clone());
        async move {
            let body = json!({ "client_id": "svc", "subject": "alice" });
            common::admin_at(
                &http,
                &base,
                Method::POST,
                "/tenants/default/grants",
                Some(body),
            )
            .await
        }
    });
    rotation
        .until_waited_on(&s.db, "INSERT INTO grants", &issuing)
        .await;
    rotation.commit().await;
    let resp = issuing.await.unwrap();
    assert_eq!(resp.status(), 201);
    let issued: Value = resp.json().await.unwrap();
    assert!(
        s.is_active(str_of(&issued, "access_token")).await,
        "{issued}"
    );
}

backend_test! {
    async fn a_subjects_grants_are_listed_newest_first_a_page_at_a_time() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let mut issued = Vec::new();
        for _ in 0..5 {
            let g = s.grant_for(&svc, "alice", None).await;
            issued.push(str_of(&g, "grant_id").to_owned());
        }
        // Another subject's grant and a revoked one of alice's are never listed.
        s.grant_for(&svc, "bob", None).await;
        let revoked = s.grant_for(&svc, "alice", None).await;
        let path = format!("/tenants/default/grants/{}", str_of(&revoked, "grant_id"));
        assert_eq!(s.admin(Method::DELETE, &path, None).await.status(), 200);
        let newest_first: Vec<&str> = issued.iter().rev().map(String::as_str).collect();

        let page = |query: String| {
            let path = format!("/tenants/default/subjects/alice/grants{query}");
            listed(&s, path, "grants", "grant_id", "next_before")
        };
        // One page holds them all by default.
        let (all, next) = page(String::new()).await;
        assert_eq!(all, newest_first);
        assert_eq!(next, None);
        // Two at a time: each page goes on from the cursor of the one before.
        let (first, next) = page("?limit=2".into()).await;
        assert_eq!(first, newest_first[..2]);
        let (second, next) = page(format!("?limit=2&before={}", next.unwrap())).await;
        assert_eq!(second, newest_first[2..4]);
        let (last, next) = page(format!("?limit=2&before={}", next.unwrap())).await;
        assert_eq!(last, newest_first[4..]);
        assert_eq!(next, None, "a short page is the last");
        // A full last page still gives a cursor; the page after it is empty.
        let (_, next) = page(format!("?limit=1&before={}", newest_first[3])).await;
        let (empty, none) = page(format!("?limit=1&before={}", next.unwrap())).await;
        assert!(empty.is_empty());
        assert_eq!(none, None);

        let grants = "/tenants/default/subjects/alice/grants";
        refused_queries(&s, grants, &[
            ("?limit=0", "limit must be between 1 and 1000"),
            ("?limit=1001", "limit must be between 1 and 1000"),
            ("?limit=two", "limit must be a number, digits alone"),
            ("?limit=%2B5", "limit must be a number, digits alone"),
            ("?before=g_%00", "before must be a grant id"),
        ])
        .await;
        // Nor does a cursor of the audit trail take a sign: `after=-5` read as its start.
        refused_queries(&s, "/tenants/default/audit", &[
            ("?after=-5", "after must be a number, digits alone"),
            ("?since=-1", "since must be a number, digits alone"),
            ("?after=%2B5", "after must be a number, digits alone"),
        ])
        .await;
    }
}

backend_test! {
    /// The admin API's writes read no query, and a DELETE no body: a filter copied from a
    /// listing, or one a write does not know, is refused with nothing revoked, where it
    /// revoked everything as if it had narrowed it. Nor does a listing read a body, nor
    /// the clean-up. Authentication comes first, and a refused query is named by its
    /// parameters alone.
    async fn an_admin_write_with_a_query_or_a_delete_with_a_body_changes_nothing() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read").await;
        let other = s.confidential("other", "read").await;
        s.grant_for(&app, "alice", None).await;
        s.grant_for(&other, "alice", None).await;
        let refused = [
            (Method::DELETE, "/tenants/default/subjects/alice/grants?client_id=app"),
            (Method::DELETE, "/tenants/default/subjects/alice/grants?limit=5"),
            (Method::DELETE, "/tenants/default/clients/app/grants?subject=alice"),
            (Method::POST, "/cleanup?x=1"),
        ];
        for (method, path) in refused {
            let (_, query) = path.split_once('?').unwrap();
            let (name, _) = query.split_once('=').unwrap();
            let resp = s.admin(method.clone(), path, None).await;
            let body = assert_error(resp, 400, "invalid_request").await;
            let why = format!("the admin API's {method} requests read no query parameters; got {name}");
            assert_eq!(body["error_description"], why, "{path}");
        }
        // A value is not repeated (it may be a secret), and a caller without the token
        // learns nothing of its request's faults.
        let secret_in_query = "/tenants/default/clients/app/secret?client_secret=N3wS3cret";
        let resp = s.admin(Method::POST, secret_in_query, None).await;
        let body = assert_error(resp, 400, "invalid_request").await;
        assert!(!body.to_string().contains("N3wS3cret"), "{body}");
        let resp = admin_as(&s, Method::POST, secret_in_query, None, None).await;
        assert_eq!(resp.status(), 401);
        // A listing's filter in a body, and a body on the clean-up, are refused too.
        let filter = Some(json!({ "subject": "alice" }));
        let resp = s.admin(Method::GET, "/tenants/default/audit", filter).await;
        let body = assert_error(resp, 400, "invalid_request").await;
        assert_eq!(body["error_description"], "the admin API's GET requests read no body");
        let dry_run = Some(json!({ "dry_run": true }));
        let resp = s.admin(Method::POST, "/cleanup", dry_run).await;
        let body = assert_error(resp, 400, "invalid_request").await;
        assert_eq!(body["error_description"], "this request reads no body");
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let logout = "/tenants/default/subjects/alice/grants";
        let narrowed = Some(json!({ "client_id": "app" }));
        let resp = admin_as(&s, Method::DELETE, logout, Some(&bearer), narrowed).await;
        let body = assert_error(resp, 400, "invalid_request").await;
        assert_eq!(body["error_description"], "the admin API's DELETE requests read no body");
        // Nor one with several Authorization headers (which would be the token?).
        let twice = (s.http.delete(s.url(&format!("/admin/v1{logout}"))))
            .header("authorization", &bearer)
            .header("authorization", "Bearer another")
            .send()
            .await
            .unwrap();
        let body = assert_error(twice, 400, "invalid_request").await;
        assert_eq!(body["error_description"], "several Authorization headers: send one");
        assert_eq!(live_grants(&s, "alice").await.len(), 2, "nothing revoked");
        // As asked, the log-out goes through.
        assert_eq!(s.admin(Method::DELETE, logout, None).await.status(), 200);
        assert!(live_grants(&s, "alice").await.is_empty());
    }
}

backend_test! {
    async fn tenants_are_listed_by_id_a_page_at_a_time() {
        let s = TestServer::start().await;
        for id in ["t3", "t1", "t2"] {
            let body = json!({ "tenant_id": id });
            assert_eq!(s.admin(Method::POST, "/tenants", Some(body)).await.status(), 201);
        }
        let page = |query: &str| {
            let (s, path) = (&s, format!("/tenants{query}"));
            async move {
                let body: Value = s.admin(Method::GET, &path, None).await.json().await.unwrap();
                let ids: Vec<String> = serde_json::from_value(body["tenants"].clone())
                    .unwrap_or_else(|e| panic!("{body}: {e}"));
                (ids, body["next_after"].as_str().map(str::to_owned))
            }
        };
        let (all, next) = page("").await;
        assert_eq!(all, ["default", "t1", "t2", "t3"]);
        assert_eq!(next, None);
        let (first, next) = page("?limit=2").await;
        assert_eq!(first, ["default", "t1"]);
        let (rest, next) = page(&format!("?limit=2&after={}", next.unwrap())).await;
        assert_eq!(rest, ["t2", "t3"]);
        // A full last page still gives a cursor; the page after it is empty.
        let (empty, next) = page(&format!("?limit=2&after={}", next.unwrap())).await;
        assert!(empty.is_empty());
        assert_eq!(next, None);

        refused_queries(&s, "/tenants", &[
            ("?limit=0", "limit must be between 1 and 1000"),
            ("?after=a/b", "after must be a tenant id"),
        ])
        .await;
    }
}

backend_test! {
    async fn a_tenants_clients_are_listed_by_id_a_page_at_a_time() {
        let s = TestServer::start().await;
        for id in ["c3", "c1", "c5", "c2", "c4"] {
            s.confidential(id, "read").await;
        }
        let page = |query: String| {
            let path = format!("/tenants/default/clients{query}");
            listed(&s, path, "clients", "client_id", "next_after")
        };
        // The harness's own introspector client sorts among them.
        let (all, next) = page(String::new()).await;
        assert_eq!(all, ["c1", "c2", "c3", "c4", "c5", "introspector"]);
        assert_eq!(next, None);
        let (first, next) = page("?limit=4".into()).await;
        assert_eq!(first, ["c1", "c2", "c3", "c4"]);
        let (rest, next) = page(format!("?limit=4&after={}", next.unwrap())).await;
        assert_eq!(rest, ["c5", "introspector"]);
        assert_eq!(next, None, "a short page is the last");

        refused_queries(&s, "/tenants/default/clients", &[
            ("?limit=0", "limit must be between 1 and 1000"),
            ("?after=%00", "after must be a client id"),
        ])
        .await;
    }
}

/// SQLite runs a client's removal in chunks, the client's row going with the last. One
/// interrupted between them (as a crash, or a killed `latch client remove`, leaves it: the
/// client in place, its removal recorded as under way) is finished by removing the client
/// again through the admin API, or else by the next start, before it serves.
#[tokio::test]
async fn sqlite_an_interrupted_removal_is_finished_by_removing_again_or_by_the_next_start() {
    let db = common::TestDb::fresh_on(common::Backend::Sqlite).await;
    let s = TestServer::start_on(db).await;
    let (a, b) = (
        s.confidential("a", "read").await,
        s.confidential("b", "read").await,
    );
    let at_a = str_of(&s.grant_for(&a, "alice", None).await, "access_token").to_owned();
    let at_b = str_of(&s.grant_for(&b, "bob", None).await, "access_token").to_owned();
    s.db.execute(
        "INSERT INTO removals (tenant_id, client_id, reason, at, actor, route) \
         VALUES ('default', 'a', 'client_removed', 1, 'admin', 'admin'), \
                ('default', 'b', 'client_removed', 1, 'admin', 'admin');",
    )
    .await;
    assert!(s.is_active(&at_a).await && s.is_active(&at_b).await);
    let resp = s
        .admin(Method::DELETE, "/tenants/default/clients/a", None)
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["deleted"].as_bool(), body["revoked_grants"].as_u64()),
        (Some(true), Some(1)),
        "{body}"
    );
    assert!(!s.is_active(&at_a).await);
    assert!(s.is_active(&at_b).await, "b's removal is still under way");
    let resp = s
        .admin(Method::DELETE, "/tenants/default/clients/a", None)
        .await;
    assert_error(resp, 404, "not_found").await;

    let s = TestServer::start_on(s.stop().await).await;
    assert!(!s.is_active(&at_b).await);
    let under_way = s.db.query_i64("SELECT count(*) FROM removals").await;
    assert_eq!(under_way, 0);
}

backend_test! {
    async fn revoking_a_clients_grants_kills_all_its_tokens_and_keeps_the_client() {
        // A compromised client the configuration declares: its grants are revoked through
        // the admin API all the same (nothing the file says changes).
        let s = TestServer::start_with(|settings| {
            settings.clients = vec![latch_core::admin::ClientSpec {
                tenant: latch_core::id::TenantId::default_tenant(),
                id: latch_core::id::ClientId::parse("svc").unwrap(),
                auth_method: latch_core::client::AuthMethod::ClientSecretBasic,
                secret: latch_core::admin::SecretSpec::Plain("svc-secret".into()),
                grant_types: vec![
                    latch_core::client::GrantType::ClientCredentials,
                    latch_core::client::GrantType::RefreshToken,
                ],
                scope: latch_core::scope::Scope::parse("read").unwrap(),
                redirect_uris: vec![],
                access_token_ttl: 3600,
                refresh_token_ttl: 86_400,
                rotation_grace: 0,
                access_token_revocation: Default::default(),
                introspects: Default::default(),
            }];
        })
        .await;
        let svc = TestClient { id: "svc".into(), secret: Some("svc-secret".into()) };
        let other = s.confidential("other", "read").await;
        let machine = s.client_credentials(&svc).await;
        let alice = s.grant_for(&svc, "alice", None).await;
        let others = s.grant_for(&other, "alice", None).await;
        let svc_tokens = [
            str_of(&machine, "access_token"),
            str_of(&alice, "access_token"),
            str_of(&alice, "refresh_token"),
        ];

        let path = "/tenants/default/clients/svc/grants";
        let resp = s.admin(Method::DELETE, path, None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({ "client_id": "svc", "revoked_grants": 2, "revoked_tokens": 3 })
        );
        for t in svc_tokens {
            assert!(!s.is_active(t).await, "{t} lives");
        }
        for t in ["access_token", "refresh_token"] {
            assert!(s.is_active(str_of(&others, t)).await, "another client's {t} died");
        }
        // The client stays: what it obtains from now on lives.
        let fresh = s.client_credentials(&svc).await;
        assert!(s.is_active(str_of(&fresh, "access_token")).await);

        // Recorded as an operator's revocation naming the client, which its trail finds.
        let resp = s
            .admin(Method::GET, "/tenants/default/audit?client_subject=svc", None)
            .await;
        let page: Value = resp.json().await.unwrap();
        let records: Vec<&Value> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["grant_id"].is_null())
            .collect();
        assert_eq!(records.len(), 1, "{page}");
        let e = records[0];
        assert_eq!((e["reason"].as_str(), e["actor"].as_str()), (Some("admin"), Some("admin")));
        assert_eq!((e["grants"].as_u64(), e["tokens"].as_u64()), (Some(2), Some(3)));

        // Again: only what was issued since dies, and an unknown client is a 404.
        let resp = s.admin(Method::DELETE, path, None).await;
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({ "client_id": "svc", "revoked_grants": 1, "revoked_tokens": 1 })
        );
        assert!(!s.is_active(str_of(&fresh, "access_token")).await);
        let resp = s
            .admin(Method::DELETE, "/tenants/default/clients/nobody/grants", None)
            .await;
        assert_error(resp, 404, "not_found").await;
    }
}

/// A revocation of a large client's grants runs to its end even when its caller hangs up
/// part-way (a proxy timing out, say): on SQLite it takes chunk after chunk, and stopping
/// with the request would leave the rest of a compromised client's grants alive. A server
/// stopping then waits for it before it closes the database.
#[tokio::test]
async fn sqlite_a_clients_grants_revocation_goes_on_when_its_caller_hangs_up() {
    large_revocation_whose_caller_hangs_up(
        "default",
        Ask::Admin("/clients/svc/grants"),
        "admin",
        None,
    )
    .await;
}

/// So does a client's removal: left part-way, the client stayed registered (its secret
/// still minting tokens) with the rest of its grants alive until the next start finished it.
#[tokio::test]
async fn sqlite_a_clients_removal_goes_on_when_its_caller_hangs_up() {
    large_revocation_whose_caller_hangs_up(
        "default",
        Ask::Admin("/clients/svc"),
        "client_removed",
        Some("SELECT count(*) FROM clients WHERE client_id = 'svc'"),
    )
    .await;
}

/// And a tenant's.
#[tokio::test]
async fn sqlite_a_tenants_removal_goes_on_when_its_caller_hangs_up() {
    large_revocation_whose_caller_hangs_up(
        "acme",
        Ask::Admin(""),
        "tenant_removed",
        Some("SELECT count(*) FROM tenants WHERE id = 'acme'"),
    )
    .await;
}

/// And a log-out everywhere of a subject holding as many grants: here a client acting for
/// itself, whose grants are all its own subject's, through the sentinel profile.
#[tokio::test]
async fn sqlite_a_large_subjects_logout_goes_on_when_its_caller_hangs_up() {
    large_revocation_whose_caller_hangs_up("default", Ask::Sentinel, "logout_everywhere", None)
        .await;
}

/// A large log-out through the sentinel profile whose later chunk fails is answered `503`,
/// part of it done. Asked again with the same token, whose grant its first chunk revoked (so
/// that, judged alone, it revokes nothing), it is finished, and recorded once.
#[tokio::test]
async fn sqlite_a_large_logout_cut_off_by_a_failure_is_finished_when_asked_again() {
    let db = common::TestDb::fresh_on(common::Backend::Sqlite).await;
    let s = TestServer::start_on(db).await;
    let svc = s
        .create_client(
            "default",
            json!({ "client_id": "svc", "client_secret": "svc-secret", "scope": "read" }),
        )
        .await;
    let at = str_of(
        &s.client_credentials_at("", Auth::Basic(&svc)).await,
        "access_token",
    )
    .to_owned();
    // 12,000 grants more of the client's own subject, their ids after its own grant's: the
    // first chunk takes that one.
    s.db.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 12000) \
         INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
         SELECT 'x-' || i, 'default', 'svc', char(1) || 'svc', 'read', 100, 4000000000 FROM k; \
         CREATE TRIGGER cut BEFORE UPDATE ON subject_logouts WHEN NEW.grants >= 10000 \
         BEGIN SELECT RAISE(ABORT, 'cut'); END;",
    )
    .await;
    let logout = || {
        reqwest::Client::new()
            .post(s.url("/sentinel/api/account/default/token/revoke?v=1.0"))
            .form(&[
                ("client_id", "svc"),
                ("client_secret", "svc-secret"),
                ("token", &at),
            ])
            .send()
    };
    assert_error(logout().await.unwrap(), 503, "temporarily_unavailable").await;
    let live = "SELECT count(*) FROM grants WHERE subject = char(1) || 'svc' \
                AND revoked_at IS NULL";
    assert_eq!(
        s.db.query_i64(live).await,
        7_001,
        "its first chunk committed"
    );
    s.db.execute("DROP TRIGGER cut").await;

    assert_eq!(logout().await.unwrap().status(), 200);
    assert_eq!(s.db.query_i64(live).await, 0);
    let records = "SELECT count(*) FROM audit WHERE reason = 'logout_everywhere'";
    assert_eq!(s.db.query_i64(records).await, 1);
    let killed = "SELECT sum(grants) FROM audit WHERE reason = 'logout_everywhere'";
    assert_eq!(s.db.query_i64(killed).await, 12_001);
    assert!(!s.is_active(&at).await);
}

/// And through the admin API, of a user holding as many grants.
#[tokio::test]
async fn sqlite_a_large_users_logout_through_the_admin_api_goes_on_when_its_caller_hangs_up() {
    large_revocation_whose_caller_hangs_up("default", Ask::AdminLogout, "logout_everywhere", None)
        .await;
}

/// How a large revocation is asked for.
#[derive(Clone, Copy)]
enum Ask {
    /// `DELETE /admin/v1/tenants/{tenant}{path}`.
    Admin(&'static str),
    /// Every grant made user `bulk`'s first, `DELETE …/subjects/bulk/grants`.
    AdminLogout,
    /// The client's first access token presented at the sentinel profile's route, which
    /// logs its subject out everywhere.
    Sentinel,
}

/// Client `svc` of `tenant`, holding 100,001 grants (all of its own subject), loses them all
/// as `ask` asks, its caller giving up after 50 ms; the server is then stopped at once.
/// Once stopped, every grant is revoked and recorded under `reason`, and `gone` (a count of
/// what the request removes) is 0.
async fn large_revocation_whose_caller_hangs_up(
    tenant: &str,
    ask: Ask,
    reason: &str,
    gone: Option<&str>,
) {
    let db = common::TestDb::fresh_on(common::Backend::Sqlite).await;
    let s = TestServer::start_on(db).await;
    if tenant != "default" {
        let created = s
            .admin(
                Method::POST,
                "/tenants",
                Some(json!({ "tenant_id": tenant })),
            )
            .await;
        assert_eq!(created.status(), 201);
    }
    let svc = s
        .create_client(
            tenant,
            json!({ "client_id": "svc", "client_secret": "svc-secret", "scope": "read" }),
        )
        .await;
    let prefix = if tenant == "default" {
        String::new()
    } else {
        format!("/tenants/{tenant}")
    };
    let at = str_of(
        &s.client_credentials_at(&prefix, Auth::Basic(&svc)).await,
        "access_token",
    )
    .to_owned();
    // 100,000 grants more: twenty chunks, a second or so of the writer's time. Of the
    // client's own subject, as those it obtains itself.
    s.db.execute(&format!(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 100000) \
         INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
         SELECT 'bulk-' || i, '{tenant}', 'svc', char(1) || 'svc', 'read', 100, 4000000000 \
         FROM k"
    ))
    .await;
    if matches!(ask, Ask::AdminLogout) {
        s.db.execute("UPDATE grants SET subject = 'bulk' WHERE client_id = 'svc'")
            .await;
    }
    let live = "SELECT count(*) FROM grants WHERE client_id = 'svc' AND revoked_at IS NULL";
    assert_eq!(s.db.query_i64(live).await, 100_001);

    // The caller gives up long before the answer...
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    let request = match ask {
        Ask::Admin(path) => impatient
            .delete(s.url(&format!("/admin/v1/tenants/{tenant}{path}")))
            .bearer_auth(ADMIN_TOKEN),
        Ask::AdminLogout => impatient
            .delete(s.url(&format!("/admin/v1/tenants/{tenant}/subjects/bulk/grants")))
            .bearer_auth(ADMIN_TOKEN),
        Ask::Sentinel => impatient
            .post(s.url(&format!(
                "/sentinel/api/account/{tenant}/token/revoke?v=1.0"
            )))
            .form(&[
                ("client_id", "svc"),
                ("client_secret", "svc-secret"),
                ("token", &at),
            ]),
    };
    let cut = request.send().await;
    assert!(cut.as_ref().is_err_and(|e| e.is_timeout()), "{cut:?}");
    assert!(
        s.db.query_i64(live).await > 0,
        "answered within 50 ms: nothing was cut"
    );
    // ...and the server is stopped at once: it serves no request any more, yet it finishes
    // the revocation before it closes the database.
    let db = s.stop().await;
    assert_eq!(
        db.query_i64(live).await,
        0,
        "the revocation stopped part-way"
    );
    if let Some(gone) = gone {
        assert_eq!(db.query_i64(gone).await, 0, "{gone}");
    }
    let recorded = format!(
        "SELECT coalesce(sum(grants), 0) FROM audit WHERE reason = '{reason}' AND grant_id IS NULL"
    );
    assert_eq!(db.query_i64(&recorded).await, 100_001);
    if matches!(ask, Ask::Sentinel | Ask::AdminLogout) {
        let records = format!("SELECT count(*) FROM audit WHERE reason = '{reason}'");
        assert_eq!(db.query_i64(&records).await, 1, "one log-out, one record");
    }
    if tenant == "default" {
        let s = TestServer::start_on(db).await;
        assert!(!s.is_active(&at).await);
    }
}

/// With `--operations-listen`, the admin API and `/metrics` are served there and no longer
/// where clients call (404), the OAuth endpoints only where clients call, and the health
/// checks on both; the responses of both are counted in one `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operations_listener_takes_the_admin_api_and_metrics_off_the_clients_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = serve_with_admin(
        dir.path(),
        data.path(),
        &["--operations-listen", "127.0.0.1:0"],
    );
    let (clients, operations) = (p.base.clone(), p.operations_base.clone());
    assert_ne!(clients, operations);
    let http = reqwest::Client::new();
    let get = |url: String| {
        let req = http.get(url).bearer_auth(ADMIN_TOKEN);
        async move { req.send().await.unwrap() }
    };
    // The admin API answers on the operations listener only.
    let created = http
        .post(format!("{operations}/admin/v1/tenants/default/clients"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({
            "client_id": "svc",
            "client_secret": "svc-secret",
            "grant_types": ["client_credentials"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for path in ["/admin/v1/tenants", "/metrics"] {
        assert_error(get(format!("{clients}{path}")).await, 404, "not_found").await;
    }
    // The OAuth endpoints and the metadata answer on the clients' listener only.
    let svc = TestClient {
        id: "svc".into(),
        secret: Some("svc-secret".into()),
    };
    let issued = common::post_form_at(
        &http,
        &clients,
        "/oauth2/token",
        Auth::Basic(&svc),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(issued.status(), 200);
    let refused = common::post_form_at(
        &http,
        &operations,
        "/oauth2/token",
        Auth::Basic(&svc),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_error(refused, 404, "not_found").await;
    let metadata = "/.well-known/oauth-authorization-server";
    assert_eq!(get(format!("{clients}{metadata}")).await.status(), 200);
    for path in [
        metadata,
        "/.well-known/oauth-authorization-server/tenants/default",
        "/tenants/default/oauth2/introspect",
        "/api/v1.0/oauth2/revoke",
        "/api/id/v1/auth/token/revoke",
        "/sentinel/api/account/default/token/revoke",
    ] {
        let resp = http
            .post(format!("{operations}{path}"))
            .send()
            .await
            .unwrap();
        assert_error(resp, 404, "not_found").await;
        let resp = http.post(format!("{clients}{path}")).send().await.unwrap();
        assert_ne!(resp.status(), 404, "{path} on the clients' listener");
    }
    for base in [&clients, &operations] {
        for path in ["/healthz", "/readyz"] {
            assert_eq!(
                get(format!("{base}{path}")).await.status(),
                200,
                "{base}{path}"
            );
        }
    }
    let metrics = get(format!("{operations}/metrics")).await;
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(r#"latch_http_responses_total{endpoint="token",status="200"} 1"#),
        "{metrics}"
    );
    assert!(p.terminate().success());
}

backend_test! {
    async fn client_ids_stored_before_they_were_checked_stay_usable() {
        // A client id an older latch accepted, now refused as a new one (whitespace at an
        // end): stored as it stored it.
        let db = TestServer::start().await.stop().await;
        db.execute(
            "INSERT INTO clients (tenant_id, client_id, secret_hash, auth_method, grant_types, \
               scope, redirect_uris, access_token_ttl, refresh_token_ttl, rotation_grace, \
               access_token_revocation, created_at, declared) \
             VALUES ('default', 'legacy ', NULL, 'none', 'refresh_token', 'read', '', 3600, \
               86400, 0, 'token', 1, TRUE);",
        )
        .await;
        // The configuration declares the client again at every start: the start goes on.
        let s = TestServer::start_configured(db, |settings| {
            settings.clients = vec![latch_core::admin::ClientSpec {
                tenant: latch_core::id::TenantId::default_tenant(),
                id: latch_core::id::ClientId::parse("legacy ").unwrap(),
                auth_method: latch_core::client::AuthMethod::None,
                secret: latch_core::admin::SecretSpec::Generate,
                grant_types: vec![latch_core::client::GrantType::RefreshToken],
                scope: latch_core::scope::Scope::parse("read").unwrap(),
                redirect_uris: vec![],
                access_token_ttl: 3600,
                refresh_token_ttl: 86_400,
                rotation_grace: 0,
                access_token_revocation: Default::default(),
                introspects: Default::default(),
            }];
        })
        .await;
        let legacy = TestClient { id: "legacy ".into(), secret: None };
        // It is managed and used as before.
        let granted = s.grant_for(&legacy, "alice", None).await;
        assert!(s.is_active(str_of(&granted, "refresh_token")).await);
        let shown = s.admin(Method::GET, "/tenants/default/clients/legacy%20", None).await;
        assert_eq!(shown.status(), 200);
        // A new client so spelled is refused.
        let body = json!({ "client_id": "fresh ", "token_endpoint_auth_method": "none" });
        let refused = s.admin(Method::POST, "/tenants/default/clients", Some(body)).await;
        let error = assert_error(refused, 400, "invalid_request").await;
        assert!(
            error["error_description"].as_str().unwrap().contains("whitespace"),
            "{error}"
        );
    }
}

/// SQLite: a client's removal that a start of another process gave up meanwhile (it found
/// the client declared by its configuration) is answered `409` naming the configuration
/// file, not `503` as a storage failure, nor `200` as removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_removal_given_up_meanwhile_is_409() {
    let s = TestServer::start_on(common::TestDb::fresh_on(common::Backend::Sqlite).await).await;
    s.confidential("app", "read").await;
    // As the first chunk adds what it revoked, the other process gives the removal up.
    s.db.execute(
        "CREATE TRIGGER given_up AFTER UPDATE ON removals BEGIN \
           UPDATE clients SET declared = 1 WHERE client_id = 'app'; \
           DELETE FROM removals WHERE client_id = 'app'; \
         END",
    )
    .await;
    let resp = s
        .admin(Method::DELETE, "/tenants/default/clients/app", None)
        .await;
    let error = assert_error(resp, 409, "conflict").await;
    assert!(
        error["error_description"]
            .as_str()
            .unwrap()
            .contains("declared in the configuration file"),
        "{error}"
    );
    let shown = s
        .admin(Method::GET, "/tenants/default/clients/app", None)
        .await;
    assert_eq!(shown.status(), 200);
}
