//! Several latch nodes on one PostgreSQL database: a revocation accepted by any node holds on
//! every node from the very next request, and races between nodes have exactly one winner.
//! Each node is a real `latch serve` process.

mod common;

use common::{admin_at, post_form_at, Auth, Backend, Process, TestClient, TestDb, ADMIN_TOKEN};
use reqwest::{Method, Response};
use serde_json::{json, Value};

struct Cluster {
    nodes: Vec<Process>,
    http: reqwest::Client,
    /// Keeps the schema alive until the nodes are gone (fields drop in order).
    _db: TestDb,
    app_name: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// `n` nodes on a fresh schema. Their connections carry an application name of their
    /// own, so a test can cut exactly them off.
    async fn start(n: usize) -> Self {
        let db = TestDb::fresh_on(Backend::Postgres).await;
        let app_name = format!("latch_{}", db.schema.as_deref().unwrap());
        let url = format!("{}&application_name={app_name}", db.url_string());
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes = dirs
            .iter()
            .map(|d| {
                Process::serve(
                    d.path(),
                    &[
                        "--database-url",
                        &url,
                        "--admin-token",
                        ADMIN_TOKEN,
                        "--cleanup-interval",
                        "0",
                    ],
                    &[],
                )
            })
            .collect();
        Self {
            nodes,
            http: reqwest::Client::new(),
            _db: db,
            app_name,
            _dirs: dirs,
        }
    }

    fn base(&self, node: usize) -> &str {
        &self.nodes[node].base
    }

    async fn form(
        &self,
        node: usize,
        path: &str,
        auth: Auth<'_>,
        pairs: &[(&str, &str)],
    ) -> Response {
        post_form_at(&self.http, self.base(node), path, auth, pairs).await
    }

    async fn admin(
        &self,
        node: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        admin_at(&self.http, self.base(node), method, path, body).await
    }

    async fn client(&self, node: usize, id: &str) -> TestClient {
        let secret = format!("{id}-secret");
        let resp = self
            .admin(
                node,
                Method::POST,
                "/tenants/default/clients",
                Some(json!({
                    "client_id": id,
                    "client_secret": secret,
                    "grant_types": ["client_credentials", "refresh_token"],
                    "scope": "read",
                })),
            )
            .await;
        assert_eq!(resp.status(), 201);
        TestClient {
            id: id.into(),
            secret: Some(secret),
        }
    }

    async fn grant(&self, node: usize, client: &TestClient, subject: &str) -> Value {
        let resp = self
            .admin(
                node,
                Method::POST,
                "/tenants/default/grants",
                Some(json!({ "client_id": client.id, "subject": subject })),
            )
            .await;
        assert_eq!(resp.status(), 201);
        resp.json().await.unwrap()
    }

    async fn active(&self, node: usize, rs: &TestClient, token: &str) -> bool {
        let resp = self
            .form(
                node,
                "/oauth2/introspect",
                Auth::Basic(rs),
                &[("token", token)],
            )
            .await;
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()["active"] == json!(true)
    }

    async fn token(&self, node: usize, client: &TestClient) -> Response {
        self.form(
            node,
            "/oauth2/token",
            Auth::Basic(client),
            &[("grant_type", "client_credentials")],
        )
        .await
    }

