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
