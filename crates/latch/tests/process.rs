//! The real `latch` binary: help texts, `hash-secret`, the Quickstart configuration, the
//! `client` commands on a live database, environment overrides, SIGTERM, and secrets that
//! never reach the logs or the database file.

mod common;

use std::path::{Path, PathBuf};

use common::{admin_at, latch_bin, post_form_at, run_cli, Auth, Process, TestClient, ADMIN_TOKEN};
use reqwest::{Method, Response};
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The checked-in development configuration, as an absolute path.
fn dev_config() -> String {
    repo_root()
        .join("config/dev.toml")
        .canonicalize()
        .expect("config/dev.toml")
        .to_str()
        .unwrap()
        .to_owned()
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Runs a CLI command that must succeed; returns its stdout.
fn cli_ok(dir: &Path, args: &[&str]) -> String {
    let out = run_cli(dir, args, None);
    assert!(
        out.status.success(),
        "latch {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a CLI command that prints one JSON object.
fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let out = cli_ok(dir, args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

fn client(id: &str, secret: &str) -> TestClient {
    TestClient {
        id: id.into(),
        secret: Some(secret.into()),
    }
}

/// A running `latch serve` seen over HTTP.
struct Node<'a> {
    p: &'a Process,
    http: reqwest::Client,
}

impl<'a> Node<'a> {
    fn new(p: &'a Process) -> Self {
        Self {
            p,
            http: reqwest::Client::new(),
        }
    }

    async fn form(&self, path: &str, auth: Auth<'_>, pairs: &[(&str, &str)]) -> Response {
        post_form_at(&self.http, &self.p.base, path, auth, pairs).await
    }

    async fn token(&self, auth: Auth<'_>) -> Response {
        self.form(
            "/oauth2/token",
            auth,
            &[("grant_type", "client_credentials")],
        )
        .await
    }

    /// A `client_credentials` access token (asserting success).
    async fn access_token(&self, auth: Auth<'_>) -> String {
        let resp = self.token(auth).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        str_of(&body, "access_token").to_owned()
    }

    async fn introspect(&self, auth: Auth<'_>, token: &str) -> Value {
        let resp = self
            .form("/oauth2/introspect", auth, &[("token", token)])
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.p.base))
            .send()
            .await
            .unwrap()
    }
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["client", "--help"],
        &["client", "add", "--help"],
        &["client", "list", "--help"],
        &["client", "remove", "--help"],
        &["client", "rotate-secret", "--help"],
        &["hash-secret", "--help"],
    ] {
        let out = run_cli(dir.path(), args, None);
        assert!(out.status.success(), "latch {args:?}: {:?}", out.status);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.trim().is_empty(), "latch {args:?} printed nothing");
        assert!(text.contains("Usage"), "latch {args:?}: {text}");
    }
}

