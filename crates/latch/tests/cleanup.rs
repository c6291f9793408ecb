//! Expiry clean-up: expired rows are deleted in bounded batches while serving goes on;
//! revoked but unexpired tokens keep their rows and keep reading as revoked.

#[macro_use]
mod common;

use common::{Auth, TestClient, TestServer};
use latch_core::cleanup::EXPIRY_GRACE;
use reqwest::Method;
use serde_json::{json, Value};

async fn cleanup(s: &TestServer) -> Value {
    let resp = s.admin(Method::POST, "/cleanup", None).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// A client whose access tokens live 60 s and refresh tokens 120 s.
async fn short_lived_client(s: &TestServer) -> TestClient {
    s.create_client(
        "default",
        json!({
            "client_id": "short",
            "client_secret": "short-secret",
            "grant_types": ["client_credentials", "refresh_token"],
            "access_token_ttl": 60,
            "refresh_token_ttl": 120,
        }),
    )
    .await
}

/// A clock that reads `first` for its first `reads` reads, then a day earlier for good:
/// stepped back once an expiry clean-up has read it that many times.
struct StepsBackAfter {
    reads: usize,
    first: latch_core::clock::UnixTime,
    read: std::sync::atomic::AtomicUsize,
}

impl StepsBackAfter {
    fn new(reads: usize, first: latch_core::clock::UnixTime) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            reads,
            first,
            read: Default::default(),
        })
    }
}

impl latch_core::clock::Clock for StepsBackAfter {
    fn now(&self) -> latch_core::clock::UnixTime {
        let read = self.read.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if read < self.reads {
            self.first
        } else {
            self.first - 86_400
        }
    }

    fn tells_the_machines_time(&self) -> bool {
        false
    }
}

backend_test! {
    async fn a_clean_up_whose_clock_steps_back_stops_before_its_next_batch() {
        let s = TestServer::start().await;
        let short = short_lived_client(&s).await;
        s.grant_for(&short, "alice", None).await;
        s.advance(121 + EXPIRY_GRACE);
        let expired = latch_core::clock::Clock::now(&*s.clock);
        let db = s.stop().await;
        // The run reads its start, expired past the grace, then the clock steps back a day:
        // the tokens' batch, begun, goes; the grants' batch after it does not run (a grant
        // minted since could sort where the sweep had passed, and its marks be forgotten at
        // the run's end while it lives by the clock now).
        let store = latch_store::open(&db.url).await.unwrap();
        let authority = latch_core::Authority::new(store, StepsBackAfter::new(1, expired));
        let purged = authority.purge_expired().await.unwrap();
        assert_eq!((purged.tokens, purged.grants), (2, 0));
        assert_eq!(db.query_i64("SELECT count(*) FROM grants").await, 1);
        assert_eq!(db.query_i64("SELECT count(*) FROM tokens").await, 0);
        // Not counted as a run (`/metrics` shows the sweeps that went through).
        assert_eq!(authority.cleanup_stats().runs, 0);
        authority.store().close().await.unwrap();
    }
}

/// SQLite: a clean-up run whose clock steps back during its last batch keeps the revocation
/// marks of the tokens it swept (forgotten, a token minted meanwhile by the stepped clock and
/// revoked could read live); a run that went through forgets them.
#[tokio::test]
async fn sqlite_a_clean_up_whose_clock_steps_back_in_its_last_batch_forgets_no_mark() {
    for steps_back in [true, false] {
        let s = TestServer::start_on(common::TestDb::fresh_on(common::Backend::Sqlite).await).await;
        let short = short_lived_client(&s).await;
        let issued = s.client_credentials(&short).await;
        let token = issued["access_token"].as_str().unwrap();
        assert_eq!(s.revoke(Auth::Basic(&short), token).await.status(), 200);
        s.advance(61 + EXPIRY_GRACE);
        let expired = latch_core::clock::Clock::now(&*s.clock);
        let db = s.stop().await;
        // Its start, the check before the grants' batch (the last): then a day back, or not.
        let reads = if steps_back { 2 } else { usize::MAX };
        let store = latch_store::open(&db.url).await.unwrap();
        let held = store.revocation_marks();
        assert_eq!(held, 1, "the revoked token's mark, loaded at the start");
        let authority = latch_core::Authority::new(store, StepsBackAfter::new(reads, expired));
        let purged = authority.purge_expired().await.unwrap();
        assert_eq!(purged.tokens, 1, "the token's row swept");
        let (marks, runs) = (
            authority.store().revocation_marks(),
            authority.cleanup_stats().runs,
        );
        assert_eq!(
            (marks, runs),
            if steps_back { (1, 0) } else { (0, 1) },
            "steps back: {steps_back}"
        );
        authority.store().close().await.unwrap();
    }
}

