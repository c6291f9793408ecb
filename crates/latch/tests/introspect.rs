//! `POST /oauth2/introspect` (RFC 7662): what an active token reveals, that every inactive
//! token reveals only `{"active":false}`, who may ask, and that a storage failure is a 503,
//! never "inactive".

#[macro_use]
mod common;

use common::{assert_error, Auth, TestClient, TestServer};
use latch_core::clock::Clock as _;
use reqwest::{Method, Response};
use serde_json::{json, Value};

/// A string field of a JSON body, owned.
fn field(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .to_owned()
}

/// Introspects `token` as `auth`; returns the raw response.
async fn introspect_as(s: &TestServer, auth: Auth<'_>, token: &str) -> Response {
    s.post_form("/oauth2/introspect", auth, &[("token", token)])
        .await
}

/// The sorted field names of a JSON object.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

// ---- active tokens --------------------------------------------------------------------------

backend_test! {
    async fn an_active_access_token_reveals_exactly_the_documented_fields() {
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
        let issued_at = s.clock.now();
        let issued = s.client_credentials(&svc).await;
        let at = field(&issued, "access_token");

        let resp = introspect_as(&s, Auth::Basic(&s.introspector), &at).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let info: Value = resp.json().await.unwrap();

        assert_eq!(
            keys(&info),
            [
                "active", "client_id", "exp", "grant_id", "iat", "iss", "jti", "scope", "sub",
                "token_type", "token_use",
            ],
            "{info}"
        );
        assert_eq!(info["active"], true);
        assert_eq!(info["scope"], "read write");
        assert_eq!(info["client_id"], "svc");
        assert_eq!(info["sub"], "svc");
        assert_eq!(info["token_type"], "Bearer");
        assert_eq!(info["token_use"], "access_token");
        assert_eq!(info["iss"], s.base);
        let (exp, iat) = (info["exp"].as_i64().unwrap(), info["iat"].as_i64().unwrap());
        assert_eq!(iat, issued_at);
        assert_eq!(exp - iat, 600);
        assert_eq!(json!(exp - iat), issued["expires_in"]);
        let jti = field(&info, "jti");
        assert!(!jti.is_empty());
        assert!(!at.contains(&jti), "the jti must not reveal the token");
        assert!(!field(&info, "grant_id").is_empty());

        // Another token of the same client has another jti and grant.
        let other = s.introspect(&field(&s.client_credentials(&svc).await, "access_token")).await;
        assert_ne!(other["jti"], info["jti"]);
        assert_ne!(other["grant_id"], info["grant_id"]);

        // A token without scope has no `scope` (RFC 7662 §2.2: one or more scope values),
        // as its token response has none.
        let bare = s.confidential("bare", "").await;
        let issued = s.client_credentials(&bare).await;
        assert!(issued.get("scope").is_none(), "{issued}");
        let info = s.introspect(&field(&issued, "access_token")).await;
        assert_eq!(info["active"], true);
        assert!(info.get("scope").is_none(), "{info}");
    }
}

backend_test! {
    async fn a_users_tokens_introspect_with_their_subject_grant_and_kind() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read write").await;
        let g = s.grant_for(&app, "alice", Some("read")).await;

        let at = s.introspect(&field(&g, "access_token")).await;
        assert_eq!(at["active"], true);
        assert_eq!(at["sub"], "alice");
        assert_eq!(at["client_id"], "app");
        assert_eq!(at["scope"], "read");
        assert_eq!(at["grant_id"], g["grant_id"]);
        assert_eq!(at["token_use"], "access_token");
        assert_eq!(at["token_type"], "Bearer");
        assert_eq!(
            at["exp"].as_i64().unwrap() - at["iat"].as_i64().unwrap(),
            g["expires_in"].as_i64().unwrap()
        );

        let rt = s.introspect(&field(&g, "refresh_token")).await;
        assert_eq!(rt["active"], true);
        assert_eq!(rt["token_use"], "refresh_token");
        // RFC 7662 token_type is an RFC 6749 §5.1 type; a refresh token has none.
        assert!(rt.get("token_type").is_none(), "{rt}");
        assert_eq!(rt["sub"], "alice");
        assert_eq!(rt["client_id"], "app");
        assert_eq!(rt["scope"], "read");
        assert_eq!(rt["grant_id"], g["grant_id"]);
        assert_eq!(rt["iss"], s.base);
        assert_ne!(rt["jti"], at["jti"]);
    }
}

