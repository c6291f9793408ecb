//! The seed documents' revocation APIs (`shared/seeds/`), served as compatibility profiles.

#[macro_use]
mod common;

use common::{assert_error, form_encode, Auth, TestClient, TestServer};
use reqwest::{Method, Response};
use serde_json::{json, Value};

const FORM: &str = "application/x-www-form-urlencoded;charset=UTF-8";

/// The example application of seed 000.
const SENTINEL_CLIENT: &str = "d51186e9-e1a1-421e-8b1d-161ade532012";
const SENTINEL_SECRET: &str = "r7ufeqb32ore583r6ljmkm72i9";

async fn tenant(s: &TestServer, id: &str) {
    let resp = s
        .admin(Method::POST, "/tenants", Some(json!({ "tenant_id": id })))
        .await;
    assert_eq!(resp.status(), 201);
}

async fn app_in(s: &TestServer, tenant: &str, id: &str, secret: &str) -> TestClient {
    s.create_client(
        tenant,
        json!({
            "client_id": id,
            "client_secret": secret,
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["client_credentials", "refresh_token"],
            "scope": "read",
        }),
    )
    .await
}

async fn active_in(s: &TestServer, tenant: &str, introspector: &TestClient, token: &str) -> bool {
    let prefix = if tenant == "default" {
        String::new()
    } else {
        format!("/tenants/{tenant}")
    };
    let resp = s
        .post_form(
            &format!("{prefix}/oauth2/introspect"),
            Auth::Basic(introspector),
            &[("token", token)],
        )
        .await;
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["active"] == json!(true)
}

fn field<'a>(grant: &'a Value, name: &str) -> &'a str {
    grant[name].as_str().unwrap()
}

async fn post(s: &TestServer, path: &str, body: String) -> Response {
    s.post_raw(path, &[("content-type", FORM)], body.into_bytes())
        .await
}

// ---- Profile 1: seed 000, /sentinel/api/account/{accountid}/token/revoke ---------------------

struct Account {
    app_a: TestClient,
    app_b: TestClient,
    introspector: TestClient,
}

async fn account(s: &TestServer, id: &str) -> Account {
    tenant(s, id).await;
    Account {
        app_a: app_in(s, id, SENTINEL_CLIENT, SENTINEL_SECRET).await,
        app_b: app_in(s, id, "second-app", "second-secret").await,
        introspector: app_in(s, id, "rs", "rs-secret").await,
    }
}

fn sentinel_body(client: &TestClient, token: &str) -> String {
    format!(
        "client_id={}&client_secret={}&token={}",
        form_encode(&client.id),
        form_encode(client.secret.as_deref().unwrap()),
        form_encode(token)
    )
}

/// Every token of `grants` (access and refresh), whether each is active.
async fn actives(s: &TestServer, account: &str, acct: &Account, grants: &[&Value]) -> Vec<bool> {
    let mut out = Vec::new();
    for g in grants {
        for t in ["access_token", "refresh_token"] {
            out.push(active_in(s, account, &acct.introspector, field(g, t)).await);
        }
    }
    out
}

/// `subject`'s grants in both applications of account `id`.
async fn signed_in(s: &TestServer, id: &str, acct: &Account, subject: &str) -> [Value; 2] {
    [
        s.grant_in(id, &acct.app_a, subject, None).await,
        s.grant_in(id, &acct.app_b, subject, None).await,
    ]
}

/// `client` presents `token` at account `id`'s sentinel route.
async fn sentinel_revoke(s: &TestServer, id: &str, client: &TestClient, token: &str) -> Response {
    let path = format!("/sentinel/api/account/{id}/token/revoke?v=1.0");
    post(s, &path, sentinel_body(client, token)).await
}

backend_test! {
    async fn sentinel_logs_out_with_an_access_token_revoked_alone_or_just_expired() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        // The app revoked its access token alone (RFC 7009) at a local sign-out, then asks
        // with it for the user's sign-out everywhere.
        let alice = signed_in(&s, "acct", &acct, "alice").await;
        let at = field(&alice[0], "access_token");
        let resp = s
            .post_form("/tenants/acct/oauth2/revoke", Auth::Post(&acct.app_a), &[("token", at)])
            .await;
        assert_eq!(resp.status(), 200);
        let [a, b] = &alice;
        assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [false, true, true, true]);
        assert_eq!(sentinel_revoke(&s, "acct", &acct.app_a, at).await.status(), 200);
        assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [false; 4]);

        // One expired within the clocks' allowance names its user as well.
        let bob = signed_in(&s, "acct", &acct, "bob").await;
        s.advance(3600 + 200);
        let [a, b] = &bob;
        assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [false, true, false, true]);
        let at = field(a, "access_token");
        assert_eq!(sentinel_revoke(&s, "acct", &acct.app_a, at).await.status(), 200);
        assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [false; 4]);
    }
}

