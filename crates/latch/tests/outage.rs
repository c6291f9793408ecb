//! PostgreSQL unavailable, then back: while the database cannot be reached every request that
//! needs it answers 503 with a JSON error (no write claims success, introspection never says
//! "inactive"), and when it returns the node recovers without a restart.
//!
//! The outage is made by a TCP proxy between the node and PostgreSQL that this test can cut
//! (dropping every connection and refusing new ones) or freeze (connections stay open and
//! accepted, and nothing is answered: a hung server), and restore, so the shared PostgreSQL
//! server the other tests use keeps running.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{
    admin_at, post_form_at, Auth, Backend, OtherNode, Process, TestClient, TestDb, ADMIN_TOKEN,
};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxied connection, and its switch: frozen, it accepts bytes from both sides and passes
/// none on.
type Link = (JoinHandle<()>, watch::Sender<bool>);

/// A TCP proxy to PostgreSQL on 127.0.0.1:5432 that can be switched off and on, or frozen.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Whether connections opened from now on start frozen.
    new_frozen: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<Link>>>,
}

/// Passes bytes from `from` to `to`, holding them while `frozen` says so.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let new_frozen = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let (up2, links2, new_frozen2) = (up.clone(), links.clone(), new_frozen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let (freeze, frozen) = watch::channel(new_frozen2.load(Ordering::SeqCst));
                let link = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect("127.0.0.1:5432").await {
                        let (from_client, to_client) = client.into_split();
                        let (from_server, to_server) = server.into_split();
                        tokio::join!(
                            pump(from_client, to_server, frozen.clone()),
                            pump(from_server, to_client, frozen),
                        );
                    }
                });
                links2.lock().unwrap().push((link, freeze));
            }
        });
        Self {
            addr,
            up,
            new_frozen,
            links,
        }
    }

    /// Keeps every connection open and accepts new ones, but passes nothing on.
    fn freeze(&self) {
        self.new_frozen.store(true, Ordering::SeqCst);
        for (_, freeze) in self.links.lock().unwrap().iter() {
            freeze.send_replace(true);
        }
    }

    /// Connections opened from now on work; those frozen stay so for ever.
    fn unfreeze_new(&self) {
        self.new_frozen.store(false, Ordering::SeqCst);
    }

    /// Cuts every open connection and refuses new ones.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for (link, _) in self.links.lock().unwrap().drain(..) {
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

/// A latch process on `url` with a confidential client `svc`, and an access token it was
/// issued.
struct Node {
    _dir: tempfile::TempDir,
    node: Process,
    http: reqwest::Client,
    svc: TestClient,
    at: String,
}