backend_test! {
    async fn any_confidential_client_of_the_tenant_may_introspect_another_clients_token() {
        let s = TestServer::start().await;
        let issuer = s.confidential("issuer", "read").await;
        let api = s
            .create_client(
                "default",
                json!({
                    "client_id": "api",
                    "client_secret": "api-secret",
                    "grant_types": ["client_credentials"],
                }),
            )
            .await;
        let at = field(&s.client_credentials(&issuer).await, "access_token");

        for auth in [Auth::Basic(&api), Auth::Post(&api), Auth::Basic(&issuer)] {
            let resp = introspect_as(&s, auth, &at).await;
            assert_eq!(resp.status(), 200);
            let info: Value = resp.json().await.unwrap();
            assert_eq!(info["active"], true, "{auth:?}");
            assert_eq!(info["client_id"], "issuer");
        }
    }
}

// ---- inactive tokens --------------------------------------------------------------------------

/// Introspects as the introspector and asserts the answer is exactly `{"active":false}`.
async fn assert_inactive(s: &TestServer, token: &str) {
    let resp = introspect_as(s, Auth::Basic(&s.introspector), token).await;
    assert_eq!(resp.status(), 200, "{token}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({ "active": false }), "{token}");
}

backend_test! {
    async fn unknown_and_malformed_tokens_are_just_inactive() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = field(&s.client_credentials(&svc).await, "access_token");
        let unknown = format!("latch_at_{}", "A".repeat(at.len() - "latch_at_".len()));
        let relabelled = at.replacen("latch_at_", "latch_rt_", 1);
        for t in [
            unknown.as_str(),
            &relabelled,
            &at[..at.len() - 1],
            "garbage",
            "latch_at_",
            "latch_rt_\u{e9}\u{e9}",
            " ",
        ] {
            assert_inactive(&s, t).await;
        }
    }
}

backend_test! {
    async fn a_revoked_token_is_inactive() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = field(&s.client_credentials(&svc).await, "access_token");
        assert!(s.is_active(&at).await);
        assert_eq!(s.revoke(Auth::Basic(&svc), &at).await.status(), 200);
        assert_inactive(&s, &at).await;

        let g = s.grant_for(&svc, "alice", None).await;
        assert_eq!(
            s.revoke(Auth::Basic(&svc), &field(&g, "refresh_token")).await.status(),
            200
        );
        assert_inactive(&s, &field(&g, "refresh_token")).await;
        assert_inactive(&s, &field(&g, "access_token")).await;
    }
}

backend_test! {
    async fn an_expired_token_is_inactive() {
        let s = TestServer::start().await;
        let app = s
            .create_client(
                "default",
                json!({
                    "client_id": "app",
                    "client_secret": "app-secret",
                    "grant_types": ["client_credentials", "refresh_token"],
                    "scope": "read",
                    "access_token_ttl": 60,
                    "refresh_token_ttl": 120,
                }),
            )
            .await;
        let g = s.grant_for(&app, "alice", None).await;
        let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));

        s.advance(59);
        assert!(s.is_active(&at).await, "active until exp");
        s.advance(1);
        assert_inactive(&s, &at).await;
        assert!(s.is_active(&rt).await);
        s.advance(60);
        assert_inactive(&s, &rt).await;
    }
}

