//! PostgreSQL unavailable, then back: while the database cannot be reached every request that
//! needs it answers 503 with a JSON error (no write claims success, introspection never says
//! "inactive"), and when it returns the node recovers without a restart.
//!
//! The outage is made by a TCP proxy between the node and PostgreSQL that this test can cut
//! (dropping every connection and refusing new ones) and restore, so the shared PostgreSQL
//! server the other tests use keeps running.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{admin_at, post_form_at, Auth, Backend, Process, TestClient, TestDb, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy to PostgreSQL on 127.0.0.1:5432 that can be switched off and on.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                links2.lock().unwrap().push(link);
            }
        });
        Self { addr, up, links }
    }

    /// Cuts every open connection and refuses new ones.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn introspect(
    http: &reqwest::Client,
    base: &str,
    svc: &TestClient,
    token: &str,
) -> reqwest::Response {
    post_form_at(
        http,
        base,
        "/oauth2/introspect",
        Auth::Basic(svc),
        &[("token", token)],
    )
    .await
}

async fn revoke(
    http: &reqwest::Client,
    base: &str,
    svc: &TestClient,
    token: &str,
) -> reqwest::Response {
    post_form_at(
        http,
        base,
        "/oauth2/revoke",
        Auth::Basic(svc),
        &[("token", token)],
    )
    .await
}

async fn issue(http: &reqwest::Client, base: &str, svc: &TestClient) -> reqwest::Response {
    post_form_at(
        http,
        base,
        "/oauth2/token",
        Auth::Basic(svc),
        &[("grant_type", "client_credentials")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_everything_is_503_and_the_node_recovers_without_restart() {
    let db = TestDb::fresh_on(Backend::Postgres).await;
    let proxy = Proxy::start().await;
    let url = db
        .url_string()
        .replace("127.0.0.1:5432", &proxy.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let node = Process::serve(
        dir.path(),
        &[
            "--database-url",
            &url,
            "--admin-token",
            ADMIN_TOKEN,
            "--cleanup-interval",
            "0",
        ],
        &[],
    );
    let http = reqwest::Client::new();
    let base = node.base.as_str();
    let resp = admin_at(
        &http,
        base,
        Method::POST,
        "/tenants/default/clients",
        Some(json!({ "client_id": "svc", "client_secret": "svc-secret", "grant_types": ["client_credentials"] })),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let svc = TestClient {
        id: "svc".into(),
        secret: Some("svc-secret".into()),
    };
    let at: Value = issue(&http, base, &svc).await.json().await.unwrap();
    let at = at["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        introspect(&http, base, &svc, &at)
            .await
            .json::<Value>()
            .await
            .unwrap()["active"],
        true
    );

    proxy.down();
    for round in 0..3 {
        let resp = introspect(&http, base, &svc, &at).await;
        assert_eq!(resp.status(), 503, "introspect, round {round}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(
            body.get("active").is_none(),
            "never an answer about the token: {body}"
        );

        let resp = revoke(&http, base, &svc, &at).await;
        assert_eq!(resp.status(), 503, "revoke, round {round}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"],
            "temporarily_unavailable"
        );

        assert_eq!(
            issue(&http, base, &svc).await.status(),
            503,
            "issue, round {round}"
        );
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let live = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(live.status(), 200, "the process itself is alive");
    }

    proxy.restore();
    // Bounded: the first requests after the restore may still meet a dead pooled connection.
    let mut recovered = false;
    for _ in 0..20 {
        let resp = introspect(&http, base, &svc, &at).await;
        if resp.status() == 200 {
            // The revocations refused during the outage did not happen.
            assert_eq!(resp.json::<Value>().await.unwrap()["active"], true);
            recovered = true;
            break;
        }
        assert_eq!(resp.status(), 503);
    }
    assert!(recovered, "the node never recovered");
    let mut revoked = false;
    for _ in 0..20 {
        let resp = revoke(&http, base, &svc, &at).await;
        if resp.status() == 200 {
            revoked = true;
            break;
        }
        assert_eq!(resp.status(), 503);
    }
    assert!(revoked, "writes never recovered");
    let after = introspect(&http, base, &svc, &at)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(after, json!({ "active": false }));
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