/// SQLite, once its index of revocation marks is full, records a grant's revocation in its
/// access tokens' rows, as a revocation of each alone would be: an access token of a revoked
/// grant replayed at the sentinel route must still be told from one revoked alone, and end
/// no session opened since. The fallback is written here by hand (the index holds 1.5M).
#[tokio::test]
async fn sqlite_a_replayed_sign_out_everywhere_ends_no_session_opened_since() {
    let s = TestServer::start_on(common::TestDb::fresh_on(common::Backend::Sqlite).await).await;
    let acct = account(&s, "acct").await;
    let before = signed_in(&s, "acct", &acct, "alice").await;
    s.db.execute(
        "UPDATE grants SET revoked_at = 1 WHERE subject = 'alice'; \
         UPDATE tokens SET revoked_at = 1 \
           WHERE grant_id IN (SELECT id FROM grants WHERE subject = 'alice');",
    )
    .await;
    let [a, b] = &before;
    assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [false; 4]);
    let since = signed_in(&s, "acct", &acct, "alice").await;
    let at = field(a, "access_token");
    assert_eq!(
        sentinel_revoke(&s, "acct", &acct.app_a, at).await.status(),
        200
    );
    let [a, b] = &since;
    assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [true; 4]);
}

backend_test! {
    async fn sentinel_logs_the_user_out_of_every_application_of_the_account() {
        let s = TestServer::start().await;
        let acct = account(&s, "12345678").await;
        let alice = signed_in(&s, "12345678", &acct, "alice").await;
        let bob_a = s.grant_in("12345678", &acct.app_a, "bob", None).await;

        let rt = field(&alice[0], "refresh_token");
        let resp = sentinel_revoke(&s, "12345678", &acct.app_a, rt).await;
        assert_eq!(resp.status(), 200);
        let [a, b] = &alice;
        assert_eq!(actives(&s, "12345678", &acct, &[a, b]).await, [false; 4]);
        assert_eq!(actives(&s, "12345678", &acct, &[&bob_a]).await, [true; 2]);
    }
}

backend_test! {
    async fn sentinel_accepts_the_documented_version_spellings_only() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        // Query names that are no version (`verbose`, `vendor`) are not refused as one.
        for query in ["?v=1.0", "?v1.0", "", "?v=1.0&verbose", "?vendor&v1.0"] {
            let g = s.grant_in("acct", &acct.app_a, "alice", None).await;
            let path = format!("/sentinel/api/account/acct/token/revoke{query}");
            let resp = post(
                &s,
                &path,
                sentinel_body(&acct.app_a, field(&g, "refresh_token")),
            )
            .await;
            assert_eq!(resp.status(), 200, "{query:?}");
            assert!(!active_in(&s, "acct", &acct.introspector, field(&g, "refresh_token")).await);
        }
        let g = s.grant_in("acct", &acct.app_a, "alice", None).await;
        // However spelt: a name with a value, percent-encoded, or the literal with a value.
        for query in ["?v=2.0", "?v2.0", "?v=abc", "?v2.0=", "?v%32.0", "?v1.0=2.0", "?verbose&v2.0="] {
            let path = format!("/sentinel/api/account/acct/token/revoke{query}");
            let resp = post(
                &s,
                &path,
                sentinel_body(&acct.app_a, field(&g, "refresh_token")),
            )
            .await;
            assert_error(resp, 400, "invalid_request").await;
        }
        assert!(active_in(&s, "acct", &acct.introspector, field(&g, "refresh_token")).await);
    }
}

