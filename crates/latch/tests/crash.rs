//! Crash safety: `latch serve` is killed with SIGKILL while many clients revoke (or rotate)
//! tokens, at a random moment, and restarted on the same database. Every revocation that was
//! answered `200` must still hold; every token never sent must still be active; a refresh
//! token whose rotation was answered must never work again while its successor does; and the
//! database must open cleanly (the server starts and is ready; SQLite's integrity check
//! passes).
//!
//! Each test runs [`ROUNDS`] kill/restart cycles on one database, on SQLite (a file) and on
//! PostgreSQL. The kill point is chosen at random per round as a number of acknowledged
//! requests, never as a time; the seed is printed, and `LATCH_CRASH_SEED` replays it (the
//! interleaving of the concurrent requests still varies from run to run). Everything is
//! bounded by counts.

#[macro_use]
mod common;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{admin_at, basic_header, form, Process, TestDb, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

/// Kill/restart cycles per test.
const ROUNDS: usize = 5;
/// Concurrent clients.
const WORKERS: usize = 16;
/// Access tokens issued per round, and how many of them are sent for revocation.
const TOKENS: usize = 300;
const REVOKED: usize = 240;
/// Grants created per round, and how many of their refresh tokens are rotated.
const GRANTS: usize = 200;
const ROTATED: usize = 160;
/// Rotated refresh tokens replayed after each restart (each replay kills its grant).
const REPLAYS: usize = 8;

const CLIENT_ID: &str = "svc";
const CLIENT_SECRET: &str = "svc-secret";

/// xorshift64*: enough randomness for kill points and shuffles, and reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock(test: &str) -> Self {
        let seed = std::env::var("LATCH_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
            });
        let backend = common::BACKEND.try_with(|b| *b).ok();
        eprintln!("{test} on {backend:?}: LATCH_CRASH_SEED={seed}");
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.between(0, i));
        }
    }
}

fn serve(dir: &Path, db: &TestDb) -> Process {
    let url = db.url_string();
    Process::serve(
        dir,
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
}

/// A server process that any request task can kill.
#[derive(Clone)]
struct Node {
    process: Arc<Mutex<Option<Process>>>,
    base: String,
    http: reqwest::Client,
}

impl Node {
    fn start(dir: &Path, db: &TestDb) -> Self {
        let process = serve(dir, db);
        Self {
            base: process.base.clone(),
            process: Arc::new(Mutex::new(Some(process))),
            http: reqwest::Client::new(),
        }
    }

    /// SIGKILL (`Child::kill`), and reap.
    fn kill(&self) {
        if let Some(p) = self.process.lock().unwrap().as_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM: a graceful stop, which must exit 0.
    fn terminate(&self) {
        let process = self.process.lock().unwrap().take().expect("running");
        let status = process.terminate();
        assert!(status.success(), "graceful stop: {status}");
    }

    /// A client-authenticated form POST; `Err` when the connection failed (the server died).
    async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Result<(u16, String), String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", basic_header(CLIENT_ID, CLIENT_SECRET))
            .body(form(pairs))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let resp = admin_at(&self.http, &self.base, method, path, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Introspection (the client introspects its own tokens); the server must be up.
    async fn introspect(&self, token: &str) -> Value {
        let (status, body) = self
            .post("/oauth2/introspect", &[("token", token)])
            .await
            .expect("introspection after restart");
        assert_eq!(status, 200, "introspection: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn ready(&self) -> u16 {
        let resp = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .expect("readyz");
        resp.status().as_u16()
    }
}

/// Runs `f` over `items` with [`WORKERS`] concurrent tasks; results in input order.
async fn parallel<T, R, F, Fut>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    let f = Arc::new(f);
    let n = items.len();
    let mut buckets: Vec<Vec<(usize, T)>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        buckets[i % WORKERS].push((i, item));
    }
    let tasks: Vec<_> = buckets
        .into_iter()
        .map(|bucket| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(bucket.len());
                for (i, item) in bucket {
                    out.push((i, f(item).await));
                }
                out
            })
        })
        .collect();
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for task in tasks {
        for (i, r) in task.await.expect("worker") {
            results[i] = Some(r);
        }
    }
    results.into_iter().map(Option::unwrap).collect()
}