impl Node {
    async fn start(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node = Process::serve(
            dir.path(),
            &[
                "--database-url",
                url,
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
        Self {
            _dir: dir,
            node,
            http,
            svc,
            at,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_everything_is_503_and_the_node_recovers_without_restart() {
    let db = TestDb::fresh_on(Backend::Postgres).await;
    let proxy = Proxy::start().await;
    let url = db
        .url_string()
        .replace("127.0.0.1:5432", &proxy.addr.to_string());
    let Node {
        _dir,
        node,
        http,
        svc,
        at,
    } = Node::start(&url).await;
    let base = node.base.as_str();
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
        refused(&http, base, &svc, &at, round).await;
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let live = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(live.status(), 200, "the process itself is alive");
    }

    proxy.restore();
    // Bounded: the first requests after the restore may still meet a dead pooled connection.
    recovers(&http, base, &svc, &at).await;
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// Waits for `request`, failing the test if no answer comes within a minute (a node that
/// waits for ever would otherwise hang the test).
async fn answered(
    request: impl std::future::Future<Output = reqwest::Response>,
) -> reqwest::Response {
    tokio::time::timeout(std::time::Duration::from_secs(60), request)
        .await
        .expect("no answer within a minute: the node is waiting for PostgreSQL for ever")
}

/// The first answer to `request`, sent again while it answers `503` (at most 20 times):
/// after an outage, the first requests may still meet a connection that is gone.
async fn recovered<Fut: std::future::Future<Output = reqwest::Response>>(
    request: impl Fn() -> Fut,
    what: &str,
) -> reqwest::Response {
    for _ in 0..20 {
        let resp = answered(request()).await;
        if resp.status() != 503 {
            return resp;
        }
    }
    panic!("{what}: still 503 after 20 tries");
}

/// While PostgreSQL cannot serve: introspection, revocation and issuance each answer `503`
/// with a JSON error, and introspection says nothing about the token.
async fn refused(http: &reqwest::Client, base: &str, svc: &TestClient, at: &str, round: usize) {
    let resp = answered(introspect(http, base, svc, at)).await;
    assert_eq!(resp.status(), 503, "introspect, round {round}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(
        body.get("active").is_none(),
        "never an answer about the token: {body}"
    );
    let resp = answered(revoke(http, base, svc, at)).await;
    assert_eq!(resp.status(), 503, "revoke, round {round}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let resp = answered(issue(http, base, svc)).await;
    assert_eq!(resp.status(), 503, "issue, round {round}");
}

/// Once PostgreSQL serves again: the node answers without a restart, the revocations it
/// refused meanwhile did not happen, and one made now does.
async fn recovers(http: &reqwest::Client, base: &str, svc: &TestClient, at: &str) {
    let resp = recovered(|| introspect(http, base, svc, at), "reads never recovered").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["active"], true);
    let resp = recovered(|| revoke(http, base, svc, at), "writes never recovered").await;
    assert_eq!(resp.status(), 200);
    let after: Value = answered(introspect(http, base, svc, at))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after, json!({ "active": false }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_never_answers_gets_503_within_the_query_timeout_and_the_node_recovers() {
    let db = TestDb::fresh_on(Backend::Postgres).await;
    let proxy = Proxy::start().await;
    // The node's hot reads, pooled reads and writes each wait at most 1 s for an answer.
    let url = format!(
        "{}&query_timeout=1",
        db.url_string()
            .replace("127.0.0.1:5432", &proxy.addr.to_string())
    );
    let Node {
        _dir,
        node,
        http,
        svc,
        at,
    } = Node::start(&url).await;
    let base = node.base.as_str();
    let other: Value = issue(&http, base, &svc).await.json().await.unwrap();
    let other = other["access_token"].as_str().unwrap().to_owned();
    let list_clients = || {
        answered(admin_at(
            &http,
            base,
            Method::GET,
            "/tenants/default/clients",
            None,
        ))
    };

    // First the pool alone, through readiness, which reads nothing else: a pooled connection
    // left idle is handed to the first pooled read once frozen, and must not go back to the
    // pool (no hot read runs meanwhile, which would take it out of the pool itself).
    let ready = || answered(async { http.get(format!("{base}/readyz")).send().await.unwrap() });
    assert_eq!(ready().await.status(), 200);
    proxy.freeze();
    for round in 0..2 {
        assert_eq!(ready().await.status(), 503, "readyz, round {round}");
    }
    proxy.unfreeze_new();
    let resp = recovered(ready, "pooled reads never recovered").await;
    assert_eq!(resp.status(), 200);

    // Then every connection the node holds.
    proxy.freeze();
    // Twice: the second round meets the connections the first one gave up on replaced.
    for round in 0..2 {
        // The hot path's shared connection: introspection reads client and token, and
        // revocation and issuance authenticate the client first.
        refused(&http, base, &svc, &at, round).await;
        // A write that reads nothing first: the committer's connection in round 0, its
        // reconnection in round 1 (a server that never answers the startup).
        let resp = answered(admin_at(
            &http,
            base,
            Method::POST,
            "/tenants",
            Some(json!({ "tenant_id": format!("hung{round}") })),
        ))
        .await;
        assert_eq!(resp.status(), 503, "create tenant, round {round}");
        // A pooled read.
        let resp = list_clients().await;
        assert_eq!(resp.status(), 503, "list clients, round {round}");
        let resp = ready().await;
        assert_eq!(resp.status(), 503, "readyz, round {round}");
    }

    // The connections the node held stay frozen for ever (their backends hung), and new ones
    // work: the node recovers only if it gave up on the frozen ones, since every query
    // queued on a frozen connection waits behind the one it sent first.
    proxy.unfreeze_new();
    recovers(&http, base, &svc, &at).await;
    let still: Value = answered(introspect(&http, base, &svc, &other))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["active"], true, "{still}");
    let clients = list_clients().await;
    assert_eq!(clients.status(), 200);
    let create = || {
        admin_at(
            &http,
            base,
            Method::POST,
            "/tenants",
            Some(json!({ "tenant_id": "after" })),
        )
    };
    let resp = recovered(create, "the committer never recovered").await;
    assert_eq!(resp.status(), 201);
    // The tenants whose creation answered 503 were not created.
    let tenants: Value = answered(admin_at(&http, base, Method::GET, "/tenants", None))
        .await
        .json()
        .await
        .unwrap();
    let names = tenants.to_string();
    assert!(
        names.contains("after") && !names.contains("hung"),
        "{tenants}"
    );
    let ready = ready().await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_given_up_on_has_its_backend_cancelled_so_it_holds_nothing() {
    let db = TestDb::fresh_on(Backend::Postgres).await;
    let url = format!("{}&query_timeout=1", db.url_string());
    let Node {
        _dir,
        node,
        http,
        svc,
        at,
    } = Node::start(&url).await;
    let base = node.base.as_str();

    // Someone holds the tokens table (a migration, an operator): latch's read waits for it.
    let locker = OtherNode::begin(&db, "LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE").await;
    let resp = answered(introspect(&http, base, &svc, &at)).await;
    assert_eq!(resp.status(), 503);
    // Given up on, the read no longer waits in PostgreSQL either: its backend was told to
    // cancel, rather than left holding a connection slot until the lock goes.
    assert!(
        locker.until_none_wait(&db, "tokens").await,
        "latch's backend still waits for the lock after the read was given up on"
    );
    locker.commit().await;
    let resp = recovered(
        || introspect(&http, base, &svc, &at),
        "reads never recovered",
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["active"], true);
}
