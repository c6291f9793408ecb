//! Authorization server metadata (RFC 8414), liveness and readiness, and the JSON 404.

#[macro_use]
mod common;

use common::{assert_error, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// `method` on `path`, without credentials.
async fn send(s: &TestServer, method: &Method, path: &str) -> reqwest::Response {
    s.http
        .request(method.clone(), s.url(path))
        .send()
        .await
        .unwrap()
}

async fn metadata(s: &TestServer) -> Value {
    let resp = s
        .http
        .get(s.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "content type"
    );
    resp.json().await.unwrap()
}

backend_test! {
    async fn metadata_describes_the_endpoints_grants_scopes_and_auth_methods() {
        let s = TestServer::start().await;
        s.confidential("svc", "read write").await;
        s.public("spa", "read profile").await;

        let m = metadata(&s).await;
        let issuer = m["issuer"].as_str().expect("issuer");
        assert_eq!(issuer, s.base);
        assert_eq!(m["token_endpoint"], format!("{issuer}/oauth2/token"));
        assert_eq!(m["revocation_endpoint"], format!("{issuer}/oauth2/revoke"));
        assert_eq!(
            m["introspection_endpoint"],
            format!("{issuer}/oauth2/introspect")
        );

        let grants = strings(&m["grant_types_supported"]);
        assert!(grants.contains(&"client_credentials"), "{grants:?}");
        assert!(grants.contains(&"refresh_token"), "{grants:?}");

        let mut scopes = strings(&m["scopes_supported"]);
        scopes.sort_unstable();
        assert_eq!(scopes, ["profile", "read", "write"]);

        assert!(
            m["response_types_supported"].is_array(),
            "response_types_supported is required by RFC 8414: {m}"
        );
        for field in [
            "token_endpoint_auth_methods_supported",
            "revocation_endpoint_auth_methods_supported",
        ] {
            let methods = strings(&m[field]);
            for expected in ["client_secret_basic", "client_secret_post", "none"] {
                assert!(methods.contains(&expected), "{field}: {methods:?}");
            }
        }
        let methods = strings(&m["introspection_endpoint_auth_methods_supported"]);
        for expected in ["client_secret_basic", "client_secret_post"] {
            assert!(methods.contains(&expected), "introspection: {methods:?}");
        }
        assert!(
            !methods.contains(&"none"),
            "public clients cannot introspect: {methods:?}"
        );

        // The advertised endpoints are really there.
        for field in ["token_endpoint", "revocation_endpoint", "introspection_endpoint"] {
            let url = m[field].as_str().unwrap();
            let resp = s
                .http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("")
                .send()
                .await
                .unwrap();
            assert_ne!(resp.status(), 404, "{field} {url}");
        }
    }
}

backend_test! {
    async fn scopes_supported_follows_the_registered_clients() {
        let s = TestServer::start().await;
        // None yet: left out, as RFC 8414 §3.2 asks of a claim with zero elements.
        let m = metadata(&s).await;
        assert!(m.get("scopes_supported").is_none(), "{m}");
        assert_eq!(m["response_types_supported"], json!([]), "required, so sent");

        s.confidential("svc", "read").await;
        assert_eq!(metadata(&s).await["scopes_supported"], json!(["read"]));

        s.confidential("other", "write read").await;
        let m = metadata(&s).await;
        let mut scopes = strings(&m["scopes_supported"]);
        scopes.sort_unstable();
        assert_eq!(scopes, ["read", "write"], "each scope once");

        let resp = s
            .admin(Method::DELETE, "/tenants/default/clients/other", None)
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(metadata(&s).await["scopes_supported"], json!(["read"]));
    }
}

backend_test! {
    async fn liveness_and_readiness_follow_the_database() {
        let s = TestServer::start().await;
        let get = |path: &'static str| {
            let s = &s;
            async move { s.http.get(s.url(path)).send().await.unwrap() }
        };

        assert_eq!(get("/healthz").await.status(), 200);
        let ready = get("/readyz").await;
        assert_eq!(ready.status(), 200);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["status"], "ready");

        // The database stops answering the server's queries.
        s.db.execute("ALTER TABLE tenants RENAME TO t2").await;
        let ready = get("/readyz").await;
        assert_eq!(ready.status(), 503);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["status"], "unavailable", "{body}");
        // Liveness does not depend on the database.
        assert_eq!(get("/healthz").await.status(), 200);

        // It recovers without a restart.
        s.db.execute("ALTER TABLE t2 RENAME TO tenants").await;
        assert_eq!(get("/readyz").await.status(), 200);
        assert_eq!(get("/healthz").await.status(), 200);
    }
}

backend_test! {
    async fn unknown_paths_are_a_json_404() {
        let s = TestServer::start().await;
        for (method, path) in [
            (Method::GET, "/"),
            (Method::GET, "/nope"),
            (Method::POST, "/nope"),
            (Method::GET, "/oauth2/authorize"),
            (Method::GET, "/oauth2/token/extra"),
            (Method::GET, "/.well-known/openid-configuration"),
            (Method::DELETE, "/healthz/x"),
        ] {
            let resp = send(&s, &method, path).await;
            assert_eq!(resp.status(), 404, "{method} {path}");
            assert_error(resp, 404, "not_found").await;
        }
        // Under the admin prefix too, with the admin token.
        let resp = s.admin(Method::GET, "/nope", None).await;
        assert_error(resp, 404, "not_found").await;
    }
}

backend_test! {
    async fn a_method_a_path_does_not_serve_is_a_json_405_naming_the_methods_it_does() {
        let s = TestServer::start().await;
        for (method, path, allow) in [
            (Method::POST, "/.well-known/oauth-authorization-server", "GET,HEAD"),
            (Method::DELETE, "/healthz", "GET,HEAD"),
            (Method::PUT, "/readyz", "GET,HEAD"),
            (Method::POST, "/metrics", "GET,HEAD"),
            (Method::GET, "/oauth2/token", "POST"),
        ] {
            let resp = send(&s, &method, path).await;
            assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
            assert_error(resp, 405, "invalid_request").await;
        }
        let resp = s.admin(Method::PUT, "/tenants", None).await;
        assert_eq!(resp.headers()["allow"], "POST,GET,HEAD");
        assert_error(resp, 405, "invalid_request").await;
    }
}

backend_test! {
    async fn scopes_supported_is_served_from_a_copy_for_at_most_a_few_seconds() {
        let s = TestServer::start().await;
        s.confidential("svc", "read").await;
        assert_eq!(metadata(&s).await["scopes_supported"], json!(["read"]));
        // Changed behind this node's back (another node, the CLI): the public document is
        // served from a copy, not from a read of every client per request...
        s.db.execute("UPDATE clients SET scope = 'read extra' WHERE client_id = 'svc'").await;
        assert_eq!(metadata(&s).await["scopes_supported"], json!(["read"]));
        // ...for at most its time to live.
        s.advance(latch_core::metadata::SCOPES_TTL);
        assert_eq!(metadata(&s).await["scopes_supported"], json!(["extra", "read"]));
    }
}