/// What happened to one request of the load that the kill interrupted.
#[derive(Clone, Debug, PartialEq)]
enum Fate<T> {
    /// Never sent: the load stopped first.
    Unsent,
    /// Sent, but no complete answer came back (the server died): either outcome is allowed.
    Unacknowledged,
    /// Answered `200`, with what the answer carried.
    Acknowledged(T),
}

/// Runs `request` over `items` with [`WORKERS`] concurrent clients, and kills the server with
/// SIGKILL as soon as `kill_after` requests have been answered `200`. A client stops at its
/// first connection error. `request` returns `Ok(Some(x))` for a `200` carrying `x`,
/// `Ok(None)` for a connection error, and `Err` for any other answer (a test failure).
async fn load_until_killed<T, R, F, Fut>(
    node: &Node,
    items: Vec<T>,
    kill_after: usize,
    request: F,
) -> Vec<Fate<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Node, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<R>, String>> + Send + 'static,
{
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let request = Arc::new(request);
    let n = items.len();
    let mut buckets: Vec<Vec<(usize, T)>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        buckets[i % WORKERS].push((i, item));
    }
    let tasks: Vec<_> = buckets
        .into_iter()
        .map(|bucket| {
            let (node, request) = (node.clone(), request.clone());
            let (acknowledged, killed) = (acknowledged.clone(), killed.clone());
            tokio::spawn(async move {
                let mut fates = Vec::new();
                for (i, item) in bucket {
                    if killed.load(Ordering::SeqCst) {
                        break;
                    }
                    match request(node.clone(), item).await {
                        Ok(Some(r)) => {
                            fates.push((i, Fate::Acknowledged(r)));
                            if acknowledged.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                node.kill();
                                killed.store(true, Ordering::SeqCst);
                            }
                        }
                        Ok(None) => {
                            fates.push((i, Fate::Unacknowledged));
                            break;
                        }
                        Err(unexpected) => panic!("during the load: {unexpected}"),
                    }
                }
                fates
            })
        })
        .collect();
    let mut fates: Vec<Fate<R>> = (0..n).map(|_| Fate::Unsent).collect();
    for task in tasks {
        for (i, fate) in task.await.expect("load worker") {
            fates[i] = fate;
        }
    }
    assert!(
        killed.load(Ordering::SeqCst),
        "the server was never killed: fewer than {kill_after} requests were acknowledged"
    );
    fates
}

/// SQLite's own consistency check of the database file (read-only, so it changes nothing).
fn sqlite_integrity(db: &TestDb) {
    let Some(path) = &db.path else { return };
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the database opens");
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, ["ok"], "PRAGMA integrity_check");
}

/// Starts the first node on a fresh database and registers the test's client.
async fn first_node(dir: &Path, db: &TestDb) -> Node {
    let node = Node::start(dir, db);
    let (status, body) = node
        .admin(
            Method::POST,
            "/tenants/default/clients",
            Some(json!({
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "grant_types": ["client_credentials", "refresh_token"],
                "scope": "read",
            })),
        )
        .await;
    assert_eq!(status, 201, "create client: {body}");
    node
}

/// Restarts on the same database after a kill, checking that it opens cleanly.
async fn restart(dir: &Path, db: &TestDb) -> Node {
    let node = Node::start(dir, db);
    assert_eq!(node.ready().await, 200, "/readyz after the crash");
    sqlite_integrity(db);
    node
}

fn count<T>(fates: &[Fate<T>], f: impl Fn(&Fate<T>) -> bool) -> usize {
    fates.iter().filter(|x| f(x)).count()
}

