//! Tenants: creation, per-tenant endpoints and metadata, and absolute isolation.

#[macro_use]
mod common;

use common::{assert_error, Auth, TestClient, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

async fn create_tenant(s: &TestServer, id: &str) -> Value {
    let resp = s
        .admin(Method::POST, "/tenants", Some(json!({ "tenant_id": id })))
        .await;
    assert_eq!(resp.status(), 201);
    resp.json().await.unwrap()
}

/// A confidential client in `tenant`, allowed both grants.
async fn client_in(s: &TestServer, tenant: &str, id: &str, secret: &str) -> TestClient {
    s.create_client(
        tenant,
        json!({
            "client_id": id,
            "client_secret": secret,
            "grant_types": ["client_credentials", "refresh_token"],
            "scope": "read",
        }),
    )
    .await
}

async fn introspect(s: &TestServer, prefix: &str, as_client: &TestClient, token: &str) -> Value {
    let resp = s
        .post_form(
            &format!("{prefix}/oauth2/introspect"),
            Auth::Basic(as_client),
            &[("token", token)],
        )
        .await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

backend_test! {
    async fn tenants_are_created_listed_and_validated() {
        let s = TestServer::start().await;
        let created = create_tenant(&s, "acme").await;
        assert_eq!(created["tenant_id"], "acme");
        assert_eq!(created["issuer"], format!("{}/tenants/acme", s.base));

        let dup = s
            .admin(
                Method::POST,
                "/tenants",
                Some(json!({ "tenant_id": "acme" })),
            )
            .await;
        assert_error(dup, 409, "conflict").await;
        let bad = s
            .admin(
                Method::POST,
                "/tenants",
                Some(json!({ "tenant_id": "a/b" })),
            )
            .await;
        assert_error(bad, 400, "invalid_request").await;

        let list: Value = s
            .admin(Method::GET, "/tenants", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list["tenants"], json!(["acme", "default"]));
    }
}

backend_test! {
    async fn each_tenant_has_its_own_issuer_and_metadata() {
        let s = TestServer::start().await;
        create_tenant(&s, "acme").await;
        let meta: Value = s
            .http
            .get(s.url("/.well-known/oauth-authorization-server/tenants/acme"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let issuer = format!("{}/tenants/acme", s.base);
        assert_eq!(meta["issuer"], issuer);
        assert_eq!(meta["token_endpoint"], format!("{issuer}/oauth2/token"));
        assert_eq!(
            meta["revocation_endpoint"],
            format!("{issuer}/oauth2/revoke")
        );
        assert_eq!(
            meta["introspection_endpoint"],
            format!("{issuer}/oauth2/introspect")
        );

        // An unknown tenant has none. Nor is the default tenant's served under
        // `/tenants/default`: its issuer has no path (its metadata is at the root), so there
        // the metadata would name an issuer other than the one its URL was built from, which
        // RFC 8414 §3.3 tells clients to reject.
        for tenant in ["nope", "default"] {
            let path = format!("/.well-known/oauth-authorization-server/tenants/{tenant}");
            let resp = s.http.get(s.url(&path)).send().await.unwrap();
            assert_error(resp, 404, "not_found").await;
        }

        // The tenant's tokens carry its issuer.
        let app = client_in(&s, "acme", "app", "acme-secret").await;
        let at = token_at(&s, "/tenants/acme", &app).await;
        assert_eq!(
            introspect(&s, "/tenants/acme", &app, &at).await["iss"],
            issuer
        );
    }
}

async fn token_at(s: &TestServer, prefix: &str, client: &TestClient) -> String {
    let body = s.client_credentials_at(prefix, Auth::Basic(client)).await;
    body["access_token"].as_str().unwrap().to_owned()
}

backend_test! {
    async fn the_same_client_id_in_two_tenants_is_two_clients() {
        let s = TestServer::start().await;
        create_tenant(&s, "x").await;
        create_tenant(&s, "y").await;
        let in_x = client_in(&s, "x", "app", "secret-x").await;
        let in_y = client_in(&s, "y", "app", "secret-y").await;

        token_at(&s, "/tenants/x", &in_x).await;
        token_at(&s, "/tenants/y", &in_y).await;
        // Each secret works only in its own tenant; a tenant's client is unknown at the root.
        let cross = s
            .post_form(
                "/tenants/y/oauth2/token",
                Auth::Basic(&in_x),
                &[("grant_type", "client_credentials")],
            )
            .await;
        assert_error(cross, 401, "invalid_client").await;
        let root = s
            .post_form(
                "/oauth2/token",
                Auth::Basic(&in_x),
                &[("grant_type", "client_credentials")],
            )
            .await;
        assert_error(root, 401, "invalid_client").await;
    }
}

backend_test! {
    async fn a_token_of_one_tenant_is_never_active_at_nor_revocable_through_another() {
        let s = TestServer::start().await;
        create_tenant(&s, "x").await;
        create_tenant(&s, "y").await;
        let in_x = client_in(&s, "x", "app", "secret-x").await;
        let in_y = client_in(&s, "y", "app", "secret-y").await;
        let grant = s.grant_in("x", &in_x, "alice", None).await;
        let (at, rt) = (
            grant["access_token"].as_str().unwrap(),
            grant["refresh_token"].as_str().unwrap(),
        );

        for t in [at, rt] {
            assert_eq!(
                introspect(&s, "/tenants/y", &in_y, t).await,
                json!({ "active": false })
            );
            assert_eq!(
                s.introspect(t).await,
                json!({ "active": false }),
                "default tenant"
            );
            // Same client id, other tenant: unknown there, so a 200 that changes nothing.
            let resp = s
                .post_form(
                    "/tenants/y/oauth2/revoke",
                    Auth::Basic(&in_y),
                    &[("token", t)],
                )
                .await;
            assert_eq!(resp.status(), 200);
        }
        // Refreshing through the other tenant fails too.
        let resp = s
            .post_form(
                "/tenants/y/oauth2/token",
                Auth::Basic(&in_y),
                &[("grant_type", "refresh_token"), ("refresh_token", rt)],
            )
            .await;
        assert_error(resp, 400, "invalid_grant").await;
        // Admin log-out of alice in the other tenant logs out its own alice alone.
        let in_y_alice = s.grant_in("y", &in_y, "alice", None).await;
        let out = s
            .admin(Method::DELETE, "/tenants/y/subjects/alice/grants", None)
            .await;
        assert_eq!(out.status(), 200);
        let out: serde_json::Value = out.json().await.unwrap();
        assert_eq!(out["revoked_grants"], 1, "y's alice: {out}");
        assert_eq!(
            introspect(&s, "/tenants/y", &in_y, in_y_alice["access_token"].as_str().unwrap())
                .await["active"],
            false
        );

        assert_eq!(
            introspect(&s, "/tenants/x", &in_x, at).await["active"],
            true
        );
        assert_eq!(
            introspect(&s, "/tenants/x", &in_x, rt).await["active"],
            true
        );
    }
}

backend_test! {
    async fn unknown_tenants_are_404_with_a_json_error() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        for path in [
            "/tenants/nope/oauth2/token",
            "/tenants/nope/oauth2/revoke",
            "/tenants/nope/oauth2/introspect",
        ] {
            let resp = s
                .post_form(
                    path,
                    Auth::Basic(&svc),
                    &[("token", "x"), ("grant_type", "client_credentials")],
                )
                .await;
            assert_error(resp, 404, "not_found").await;
        }
        let resp = s.admin(Method::GET, "/tenants/nope/clients", None).await;
        assert_error(resp, 404, "not_found").await;
    }
}

backend_test! {
    async fn removing_a_tenant_kills_its_tokens_for_good() {
        let s = TestServer::start().await;
        create_tenant(&s, "gone").await;
        let app = client_in(&s, "gone", "app", "s1").await;
        let grant = s.grant_in("gone", &app, "alice", None).await;
        let rt = grant["refresh_token"].as_str().unwrap();

        let resp = s.admin(Method::DELETE, "/tenants/gone", None).await;
        assert_eq!(resp.status(), 200);
        let resp = s
            .post_form(
                "/tenants/gone/oauth2/introspect",
                Auth::Basic(&app),
                &[("token", rt)],
            )
            .await;
        assert_error(resp, 404, "not_found").await;

        // Its audit trail, the removal included, stays readable.
        let resp = s.admin(Method::GET, "/tenants/gone/audit", None).await;
        assert_eq!(resp.status(), 200);
        let trail: Value = resp.json().await.unwrap();
        let events = trail["events"].as_array().unwrap_or_else(|| panic!("{trail}"));
        assert!(
            events.iter().any(|e| e["reason"] == "tenant_removed" && e["grants"] == 1),
            "{trail}"
        );

        // Re-creating the tenant and the client revives nothing.
        create_tenant(&s, "gone").await;
        let app = client_in(&s, "gone", "app", "s1").await;
        assert_eq!(
            introspect(&s, "/tenants/gone", &app, rt).await,
            json!({ "active": false })
        );

        // A tenant removed with nothing alive in it: the removal is recorded all the same.
        create_tenant(&s, "empty").await;
        assert_eq!(s.admin(Method::DELETE, "/tenants/empty", None).await.status(), 200);
        let trail: Value = s.admin(Method::GET, "/tenants/empty/audit", None).await.json().await.unwrap();
        let events = trail["events"].as_array().unwrap_or_else(|| panic!("{trail}"));
        assert_eq!(events.len(), 1, "{trail}");
        assert_eq!(events[0]["reason"], "tenant_removed", "{trail}");
        assert_eq!((events[0]["grants"].as_u64(), events[0]["tokens"].as_u64()), (Some(0), Some(0)));

        let resp = s.admin(Method::DELETE, "/tenants/default", None).await;
        assert_error(resp, 400, "invalid_request").await;
        let resp = s.admin(Method::DELETE, "/tenants/never", None).await;
        assert_error(resp, 404, "not_found").await;
    }
}

#[test]
fn the_tenant_cli_adds_lists_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    common::new_sqlite_database(&dir.path().join("t.db"));
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--database-url", &db]);
        let out = common::run_cli(dir.path(), &all, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["tenant", "add", "acme"]);
    assert_eq!(run(&["tenant", "list"]), "acme\ndefault\n");
    run(&["tenant", "remove", "acme"]);
    assert_eq!(run(&["tenant", "list"]), "default\n");
    let out = common::run_cli(
        dir.path(),
        &["tenant", "add", "bad/id", "--database-url", &db],
        None,
    );
    assert!(!out.status.success());
}

backend_test! {
    async fn an_issuer_with_a_path_has_its_metadata_at_the_well_known_path_with_it_appended() {
        // latch behind a proxy that serves it at https://auth.example/latch.
        let s = TestServer::start_with(|c| c.issuer = Some("https://auth.example/latch/".into()))
            .await;
        create_tenant(&s, "acme").await;
        let well_known = "/.well-known/oauth-authorization-server";
        let base = "https://auth.example/latch";
        // RFC 8414 §3: the well-known path inserted between the host and the issuer's path
        // (its terminating `/` removed), which a proxy forwards as it is; and the legacy form
        // of §5, the well-known path appended to the issuer, which reaches latch with the
        // issuer's path stripped. The default tenant's issuer is the one configured, byte for
        // byte, its `/` included (§3.3: the client compares it with the one it started from).
        let acme = format!("{base}/tenants/acme");
        for (path, issuer, endpoints) in [
            (format!("{well_known}/latch"), "https://auth.example/latch/", base),
            (well_known.to_owned(), "https://auth.example/latch/", base),
            (format!("{well_known}/latch/tenants/acme"), &acme, &acme),
            (format!("{well_known}/tenants/acme"), &acme, &acme),
        ] {
            let resp = s.http.get(s.url(&path)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let meta: Value = resp.json().await.unwrap();
            assert_eq!(meta["issuer"], issuer, "{path}");
            assert_eq!(meta["token_endpoint"], format!("{endpoints}/oauth2/token"));
        }
        // Nowhere else: not under another path, nor the default tenant's under its name.
        for path in [
            format!("{well_known}/other"),
            format!("{well_known}/latch/tenants/default"),
            format!("{well_known}/latch/latch"),
            format!("{well_known}/latch/tenants/nope"),
        ] {
            let resp = s.http.get(s.url(&path)).send().await.unwrap();
            assert_error(resp, 404, "not_found").await;
        }
    }
}