/// Neither `--help` nor a configuration error shows a secret: clap prints an option's value
/// from the environment unless told not to, and toml's message quotes the offending line.
#[test]
fn no_secret_shows_in_help_or_in_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(latch_bin())
        .args(["serve", "--help"])
        .env("LATCH_DATABASE_URL", "postgres://u:pw-1f3a@h/db")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("LATCH_DATABASE_URL") && !help.contains("pw-1f3a"),
        "{help}"
    );

    let refused = |file: &str| -> String {
        std::fs::write(dir.path().join("latch.toml"), file).unwrap();
        let out = run_cli(dir.path(), &["serve", "--config", "latch.toml"], None);
        assert!(!out.status.success(), "{file}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A mistyped key, and a bad escape, on lines holding a secret.
    for (file, reason) in [
        (
            "listen = \"127.0.0.1:0\"\nadmin_tokn = \"sekret-9c2e\"\n",
            "unknown field",
        ),
        (
            "database_url = \"postgres://u:p\\qsekret-9c2e@h/db\"\n",
            "escape",
        ),
    ] {
        let stderr = refused(file);
        assert!(
            stderr.contains("invalid configuration in") && stderr.contains(reason),
            "{stderr}"
        );
        assert!(stderr.contains(" at line "), "where it is: {stderr}");
        assert!(!stderr.contains("sekret-9c2e"), "{stderr}");
    }
    // Values that would not do what they seem to are refused, saying what to do instead.
    for (file, says) in [
        (
            "[auth_limits]\nper_address = 0\n",
            "auth_limits.per_address must be at least 1",
        ),
        (
            "[auth_limits]\nwindow = 0\n",
            "auth_limits.window must be at least 1",
        ),
        (
            "issuer = \"https://a.example/?x=1\"\n",
            "must have no query or fragment",
        ),
        (
            "issuer = \"https://a.example/#f\"\n",
            "must have no query or fragment",
        ),
        (
            "issuer = \"auth.example.com\"\n",
            "must be an https:// (or http://) URL",
        ),
        ("issuer = \"https:///path\"\n", "has no host"),
        (
            "issuer = \"https://a.example/{tenant}\"\n",
            "has a path with characters a URL must percent-encode",
        ),
        (
            "issuer = \"https://a.example/x/:id\"\n",
            "has a path segment starting with `:` or `*`",
        ),
        (
            "issuer = \"https://a.example/*\"\n",
            "has a path segment starting with `:` or `*`",
        ),
        (
            "admin_token = \"sekret-9c2e \"\n",
            "admin_token must be visible ASCII characters",
        ),
        (
            "admin_token = \"sekret-9c2e\\u00e9\"\n",
            "admin_token must be visible ASCII characters",
        ),
    ] {
        let stderr = refused(file);
        assert!(stderr.contains(says), "{file}: {stderr}");
        assert!(!stderr.contains("sekret-9c2e"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_secret_reads_the_secret_from_stdin_and_its_hash_works_in_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "stdin-secret-4b7e1d";
    let out = run_cli(dir.path(), &["hash-secret"], Some(&format!("{secret}\n")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let hash = stdout.trim();
    assert!(hash.starts_with("$argon2id$"), "{stdout:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(!stdout.contains(secret));

    // Two runs salt differently.
    let again = run_cli(dir.path(), &["hash-secret"], Some(secret));
    let again = String::from_utf8(again.stdout).unwrap();
    assert!(again.trim().starts_with("$argon2id$"));
    assert_ne!(again.trim(), hash);

    // An empty secret is refused.
    let empty = run_cli(dir.path(), &["hash-secret"], Some("\n"));
    assert!(!empty.status.success());

    // The hash authenticates the secret (and only it) once put in a config file.
    let config = dir.path().join("latch.toml");
    std::fs::write(
        &config,
        format!(
            "[[clients]]\nclient_id = \"hashed\"\nclient_secret_hash = \"{hash}\"\n\
             grant_types = [\"client_credentials\"]\nscope = \"read\"\n"
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = Process::serve(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    let n = Node::new(&p);
    assert_eq!(
        n.token(Auth::Basic(&client("hashed", secret)))
            .await
            .status(),
        200
    );
    assert_eq!(
        n.token(Auth::Basic(&client("hashed", "stdin-secret")))
            .await
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_config_runs_the_life_of_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = Process::serve(
        dir.path(),
        &[
            "--config",
            &dev_config(),
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[],
    );
    let n = Node::new(&p);
    let service = client("demo-service", "demo-service-secret");
    let introspector = client("demo-introspector", "demo-introspector-secret");

    let at = n.access_token(Auth::Basic(&service)).await;
    assert!(at.starts_with("latch_at_"), "{at}");
    let info = n.introspect(Auth::Basic(&introspector), &at).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "demo-service");

    let resp = n
        .form("/oauth2/revoke", Auth::Basic(&service), &[("token", &at)])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        n.introspect(Auth::Basic(&introspector), &at).await,
        json!({ "active": false })
    );

    // The config's listen address was overridden, its data_dir too: the database is in ours.
    assert!(p.base.starts_with("http://127.0.0.1:"), "{}", p.base);
    assert!(data.path().join("latch.db").is_file(), "no database file");
    assert!(
        !dir.path().join("data").exists(),
        "the config's data_dir was used"
    );
    // The config's admin token is on.
    let resp = n
        .http
        .get(format!("{}/admin/v1/tenants/default/clients", p.base))
        .bearer_auth("dev-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_act_on_the_database_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    common::new_sqlite_database(&db.path().join("x.db"));
    let url = sqlite_url(&db.path().join("x.db"));
    let d = dir.path();

    let added = cli_json(
        d,
        &[
            "client",
            "add",
            "myapp",
            "--database-url",
            &url,
            "--grant-type",
            "client_credentials",
            "--scope",
            "read",
        ],
    );
    assert_eq!(added["client_id"], "myapp");
    assert_eq!(added["grant_types"], json!(["client_credentials"]));
    assert_eq!(added["scope"], "read");
    let first_secret = str_of(&added, "client_secret").to_owned();
    assert!(first_secret.len() >= 32, "{first_secret:?}");
    let checker_json = cli_json(d, &["client", "add", "checker", "--database-url", &url]);
    let checker = client("checker", str_of(&checker_json, "client_secret"));

    let list = cli_ok(d, &["client", "list", "--database-url", &url]);
    let listed: Vec<Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(listed.iter().any(|c| c["client_id"] == "myapp"), "{list}");
    assert!(
        !list.contains(&first_secret)
            && !list.contains("argon2")
            && !list.contains("\"client_secret\""),
        "client list shows a secret: {list}"
    );

    let p = Process::serve(d, &["--database-url", &url], &[]);
    let n = Node::new(&p);
    let old = client("myapp", &first_secret);
    let at = n.access_token(Auth::Basic(&old)).await;
    assert_eq!(
        n.introspect(Auth::Basic(&checker), &at).await["active"],
        true
    );

    // Rotation from the CLI: the running server refuses the old secret at once.
    let rotated = cli_json(
        d,
        &["client", "rotate-secret", "myapp", "--database-url", &url],
    );
    assert_eq!(rotated["client_id"], "myapp");
    let new = client("myapp", str_of(&rotated, "client_secret"));
    assert_ne!(new.secret, old.secret);
    assert_eq!(n.token(Auth::Basic(&old)).await.status(), 401);
    assert_eq!(n.token(Auth::Post(&old)).await.status(), 401);
    let at2 = n.access_token(Auth::Basic(&new)).await;

    // Its grants revoked from the CLI: its tokens die before the running server's eyes, the
    // client stays.
    let revoked = cli_json(
        d,
        &["client", "revoke-grants", "myapp", "--database-url", &url],
    );
    assert_eq!(
        revoked,
        json!({ "client_id": "myapp", "revoked_grants": 2, "revoked_tokens": 2 })
    );
    for t in [&at, &at2] {
        assert_eq!(
            n.introspect(Auth::Basic(&checker), t).await,
            json!({ "active": false })
        );
    }
    let at2 = n.access_token(Auth::Basic(&new)).await;

    // Removal from the CLI: tokens die, credentials fail.
    let removed = cli_json(d, &["client", "remove", "myapp", "--database-url", &url]);
    assert_eq!(removed["deleted"], true);
    assert!(
        removed["revoked_grants"].as_u64().unwrap() >= 1,
        "{removed}"
    );
    for t in [&at, &at2] {
        assert_eq!(
            n.introspect(Auth::Basic(&checker), t).await,
            json!({ "active": false })
        );
    }
    assert_eq!(n.token(Auth::Basic(&new)).await.status(), 401);
    assert_eq!(n.token(Auth::Basic(&old)).await.status(), 401);

    let list = cli_ok(d, &["client", "list", "--database-url", &url]);
    assert!(!list.contains("myapp"), "{list}");
    assert!(list.contains("checker"), "{list}");
    // Removing it again fails.
    let again = run_cli(
        d,
        &["client", "remove", "myapp", "--database-url", &url],
        None,
    );
    assert!(!again.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_database_serves() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::serve(
        dir.path(),
        &[
            "--database-url",
            "sqlite::memory:",
            "--admin-token",
            ADMIN_TOKEN,
        ],
        &[],
    );
    let n = Node::new(&p);
    assert_eq!(n.get("/readyz").await.status(), 200);
    for (id, secret) in [("mem", "mem-secret"), ("mem-checker", "mem-checker-secret")] {
        let resp = admin_at(
            &n.http,
            &p.base,
            Method::POST,
            "/tenants/default/clients",
            Some(json!({ "client_id": id, "client_secret": secret, "scope": "read" })),
        )
        .await;
        assert_eq!(resp.status(), 201);
    }
    let mem = client("mem", "mem-secret");
    let checker = client("mem-checker", "mem-checker-secret");
    let at = n.access_token(Auth::Basic(&mem)).await;
    assert_eq!(
        n.introspect(Auth::Basic(&checker), &at).await["active"],
        true
    );
    assert_eq!(
        n.form("/oauth2/revoke", Auth::Basic(&mem), &[("token", &at)])
            .await
            .status(),
        200
    );
    assert_eq!(
        n.introspect(Auth::Basic(&checker), &at).await,
        json!({ "active": false })
    );
    assert!(
        !dir.path().join("data").exists(),
        "a file database was made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_set_the_admin_token_and_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let db_path = db.path().join("env.db");
    common::new_sqlite_database(&db_path);
    let url = sqlite_url(&db_path);
    cli_json(
        dir.path(),
        &[
            "client",
            "add",
            "envapp",
            "--database-url",
            &url,
            "--secret",
            "envapp-secret",
        ],
    );

    let p = Process::serve(
        dir.path(),
        &[],
        &[
            ("LATCH_DATABASE_URL", &url),
            ("LATCH_ADMIN_TOKEN", "env-admin-token"),
        ],
    );
    let n = Node::new(&p);
    let resp = n
        .http
        .get(format!("{}/admin/v1/tenants/default/clients", p.base))
        .bearer_auth("env-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == "envapp"),
        "the server is not on LATCH_DATABASE_URL: {body}"
    );
    let resp = n
        .http
        .get(format!("{}/admin/v1/tenants/default/clients", p.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    assert_eq!(
        n.token(Auth::Basic(&client("envapp", "envapp-secret")))
            .await
            .status(),
        200
    );
    assert!(db_path.is_file());
    assert!(
        !dir.path().join("data").exists(),
        "the default database was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let args = ["--data-dir", data_dir, "--admin-token", ADMIN_TOKEN];
    let p = Process::serve(dir.path(), &args, &[]);
    let http = reqwest::Client::new();
    let resp = admin_at(
        &http,
        &p.base,
        Method::POST,
        "/tenants/default/clients",
        Some(json!({ "client_id": "keep", "client_secret": "keep-secret" })),
    )
    .await;
    assert_eq!(resp.status(), 201);

    let status = p.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(0));

    // What it stored survives the stop.
    let p = Process::serve(dir.path(), &args, &[]);
    let n = Node::new(&p);
    assert_eq!(
        n.token(Auth::Basic(&client("keep", "keep-secret")))
            .await
            .status(),
        200
    );
    assert_eq!(p.terminate().code(), Some(0));
}

/// Every file of the SQLite database (main file, WAL, shared memory) under `dir`.
fn database_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("latch.db"))
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_tokens_reach_neither_the_logs_nor_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = Process::serve(
        dir.path(),
        &[
            "--data-dir",
            data.path().to_str().unwrap(),
            "--log",
            "trace",
        ],
        &[("LATCH_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let n = Node::new(&p);
    let admin = |method: Method, path: &str, body: Option<Value>| {
        let (http, base, path) = (n.http.clone(), p.base.clone(), path.to_owned());
        async move { admin_at(&http, &base, method, &path, body).await }
    };
    let mut secrets: Vec<String> = vec![ADMIN_TOKEN.to_owned()];
    let mut tokens: Vec<String> = vec![];

    // Clients: a chosen secret, a generated one, and a rotated one.
    let resp = admin(
        Method::POST,
        "/tenants/default/clients",
        Some(json!({
            "client_id": "svc",
            "client_secret": "svc-chosen-secret-91c2",
            "grant_types": ["client_credentials", "refresh_token"],
            "scope": "read write",
        })),
    )
    .await;
    assert_eq!(resp.status(), 201);
    secrets.push("svc-chosen-secret-91c2".into());
    let resp = admin(
        Method::POST,
        "/tenants/default/clients",
        Some(json!({ "client_id": "checker" })),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let checker = client("checker", str_of(&body, "client_secret"));
    secrets.push(checker.secret.clone().unwrap());
    let svc_old = client("svc", "svc-chosen-secret-91c2");

    // client_credentials, with Basic and in the body.
    tokens.push(n.access_token(Auth::Basic(&svc_old)).await);
    tokens.push(n.access_token(Auth::Post(&svc_old)).await);

    // Rotation: a generated secret comes back.
    let resp = admin(
        Method::POST,
        "/tenants/default/clients/svc/secret",
        Some(json!({})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let svc = client("svc", str_of(&body, "client_secret"));
    secrets.push(svc.secret.clone().unwrap());
    tokens.push(n.access_token(Auth::Post(&svc)).await);

    // An admin grant for a subject, then a refresh.
    let mut grants = vec![];
    for _ in 0..2 {
        let resp = admin(
            Method::POST,
            "/tenants/default/grants",
            Some(json!({ "client_id": "svc", "subject": "alice", "scope": "read" })),
        )
        .await;
        assert_eq!(resp.status(), 201);
        let g: Value = resp.json().await.unwrap();
        tokens.push(str_of(&g, "access_token").into());
        tokens.push(str_of(&g, "refresh_token").into());
        grants.push(g);
    }
    let resp = n
        .form(
            "/oauth2/token",
            Auth::Post(&svc),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_of(&grants[0], "refresh_token")),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let refreshed: Value = resp.json().await.unwrap();
    tokens.push(str_of(&refreshed, "access_token").into());
    tokens.push(str_of(&refreshed, "refresh_token").into());

    // Introspection of everything, with both auth styles.
    for (i, t) in tokens.iter().enumerate() {
        let auth = if i % 2 == 0 {
            Auth::Basic(&checker)
        } else {
            Auth::Post(&checker)
        };
        n.introspect(auth, t).await;
    }

    // RFC 7009 revocation, by access token and by refresh token.
    for t in [tokens[0].as_str(), str_of(&refreshed, "refresh_token")] {
        let resp = n
            .form("/oauth2/revoke", Auth::Basic(&svc), &[("token", t)])
            .await;
        assert_eq!(resp.status(), 200);
    }
    // Log out everywhere.
    let resp = admin(
        Method::DELETE,
        "/tenants/default/subjects/alice/grants",
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    for t in &tokens[3..] {
        assert_eq!(
            n.introspect(Auth::Basic(&checker), t).await,
            json!({ "active": false })
        );
    }

    // Failed authentications: a wrong secret (Basic and body), the old secret, a wrong admin
    // token.
    let wrong = client("svc", "wrong-secret-5e0d77");
    secrets.push(wrong.secret.clone().unwrap());
    assert_eq!(n.token(Auth::Basic(&wrong)).await.status(), 401);
    assert_eq!(n.token(Auth::Post(&wrong)).await.status(), 401);
    assert_eq!(n.token(Auth::Basic(&svc_old)).await.status(), 401);
    let resp = n
        .form(
            "/oauth2/introspect",
            Auth::Post(&wrong),
            &[("token", &tokens[1])],
        )
        .await;
    assert_eq!(resp.status(), 401);
    let resp = n
        .http
        .get(format!("{}/admin/v1/tenants", p.base))
        .bearer_auth("wrong-admin-token-3a9f")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    secrets.push("wrong-admin-token-3a9f".into());
    // A client's mistakes that put a secret where its id goes: Basic's fields swapped, and a
    // token sent as the id. Refused, and logged by a fingerprint of that id alone.
    let swapped = client(svc.secret.as_deref().unwrap(), "svc");
    assert_eq!(n.token(Auth::Basic(&swapped)).await.status(), 401);
    let as_id = client(&tokens[2], "x");
    assert_eq!(n.token(Auth::Post(&as_id)).await.status(), 401);

    let logs = p.logs();
    assert_eq!(
        logs.matches("no client has the presented id").count(),
        2,
        "{logs}"
    );
    // At this level every request is logged, with its span (the request layer is on only
    // when the filter records it), so whatever a request carries had its chance to leak.
    assert!(
        logs.contains("request{method=POST path=/oauth2/introspect}")
            && logs.contains("finished processing request"),
        "requests are not logged at trace level:\n{logs}"
    );
    for needle in tokens.iter().chain(&secrets) {
        assert!(
            !logs.contains(needle.as_str()),
            "the logs contain {needle:?}"
        );
    }
    // Nor any form of a token that still identifies it (its random part).
    for t in &tokens {
        let random = t
            .trim_start_matches("latch_at_")
            .trim_start_matches("latch_rt_");
        assert!(!logs.contains(random), "the logs contain the body of {t:?}");
    }

    let files = database_files(data.path());
    assert!(
        files.iter().any(|(p, _)| p.ends_with("latch.db")),
        "no database in {}",
        data.path().display()
    );
    for (path, bytes) in &files {
        for needle in tokens.iter().chain(&secrets) {
            assert!(
                !contains_bytes(bytes, needle.as_bytes()),
                "{} contains {needle:?}",
                path.display()
            );
        }
    }

    // After a clean stop (the WAL checkpointed into the main file), still nothing.
    assert!(p.terminate().success());
    for (path, bytes) in &database_files(data.path()) {
        for needle in tokens.iter().chain(&secrets) {
            assert!(
                !contains_bytes(bytes, needle.as_bytes()),
                "{} contains {needle:?} after the stop",
                path.display()
            );
        }
    }
}

/// Settings that would break the server later are refused when it starts, with a message
/// naming them: a clean-up interval that overflows the timer, timeouts of 0, no connection
/// allowed, a SQLite path that is a URI, and configured clients that cannot be stored as written (a secret hash that
/// would ask each verification for 4 TiB, for which argon2 allocates at once: the first
/// request naming the client aborted the process).
#[test]
fn out_of_range_settings_are_refused_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, refusal) in [
        (
            "--cleanup-interval",
            "9223372036854775807",
            "cleanup_interval must be at most",
        ),
        // A read or write timeout of 0 would time every request out.
        (
            "--read-timeout",
            "0",
            "read_timeout must be at least 1 second",
        ),
        (
            "--write-timeout",
            "0",
            "write_timeout must be at least 1 second",
        ),
        (
            "--max-connections",
            "0",
            "max_connections must be between 1 and 10000000",
        ),
        // SQLite would take it as a URI, with options that undo locking or durability.
        (
            "--database-url",
            "file:latch.db?nolock=1",
            "would be read by SQLite as a URI",
        ),
        // Read as a target's name, or replaced: the server would log nothing it was asked to.
        ("--log", "warning", "\"warning\" is not a level"),
        ("--log", "latch=dbug", "does not parse"),
        ("--log", "", "the log filter is empty"),
    ] {
        let out = run_cli(
            dir.path(),
            &["serve", "--listen", "127.0.0.1:0", flag, value],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}: {stderr}");
        assert!(stderr.contains(refusal), "{flag} {value}: {stderr}");
    }

    // A configuration file's clients: one whose secret hash would ask each verification for
    // 4 TiB, one declared twice (the second would silently replace the first), one whose
    // redirect URI holds a space (stored space-separated, it would come back as two), one
    // whose tokens would live 0 s, and one whose retired refresh tokens would stay usable
    // for an hour.
    let dev = std::fs::read_to_string(dev_config()).unwrap();
    let spa = "client_id = \"demo-spa\"";
    for (name, config, refusal) in [
        (
            "heavy",
            dev.replacen("m=19456", "m=4294967295", 1),
            "asks too much of each verification",
        ),
        (
            "twice",
            format!("{dev}\n[[clients]]\n{spa}\ntoken_endpoint_auth_method = \"none\"\n"),
            "is declared twice in the configuration file",
        ),
        (
            "redirect",
            dev.replacen(
                spa,
                &format!("{spa}\nredirect_uris = [\"https://a/cb https://b/cb\"]"),
                1,
            ),
            "redirect_uris must be non-empty and contain no whitespace or control characters",
        ),
        (
            "ttl",
            dev.replacen(spa, &format!("{spa}\naccess_token_ttl = 0"), 1),
            "access_token_ttl must be at least 1 second",
        ),
        (
            "log_format",
            dev.replacen("log = \"info\"", "log = \"info\"\nlog_format = \"xml\"", 1),
            "unknown variant `xml`, expected `text` or `json`",
        ),
        (
            "introspects",
            dev.replacen(spa, &format!("{spa}\nintrospects = \"all\""), 1),
            "introspects must be any or own",
        ),
        (
            "padded",
            dev.replacen(spa, "client_id = \"demo-spa \"", 1),
            "client_id starts or ends with whitespace",
        ),
        (
            "grace",
            dev.replacen(
                "rotation_grace_period = 10",
                "rotation_grace_period = 3600",
                1,
            ),
            "rotation_grace_period must be at most 300 seconds",
        ),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let out = run_cli(
            dir.path(),
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--config",
                path.to_str().unwrap(),
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(refusal), "{name}: {stderr}");
    }
}

/// A command never creates a database: aimed at a mistyped path, or run from another
/// directory than the server's (the default path is relative), it would write into a new
/// database no server reads and report success. Nor does it run on an in-memory one.
#[test]
fn a_command_refuses_a_database_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("latsh.db");
    let url = sqlite_url(&missing);
    for args in [
        &["client", "add", "app", "--database-url", &url][..],
        &["tenant", "list", "--database-url", &url],
        &["gc", "--database-url", &url],
        // The default database, relative to a directory holding none.
        &["client", "list"],
    ] {
        let out = run_cli(d, args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("no database at"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = run_cli(
        d,
        &["client", "add", "app", "--database-url", "sqlite::memory:"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gone when it ends"));
    let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
    assert!(left.is_empty(), "nothing created: {left:?}");
    // An empty file is no database either.
    std::fs::write(&missing, b"").unwrap();
    let out = run_cli(d, &["client", "list", "--database-url", &url], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database at"));
    assert_eq!(
        std::fs::metadata(&missing).unwrap().len(),
        0,
        "left as it was"
    );
    std::fs::remove_file(&missing).unwrap();
    // Once the server has created it, the same command works.
    common::new_sqlite_database(&missing);
    assert!(
        cli_json(d, &["client", "add", "app", "--database-url", &url])["client_secret"].is_string()
    );
}

/// `--secret-stdin` keeps a chosen secret out of the process list (where `--secret` shows
/// it): `client add` and `rotate-secret` read it from standard input, print it nowhere, and
/// the server authenticates with it. With both flags, or an empty secret, nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_read_from_standard_input_is_the_clients_and_is_printed_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("x.db");
    common::new_sqlite_database(&db);
    let url = sqlite_url(&db);
    let (first, second) = ("first-stdin-secret-9f2c", "second-stdin-secret-41ab");
    let run = |args: &[&str], input: &str| {
        let mut all = args.to_vec();
        all.extend(["--secret-stdin", "--database-url", &url]);
        let out = run_cli(d, &all, Some(input));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stdout.contains("stdin-secret") && !stderr.contains("stdin-secret"),
            "{args:?} printed the secret: {stdout} {stderr}"
        );
        (out.status.code(), stdout, stderr)
    };
    let (code, added, _) = run(&["client", "add", "app"], &format!("{first}\n"));
    assert_eq!(code, Some(0));
    let added: Value = serde_json::from_str(added.trim()).unwrap();
    assert_eq!(added["client_id"], "app");
    assert!(added.get("client_secret").is_none(), "{added}");
    let (code, rotated, _) = run(
        &["client", "rotate-secret", "app"],
        &format!("{second}\r\n"),
    );
    assert_eq!(code, Some(0));
    let rotated: Value = serde_json::from_str(rotated.trim()).unwrap();
    assert_eq!(rotated, json!({ "client_id": "app", "rotated": true }));
    // Refused, and the secret stays the second one.
    let (code, _, stderr) = run(&["client", "rotate-secret", "app"], "\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the secret on standard input is empty"),
        "{stderr}"
    );
    let (code, _, stderr) = run(
        &["client", "rotate-secret", "app", "--secret", "third-secret"],
        "",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");

    let p = Process::serve(d, &["--database-url", &url], &[]);
    let n = Node::new(&p);
    assert_eq!(
        n.token(Auth::Basic(&client("app", second))).await.status(),
        200
    );
    assert_eq!(
        n.token(Auth::Basic(&client("app", first))).await.status(),
        401
    );
    assert_eq!(
        n.token(Auth::Basic(&client("app", "third-secret")))
            .await
            .status(),
        401
    );
}

/// A command's output can be all that is left of what it did (a generated secret is printed
/// once): a standard output that cannot take it (the pipe's reader gone) fails the command
/// with a message saying so, where a `println!` panicked. The write itself is committed.
#[test]
fn a_command_whose_output_cannot_be_written_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("x.db");
    common::new_sqlite_database(&db);
    let url = sqlite_url(&db);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(common::latch_bin())
        .args(["tenant", "add", "acme", "--database-url", &url])
        .current_dir(d)
        .env_remove("LATCH_DATABASE_URL")
        .env_remove("LATCH_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not be written"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let tenants = cli_ok(d, &["tenant", "list", "--database-url", &url]);
    assert!(tenants.lines().any(|t| t == "acme"), "{tenants}");
}

/// Listening on every address without an issuer, the issuer derived from the listen address
/// (`http://0.0.0.0:PORT`) names no host a client can reach: the server warns at start and
/// says what to set. With an issuer set, or on one address, it does not.
#[test]
fn a_server_on_every_address_without_an_issuer_warns_at_start() {
    let warning = "no issuer is set, and the one derived from the listen address";
    for (args, warned) in [
        (&["--listen", "0.0.0.0:0"][..], true),
        (
            &["--listen", "0.0.0.0:0", "--issuer", "https://auth.example"],
            false,
        ),
        (&[], false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut all = args.to_vec();
        all.extend(["--database-url", "sqlite::memory:"]);
        let p = Process::serve(dir.path(), &all, &[]);
        let logs = p.logs();
        assert_eq!(logs.contains(warning), warned, "{args:?}: {logs}");
        assert_eq!(p.terminate().code(), Some(0), "{args:?}");
    }
}

/// A command of a newer latch never migrates an existing SQLite database: an older server
/// may be running on it (mid-upgrade) and would misread the new schema. It says what to do
/// instead, and once `latch serve` of the new version has migrated the file, it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_never_migrates_a_database_an_older_server_may_be_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = d.join("latch.db");
    let url = sqlite_url(&path);
    common::new_sqlite_database(&path);
    cli_json(d, &["client", "add", "app", "--database-url", &url]);
    // As a database of the previous schema version: version 15's change undone.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("ALTER TABLE clients DROP COLUMN introspects; PRAGMA user_version = 14;")
        .unwrap();

    let out = run_cli(d, &["client", "list", "--database-url", &url], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("start `latch serve` of this version"),
        "{stderr}"
    );
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 14, "the schema was left as it was");

    let server = Process::serve(d, &["--database-url", &url], &[]);
    assert!(server.terminate().success());
    assert!(cli_ok(d, &["client", "list", "--database-url", &url]).contains("\"app\""));
}

/// A configuration file declaring `app` (default tenant) and `acme-app` (tenant `acme`) with
/// the secret whose hash is `hash`, or no client at all.
fn declaring_config(dir: &Path, hash: Option<&str>) -> String {
    let mut toml = format!("admin_token = \"{ADMIN_TOKEN}\"\ntenants = [\"acme\"]\n");
    if let Some(hash) = hash {
        for (tenant, id) in [("default", "app"), ("acme", "acme-app")] {
            toml.push_str(&format!(
                "[[clients]]\ntenant = \"{tenant}\"\nclient_id = \"{id}\"\n\
                 client_secret_hash = \"{hash}\"\n"
            ));
        }
    }
    let path = dir.join(if hash.is_some() {
        "declaring.toml"
    } else {
        "bare.toml"
    });
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_declared_in_the_configuration_is_changed_there_alone_until_the_file_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let url = sqlite_url(&db.path().join("x.db"));
    let d = dir.path();
    let secret = "declared-secret-5e0c2a";
    let hashed = run_cli(d, &["hash-secret"], Some(secret));
    let hash = String::from_utf8(hashed.stdout).unwrap().trim().to_owned();
    let app = client("app", secret);
    let admin = |p: &Process, method: Method, path: &str, body: Option<Value>| {
        let (http, base, path) = (reqwest::Client::new(), p.base.clone(), path.to_owned());
        async move { admin_at(&http, &base, method, &path, body).await }
    };
    let config = declaring_config(d, Some(&hash));
    let p = Process::serve(d, &["--config", &config, "--database-url", &url], &[]);
    let n = Node::new(&p);
    let shown: Value = admin(&p, Method::GET, "/tenants/default/clients/app", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["declared"], true, "{shown}");

    // Neither the admin API nor the CLI changes or removes it: the next start would undo it.
    for (method, path, body) in [
        (
            Method::POST,
            "/tenants/default/clients/app/secret",
            Some(json!({})),
        ),
        (Method::DELETE, "/tenants/default/clients/app", None),
        (Method::DELETE, "/tenants/acme", None),
    ] {
        let resp = admin(&p, method.clone(), path, body).await;
        assert_eq!(resp.status(), 409, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "conflict", "{body}");
        let why = str_of(&body, "error_description");
        assert!(why.contains("declared in the configuration file"), "{why}");
    }
    let refused = run_cli(
        d,
        &["client", "rotate-secret", "app", "--database-url", &url],
        None,
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("declared in the configuration file"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Its secret and its tenant still work.
    n.access_token(Auth::Basic(&app)).await;
    drop(n);
    drop(p);

    // Started without them: the clients stay registered, now the admin API's to manage.
    let config = declaring_config(d, None);
    let p = Process::serve(d, &["--config", &config, "--database-url", &url], &[]);
    let n = Node::new(&p);
    let logs = p.logs();
    assert!(
        logs.contains("no longer in it") && logs.contains("acme-app"),
        "{logs}"
    );
    n.access_token(Auth::Basic(&app)).await;
    let rotated = admin(
        &p,
        Method::POST,
        "/tenants/default/clients/app/secret",
        Some(json!({})),
    );
    let rotated: Value = rotated.await.json().await.unwrap();
    let new = client("app", str_of(&rotated, "client_secret"));
    assert_eq!(n.token(Auth::Basic(&app)).await.status(), 401);
    n.access_token(Auth::Basic(&new)).await;
    let shown: Value = admin(&p, Method::GET, "/tenants/default/clients/app", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["declared"], false, "{shown}");
    let removed = admin(&p, Method::DELETE, "/tenants/acme", None).await;
    assert_eq!(removed.status(), 200);
}

/// A start that waits (here for the migration lock another node holds while it migrates)
/// can be stopped: SIGTERM ends the process at once and cleanly, instead of being put off
/// until the start completes, or killing it before its handler is in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_ends_a_start_that_waits_for_another_nodes_migration() {
    let db = common::TestDb::fresh_on(common::Backend::Postgres).await;
    let (other_node, conn) = tokio_postgres::connect(common::PG_BASE, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The lock latch's migrations take ("latch" in ASCII), held as a migrating node would.
    other_node
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(x'6c61746368'::bigint)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new(common::latch_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(db.url_string())
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once its migration waits for the lock, its stop handler is in place.
    let waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while other_node
        .query_one(waiting, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "latch never waited for the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pid = server.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = server.kill();
            panic!("latch was still starting a minute after SIGTERM");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    other_node.batch_execute("ROLLBACK").await.unwrap();
}