backend_test! {
    async fn expired_rows_go_and_revoked_unexpired_rows_stay_revoked() {
        let s = TestServer::start().await;
        let short = short_lived_client(&s).await;
        let svc = s.confidential("svc", "read").await;
        let expiring = s.grant_for(&short, "alice", None).await;
        let revoked = s.grant_for(&svc, "bob", None).await;
        let live = s.client_credentials(&svc).await;
        let revoked_rt = revoked["refresh_token"].as_str().unwrap();
        assert_eq!(s.revoke(Auth::Basic(&svc), revoked_rt).await.status(), 200);

        // Past their expiry by the clean-up's allowance for other nodes' clocks.
        s.advance(121 + EXPIRY_GRACE);
        let purged = cleanup(&s).await;
        assert_eq!(purged, json!({ "tokens_deleted": 2, "grants_deleted": 1, "audit_deleted": 0 }));
        let left = s.db.query_i64("SELECT count(*) FROM tokens").await;
        // bob's two revoked tokens, the live access token, and the introspector's nothing.
        assert_eq!(left, 3, "only expired rows are deleted");

        // Answers are unchanged: revoked stays revoked, live stays live, expired stays dead.
        assert!(!s.is_active(revoked_rt).await);
        let again = s.refresh(Auth::Basic(&svc), revoked_rt).await;
        common::assert_error(again, 400, "invalid_grant").await;
        assert!(s.is_active(live["access_token"].as_str().unwrap()).await);
        assert!(!s.is_active(expiring["refresh_token"].as_str().unwrap()).await);
        assert_eq!(
            cleanup(&s).await,
            json!({ "tokens_deleted": 0, "grants_deleted": 0, "audit_deleted": 0 })
        );

        let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("latch_cleanup_tokens_deleted_total 2"), "{metrics}");
        assert!(metrics.contains("latch_cleanup_grants_deleted_total 1"), "{metrics}");
        assert!(metrics.contains("latch_cleanup_runs_total 2"), "{metrics}");
        assert!(!metrics.contains("latch_cleanup_last_run_timestamp_seconds 0\n"), "{metrics}");
    }
}

backend_test! {
    async fn expired_rows_stay_for_the_clocks_allowance_so_a_revoked_grant_outlives_its_tokens() {
        let s = TestServer::start().await;
        let short = short_lived_client(&s).await;
        let grant = s.grant_for(&short, "alice", None).await;
        let rt = grant["refresh_token"].as_str().unwrap();
        assert_eq!(s.revoke(Auth::Basic(&short), rt).await.status(), 200);

        // Expired on this node's clock, but not yet on one that lags it: the revoked grant,
        // which its access token no longer reads from its own row, must still be there.
        s.advance(121);
        let none = json!({ "tokens_deleted": 0, "grants_deleted": 0, "audit_deleted": 0 });
        assert_eq!(cleanup(&s).await, none);
        assert_eq!(s.db.query_i64("SELECT count(*) FROM grants").await, 1);

        s.advance(EXPIRY_GRACE);
        assert_eq!(
            cleanup(&s).await,
            json!({ "tokens_deleted": 2, "grants_deleted": 1, "audit_deleted": 0 })
        );
        assert!(!s.is_active(grant["access_token"].as_str().unwrap()).await);
    }
}