    async fn refresh(&self, node: usize, client: &TestClient, rt: &str) -> Response {
        self.form(
            node,
            "/oauth2/token",
            Auth::Basic(client),
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
        .await
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_holds_on_every_node_at_once() {
    let c = Cluster::start(3).await;
    let app = c.client(0, "app").await;
    let rs = c.client(1, "rs").await;

    let at = s(
        &c.token(0, &app).await.json().await.unwrap(),
        "access_token",
    );
    assert!(c.active(1, &rs, &at).await);
    let resp = c
        .form(2, "/oauth2/revoke", Auth::Basic(&app), &[("token", &at)])
        .await;
    assert_eq!(resp.status(), 200);
    assert!(!c.active(0, &rs, &at).await, "node A");
    assert!(!c.active(1, &rs, &at).await, "node B");

    // Log out everywhere through the admin API of one node.
    let g1 = c.grant(0, &app, "alice").await;
    let g2 = c.grant(1, &rs, "alice").await;
    let bob = c.grant(2, &app, "bob").await;
    for node in 0..3 {
        assert!(c.active(node, &rs, &s(&g1, "refresh_token")).await);
    }
    let resp = c
        .admin(
            1,
            Method::DELETE,
            "/tenants/default/subjects/alice/grants",
            None,
        )
        .await;
    assert_eq!(resp.json::<Value>().await.unwrap()["revoked_grants"], 2);
    for node in 0..3 {
        for g in [&g1, &g2] {
            assert!(
                !c.active(node, &rs, &s(g, "access_token")).await,
                "node {node}"
            );
            assert!(
                !c.active(node, &rs, &s(g, "refresh_token")).await,
                "node {node}"
            );
        }
        assert!(
            c.active(node, &rs, &s(&bob, "access_token")).await,
            "bob on node {node}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_removal_and_secret_rotation_take_effect_on_every_node_at_once() {
    let c = Cluster::start(3).await;
    let rs = c.client(0, "rs").await;
    let app = c.client(0, "app").await;
    // Every node verifies (and caches) the secret first.
    for node in 0..3 {
        assert_eq!(c.token(node, &app).await.status(), 200);
    }
    let resp = c
        .admin(
            0,
            Method::POST,
            "/tenants/default/clients/app/secret",
            Some(json!({ "client_secret": "new-secret" })),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let rotated = TestClient {
        id: "app".into(),
        secret: Some("new-secret".into()),
    };
    for node in 0..3 {
        assert_eq!(
            c.token(node, &app).await.status(),
            401,
            "old secret on node {node}"
        );
        assert_eq!(
            c.token(node, &rotated).await.status(),
            200,
            "new secret on node {node}"
        );
    }

    let at = s(
        &c.token(1, &rotated).await.json().await.unwrap(),
        "access_token",
    );
    let resp = c
        .admin(2, Method::DELETE, "/tenants/default/clients/app", None)
        .await;
    assert_eq!(resp.status(), 200);
    for node in 0..3 {
        assert!(!c.active(node, &rs, &at).await, "token on node {node}");
        assert_eq!(
            c.token(node, &rotated).await.status(),
            401,
            "credentials on node {node}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_rotating_one_refresh_token_have_exactly_one_winner_every_time() {
    let c = Cluster::start(2).await;
    let app = c.client(0, "app").await;
    let rs = c.client(0, "rs").await;
    for round in 0..100 {
        let g = c.grant(round % 2, &app, "alice").await;
        let rt = s(&g, "refresh_token");
        let (a, b) = tokio::join!(c.refresh(0, &app, &rt), c.refresh(1, &app, &rt));
        let (sa, sb) = (a.status().as_u16(), b.status().as_u16());
        let (winner, loser) = match (sa, sb) {
            (200, 400) => (a, b),
            (400, 200) => (b, a),
            other => panic!("round {round}: expected one 200 and one 400, got {other:?}"),
        };
        assert_eq!(
            loser.json::<Value>().await.unwrap()["error"],
            "invalid_grant"
        );
        // The loser's attempt is a reuse: the grant dies, the winner's new tokens with it.
        let won: Value = winner.json().await.unwrap();
        assert!(
            !c.active(round % 2, &rs, &s(&won, "refresh_token")).await,
            "round {round}"
        );
        assert!(
            !c.active(1 - round % 2, &rs, &s(&won, "access_token")).await,
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revoke_and_refresh_never_leave_a_live_token() {
    let c = Cluster::start(2).await;
    let app = c.client(0, "app").await;
    let rs = c.client(0, "rs").await;
    for round in 0..50 {
        let g = c.grant(0, &app, "alice").await;
        let rt = s(&g, "refresh_token");
        let pairs = [("token", rt.as_str())];
        let (revoked, refreshed) = tokio::join!(
            c.form(0, "/oauth2/revoke", Auth::Basic(&app), &pairs),
            c.refresh(1, &app, &rt)
        );
        assert_eq!(revoked.status(), 200, "round {round}");
        let mut tokens = vec![s(&g, "access_token"), rt.clone()];
        // The refresh won (new tokens, which the revocation must have killed too) or lost to
        // the revocation; nothing else.
        let status = refreshed.status();
        let body: Value = refreshed.json().await.unwrap();
        match status.as_u16() {
            200 => {
                tokens.push(s(&body, "access_token"));
                tokens.push(s(&body, "refresh_token"));
            }
            400 => assert_eq!(body["error"], "invalid_grant", "round {round}: {body}"),
            other => panic!("round {round}: the refresh answered {other}: {body}"),
        }
        for t in &tokens {
            for node in 0..2 {
                assert!(
                    !c.active(node, &rs, t).await,
                    "round {round}: a live token on node {node}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_when_their_database_connections_are_cut() {
    let c = Cluster::start(2).await;
    let app = c.client(0, "app").await;
    let rs = c.client(0, "rs").await;
    let at = s(
        &c.token(0, &app).await.json().await.unwrap(),
        "access_token",
    );
    assert!(c.active(1, &rs, &at).await);

    let cut = common::pg_query_i64(&format!(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = '{}'",
        c.app_name
    ))
    .await;
    // Each node holds at least its writer's and its hot reads' connections.
    assert!(cut >= 4, "cut {cut} connections of the two nodes");

    // Until a node has reconnected it may answer 503, but never a wrong answer; within a
    // bounded number of requests every node answers again.
    for node in 0..2 {
        let mut answered = false;
        for _ in 0..50 {
            let resp = c
                .form(
                    node,
                    "/oauth2/introspect",
                    Auth::Basic(&rs),
                    &[("token", &at)],
                )
                .await;
            match resp.status().as_u16() {
                200 => {
                    assert_eq!(resp.json::<Value>().await.unwrap()["active"], true);
                    answered = true;
                    break;
                }
                503 => continue,
                other => panic!("node {node} answered {other}"),
            }
        }
        assert!(answered, "node {node} never recovered");
    }
    // Writes recover too: a revocation is either refused (503) or holds everywhere.
    let mut revoked = false;
    for _ in 0..50 {
        let resp = c
            .form(1, "/oauth2/revoke", Auth::Basic(&app), &[("token", &at)])
            .await;
        match resp.status().as_u16() {
            200 => {
                revoked = true;
                break;
            }
            503 => continue,
            other => panic!("revoke answered {other}"),
        }
    }
    assert!(revoked, "writes never recovered");
    for node in 0..2 {
        assert!(!c.active(node, &rs, &at).await);
    }
}

/// What a tenant's removal, a client's grants' revocation and the CLI need beyond the
/// cluster's basics: a tenant's paths, the exact answers of introspection and the CLI.
impl Cluster {
    /// The tenant's path prefix: `""` for `default`, `/tenants/{tenant}` otherwise.
    fn prefix(tenant: &str) -> String {
        if tenant == "default" {
            String::new()
        } else {
            format!("/tenants/{tenant}")
        }
    }

    /// Registers a confidential client `id` (secret `{id}-secret`) in `tenant` through `node`,
    /// allowed both grants, checking the answer.
    async fn client_in(&self, node: usize, tenant: &str, id: &str) -> TestClient {
        let secret = format!("{id}-secret");
        let resp = self
            .admin(
                node,
                Method::POST,
                &format!("/tenants/{tenant}/clients"),
                Some(json!({
                    "client_id": id,
                    "client_secret": secret,
                    "grant_types": ["client_credentials", "refresh_token"],
                    "scope": "read",
                })),
            )
            .await;
        assert_eq!(resp.status(), 201, "client {id} in {tenant} on node {node}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["client_id"], id, "{body}");
        TestClient {
            id: id.into(),
            secret: Some(secret),
        }
    }

    /// Creates tenant `tenant` through `node`, checking the answer exactly.
    async fn create_tenant(&self, node: usize, tenant: &str) {
        let resp = self
            .admin(
                node,
                Method::POST,
                "/tenants",
                Some(json!({ "tenant_id": tenant })),
            )
            .await;
        assert_eq!(resp.status(), 201);
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({
                "tenant_id": tenant,
                "issuer": format!("{}/tenants/{tenant}", self.base(node)),
            })
        );
    }

    /// A grant for `subject` in `tenant` through `node`'s admin API: the token response.
    async fn grant_in(
        &self,
        node: usize,
        tenant: &str,
        client: &TestClient,
        subject: &str,
    ) -> Value {
        let resp = self
            .admin(
                node,
                Method::POST,
                &format!("/tenants/{tenant}/grants"),
                Some(json!({ "client_id": client.id, "subject": subject })),
            )
            .await;
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        assert_eq!(body["scope"], "read", "{body}");
        body
    }

    /// A `client_credentials` access token from `tenant`'s token endpoint at `node`.
    async fn token_in(&self, node: usize, tenant: &str, client: &TestClient) -> Response {
        self.form(
            node,
            &format!("{}/oauth2/token", Self::prefix(tenant)),
            Auth::Basic(client),
            &[("grant_type", "client_credentials")],
        )
        .await
    }

    /// A refresh at `tenant`'s token endpoint at `node`.
    async fn refresh_in(
        &self,
        node: usize,
        tenant: &str,
        client: &TestClient,
        rt: &str,
    ) -> Response {
        self.form(
            node,
            &format!("{}/oauth2/token", Self::prefix(tenant)),
            Auth::Basic(client),
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
        .await
    }

    /// A successful token response from `resp`: `200`, a Bearer token with scope `read`.
    async fn issued(resp: Response) -> Value {
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        assert_eq!(body["scope"], "read", "{body}");
        assert!(body["access_token"].is_string(), "{body}");
        body
    }

    /// Introspects `token` at `tenant`'s endpoint at `node` as `rs`: status and body.
    async fn introspect_in(
        &self,
        node: usize,
        tenant: &str,
        rs: &TestClient,
        token: &str,
    ) -> (u16, Value) {
        let resp = self
            .form(
                node,
                &format!("{}/oauth2/introspect", Self::prefix(tenant)),
                Auth::Basic(rs),
                &[("token", token)],
            )
            .await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Asserts that `token` introspects at `node` as dead: `200 {"active": false}`.
    async fn assert_dead(
        &self,
        node: usize,
        tenant: &str,
        rs: &TestClient,
        token: &str,
        what: &str,
    ) {
        assert_eq!(
            self.introspect_in(node, tenant, rs, token).await,
            (200, json!({ "active": false })),
            "{what} on node {node}"
        );
    }

    /// [`assert_live`](Self::assert_live) for each of `tokens` (each with its claims and, if
    /// known, its grant) at `node`.
    async fn assert_all_live(
        &self,
        node: usize,
        tenant: &str,
        rs: &TestClient,
        tokens: &[Known],
        what: &str,
    ) {
        for (token, claims, grant) in tokens {
            self.assert_live(node, tenant, rs, token, *claims, grant.as_deref(), what)
                .await;
        }
    }

    /// Asserts that `token` introspects at `node` as live, with exactly the members latch
    /// answers for it: those known beforehand by value, the rest (times, ids) by form.
    #[allow(clippy::too_many_arguments)]
    async fn assert_live(
        &self,
        node: usize,
        tenant: &str,
        rs: &TestClient,
        token: &str,
        (client_id, sub, token_use): (&str, &str, &str),
        grant_id: Option<&str>,
        what: &str,
    ) {
        let (status, body) = self.introspect_in(node, tenant, rs, token).await;
        assert_eq!(status, 200, "{what} on node {node}: {body}");
        let (exp, iat) = (body["exp"].as_i64(), body["iat"].as_i64());
        assert!(
            matches!((exp, iat), (Some(e), Some(i)) if e > i),
            "{what} on node {node}: {body}"
        );
        let jti = body["jti"].as_str().unwrap_or_default();
        assert!(!jti.is_empty(), "{what} on node {node}: {body}");
        let gid = body["grant_id"].as_str().unwrap_or_default();
        assert!(gid.starts_with("g_"), "{what} on node {node}: {body}");
        if let Some(g) = grant_id {
            assert_eq!(gid, g, "{what} on node {node}: {body}");
        }
        let mut want = json!({
            "active": true,
            "scope": "read",
            "client_id": client_id,
            "sub": sub,
            "exp": exp,
            "iat": iat,
            "token_use": token_use,
            "iss": format!("{}{}", self.base(node), Self::prefix(tenant)),
            "jti": jti,
            "grant_id": gid,
        });
        if token_use == "access_token" {
            want["token_type"] = "Bearer".into();
        }
        assert_eq!(body, want, "{what} on node {node}");
    }
}

/// Asserts an OAuth error answer exactly: status, JSON content type, and body.
async fn assert_error_exactly(resp: Response, status: u16, error: &str, description: &str) {
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap();
    assert_eq!(
        (got, content_type.as_deref()),
        (status, Some("application/json")),
        "{body}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "error": error, "error_description": description })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_removed_through_one_node_is_gone_on_every_node_at_once() {
    let c = Cluster::start(3).await;
    c.create_tenant(0, "acme").await;
    // The same client ids in both tenants: only acme's may die.
    let app = c.client_in(1, "acme", "app").await;
    let rs = c.client_in(1, "acme", "rs").await;
    let dapp = c.client_in(1, "default", "app").await;
    let drs = c.client_in(1, "default", "rs").await;

    // Everything issued through node 1, and seen live there (and on node 2) first.
    let machine = s(
        &Cluster::issued(c.token_in(1, "acme", &app).await).await,
        "access_token",
    );
    let alice = c.grant_in(1, "acme", &app, "alice").await;
    let acme_tokens = machine_and_alice("app", &machine, &alice);
    let d_machine = s(
        &Cluster::issued(c.token_in(1, "default", &dapp).await).await,
        "access_token",
    );
    let default_tokens = machine_and_alice(
        "app",
        &d_machine,
        &c.grant_in(1, "default", &dapp, "alice").await,
    );
    for node in 1..3 {
        c.assert_all_live(node, "acme", &rs, &acme_tokens, "acme's token")
            .await;
    }

    let resp = c.admin(0, Method::DELETE, "/tenants/acme", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({ "tenant_id": "acme", "deleted": true })
    );

    // From the very next request, every node answers for acme as for a tenant that never
    // was: introspection, a new token, a refresh.
    for node in [1, 2, 0] {
        for (t, _, _) in &acme_tokens {
            let resp = c
                .form(
                    node,
                    "/tenants/acme/oauth2/introspect",
                    Auth::Basic(&rs),
                    &[("token", t)],
                )
                .await;
            assert_error_exactly(resp, 404, "not_found", "no tenant acme").await;
        }
        assert_error_exactly(
            c.token_in(node, "acme", &app).await,
            404,
            "not_found",
            "no tenant acme",
        )
        .await;
        assert_error_exactly(
            c.refresh_in(node, "acme", &app, &s(&alice, "refresh_token"))
                .await,
            404,
            "not_found",
            "no tenant acme",
        )
        .await;
        // The default tenant's tokens, its namesake clients' included, live on.
        c.assert_all_live(node, "default", &drs, &default_tokens, "default's token")
            .await;
    }
    // Nor does acme's token pass at the default tenant (it never did).
    c.assert_dead(1, "default", &drs, &machine, "acme's token at default")
        .await;
    let resp = c.admin(2, Method::GET, "/tenants", None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({ "tenants": ["default"], "next_after": null })
    );
    let resp = c
        .admin(1, Method::GET, "/tenants/acme/clients/app", None)
        .await;
    assert_error_exactly(resp, 404, "not_found", "no tenant acme").await;

    // The tokens themselves died: a tenant and clients created again under the same names,
    // through another node, revive none of them, while what they obtain now lives.
    c.create_tenant(2, "acme").await;
    let app = c.client_in(2, "acme", "app").await;
    let rs = c.client_in(2, "acme", "rs").await;
    for node in 0..3 {
        for (t, _, _) in &acme_tokens {
            c.assert_dead(node, "acme", &rs, t, "acme's old token")
                .await;
        }
    }
    assert_error_exactly(
        c.refresh_in(1, "acme", &app, &s(&alice, "refresh_token"))
            .await,
        400,
        "invalid_grant",
        "the refresh token is expired or revoked",
    )
    .await;
    let fresh = s(
        &Cluster::issued(c.token_in(1, "acme", &app).await).await,
        "access_token",
    );
    for node in 0..3 {
        c.assert_live(
            node,
            "acme",
            &rs,
            &fresh,
            ("app", "app", "access_token"),
            None,
            "a new token",
        )
        .await;
        c.assert_all_live(node, "default", &drs, &default_tokens, "default's token")
            .await;
    }
}

/// A token a test obtained, with the claims introspection must show for it (client,
/// subject, use) and its grant, if known.
type Known = (
    String,
    (&'static str, &'static str, &'static str),
    Option<String>,
);

/// Client `client`'s `client_credentials` token `machine`, and the tokens of its grant for
/// alice (`alice`, the admin API's answer), with their claims and grant.
fn machine_and_alice(client: &'static str, machine: &str, alice: &Value) -> [Known; 3] {
    let grant = || Some(s(alice, "grant_id"));
    [
        (machine.to_owned(), (client, client, "access_token"), None),
        (
            s(alice, "access_token"),
            (client, "alice", "access_token"),
            grant(),
        ),
        (
            s(alice, "refresh_token"),
            (client, "alice", "refresh_token"),
            grant(),
        ),
    ]
}

/// Tokens of client `app` of every kind, issued through node 1: a `client_credentials`
/// access token, a grant for alice, and that grant's refresh at node 1. Returns the tokens
/// with their claims (client, subject, use) and grant, and the live refresh token.
async fn app_tokens_through_node_1(c: &Cluster, app: &TestClient) -> (Vec<Known>, String) {
    let machine = s(
        &Cluster::issued(c.token(1, app).await).await,
        "access_token",
    );
    let alice = c.grant(1, app, "alice").await;
    let refreshed = Cluster::issued(c.refresh(1, app, &s(&alice, "refresh_token")).await).await;
    let rt = s(&refreshed, "refresh_token");
    let g = Some(s(&alice, "grant_id"));
    let tokens = vec![
        (machine, ("app", "app", "access_token"), None),
        (
            s(&alice, "access_token"),
            ("app", "alice", "access_token"),
            g.clone(),
        ),
        (
            s(&refreshed, "access_token"),
            ("app", "alice", "access_token"),
            g.clone(),
        ),
        (rt.clone(), ("app", "alice", "refresh_token"), g),
    ];
    (tokens, rt)
}

/// After a revocation of every grant of `app`: its `tokens` (and its rotated-away refresh
/// token `old_rt`) are dead on every node and its refresh token is refused at node 1, while
/// `other`'s tokens live, and `app` itself obtains live tokens at node 1 (a
/// `client_credentials` token, and a grant that refreshes).
async fn assert_only_apps_grants_died(
    c: &Cluster,
    rs: &TestClient,
    app: &TestClient,
    tokens: &[Known],
    rt: &str,
    other: &[Known],
) {
    for node in [1, 0, 2] {
        for (t, _, _) in tokens {
            c.assert_dead(node, "default", rs, t, "app's token").await;
        }
    }
    assert_error_exactly(
        c.refresh(1, app, rt).await,
        400,
        "invalid_grant",
        "the refresh token is expired or revoked",
    )
    .await;
    for node in 0..3 {
        c.assert_all_live(node, "default", rs, other, "another client's token")
            .await;
    }
    // The client stays: what it obtains from now on lives.
    let machine = s(
        &Cluster::issued(c.token(1, app).await).await,
        "access_token",
    );
    let bob = c.grant(1, app, "bob").await;
    let refreshed = Cluster::issued(c.refresh(1, app, &s(&bob, "refresh_token")).await).await;
    let g = s(&bob, "grant_id");
    for node in 0..3 {
        c.assert_live(
            node,
            "default",
            rs,
            &machine,
            ("app", "app", "access_token"),
            None,
            "a new token",
        )
        .await;
        for t in ["access_token", "refresh_token"] {
            c.assert_live(
                node,
                "default",
                rs,
                &s(&refreshed, t),
                ("app", "bob", t),
                Some(&g),
                "a new grant's token",
            )
            .await;
        }
    }
}

/// Tokens of client `other` (a client credentials token and a grant for alice) through
/// node 1.
async fn other_tokens_through_node_1(c: &Cluster, other: &TestClient) -> [Known; 3] {
    assert_eq!(other.id, "other");
    let machine = s(
        &Cluster::issued(c.token(1, other).await).await,
        "access_token",
    );
    machine_and_alice("other", &machine, &c.grant(1, other, "alice").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_clients_grants_on_one_node_kills_its_tokens_on_every_node_at_once() {
    let c = Cluster::start(3).await;
    let rs = c.client(0, "rs").await;
    let app = c.client(0, "app").await;
    let other = c.client(0, "other").await;
    let (tokens, rt) = app_tokens_through_node_1(&c, &app).await;
    let others = other_tokens_through_node_1(&c, &other).await;
    c.assert_all_live(1, "default", &rs, &tokens, "app's token")
        .await;

    let resp = c
        .admin(
            0,
            Method::DELETE,
            "/tenants/default/clients/app/grants",
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    // Two grants; the machine's token, and alice's first access token, her second and
    // her refresh token (the first was rotated away, dead already).
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({ "client_id": "app", "revoked_grants": 2, "revoked_tokens": 4 })
    );
    assert_only_apps_grants_died(&c, &rs, &app, &tokens, &rt, &others).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_revoking_a_clients_grants_beside_live_nodes_kills_its_tokens_on_every_node() {
    let c = Cluster::start(3).await;
    let rs = c.client(0, "rs").await;
    let app = c.client(0, "app").await;
    let other = c.client(2, "other").await;
    let (tokens, rt) = app_tokens_through_node_1(&c, &app).await;
    let others = other_tokens_through_node_1(&c, &other).await;
    for node in 0..3 {
        c.assert_all_live(node, "default", &rs, &tokens, "app's token")
            .await;
    }

    let url = c._db.url_string();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        common::run_cli(
            dir.path(),
            &["client", "revoke-grants", "app", "--database-url", &url],
            None,
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "latch client revoke-grants: {stderr}");
    assert_eq!(stderr, "");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed,
        json!({ "client_id": "app", "revoked_grants": 2, "revoked_tokens": 4 })
    );
    assert_only_apps_grants_died(&c, &rs, &app, &tokens, &rt, &others).await;

    // The revocation is recorded in the tenant's trail, as the CLI's.
    let resp = c
        .admin(
            2,
            Method::GET,
            "/tenants/default/audit?client_subject=app",
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let page: Value = resp.json().await.unwrap();
    let records: Vec<&Value> = page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .filter(|e| e["grant_id"].is_null())
        .collect();
    assert_eq!(records.len(), 1, "{page}");
    let mut record = records[0].clone();
    assert!(record["id"].is_i64() && record["at"].is_i64(), "{record}");
    record["id"] = Value::Null;
    record["at"] = Value::Null;
    assert_eq!(
        record,
        json!({
            "id": null,
            "at": null,
            "actor": "admin",
            "route": "cli",
            "reason": "admin",
            "grant_id": null,
            "subject": "app",
            "subject_kind": "client",
            "grants": 2,
            "tokens": 4,
            "address": null,
        })
    );
}