backend_test! {
    async fn sentinel_requires_every_field_and_good_credentials() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        let g = s.grant_in("acct", &acct.app_a, "alice", None).await;
        let rt = field(&g, "refresh_token");
        let path = "/sentinel/api/account/acct/token/revoke?v=1.0";

        for missing in ["token", "client_id", "client_secret"] {
            let body: Vec<String> = [
                ("client_id", SENTINEL_CLIENT),
                ("client_secret", SENTINEL_SECRET),
                ("token", rt),
            ]
            .iter()
            .filter(|(k, _)| *k != missing)
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
            assert_error(post(&s, path, body.join("&")).await, 400, "invalid_request").await;
        }
        // Bad authentication: unknown account, unknown client, wrong secret.
        let wrong = TestClient {
            id: SENTINEL_CLIENT.into(),
            secret: Some("wrong".into()),
        };
        let ghost = TestClient {
            id: "ghost".into(),
            secret: Some("x".into()),
        };
        let cases = [
            (
                "/sentinel/api/account/no-such-account/token/revoke?v=1.0",
                &acct.app_a,
            ),
            (path, &ghost),
            (path, &wrong),
        ];
        for (p, client) in cases {
            assert_error(
                post(&s, p, sentinel_body(client, rt)).await,
                401,
                "invalid_client",
            )
            .await;
        }
        assert!(active_in(&s, "acct", &acct.introspector, rt).await);

        let resp = s.http.get(s.url(path)).send().await.unwrap();
        assert_error(resp, 405, "invalid_request").await;
    }
}

backend_test! {
    async fn sentinel_parses_the_documents_example_body_and_unknown_tokens_change_nothing() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        let g = s.grant_in("acct", &acct.app_a, "alice", None).await;

        // Exactly the document's example: UUID client id, 26-character secret, 544 hex digits.
        let token = "8fb45b320af23091091b9c163a29a73e70bbd03ddbe6bcc832ecb2ffb9829d03a4d9f82c0f548afded21ab42a6965e7107ae5cc23dd2c2d16de1843814046cf341c24a14631c0f74bccf41339d7efae39cb19ffa4bf6886e919e185f8a517fae6982150a06346c7e12e00796aad03bc2f65f28ae7cabc03f2fea1047b41ef3d30f6c99c0f05ad61e8f39e0a805c04fefb3981fce96801d822c0057e7bff68db7544aa067e659b20a7919848aee7c2830a35466556857a3007b23501fdcb00722004dc50d7b22cac50dce564be5784bf4f530fe73b204e7bbb24fdac94c9a20bff95c52208ab64ab1f03a246bd64a9893460ee64e8f21cf88705c51e6f3ae13f870fe4ea10cd2217f808f999c3026931c";
        // A 600-character variant is tried below as well.
        assert_eq!(token.len(), 544);
        let longer = format!("{token}{}", &token[..56]);
        for token in [token, longer.as_str()] {
            let body =
                format!("client_id={SENTINEL_CLIENT}&client_secret={SENTINEL_SECRET}&token={token}");
            let resp = post(&s, "/sentinel/api/account/acct/token/revoke?v1.0", body).await;
            assert_eq!(resp.status(), 200);
        }
        assert!(active_in(&s, "acct", &acct.introspector, field(&g, "refresh_token")).await);

        // Already revoked: 200, and alice's other grant is not touched by the replay.
        let rt = field(&g, "refresh_token");
        let path = "/sentinel/api/account/acct/token/revoke?v=1.0";
        assert_eq!(
            post(&s, path, sentinel_body(&acct.app_a, rt))
                .await
                .status(),
            200
        );
        let later = s.grant_in("acct", &acct.app_b, "alice", None).await;
        assert_eq!(
            post(&s, path, sentinel_body(&acct.app_a, rt))
                .await
                .status(),
            200
        );
        assert!(
            active_in(
                &s,
                "acct",
                &acct.introspector,
                field(&later, "refresh_token")
            )
            .await
        );
    }
}

backend_test! {
    async fn sentinel_never_crosses_accounts() {
        let s = TestServer::start().await;
        let one = account(&s, "one").await;
        let two = account(&s, "two").await; // the same client id and secret exist in both
        let g = s.grant_in("one", &one.app_a, "alice", None).await;
        let rt = field(&g, "refresh_token");
        let resp = post(
            &s,
            "/sentinel/api/account/two/token/revoke?v=1.0",
            sentinel_body(&two.app_a, rt),
        )
        .await;
        assert_eq!(resp.status(), 200, "unknown in account two");
        assert!(active_in(&s, "one", &one.introspector, rt).await);
        // The same subject signed in to account two, logged out there: every application
        // of account two, none of account one.
        let [a, b] = &signed_in(&s, "two", &two, "alice").await;
        let resp = sentinel_revoke(&s, "two", &two.app_a, field(a, "access_token")).await;
        assert_eq!(resp.status(), 200);
        for token in [a, b].map(|g| field(g, "refresh_token")) {
            assert!(!active_in(&s, "two", &two.introspector, token).await, "logged out in two");
        }
        assert!(active_in(&s, "one", &one.introspector, rt).await, "still in one");
    }
}

