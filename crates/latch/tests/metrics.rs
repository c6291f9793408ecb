//! `GET /metrics`: the group commit's counters follow the writes.

#[macro_use]
mod common;

use common::{Auth, TestServer};
use futures_util::future::join_all;

/// `/metrics` as text.
async fn metrics(s: &TestServer) -> String {
    let resp = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// The value of the sample `name` (with its labels, if any) in `metrics`.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
}

backend_test! {
    async fn every_durable_write_is_counted_and_every_batch_timed() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let before = metrics(&s).await;

        // 20 issuances at once (a few group commits), then 20 revocations one by one.
        let issued = join_all((0..20).map(|_| s.client_credentials(&svc))).await;
        for t in &issued {
            let at = t["access_token"].as_str().unwrap();
            assert_eq!(s.revoke(Auth::Basic(&svc), at).await.status(), 200);
        }

        let after = metrics(&s).await;
        let delta = |name: &str| sample(&after, name) - sample(&before, name);
        assert_eq!(delta("latch_store_writes_total"), 40.0, "{after}");
        assert_eq!(delta("latch_store_commit_failures_total"), 0.0, "{after}");
        let commits = delta("latch_store_commits_total");
        // Each revocation waited for its own commit; the issuances shared at most 20.
        assert!((21.0..=40.0).contains(&commits), "{commits} commits:\n{after}");

        // The histogram times every batch, committed or not, once.
        let h = "latch_store_commit_duration_seconds";
        let count = sample(&after, &format!("{h}_count"));
        let batches = sample(&after, "latch_store_commits_total")
            + sample(&after, "latch_store_commit_failures_total");
        assert_eq!(count, batches, "{after}");
        assert_eq!(delta(&format!("{h}_count")), commits, "{after}");
        assert!(delta(&format!("{h}_sum")) > 0.0, "{after}");
        let buckets: Vec<f64> = after
            .lines()
            .filter(|l| l.starts_with(&format!("{h}_bucket{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), 11, "ten bounds and +Inf:\n{after}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative:\n{after}");
        assert_eq!(sample(&after, &format!("{h}_bucket{{le=\"+Inf\"}}")), count);

        // Present on both back-ends (PostgreSQL checkpoints by itself: always zero there).
        let stalls = sample(&after, "latch_store_writer_checkpoints_total");
        if s.db.is_postgres() {
            assert_eq!(stalls, 0.0);
        }
        assert!(sample(&after, "latch_store_writer_checkpoint_seconds_total") >= 0.0);

        // SQLite holds the 20 revocations in memory (the revocation log's index), each
        // loaded by the first read or write after its commit: here, an introspection.
        // PostgreSQL holds none.
        let last = issued[19]["access_token"].as_str().unwrap();
        assert_eq!(s.introspect(last).await["active"], false);
        let now = metrics(&s).await;
        let marks = if s.db.is_postgres() { 0.0 } else { 20.0 };
        let held = sample(&now, "latch_store_revocation_marks");
        assert_eq!(held - sample(&before, "latch_store_revocation_marks"), marks, "{now}");
    }
}

/// The sum of every `latch_http_responses_total` sample in `metrics`.
fn responses(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("latch_http_responses_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_is_counted_once_by_endpoint_and_status() {
    let s = TestServer::start().await;
    let svc = s.confidential("svc", "read").await;
    let wrong = common::TestClient {
        secret: Some("wrong".into()),
        ..svc.clone()
    };
    let before = metrics(&s).await;
    let grant = [("grant_type", "client_credentials")];

    let token = s.client_credentials(&svc).await;
    let at = token["access_token"].as_str().unwrap();
    let resp = s
        .post_form("/oauth2/token", Auth::Basic(&wrong), &grant)
        .await;
    assert_eq!(resp.status(), 401);
    let resp = s
        .post_form("/tenants/default/oauth2/token", Auth::Basic(&svc), &grant)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.introspect(at).await["active"], true);
    assert_eq!(s.revoke(Auth::Basic(&svc), at).await.status(), 200);
    let get = |path: &str| s.http.get(s.url(path)).send();
    assert_eq!(get("/oauth2/token").await.unwrap().status(), 405);
    let put = s
        .http
        .put(s.url("/admin/v1/tenants"))
        .bearer_auth(common::ADMIN_TOKEN);
    let put = put.send().await.unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "POST,GET,HEAD");
    assert_eq!(get("/no/such/endpoint").await.unwrap().status(), 404);
    assert_eq!(
        get("/admin/v1/no/such/endpoint").await.unwrap().status(),
        404
    );
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let admin = s.admin(reqwest::Method::GET, "/tenants", None).await;
    assert_eq!(admin.status(), 200);
    let metadata = get("/.well-known/oauth-authorization-server")
        .await
        .unwrap();
    assert_eq!(metadata.status(), 200);

    let after = metrics(&s).await;
    let delta = |endpoint: &str, status: u16| {
        let name =
            format!("latch_http_responses_total{{endpoint=\"{endpoint}\",status=\"{status}\"}}");
        let was = if before.contains(&format!("{name} ")) {
            sample(&before, &name)
        } else {
            0.0
        };
        sample(&after, &name) - was
    };
    assert_eq!(delta("token", 200), 2.0, "{after}");
    assert_eq!(delta("token", 401), 1.0, "{after}");
    assert_eq!(delta("token", 405), 1.0, "{after}");
    assert_eq!(delta("introspect", 200), 1.0, "{after}");
    assert_eq!(delta("revoke", 200), 1.0, "{after}");
    assert_eq!(delta("other", 404), 2.0, "{after}");
    assert_eq!(delta("health", 200), 1.0, "{after}");
    assert_eq!(delta("admin", 200), 1.0, "{after}");
    assert_eq!(delta("admin", 405), 1.0, "{after}");
    assert_eq!(delta("metadata", 200), 1.0, "{after}");
    assert_eq!(delta("metrics", 200), 1.0, "the scrape before, {after}");
    // Each of the 12 responses since, and the scrape before them, once.
    assert_eq!(responses(&after) - responses(&before), 13.0, "{after}");
    assert!(
        after.contains("# TYPE latch_http_responses_total counter"),
        "{after}"
    );
    // One listener serves everything: its connections, the scrape's own among them.
    assert!(sample(&after, r#"latch_http_connections{listener="all"}"#) >= 1.0);
    // (What the file-descriptor limit leaves room for: the machine's.)
    assert!(sample(&after, r#"latch_http_connections_max{listener="all"}"#) >= 1.0);
    assert!(after.contains("# TYPE latch_http_connections_at_limit_total counter"));
}
