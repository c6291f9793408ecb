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
