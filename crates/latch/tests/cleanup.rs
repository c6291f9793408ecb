//! Expiry clean-up: expired rows are deleted in bounded batches while serving goes on;
//! revoked but unexpired tokens keep their rows and keep reading as revoked.

#[macro_use]
mod common;

use common::{Auth, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

async fn cleanup(s: &TestServer) -> Value {
    let resp = s.admin(Method::POST, "/cleanup", None).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

backend_test! {
    async fn expired_rows_go_and_revoked_unexpired_rows_stay_revoked() {
        let s = TestServer::start().await;
        let short = s
            .create_client(
                "default",
                json!({
                    "client_id": "short",
                    "client_secret": "short-secret",
                    "grant_types": ["client_credentials", "refresh_token"],
                    "access_token_ttl": 60,
                    "refresh_token_ttl": 120,
                }),
            )
            .await;
        let svc = s.confidential("svc", "read").await;
        let expiring = s.grant_for(&short, "alice", None).await;
        let revoked = s.grant_for(&svc, "bob", None).await;
        let live = s.client_credentials(&svc).await;
        let revoked_rt = revoked["refresh_token"].as_str().unwrap();
        assert_eq!(s.revoke(Auth::Basic(&svc), revoked_rt).await.status(), 200);

        s.advance(121);
        let purged = cleanup(&s).await;
        assert_eq!(purged, json!({ "tokens_deleted": 2, "grants_deleted": 1 }));
        let left = s.db.query_i64("SELECT count(*) FROM tokens").await;
        // bob's two revoked tokens, the live access token, and the introspector's nothing.
        assert_eq!(left, 3, "only expired rows are deleted");

        // Answers are unchanged: revoked stays revoked, live stays live, expired stays dead.
        assert!(!s.is_active(revoked_rt).await);
        let again = s.refresh(Auth::Basic(&svc), revoked_rt).await;
        common::assert_error(again, 400, "invalid_grant").await;
        assert!(s.is_active(live["access_token"].as_str().unwrap()).await);
        assert!(!s.is_active(expiring["refresh_token"].as_str().unwrap()).await);
        assert_eq!(cleanup(&s).await, json!({ "tokens_deleted": 0, "grants_deleted": 0 }));

        let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("latch_cleanup_tokens_deleted_total 2"), "{metrics}");
        assert!(metrics.contains("latch_cleanup_grants_deleted_total 1"), "{metrics}");
        assert!(metrics.contains("latch_cleanup_runs_total 2"), "{metrics}");
        assert!(!metrics.contains("latch_cleanup_last_run_timestamp_seconds 0\n"), "{metrics}");
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
            for _ in 0..100 {
                let at = s.client_credentials(&svc).await["access_token"].as_str().unwrap().to_owned();
                assert!(s.is_active(&at).await);
                assert_eq!(s.revoke(Auth::Basic(&svc), &at).await.status(), 200);
            }
        };
        let (purged, ()) = tokio::join!(purge, serve);
        // The purge may finish before all 100 requests were made; then their rows are
        // unexpired and stay. Either way exactly the 100,000 expired rows went.
        assert_eq!(purged, json!({ "tokens_deleted": 100_000, "grants_deleted": 100_000 }));
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
    assert!(
        common::run_cli(dir.path(), &["tenant", "list", "--database-url", &db], None)
            .status
            .success()
    );
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
    assert_eq!(report, json!({ "tokens_deleted": 2, "grants_deleted": 1 }));
}
