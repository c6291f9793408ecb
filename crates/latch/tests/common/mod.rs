//! The black-box test harness: a real latch server on an ephemeral port with a fresh database,
//! driven over HTTP.
//!
//! [`TestServer::start`] runs the server in-process (so tests control its clock instead of
//! sleeping); [`Process`] runs the real `latch` binary for what only a process shows (CLI,
//! stdout/stderr, signals).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use latch::config::Settings;
use latch::server::Server;
use latch_core::clock::ManualClock;
use latch_store::DatabaseUrl;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// The database a test runs on. Every HTTP test runs once per back-end: the
/// [`backend_test!`] macro generates `name::sqlite` and `name::postgres` from one body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    /// The back-end of the running test (set by `backend_test!`).
    pub static BACKEND: Backend;
}

/// The PostgreSQL server the tests use (trust auth, database `test`).
pub const PG_BASE: &str = "postgres://root@127.0.0.1:5432/test";

/// Runs a test body on a back-end.
pub async fn on_backend<F: std::future::Future<Output = ()>>(backend: Backend, body: F) {
    BACKEND.scope(backend, body).await
}

/// Defines an HTTP test once and runs it on both back-ends, as `NAME::sqlite` and
/// `NAME::postgres`.
#[allow(unused_macros)]
macro_rules! backend_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        async fn $name() $body

        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::common::on_backend($crate::common::Backend::Sqlite, super::$name()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::common::on_backend($crate::common::Backend::Postgres, super::$name()).await
            }
        }
    };
}

/// A database for one test: a SQLite file in a temporary folder, or a PostgreSQL schema of
/// its own (dropped afterwards), so tests run in parallel and leave nothing behind.
pub struct TestDb {
    pub url: DatabaseUrl,
    /// The SQLite file (SQLite only).
    pub path: Option<PathBuf>,
    /// The PostgreSQL schema (PostgreSQL only).
    pub schema: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    /// A fresh database on the current test's back-end.
    pub async fn fresh() -> Self {
        Self::fresh_on(BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)).await
    }

    pub async fn fresh_on(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => {
                let path = dir.path().join("latch.db");
                Self {
                    url: DatabaseUrl::SqliteFile(path.clone()),
                    path: Some(path),
                    schema: None,
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let schema = format!("t_{}", random_suffix());
                pg_execute(&format!("CREATE SCHEMA {schema}")).await;
                Self {
                    url: DatabaseUrl::Postgres(pg_url(&schema)),
                    path: None,
                    schema: Some(schema),
                    _dir: dir,
                }
            }
        }
    }

    /// The URL as `--database-url` takes it.
    pub fn url_string(&self) -> String {
        match &self.url {
            DatabaseUrl::Postgres(u) => u.clone(),
            other => other.to_string(),
        }
    }

    /// Runs SQL directly on the database, behind latch's back (to break or inspect it).
    pub async fn execute(&self, sql: &str) {
        match (&self.path, &self.schema) {
            (Some(path), _) => rusqlite::Connection::open(path)
                .and_then(|c| c.execute_batch(sql))
                .expect("sqlite statement"),
            (_, Some(schema)) => pg_execute(&format!("SET search_path TO {schema}; {sql}")).await,
            _ => unreachable!("a test database is SQLite or PostgreSQL"),
        }
    }

    /// True on PostgreSQL (for the few tests whose raw SQL differs by dialect).
    pub fn is_postgres(&self) -> bool {
        self.schema.is_some()
    }

    /// Runs a query returning one integer, directly on the database.
    pub async fn query_i64(&self, sql: &str) -> i64 {
        match (&self.path, &self.schema) {
            (Some(path), _) => rusqlite::Connection::open(path)
                .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
                .expect("sqlite query"),
            (_, Some(schema)) => {
                let (client, conn) =
                    tokio_postgres::connect(&pg_url(schema), tokio_postgres::NoTls)
                        .await
                        .expect("PostgreSQL");
                let conn = tokio::spawn(conn);
                let v: i64 = client.query_one(sql, &[]).await.expect("pg query").get(0);
                drop(client);
                let _ = conn.await;
                v
            }
            _ => unreachable!("a test database is SQLite or PostgreSQL"),
        }
    }

    /// Makes every UPDATE of `table` fail, as a broken disk would.
    pub async fn break_updates(&self, table: &str) {
        match self.schema {
            None => {
                self.execute(&format!(
                    "CREATE TRIGGER broken_{table} BEFORE UPDATE ON {table}                      BEGIN SELECT RAISE(ABORT, 'disk failure'); END;"
                ))
                .await
            }
            Some(_) => {
                self.execute(&format!(
                    "CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS                      $$ BEGIN RAISE EXCEPTION 'disk failure'; END $$;                      CREATE TRIGGER broken_{table} BEFORE UPDATE ON {table}                      FOR EACH ROW EXECUTE FUNCTION broken();"
                ))
                .await
            }
        }
    }

    /// Undoes [`TestDb::break_updates`].
    pub async fn heal_updates(&self, table: &str) {
        match self.schema {
            None => self.execute(&format!("DROP TRIGGER broken_{table};")).await,
            Some(_) => {
                self.execute(&format!(
                    "DROP TRIGGER broken_{table} ON {table}; DROP FUNCTION broken();"
                ))
                .await
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            // Drop can't await; a short-lived thread with its own runtime does the clean-up.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(pg_execute(&format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )))
            })
            .join();
        }
    }
}

fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The URL of a schema in the test database.
pub fn pg_url(schema: &str) -> String {
    format!("{PG_BASE}?options=-c%20search_path%3D{schema}")
}

/// Runs SQL on the test PostgreSQL server.
pub async fn pg_execute(sql: &str) {
    on_base(async |client| {
        client
            .batch_execute(sql)
            .await
            .expect("PostgreSQL statement")
    })
    .await
}

/// Runs a query returning one integer on the test server's base database.
pub async fn pg_query_i64(sql: &str) -> i64 {
    on_base(async |client| {
        client
            .query_one(sql, &[])
            .await
            .expect("PostgreSQL query")
            .get(0)
    })
    .await
}

/// Runs `work` on a connection of its own to the test server's base database.
async fn on_base<T>(work: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let (client, conn) = tokio_postgres::connect(PG_BASE, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (see .ci/run)");
    let conn = tokio::spawn(conn);
    let value = work(&client).await;
    drop(client);
    let _ = conn.await;
    value
}

/// Another node's PostgreSQL session on a test database's schema, holding a transaction
/// open (PostgreSQL ends it after 10 s idle, so a failing test cannot hang the schema's drop).
pub struct OtherNode {
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    /// Its backend's process id: the sessions it blocks name it.
    pid: i32,
}

impl OtherNode {
    /// Opens a transaction on `db` and runs `sql` in it, uncommitted.
    pub async fn begin(db: &TestDb, sql: &str) -> Self {
        let schema = db.schema.as_deref().expect("a PostgreSQL test database");
        let (client, conn) = tokio_postgres::connect(&pg_url(schema), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL");
        let conn = tokio::spawn(conn);
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("the other node's backend")
            .get(0);
        client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = '10s'; BEGIN; {sql}"
            ))
            .await
            .expect("the other node's statements");
        Self { client, conn, pid }
    }

    /// Yields until a statement containing `statement` waits for a lock this session holds,
    /// failing if `task`, which runs it, finished first: it did not wait.
    pub async fn until_waited_on<T>(
        &self,
        db: &TestDb,
        statement: &str,
        task: &tokio::task::JoinHandle<T>,
    ) {
        self.until_waited_on_by_all(db, statement, &[task]).await;
    }

    /// [`OtherNode::until_waited_on`], until as many such statements wait as there are
    /// `tasks`, failing if any of them finished first.
    pub async fn until_waited_on_by_all<T>(
        &self,
        db: &TestDb,
        statement: &str,
        tasks: &[&tokio::task::JoinHandle<T>],
    ) {
        let waiting = self.waiting_sql(statement);
        let mut polls = 0;
        while db.query_i64(&waiting).await < tasks.len() as i64 {
            assert!(
                tasks.iter().all(|t| !t.is_finished()),
                "{statement}: one did not wait"
            );
            polls += 1;
            assert!(polls < 1_000, "{statement}: not waiting for a lock");
            tokio::task::yield_now().await;
        }
    }

    /// Yields until a statement containing `statement` has waited for a lock this session
    /// holds for at least `at_least` since it began; false if `task`, which runs it,
    /// finished first (it gave up waiting, or this session's transaction ended).
    #[allow(dead_code)]
    pub async fn waited_on_for<T>(
        &self,
        db: &TestDb,
        statement: &str,
        at_least: std::time::Duration,
        task: &tokio::task::JoinHandle<T>,
    ) -> bool {
        let waited = format!(
            "{} AND clock_timestamp() - query_start >= interval '{} milliseconds'",
            self.waiting_sql(statement),
            at_least.as_millis()
        );
        while !task.is_finished() {
            if db.query_i64(&waited).await > 0 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        false
    }

    /// How many sessions running a statement containing `statement` wait now for a lock
    /// this session holds ([`OtherNode::waiting_sql`]).
    #[allow(dead_code)]
    pub async fn waiting(&self, db: &TestDb, statement: &str) -> i64 {
        db.query_i64(&self.waiting_sql(statement)).await
    }

    /// Counts the sessions running a statement containing `statement` that wait for a lock
    /// this one holds, directly or behind another waiter (a second waiter for a row waits for
    /// the first). Only those: tests in other schemas of the database wait for locks of their
    /// own.
    fn waiting_sql(&self, statement: &str) -> String {
        format!(
            "WITH RECURSIVE blocked(pid) AS ( \
               SELECT pid FROM pg_stat_activity WHERE {} = ANY (pg_blocking_pids(pid)) \
               UNION \
               SELECT a.pid FROM pg_stat_activity a \
               JOIN blocked b ON b.pid = ANY (pg_blocking_pids(a.pid))) \
             SELECT count(*) FROM pg_stat_activity \
             WHERE pid IN (SELECT pid FROM blocked) AND query LIKE '%{statement}%'",
            self.pid
        )
    }

    /// Yields until no statement containing `statement` waits for a lock this session holds;
    /// false if some still wait after a thousand polls (a few seconds, well within the
    /// session's 10 s allowance for idling in its transaction).
    #[allow(dead_code)]
    pub async fn until_none_wait(&self, db: &TestDb, statement: &str) -> bool {
        let waiting = self.waiting_sql(statement);
        for _ in 0..1_000 {
            if db.query_i64(&waiting).await == 0 {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    /// Commits the transaction and closes the session.
    pub async fn commit(self) {
        self.client.batch_execute("COMMIT").await.expect("COMMIT");
        drop(self.client);
        let _ = self.conn.await;
    }
}

/// The admin token every test server uses.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A client the tests registered, with its secret in clear.
#[derive(Clone, Debug)]
pub struct TestClient {
    pub id: String,
    pub secret: Option<String>,
}

/// How a request authenticates its client.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// `Authorization: Basic` with the RFC 6749 §2.3.1 encoding.
    Basic(&'a TestClient),
    /// `client_id` and `client_secret` in the body.
    Post(&'a TestClient),
    /// Only `client_id` in the body (public clients).
    Public(&'a TestClient),
    /// No credentials.
    None,
}

/// A running server with a fresh database.
pub struct TestServer {
    server: Option<Server>,
    pub base: String,
    pub addr: SocketAddr,
    /// Where the health checks, metrics and admin API are served: the operations listener's
    /// base URL if the server has one, else `base`.
    pub operations_base: String,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    pub db: TestDb,
    /// A confidential client that exists only to introspect.
    pub introspector: TestClient,
}

/// Percent-encodes for `application/x-www-form-urlencoded` (and RFC 6749 §2.3.1).
pub fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Builds a form body from pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `Authorization: Basic` value for a client (RFC 6749 §2.3.1).
pub fn basic_header(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", form_encode(id), form_encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

impl TestServer {
    /// Starts a server on a fresh database of the test's back-end.
    pub async fn start() -> Self {
        Self::start_on(TestDb::fresh().await).await
    }

    /// Starts a server on an existing database (e.g. after a restart).
    pub async fn start_on(db: TestDb) -> Self {
        Self::start_configured(db, |_| {}).await
    }

    /// Starts a server on a fresh database with settings adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        Self::start_configured(TestDb::fresh().await, configure).await
    }

    /// Starts on an existing database (e.g. one a stopped server hands back), configured.
    pub async fn start_configured(db: TestDb, configure: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = settings_for(&db);
        configure(&mut settings);
        let clock = Arc::new(ManualClock::starting_now());
        let server = Server::start(&settings, clock.clone())
            .await
            .expect("server starts");
        let addr = server.addr;
        let operations_addr = server.operations_addr.unwrap_or(addr);
        let mut this = Self {
            base: format!("http://{addr}"),
            addr,
            operations_base: format!("http://{operations_addr}"),
            clock,
            http: reqwest::Client::new(),
            db,
            introspector: TestClient {
                id: String::new(),
                secret: None,
            },
            server: Some(server),
        };
        // Registered by the first server on this database; a later one finds it there.
        let introspector = json!({
            "client_id": "introspector",
            "client_secret": "introspector-secret",
            "grant_types": ["client_credentials"],
        });
        let created = this
            .admin(
                reqwest::Method::POST,
                "/tenants/default/clients",
                Some(introspector),
            )
            .await;
        assert!(
            [StatusCode::CREATED, StatusCode::CONFLICT].contains(&created.status()),
            "create the introspector: {}",
            created.status()
        );
        this.introspector = TestClient {
            id: "introspector".into(),
            secret: Some("introspector-secret".into()),
        };
        this
    }

    /// Stops the server (graceful shutdown) and hands back its database.
    pub async fn stop(mut self) -> TestDb {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
        self.db
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Moves the server's clock forward.
    pub fn advance(&self, secs: i64) {
        self.clock.advance(secs);
    }

    // ---- admin API -------------------------------------------------------------------

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        admin_at(&self.http, &self.operations_base, method, path, body).await
    }

    /// Registers a client through the admin API in tenant `default`, returning its
    /// credentials. `spec` is the admin API's JSON; a `client_secret` in it is kept.
    pub async fn create_client(&self, tenant: &str, spec: Value) -> TestClient {
        let resp = self
            .admin(
                reqwest::Method::POST,
                &format!("/tenants/{tenant}/clients"),
                Some(spec.clone()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "create client {spec}");
        let body: Value = resp.json().await.unwrap();
        let secret = spec["client_secret"]
            .as_str()
            .or(body["client_secret"].as_str())
            .map(str::to_owned);
        TestClient {
            id: body["client_id"].as_str().unwrap().to_owned(),
            secret,
        }
    }

    async fn ensure_client(&self, spec: Value) -> TestClient {
        self.create_client("default", spec).await
    }

    /// A confidential client allowed both grants, with the given scope.
    pub async fn confidential(&self, id: &str, scope: &str) -> TestClient {
        self.ensure_client(json!({
            "client_id": id,
            "client_secret": format!("{id}-secret"),
            "grant_types": ["client_credentials", "refresh_token"],
            "scope": scope,
        }))
        .await
    }

    /// A public client allowed the refresh grant.
    pub async fn public(&self, id: &str, scope: &str) -> TestClient {
        self.ensure_client(json!({
            "client_id": id,
            "token_endpoint_auth_method": "none",
            "grant_types": ["refresh_token"],
            "scope": scope,
        }))
        .await
    }

    /// Issues a grant for a user through the admin API; returns the token response.
    pub async fn grant_for(
        &self,
        client: &TestClient,
        subject: &str,
        scope: Option<&str>,
    ) -> Value {
        self.grant_in("default", client, subject, scope).await
    }

    pub async fn grant_in(
        &self,
        tenant: &str,
        client: &TestClient,
        subject: &str,
        scope: Option<&str>,
    ) -> Value {
        let mut body = json!({ "client_id": client.id, "subject": subject });
        if let Some(s) = scope {
            body["scope"] = s.into();
        }
        let resp = self
            .admin(
                reqwest::Method::POST,
                &format!("/tenants/{tenant}/grants"),
                Some(body),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json().await.unwrap()
    }

    // ---- OAuth endpoints ------------------------------------------------------------

    /// POSTs a form to `path` with the given client authentication.
    pub async fn post_form(&self, path: &str, auth: Auth<'_>, pairs: &[(&str, &str)]) -> Response {
        post_form_at(&self.http, &self.base, path, auth, pairs).await
    }

    /// POSTs a raw body with arbitrary headers.
    pub async fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
        let mut req = self.http.post(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(body).send().await.expect("request")
    }

    /// `client_credentials` token response (asserting success).
    pub async fn client_credentials(&self, client: &TestClient) -> Value {
        self.client_credentials_at("", Auth::Basic(client)).await
    }

    /// [`client_credentials`](Self::client_credentials) at a tenant path prefix ("" or
    /// "/tenants/x"), with the given client authentication.
    pub async fn client_credentials_at(&self, prefix: &str, auth: Auth<'_>) -> Value {
        let resp = self
            .post_form(
                &format!("{prefix}/oauth2/token"),
                auth,
                &[("grant_type", "client_credentials")],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// Exchanges a refresh token; returns the raw response.
    pub async fn refresh(&self, auth: Auth<'_>, refresh_token: &str) -> Response {
        self.post_form(
            "/oauth2/token",
            auth,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// Revokes a token; returns the raw response.
    pub async fn revoke(&self, auth: Auth<'_>, token: &str) -> Response {
        self.post_form("/oauth2/revoke", auth, &[("token", token)])
            .await
    }

    /// Introspects as the harness's introspector client (asserting 200).
    pub async fn introspect(&self, token: &str) -> Value {
        self.introspect_at("", token).await
    }

    /// Introspects at a tenant path prefix ("" or "/tenants/x") as `introspector`.
    pub async fn introspect_at(&self, prefix: &str, token: &str) -> Value {
        let resp = self
            .post_form(
                &format!("{prefix}/oauth2/introspect"),
                Auth::Basic(&self.introspector),
                &[("token", token)],
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// True when introspection says the token is active.
    pub async fn is_active(&self, token: &str) -> bool {
        self.introspect(token).await["active"] == json!(true)
    }
}

/// Calls the admin API of the server at `base`.
pub async fn admin_at(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Response {
    let mut req = http
        .request(method, format!("{base}/admin/v1{path}"))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("admin request")
}

/// POSTs a form to `base` + `path` with the given client authentication.
pub async fn post_form_at(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    auth: Auth<'_>,
    pairs: &[(&str, &str)],
) -> Response {
    let mut pairs: Vec<(&str, &str)> = pairs.to_vec();
    let mut req = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded");
    match auth {
        Auth::Basic(c) => {
            req = req.header(
                "authorization",
                basic_header(&c.id, c.secret.as_deref().unwrap_or("")),
            )
        }
        Auth::Post(c) => {
            pairs.push(("client_id", &c.id));
            pairs.push(("client_secret", c.secret.as_deref().unwrap_or("")));
        }
        Auth::Public(c) => pairs.push(("client_id", &c.id)),
        Auth::None => {}
    }
    req.body(form(&pairs)).send().await.expect("request")
}

/// Reads an error response and checks its status and `error` code.
pub async fn assert_error(resp: Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "error content type"
    );
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"], code, "error code in {body}");
    assert!(
        body["error_description"].is_string(),
        "error_description in {body}"
    );
    body
}

/// The path of the `latch` binary under test.
pub fn latch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_latch")
}

/// The real `latch` binary running `serve`, killed on drop.
pub struct Process {
    pub child: Child,
    pub base: String,
    /// The operations listener's base URL if it has one, else `base`.
    pub operations_base: String,
    pub stderr_path: PathBuf,
}

impl Process {
    /// Starts `latch serve` with extra args and env, on an ephemeral port of 127.0.0.1 unless
    /// the args say `--listen`, waiting for its "listening" line. Its stderr (logs) goes to
    /// `stderr_path`.
    pub fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(latch_bin());
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .current_dir(dir)
            .env_remove("LATCH_LISTEN")
            .env_remove("LATCH_OPERATIONS_LISTEN")
            .env_remove("LATCH_DATABASE_URL")
            .env_remove("LATCH_ADMIN_TOKEN")
            .env_remove("LATCH_CONFIG")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn latch");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut operations_base = None;
        let base = loop {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let line = line.trim();
            if let Some(at) = line.strip_prefix("latch operations on ") {
                operations_base = Some(at.to_owned());
            } else if let Some(at) = line.strip_prefix("latch listening on ") {
                break at.to_owned();
            } else {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("latch did not start: {line:?}\n{err}")
            }
        };
        Self {
            child,
            operations_base: operations_base.unwrap_or_else(|| base.clone()),
            base,
            stderr_path,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM, without waiting.
    pub fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a SQLite database of the current schema at `path`, as `latch serve` would: CLI
/// commands create none.
pub fn new_sqlite_database(path: &Path) {
    drop(latch_store::SqliteStore::open_file(path).expect("create the database"));
}

/// Runs the `latch` binary to completion (CLI commands).
pub fn run_cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(latch_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("LATCH_DATABASE_URL")
        .env_remove("LATCH_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn latch");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    // Every command the tests run ends by itself (a `serve` only when it is refused): one
    // still running after a minute is killed, and its output says so, rather than hang.
    let pid = child.id().to_string();
    let (done, finished) = std::sync::mpsc::channel();
    let output = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .is_err()
    {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        panic!("latch {args:?} was still running after 60 s");
    }
    output.join().unwrap().unwrap()
}

/// The settings a test server on `db` starts with: an ephemeral port, the admin API on, no
/// clean-up of its own.
pub fn settings_for(db: &TestDb) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        operations_listen: None,
        database: db.url.clone(),
        issuer: None,
        admin_token: Some(ADMIN_TOKEN.into()),
        log: "warn".into(),
        log_format: Default::default(),
        cleanup_interval: 0,
        shutdown_timeout: latch::config::DEFAULT_SHUTDOWN_TIMEOUT,
        read_timeout: latch::config::DEFAULT_READ_TIMEOUT,
        write_timeout: latch::config::DEFAULT_WRITE_TIMEOUT,
        max_connections: None,
        audit_retention_days: None,
        tenants: vec![],
        profiles: Default::default(),
        auth_limits: Default::default(),
        clients: vec![],
    }
}