backend_test! {
    async fn acknowledged_revocations_survive_sigkill() {
        let db = TestDb::fresh().await;
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::from_env_or_clock("acknowledged_revocations_survive_sigkill");
        let mut node = first_node(dir.path(), &db).await;
        // Every token of every round with the state it must keep: active or not.
        let mut settled: Vec<(String, bool)> = Vec::new();

        for round in 0..ROUNDS {
            let issuer = node.clone();
            let mut tokens: Vec<String> = parallel(vec![(); TOKENS], move |()| {
                let node = issuer.clone();
                async move {
                    let (status, body) = node
                        .post("/oauth2/token", &[("grant_type", "client_credentials")])
                        .await
                        .expect("token request");
                    assert_eq!(status, 200, "token: {body}");
                    let v: Value = serde_json::from_str(&body).unwrap();
                    v["access_token"].as_str().unwrap().to_owned()
                }
            })
            .await;
            rng.shuffle(&mut tokens);
            let (to_revoke, untouched) = tokens.split_at(REVOKED);
            let kill_after = rng.between(1, REVOKED * 3 / 4);

            let fates = load_until_killed(&node, to_revoke.to_vec(), kill_after, |node, token: String| async move {
                match node.post("/oauth2/revoke", &[("token", &token)]).await {
                    Ok((200, _)) => Ok(Some(())),
                    Ok((status, body)) => Err(format!("revocation answered {status} {body}")),
                    Err(_) => Ok(None),
                }
            })
            .await;
            eprintln!(
                "{:?} round {round}: killed after {kill_after} acknowledged; {} acknowledged, {} unacknowledged, {} unsent",
                common::BACKEND.with(|b| *b),
                count(&fates, |f| matches!(f, Fate::Acknowledged(_))),
                count(&fates, |f| *f == Fate::Unacknowledged),
                count(&fates, |f| *f == Fate::Unsent) + untouched.len(),
            );

            node = restart(dir.path(), &db).await;
            let checker = node.clone();
            let all: Vec<String> = tokens.clone();
            let states = parallel(all.clone(), move |t| {
                let node = checker.clone();
                async move { node.introspect(&t).await }
            })
            .await;
            for (i, (token, state)) in all.iter().zip(&states).enumerate() {
                let fate = if i < REVOKED { fates[i].clone() } else { Fate::Unsent };
                match fate {
                    Fate::Acknowledged(()) => assert_eq!(
                        *state,
                        json!({ "active": false }),
                        "round {round}: a revocation answered 200 was lost in the crash"
                    ),
                    Fate::Unsent => assert_eq!(
                        state["active"],
                        json!(true),
                        "round {round}: a token never revoked is inactive"
                    ),
                    // Either outcome is correct; from now on it must not change.
                    Fate::Unacknowledged => {}
                }
                settled.push((token.clone(), state["active"] == json!(true)));
            }
        }

        // Later crashes lost nothing of the earlier rounds either.
        let checker = node.clone();
        let tokens: Vec<String> = settled.iter().map(|(t, _)| t.clone()).collect();
        let states = parallel(tokens, move |t| {
            let node = checker.clone();
            async move { node.introspect(&t).await["active"] == json!(true) }
        })
        .await;
        for ((_, expected), active) in settled.iter().zip(states) {
            assert_eq!(active, *expected, "a token changed state across later crashes");
        }
        node.terminate();
        sqlite_integrity(&db);
    }
}