backend_test! {
    async fn what_expired_within_the_clocks_allowance_is_revoked_for_a_clock_stepped_back() {
        let s = TestServer::start().await;
        let short = short_lived_client(&s).await;
        let grant = s.grant_for(&short, "alice", None).await;
        let (at, rt) = (grant["access_token"].as_str().unwrap(), grant["refresh_token"].as_str().unwrap());
        let alone = s.client_credentials(&short).await["access_token"].as_str().unwrap().to_owned();
        let bobs = s.grant_for(&short, "bob", None).await;

        // Access tokens expired by this clock when they, or their grant, are revoked...
        s.advance(61);
        assert_eq!(s.revoke(Auth::Basic(&short), rt).await.status(), 200);
        assert_eq!(s.revoke(Auth::Basic(&short), &alone).await.status(), 200);
        // ...and a grant expired by this clock (not yet swept) revoked by the admin...
        s.advance(60);
        let path = format!("/tenants/default/grants/{}", bobs["grant_id"].as_str().unwrap());
        let resp = s.admin(Method::DELETE, &path, None).await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!((&body["revoked"], &body["revoked_tokens"]), (&json!(false), &json!(0)), "{body}");
        // ...must not come back to life for a clock stepped back within the allowance (or a
        // node whose clock lags this one's).
        s.advance(-91);
        assert!(!s.is_active(at).await, "the access token of a revoked grant reads as live");
        assert!(!s.is_active(&alone).await, "a revoked access token reads as live");
        assert!(!s.is_active(rt).await);
        for token in ["access_token", "refresh_token"] {
            assert!(!s.is_active(bobs[token].as_str().unwrap()).await, "bob's {token} reads as live");
        }
        // Only what was live by the revoking clock counts as killed: alice's grant, with its
        // refresh token. The rest killed nothing live and left no record.
        let audit: Value = s.admin(Method::GET, "/tenants/default/audit", None).await.json().await.unwrap();
        let killed: Vec<_> = audit["events"].as_array().unwrap().iter()
            .map(|e| (e["grants"].as_u64().unwrap(), e["tokens"].as_u64().unwrap()))
            .collect();
        assert_eq!(killed, [(1, 1)], "{audit}");
    }
}

/// 100,000 expired grants with one token each, written behind latch's back.
async fn preload_expired(s: &TestServer) {
    let n = 100_000;
    let sql = if s.db.is_postgres() {
        format!(
            "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
               SELECT 'old' || i, 'default', 'svc', 'u' || i, '', 1, 2 FROM generate_series(1, {n}) i; \
             INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
               SELECT decode(lpad(to_hex(i), 64, '0'), 'hex'), 'old' || i, 0, '', 1, 2 \
               FROM generate_series(1, {n}) i;"
        )
    } else {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
               SELECT 'old' || i, 'default', 'svc', 'u' || i, '', 1, 2 FROM n; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
               SELECT CAST(printf('%032d', i) AS BLOB), 'old' || i, 0, '', 1, 2 FROM n;"
        )
    };
    s.db.execute(&sql).await;
}

backend_test! {
    async fn a_hundred_thousand_expired_rows_are_purged_while_requests_are_served() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        preload_expired(&s).await;
        assert_eq!(s.db.query_i64("SELECT count(*) FROM tokens").await, 100_000);

        let purge = cleanup(&s);
        let serve = async {
            // Requests keep being answered, and correctly, while the purge runs.
            let mut revoked = Vec::new();
            for _ in 0..100 {
                let at = s.client_credentials(&svc).await["access_token"].as_str().unwrap().to_owned();
                assert!(s.is_active(&at).await);
                assert_eq!(s.revoke(Auth::Basic(&svc), &at).await.status(), 200);
                revoked.push(at);
            }
            revoked
        };
        let (purged, revoked) = tokio::join!(purge, serve);
        // Neither the purge nor its batches brought a revoked token back.
        for at in &revoked {
            assert!(!s.is_active(at).await, "{at} is live again");
        }
        // The purge may finish before all 100 requests were made; then their rows are
        // unexpired and stay. Either way exactly the 100,000 expired rows went.
        assert_eq!(
            purged,
            json!({ "tokens_deleted": 100_000, "grants_deleted": 100_000, "audit_deleted": 0 })
        );
        assert_eq!(s.db.query_i64("SELECT count(*) FROM tokens WHERE expires_at <= 2").await, 0);
        assert_eq!(s.db.query_i64("SELECT count(*) FROM tokens").await, 100);
    }
}