backend_test! {
    async fn a_rotated_refresh_token_is_inactive() {
        let s = TestServer::start().await;
        let app = s.confidential("app", "read").await;
        let rt = field(&s.grant_for(&app, "alice", None).await, "refresh_token");
        assert_eq!(s.refresh(Auth::Basic(&app), &rt).await.status(), 200);
        assert_inactive(&s, &rt).await;
    }
}

backend_test! {
    async fn the_tokens_of_a_deleted_client_are_inactive() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let cc = field(&s.client_credentials(&svc).await, "access_token");
        let g = s.grant_for(&svc, "alice", None).await;

        let resp = s
            .admin(Method::DELETE, "/tenants/default/clients/svc", None)
            .await;
        assert!(resp.status().is_success(), "{}", resp.status());
        for t in [cc, field(&g, "access_token"), field(&g, "refresh_token")] {
            assert_inactive(&s, &t).await;
        }
    }
}

// ---- who may introspect ----------------------------------------------------------------------

backend_test! {
    async fn a_public_client_may_not_introspect() {
        let s = TestServer::start().await;
        let spa = s.public("spa", "read").await;
        let g = s.grant_for(&spa, "alice", None).await;
        let resp = introspect_as(&s, Auth::Public(&spa), &field(&g, "access_token")).await;
        assert_error(resp, 401, "invalid_client").await;
        // Not even with a made-up secret.
        let pretender = TestClient {
            id: "spa".into(),
            secret: Some("x".into()),
        };
        let resp = introspect_as(&s, Auth::Basic(&pretender), &field(&g, "access_token")).await;
        assert_error(resp, 401, "invalid_client").await;
    }
}

backend_test! {
    async fn bad_client_credentials_are_401_invalid_client() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = field(&s.client_credentials(&svc).await, "access_token");
        let wrong = TestClient {
            id: "introspector".into(),
            secret: Some("nope".into()),
        };
        let ghost = TestClient {
            id: "ghost".into(),
            secret: Some("x".into()),
        };

        let resp = introspect_as(&s, Auth::Basic(&wrong), &at).await;
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        assert_error(resp, 401, "invalid_client").await;
        assert_error(introspect_as(&s, Auth::Post(&wrong), &at).await, 401, "invalid_client")
            .await;
        assert_error(introspect_as(&s, Auth::Basic(&ghost), &at).await, 401, "invalid_client")
            .await;
        assert_error(introspect_as(&s, Auth::None, &at).await, 401, "invalid_client").await;
        assert_error(
            introspect_as(&s, Auth::Public(&s.introspector), &at).await,
            401,
            "invalid_client",
        )
        .await;
    }
}

backend_test! {
    async fn a_missing_token_is_invalid_request() {
        let s = TestServer::start().await;
        let auth = Auth::Basic(&s.introspector);
        assert_error(
            s.post_form("/oauth2/introspect", auth, &[]).await,
            400,
            "invalid_request",
        )
        .await;
        assert_error(
            s.post_form("/oauth2/introspect", auth, &[("token", "")]).await,
            400,
            "invalid_request",
        )
        .await;
        let resp = s.http.get(s.url("/oauth2/introspect")).send().await.unwrap();
        assert_error(resp, 405, "invalid_request").await;
    }
}

// ---- storage failure --------------------------------------------------------------------------

backend_test! {
    async fn a_storage_failure_is_503_never_inactive() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = field(&s.client_credentials(&svc).await, "access_token");

        s.db.execute("ALTER TABLE tokens RENAME TO tokens_broken").await;
        let resp = introspect_as(&s, Auth::Basic(&s.introspector), &at).await;
        assert_eq!(resp.headers()["retry-after"], "1");
        let body = assert_error(resp, 503, "temporarily_unavailable").await;
        assert!(body.get("active").is_none(), "{body}");

        // The database recovers; so does introspection, without a restart.
        s.db.execute("ALTER TABLE tokens_broken RENAME TO tokens").await;
        assert!(s.is_active(&at).await);
    }
}