backend_test! {
    async fn sentinel_refuses_another_applications_token_and_logs_out_nobody() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        let [a, b] = &signed_in(&s, "acct", &acct, "alice").await;
        // App A presents app B's token: refused as on `/oauth2/revoke` (RFC 7009 §2.1, the
        // token was not issued to it), and alice stays signed in everywhere.
        let resp = sentinel_revoke(&s, "acct", &acct.app_a, field(b, "refresh_token")).await;
        assert_error(resp, 400, "invalid_request").await;
        assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [true; 4]);
    }
}

backend_test! {
    async fn sentinel_logs_out_with_a_refresh_token_a_refresh_returned_or_retired() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        // The document's "refresh token that was supplied in the application previous token
        // or refresh request": the one a refresh returned, and one a refresh retired, which
        // still names its grant (a sign-out made with a stale token still signs out).
        for (subject, present_retired) in [("alice", false), ("bob", true)] {
            let [first, other] = &signed_in(&s, "acct", &acct, subject).await;
            let retired = field(first, "refresh_token");
            let resp = s
                .post_form(
                    "/tenants/acct/oauth2/token",
                    Auth::Post(&acct.app_a),
                    &[("grant_type", "refresh_token"), ("refresh_token", retired)],
                )
                .await;
            assert_eq!(resp.status(), 200);
            let refreshed: Value = resp.json().await.unwrap();
            let presented = if present_retired {
                retired
            } else {
                field(&refreshed, "refresh_token")
            };
            let resp = sentinel_revoke(&s, "acct", &acct.app_a, presented).await;
            assert_eq!(resp.status(), 200);
            let left = actives(&s, "acct", &acct, &[&refreshed, other]).await;
            assert_eq!(left, [false; 4], "{subject}");
        }
    }
}

backend_test! {
    async fn sentinel_storage_failure_is_an_error_and_logs_out_nobody() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        let [a, b] = &signed_in(&s, "acct", &acct, "alice").await;
        let rt = field(a, "refresh_token");
        // The document's 500 row: latch answers 503 with Retry-After (the failure is the
        // database's, and passes), and nothing is half done.
        s.db.break_updates("grants").await;
        let failed = sentinel_revoke(&s, "acct", &acct.app_a, rt).await;
        assert!(failed.headers().contains_key("retry-after"));
        assert_error(failed, 503, "temporarily_unavailable").await;
        s.db.heal_updates("grants").await;
        assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [true; 4]);
        let resp = sentinel_revoke(&s, "acct", &acct.app_a, rt).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(actives(&s, "acct", &acct, &[a, b]).await, [false; 4]);
    }
}

/// A `client_credentials` access token of `client` (credentials in the body).
async fn machine_token(s: &TestServer, tenant: &str, client: &TestClient) -> String {
    let prefix = format!("/tenants/{tenant}");
    let body = s.client_credentials_at(&prefix, Auth::Post(client)).await;
    field(&body, "access_token").to_owned()
}

backend_test! {
    async fn a_client_named_like_a_user_is_a_subject_of_its_own() {
        let s = TestServer::start().await;
        let acct = account(&s, "acct").await;
        // A client whose id is also a user's name, with a machine token of its own.
        let alice_app = app_in(&s, "acct", "alice", "alice-secret").await;
        let first = machine_token(&s, "acct", &alice_app).await;
        let user = s.grant_in("acct", &acct.app_a, "alice", None).await;
        let user_at = field(&user, "access_token");

        // The `sub` claim of a machine token is still its client's id (RFC 9068 §2.2).
        let resp = s
            .post_form(
                "/tenants/acct/oauth2/introspect",
                Auth::Basic(&acct.introspector),
                &[("token", &first)],
            )
            .await;
        let claims: Value = resp.json().await.unwrap();
        assert_eq!((&claims["sub"], &claims["client_id"]), (&json!("alice"), &json!("alice")));

        // Logging the user out everywhere leaves the client's machine token alone.
        let resp = s
            .admin(Method::DELETE, "/tenants/acct/subjects/alice/grants", None)
            .await;
        assert_eq!(resp.json::<Value>().await.unwrap()["revoked_grants"], 1);
        assert!(!active_in(&s, "acct", &acct.introspector, user_at).await);
        assert!(active_in(&s, "acct", &acct.introspector, &first).await, "machine token died");

        // The logout-everywhere profile called with the client's own token logs out the
        // client (all its machine tokens), never the user who shares its name.
        let user = s.grant_in("acct", &acct.app_b, "alice", None).await;
        let second = machine_token(&s, "acct", &alice_app).await;
        let resp = post(
            &s,
            "/sentinel/api/account/acct/token/revoke?v=1.0",
            sentinel_body(&alice_app, &first),
        )
        .await;
        assert_eq!(resp.status(), 200);
        for t in [&first, &second] {
            assert!(!active_in(&s, "acct", &acct.introspector, t).await, "machine token lives");
        }
        for t in ["access_token", "refresh_token"] {
            assert!(
                active_in(&s, "acct", &acct.introspector, field(&user, t)).await,
                "the user's {t} died"
            );
        }
    }
}