#[test]
fn latch_gc_purges_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gc.db");
    let db = format!("sqlite://{}", path.display());
    // Create the schema, then add rows: two expired, one not.
    common::new_sqlite_database(&path);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
               VALUES ('g1', 'default', 'c', 'u', '', 1, 2), ('g2', 'default', 'c', 'u', '', 1, 99999999999); \
             INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
               VALUES (x'01', 'g1', 0, '', 1, 2), (x'02', 'g1', 1, '', 1, 2), (x'03', 'g2', 0, '', 1, 99999999999);",
        )
        .unwrap();
    let out = common::run_cli(dir.path(), &["gc", "--database-url", &db], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report,
        json!({ "tokens_deleted": 2, "grants_deleted": 1, "audit_deleted": 0 })
    );

    // With a retention period, audit records older than it go too.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&old_audit_records_sql(3))
        .unwrap();
    let args = ["gc", "--database-url", &db, "--audit-retention-days", "30"];
    let out = common::run_cli(dir.path(), &args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["audit_deleted"], 3);

    // A record younger than the period ahead of 2,500 older ones (written by a clock that
    // ran ahead) holds none of them back, and stays. The purge goes 1,000 at a time, and
    // stopped after 999.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "INSERT INTO audit (tenant_id, at, actor, route, reason, subject, grants, tokens) \
               VALUES ('default', 4102444800, 'young', '/oauth2/revoke', 'client_request', \
                       'young', 0, 1); {}",
            old_audit_records_sql(2_500)
        ))
        .unwrap();
    let out = common::run_cli(dir.path(), &args, None);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["audit_deleted"], 2_500);
    let left: Vec<String> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT actor FROM audit")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(left, ["young"]);

    let args = ["gc", "--database-url", &db, "--audit-retention-days", "0"];
    let out = common::run_cli(dir.path(), &args, None);
    assert!(!out.status.success(), "a retention of 0 days is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit-retention-days"));
}

/// SQL adding `n` audit records from 1970 (SQLite and PostgreSQL alike).
fn old_audit_records_sql(n: u32) -> String {
    format!(
        "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}) \
         INSERT INTO audit (tenant_id, at, actor, route, reason, grant_id, subject, grants, \
                            tokens, address) \
         SELECT 'default', 1, 'old', '/oauth2/revoke', 'client_request', NULL, 'old', 0, 1, \
                NULL FROM seq"
    )
}

async fn audit_subjects(s: &TestServer) -> Vec<String> {
    let resp = s
        .admin(Method::GET, "/tenants/default/audit?limit=1000", None)
        .await;
    assert_eq!(resp.status(), 200);
    let page: Value = resp.json().await.unwrap();
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap_or_default().to_owned())
        .collect()
}

backend_test! {
    async fn audit_records_are_kept_for_ever_without_a_retention_period() {
        let s = TestServer::start().await;
        s.db.execute(&old_audit_records_sql(5)).await;
        s.advance(10 * 365 * 86_400);
        assert_eq!(cleanup(&s).await["audit_deleted"], 0);
        assert_eq!(s.db.query_i64("SELECT count(*) FROM audit").await, 5);
    }
}

backend_test! {
    async fn audit_records_older_than_the_retention_period_go_in_batches() {
        let s = TestServer::start_with(|settings| settings.audit_retention_days = Some(30)).await;
        // More old records than one clean-up batch (1,000), so the batches must continue.
        s.db.execute(&old_audit_records_sql(2_500)).await;
        let svc = s.confidential("svc", "read").await;
        let grant = s.grant_for(&svc, "alice", None).await;
        let rt = grant["refresh_token"].as_str().unwrap();
        assert_eq!(s.revoke(Auth::Basic(&svc), rt).await.status(), 200);

        // 29 days on, the revocation is within the retention period; the 1970 records not.
        s.advance(29 * 86_400);
        assert_eq!(cleanup(&s).await["audit_deleted"], 2_500);
        assert_eq!(audit_subjects(&s).await, ["alice"]);

        // Past 30 days it goes as well; the revoked token still reads as revoked.
        s.advance(2 * 86_400);
        assert_eq!(cleanup(&s).await["audit_deleted"], 1);
        assert!(audit_subjects(&s).await.is_empty());
        assert!(!s.is_active(rt).await);

        let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("latch_cleanup_audit_deleted_total 2501"), "{metrics}");
    }
}