// ---- under concurrency ----------------------------------------------------------------------

backend_test! {
    async fn concurrent_introspections_each_get_their_own_tokens_answer() {
        // Concurrent lookups share database statements (PostgreSQL batches them); every
        // answer must still be the one for the token asked about.
        let s = TestServer::start().await;
        let app = s.confidential("app", "read").await;
        let mut tokens = Vec::new();
        for i in 0..48 {
            let issued = s.grant_for(&app, &format!("user{i}"), None).await;
            tokens.push(field(&issued, "access_token"));
        }
        for t in tokens.iter().step_by(3) {
            assert_eq!(s.revoke(Auth::Basic(&app), t).await.status(), 200);
        }
        let unknown = format!("latch_at_{}", "A".repeat(54));
        let asked: Vec<&str> = tokens
            .iter()
            .map(String::as_str)
            .chain([unknown.as_str(), "not-a-token"])
            .collect();
        let answers = futures_util::future::join_all(asked.iter().map(|t| s.introspect(t))).await;
        for (i, answer) in answers.iter().enumerate() {
            if i >= tokens.len() {
                assert_eq!(answer, &json!({"active": false}), "{}", asked[i]);
            } else if i % 3 == 0 {
                assert_eq!(answer, &json!({"active": false}), "token {i} was revoked");
            } else {
                assert_eq!(answer["active"], true, "token {i}: {answer}");
                assert_eq!(answer["sub"], format!("user{i}"), "token {i}: {answer}");
            }
        }
    }
}

backend_test! {
    async fn a_client_registered_to_introspect_its_own_tokens_reads_no_other() {
        let s = TestServer::start().await;
        // An application, not a resource server: it may read its own tokens only.
        let app = s
            .create_client(
                "default",
                json!({
                    "client_id": "app",
                    "client_secret": "app-secret",
                    "grant_types": ["client_credentials", "refresh_token"],
                    "scope": "read",
                    "introspects": "own",
                }),
            )
            .await;
        let shown = |id: &'static str| {
            let s = &s;
            async move {
                let path = format!("/tenants/default/clients/{id}");
                let resp = s.admin(Method::GET, &path, None).await;
                assert_eq!(resp.status(), 200);
                resp.json::<Value>().await.unwrap()["introspects"].clone()
            }
        };
        assert_eq!(shown("app").await, "own");
        assert_eq!(shown("introspector").await, "any");
        let other = s.confidential("other", "read").await;
        let own = s.client_credentials(&app).await;
        let own_session = s.grant_for(&app, "alice", None).await;
        let foreign = s.client_credentials(&other).await;
        let foreign_session = s.grant_for(&other, "bob", None).await;
        let tokens = |issued: &[&Value]| -> Vec<String> {
            let mut tokens = Vec::new();
            for v in issued {
                for kind in ["access_token", "refresh_token"] {
                    if let Some(t) = v[kind].as_str() {
                        tokens.push(t.to_owned());
                    }
                }
            }
            tokens
        };
        let (mine, theirs) = (tokens(&[&own, &own_session]), tokens(&[&foreign, &foreign_session]));
        assert_eq!((mine.len(), theirs.len()), (3, 3));
        for token in &mine {
            let info: Value = introspect_as(&s, Auth::Basic(&app), token).await.json().await.unwrap();
            assert_eq!((&info["active"], &info["client_id"]), (&json!(true), &json!("app")), "{info}");
        }
        // Another client's token reads as unknown: nothing of it, not even that it exists.
        for token in &theirs {
            let resp = introspect_as(&s, Auth::Basic(&app), token).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.json::<Value>().await.unwrap(), json!({ "active": false }));
        }
        // A resource server (the default, `any`) reads every token of its tenant.
        for token in mine.iter().chain(&theirs) {
            assert!(s.is_active(token).await);
        }
    }
}