// ---- Profile 2: seed 001, /api/id/v1/auth/token/revoke ---------------------------------------

/// Checks a camelCase error body: `error` and `errorDescription`, nothing in snake_case.
async fn assert_camel_error(resp: Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    let obj = body.as_object().unwrap();
    assert!(
        obj["error"].is_string() && obj["errorDescription"].is_string(),
        "{body}"
    );
    assert_eq!(obj.len(), 2, "exactly the document's fields: {body}");
    body
}

backend_test! {
    async fn id_v1_revokes_with_basic_or_body_credentials_and_either_type_parameter() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let path = "/api/id/v1/auth/token/revoke";

        let g = s.grant_for(&svc, "alice", None).await;
        let resp = s
            .post_form(
                path,
                Auth::Basic(&svc),
                &[
                    ("token", field(&g, "refresh_token")),
                    ("token_type_hint", "refresh_token"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(
            !s.is_active(field(&g, "access_token")).await,
            "refresh revokes the grant"
        );

        let g = s.grant_for(&svc, "bob", None).await;
        let resp = s
            .post_form(
                path,
                Auth::Post(&svc),
                &[
                    ("token", field(&g, "access_token")),
                    ("token_type", "access_token"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(!s.is_active(field(&g, "access_token")).await);
        assert!(
            s.is_active(field(&g, "refresh_token")).await,
            "an access token takes only itself"
        );

        let at = s.client_credentials(&svc).await;
        let resp = s
            .post_form(
                path,
                Auth::Basic(&svc),
                &[("token", field(&at, "access_token"))],
            )
            .await;
        assert_eq!(resp.status(), 200, "the type is optional");
        assert!(!s.is_active(field(&at, "access_token")).await, "and revoked without it");
    }
}

backend_test! {
    async fn id_v1_errors_are_camel_case_for_every_status() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let spa = s.public("spa", "read").await;
        let path = "/api/id/v1/auth/token/revoke";
        let g = s.grant_for(&svc, "alice", None).await;
        let rt = field(&g, "refresh_token");

        // 400: missing token, a type outside the allowed values, disagreeing type parameters.
        assert_camel_error(s.post_form(path, Auth::Basic(&svc), &[]).await, 400).await;
        let bad_type = s
            .post_form(
                path,
                Auth::Basic(&svc),
                &[("token", rt), ("token_type", "id_token")],
            )
            .await;
        assert_eq!(
            assert_camel_error(bad_type, 400).await["error"],
            "invalid_request"
        );
        let disagree = [
            ("token", rt),
            ("token_type", "access_token"),
            ("token_type_hint", "refresh_token"),
        ];
        assert_camel_error(s.post_form(path, Auth::Basic(&svc), &disagree).await, 400).await;
        let json_body = s
            .post_raw(
                path,
                &[("content-type", "application/json")],
                b"{}".to_vec(),
            )
            .await;
        assert_camel_error(json_body, 400).await;

        // 401: no credentials (first: whatever else is missing), a secret without its
        // client's id, a public client, a wrong secret.
        assert_camel_error(s.post_form(path, Auth::None, &[("token", rt)]).await, 401).await;
        assert_camel_error(s.post_form(path, Auth::None, &[]).await, 401).await;
        let secret_alone = [("client_secret", "x"), ("token", rt)];
        assert_camel_error(s.post_form(path, Auth::None, &secret_alone).await, 401).await;
        assert_camel_error(
            s.post_form(path, Auth::Public(&spa), &[("token", rt)])
                .await,
            401,
        )
        .await;
        let wrong = TestClient {
            id: "svc".into(),
            secret: Some("nope".into()),
        };
        let body = assert_camel_error(
            s.post_form(path, Auth::Basic(&wrong), &[("token", rt)])
                .await,
            401,
        )
        .await;
        assert_eq!(body["error"], "invalid_client");

        // 405 and an unknown tenant, in the same shape.
        assert_camel_error(s.http.get(s.url(path)).send().await.unwrap(), 405).await;
        let unknown = s
            .post_form(
                "/tenants/nope/api/id/v1/auth/token/revoke",
                Auth::Basic(&svc),
                &[("token", rt)],
            )
            .await;
        assert_camel_error(unknown, 404).await;

        // A storage failure (the document's 500 row): camelCase too, and nothing happens.
        s.db.break_updates("grants").await;
        let failed = s.post_form(path, Auth::Basic(&svc), &[("token", rt)]).await;
        assert_eq!(
            assert_camel_error(failed, 503).await["error"],
            "temporarily_unavailable"
        );
        s.db.heal_updates("grants").await;
        assert!(s.is_active(rt).await);
    }
}

backend_test! {
    async fn id_v1_is_tenant_scoped() {
        let s = TestServer::start().await;
        tenant(&s, "acme").await;
        let svc = s.confidential("svc", "read").await;
        let acme_svc = app_in(&s, "acme", "svc", "svc-secret").await;
        let g = s.grant_for(&svc, "alice", None).await;
        let resp = s
            .post_form(
                "/tenants/acme/api/id/v1/auth/token/revoke",
                Auth::Post(&acme_svc),
                &[("token", field(&g, "refresh_token"))],
            )
            .await;
        assert_eq!(resp.status(), 200, "unknown in acme");
        assert!(s.is_active(field(&g, "refresh_token")).await);
    }
}

backend_test! {
    /// Seed 001's `429` (too many failed authentications) is in the document's camelCase
    /// shape too, exactly `error` and `errorDescription`, and keeps its `Retry-After`: the
    /// limit is checked inside the profile's handler, whose errors are all restyled, so a
    /// profile that let this one through in RFC 6749's spelling (or dropped the header on
    /// the way) would hand its clients a body they cannot read and no time to wait.
    async fn id_v1_too_many_failed_authentications_is_429_in_camel_case_with_retry_after() {
        let s = TestServer::start_with(|settings| {
            settings.auth_limits = latch_http::AuthLimits {
                per_client: 2,
                per_address: 50,
                window: 60,
            };
        })
        .await;
        s.confidential("svc", "read").await;
        let path = "/api/id/v1/auth/token/revoke";
        let wrong = TestClient {
            id: "svc".into(),
            secret: Some("wrong".into()),
        };
        // Two wrong secrets for svc, verified against its hash: its budget is spent.
        for _ in 0..2 {
            let resp = s.post_form(path, Auth::Basic(&wrong), &[("token", "x")]).await;
            assert_eq!(assert_camel_error(resp, 401).await["error"], "invalid_client");
        }
        let resp = s.post_form(path, Auth::Basic(&wrong), &[("token", "x")]).await;
        let wait: u32 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        let body = assert_camel_error(resp, 429).await;
        assert_eq!(body["error"], "too_many_requests");
        assert!(body.get("error_description").is_none(), "{body}");
    }
}

backend_test! {
    /// The type parameter is a hint (docs/compatibility.md, RFC 7009 §2.2): a refresh token
    /// sent as an `access_token`, under either of the profile's names for the parameter,
    /// is still revoked as the refresh token it is, its grant and the grant's access token
    /// with it. A route that looked the token up by the hint would answer `200` (an unknown
    /// token) and leave the whole session alive.
    async fn id_v1_a_refresh_token_sent_as_an_access_token_still_revokes_its_grant() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        for name in ["token_type", "token_type_hint"] {
            let g = s.grant_for(&svc, "alice", None).await;
            let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));
            let resp = s
                .post_form(
                    "/api/id/v1/auth/token/revoke",
                    Auth::Basic(&svc),
                    &[("token", rt), (name, "access_token")],
                )
                .await;
            assert_eq!(resp.status(), 200, "{name}");
            assert!(!s.is_active(at).await, "{name}: the grant's access token lives");
            assert!(!s.is_active(rt).await, "{name}: the refresh token lives");
        }
    }
}

backend_test! {
    /// A confidential client presenting another client's refresh token is refused with
    /// `400 invalid_request` (ARCHITECTURE.md, Decisions: "A foreign token at the revocation
    /// endpoint"), in this profile's camelCase, and nothing of the other client's grant
    /// dies: every caller of this route is confidential (a public one is `401`), so a
    /// revocation judged as a public caller's (a silent `200`), or not judged at all, fails
    /// here.
    async fn id_v1_refuses_another_clients_refresh_token_in_camel_case_and_revokes_nothing() {
        let s = TestServer::start().await;
        let a = s.confidential("svc", "read").await;
        let b = s.confidential("other", "read").await;
        let g = s.grant_for(&b, "alice", None).await;
        let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));
        let resp = s
            .post_form(
                "/api/id/v1/auth/token/revoke",
                Auth::Basic(&a),
                &[("token", rt), ("token_type", "refresh_token")],
            )
            .await;
        assert_eq!(assert_camel_error(resp, 400).await["error"], "invalid_request");
        assert!(s.is_active(rt).await, "the other client's refresh token died");
        assert!(s.is_active(at).await, "the other client's access token died");
    }
}