backend_test! {
    async fn acknowledged_rotations_survive_sigkill() {
        let db = TestDb::fresh().await;
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::from_env_or_clock("acknowledged_rotations_survive_sigkill");
        let mut node = first_node(dir.path(), &db).await;

        for round in 0..ROUNDS {
            let granter = node.clone();
            let mut grants: Vec<(String, String)> = parallel((0..GRANTS).collect(), move |i| {
                let node = granter.clone();
                async move {
                    let (status, g) = node
                        .admin(
                            Method::POST,
                            "/tenants/default/grants",
                            Some(json!({ "client_id": CLIENT_ID, "subject": format!("user-{round}-{i}") })),
                        )
                        .await;
                    assert_eq!(status, 201, "grant: {g}");
                    let field = |k: &str| g[k].as_str().unwrap().to_owned();
                    (field("access_token"), field("refresh_token"))
                }
            })
            .await;
            rng.shuffle(&mut grants);
            let kill_after = rng.between(1, ROTATED * 3 / 4);
            let refresh_tokens: Vec<String> = grants[..ROTATED].iter().map(|(_, rt)| rt.clone()).collect();

            let fates = load_until_killed(&node, refresh_tokens, kill_after, |node, rt: String| async move {
                let pairs = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
                match node.post("/oauth2/token", &pairs).await {
                    Ok((200, body)) => {
                        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                        let field = |k: &str| v[k].as_str().map(str::to_owned).ok_or(format!("no {k} in {v}"));
                        Ok(Some((field("access_token")?, field("refresh_token")?)))
                    }
                    Ok((status, body)) => Err(format!("rotation answered {status} {body}")),
                    Err(_) => Ok(None),
                }
            })
            .await;
            let acknowledged: Vec<(usize, (String, String))> = fates
                .iter()
                .enumerate()
                .filter_map(|(i, f)| match f {
                    Fate::Acknowledged(new) => Some((i, new.clone())),
                    _ => None,
                })
                .collect();
            eprintln!(
                "{:?} round {round}: killed after {kill_after} acknowledged; {} acknowledged, {} unacknowledged, {} unsent",
                common::BACKEND.with(|b| *b),
                acknowledged.len(),
                count(&fates, |f| *f == Fate::Unacknowledged),
                count(&fates, |f| *f == Fate::Unsent) + GRANTS - ROTATED,
            );

            node = restart(dir.path(), &db).await;
            // Every old refresh token, and each acknowledged rotation's new tokens.
            let mut probes: Vec<String> = grants.iter().map(|(_, rt)| rt.clone()).collect();
            for (_, (at, rt)) in &acknowledged {
                probes.push(at.clone());
                probes.push(rt.clone());
            }
            let checker = node.clone();
            let states = parallel(probes, move |t| {
                let node = checker.clone();
                async move { node.introspect(&t).await }
            })
            .await;
            let (old, new) = states.split_at(GRANTS);
            for (i, state) in old.iter().enumerate() {
                let fate = if i < ROTATED { fates[i].clone() } else { Fate::Unsent };
                match fate {
                    Fate::Acknowledged(_) => assert_eq!(
                        *state,
                        json!({ "active": false }),
                        "round {round}: a refresh token whose rotation was answered is active again"
                    ),
                    Fate::Unsent => assert_eq!(
                        state["active"],
                        json!(true),
                        "round {round}: a refresh token never used is inactive"
                    ),
                    Fate::Unacknowledged => {}
                }
            }
            for (state, which) in new.iter().zip(["access", "refresh"].iter().cycle()) {
                assert_eq!(
                    state["active"],
                    json!(true),
                    "round {round}: the new {which} token of an acknowledged rotation was lost"
                );
            }

            // No rotated refresh token is accepted again: a replay is refused and, being a
            // reuse, kills the grant, successor included.
            for (i, (_, new_rt)) in acknowledged.iter().take(REPLAYS) {
                let old_rt = &grants[*i].1;
                let pairs = [("grant_type", "refresh_token"), ("refresh_token", old_rt.as_str())];
                let (status, body) = node.post("/oauth2/token", &pairs).await.expect("replay");
                assert_eq!(status, 400, "round {round}: replayed refresh token: {body}");
                assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "invalid_grant");
                assert_eq!(node.introspect(new_rt).await, json!({ "active": false }));
            }
            // A refresh token never used still rotates after the crash.
            let (_, unused) = &grants[GRANTS - 1];
            let pairs = [("grant_type", "refresh_token"), ("refresh_token", unused.as_str())];
            let (status, body) = node.post("/oauth2/token", &pairs).await.expect("refresh");
            assert_eq!(status, 200, "round {round}: an unused refresh token: {body}");
        }
        node.terminate();
        sqlite_integrity(&db);
    }
}