/// A clock that panics once armed: a fault inside a request's handler (the first thing a
/// handler asks it is the time its client authenticates at), with the server's start, which
/// reads it too, left alone.
struct FaultyClock(std::sync::atomic::AtomicBool);

impl latch_core::clock::Clock for FaultyClock {
    fn now(&self) -> latch_core::clock::UnixTime {
        let broken = self.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(!broken, "the clock broke");
        latch_core::clock::SystemClock.now()
    }
}

/// A handler that panics on the real server's `id_v1` route is answered `500` in the
/// document's camelCase (`errorDescription`), by the panic layer the route has of its own,
/// while the standard routes' panics keep RFC 6749's spelling: a router that left the route
/// to the layer around every route would answer it in snake_case. The layers do not depend on
/// the database: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_v1_answers_a_panicking_handler_500_in_camel_case() {
    let db = common::TestDb::fresh_on(common::Backend::Sqlite).await;
    let clock = std::sync::Arc::new(FaultyClock(Default::default()));
    let server = latch::server::Server::start(&common::settings_for(&db), clock.clone())
        .await
        .expect("server starts");
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let svc = TestClient {
        id: "svc".into(),
        secret: Some("svc-secret".into()),
    };
    clock.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = [
        (
            "/api/id/v1/auth/token/revoke",
            json!({"error": "server_error", "errorDescription": "internal error"}),
        ),
        (
            "/oauth2/revoke",
            json!({"error": "server_error", "error_description": "internal error"}),
        ),
    ];
    for (path, expected) in answers {
        let resp =
            common::post_form_at(&http, &base, path, Auth::Basic(&svc), &[("token", "x")]).await;
        assert_eq!(resp.status(), 500, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        assert_eq!(resp.json::<Value>().await.unwrap(), expected, "{path}");
    }
    clock.0.store(false, std::sync::atomic::Ordering::SeqCst);
    server.shutdown().await.expect("clean shutdown");
}

// ---- Profile 3: seed 002, /api/v1.0/oauth2/revoke --------------------------------------------

/// `body` posted to the route as the document's examples send it (no charset).
async fn api_v1_0_revoke(s: &TestServer, body: String) -> Response {
    let form = [("content-type", "application/x-www-form-urlencoded")];
    s.post_raw("/api/v1.0/oauth2/revoke", &form, body.into_bytes())
        .await
}

backend_test! {
    async fn api_v1_0_public_client_revokes_an_access_token_as_in_the_first_example() {
        let s = TestServer::start().await;
        let public = s.public("io8MvuTN3reflIaESwe5tGd", "read").await;
        let g = s.grant_for(&public, "alice", None).await;
        let at = field(&g, "access_token");
        let body = format!("client_id=io8MvuTN3reflIaESwe5tGd&token={at}");
        let resp = api_v1_0_revoke(&s, body).await;
        assert_eq!(resp.status(), 200);
        assert!(!s.is_active(at).await);
        // An access token goes alone: its grant's refresh token lives on.
        assert!(s.is_active(field(&g, "refresh_token")).await);
    }
}

backend_test! {
    async fn api_v1_0_confidential_client_revokes_a_refresh_token_and_its_access_tokens_as_in_the_second_example(
    ) {
        let s = TestServer::start().await;
        let conf = app_in(&s, "default", "YMirwQ-beCp5Rxiw4yH", "nS8cz9Fa5Wl2fbHrM").await;
        let g = s.grant_for(&conf, "alice", None).await;
        let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));
        // A second access token of the grant, from a refresh: "all access tokens".
        let refreshed = s.refresh(Auth::Post(&conf), rt).await;
        assert_eq!(refreshed.status(), 200);
        let refreshed: Value = refreshed.json().await.unwrap();
        let (at2, rt2) = (
            field(&refreshed, "access_token"),
            field(&refreshed, "refresh_token"),
        );
        // The document's body, line break and indentation included, as its curl would send it.
        let body = format!("client_id=YMirwQ-beCp5Rxiw4yH&client_secret=nS8cz9Fa5Wl2fbHrM\n         &token={rt2}&token_type=refresh_token");
        let resp = api_v1_0_revoke(&s, body).await;
        assert_eq!(resp.status(), 200);
        for t in [at, at2, rt2] {
            assert!(!s.is_active(t).await, "{t} lives");
        }
    }
}

backend_test! {
    async fn api_v1_0_follows_rfc_7009_errors_and_ownership() {
        let s = TestServer::start().await;
        let conf = app_in(&s, "default", "YMirwQ-beCp5Rxiw4yH", "nS8cz9Fa5Wl2fbHrM").await;
        let public = s.public("io8MvuTN3reflIaESwe5tGd", "read").await;
        let g = s.grant_for(&conf, "alice", None).await;
        let rt = field(&g, "refresh_token");
        let path = "/api/v1.0/oauth2/revoke";

        // A confidential client must send its secret.
        assert_error(
            s.post_form(path, Auth::Public(&conf), &[("token", rt)])
                .await,
            401,
            "invalid_client",
        )
        .await;
        // A public client cannot revoke another client's token, and is not told.
        assert_eq!(
            s.post_form(path, Auth::Public(&public), &[("token", rt)])
                .await
                .status(),
            200
        );
        assert!(s.is_active(rt).await);
        // Missing token; unknown token; a wrong token_type hint still revokes.
        assert_error(
            s.post_form(path, Auth::Post(&conf), &[]).await,
            400,
            "invalid_request",
        )
        .await;
        assert_eq!(
            s.post_form(path, Auth::Post(&conf), &[("token", "Q4lxNpch72FUwhO")])
                .await
                .status(),
            200
        );
        let resp = s
            .post_form(
                path,
                Auth::Post(&conf),
                &[("token", rt), ("token_type", "access_token")],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(!s.is_active(rt).await);
    }
}

backend_test! {
    async fn api_v1_0_is_tenant_scoped() {
        let s = TestServer::start().await;
        tenant(&s, "acme").await;
        let conf = app_in(&s, "default", "c", "c-secret").await;
        let acme_conf = app_in(&s, "acme", "c", "c-secret").await;
        let g = s.grant_for(&conf, "alice", None).await;
        let rt = field(&g, "refresh_token");
        let resp = s
            .post_form(
                "/tenants/acme/api/v1.0/oauth2/revoke",
                Auth::Post(&acme_conf),
                &[("token", rt)],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(s.is_active(rt).await);
    }
}

backend_test! {
    /// A confidential client presenting another client's refresh token is refused with
    /// `400 invalid_request`, the error docs/compatibility.md lists for this profile (and
    /// ARCHITECTURE.md's Decisions for every revocation route), and the other client's grant
    /// lives on: unlike a public client's (a silent `200`), a confidential caller proved who
    /// it is and is told, and revokes nothing either way.
    async fn api_v1_0_refuses_another_clients_refresh_token_to_a_confidential_client() {
        let s = TestServer::start().await;
        app_in(&s, "default", "YMirwQ-beCp5Rxiw4yH", "nS8cz9Fa5Wl2fbHrM").await;
        let other = app_in(&s, "default", "other-app", "other-secret").await;
        let g = s.grant_for(&other, "alice", None).await;
        let (at, rt) = (field(&g, "access_token"), field(&g, "refresh_token"));
        let body = format!(
            "client_id=YMirwQ-beCp5Rxiw4yH&client_secret=nS8cz9Fa5Wl2fbHrM&token={rt}&token_type=refresh_token"
        );
        assert_error(api_v1_0_revoke(&s, body).await, 400, "invalid_request").await;
        assert!(s.is_active(rt).await, "the other client's refresh token died");
        assert!(s.is_active(at).await, "the other client's access token died");
    }
}

// ---- All profiles -----------------------------------------------------------------------------

backend_test! {
    async fn each_profile_can_be_switched_off() {
        let s = TestServer::start_with(|settings| {
            settings.profiles.sentinel = false;
            settings.profiles.id_v1 = false;
            settings.profiles.api_v1_0 = false;
        })
        .await;
        let svc = s.confidential("svc", "read").await;
        for path in [
            "/sentinel/api/account/default/token/revoke?v=1.0",
            "/api/id/v1/auth/token/revoke",
            "/api/v1.0/oauth2/revoke",
        ] {
            let resp = s.post_form(path, Auth::Post(&svc), &[("token", "x")]).await;
            assert_error(resp, 404, "not_found").await;
        }
        // The standard endpoint is unaffected.
        assert_eq!(
            s.post_form("/oauth2/revoke", Auth::Post(&svc), &[("token", "x")])
                .await
                .status(),
            200
        );
    }
}
