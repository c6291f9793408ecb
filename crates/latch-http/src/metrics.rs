//! `GET /metrics`: the responses by endpoint and status, the clean-up's and the group
//! commit's counters, and each listener's connections, in the Prometheus text format.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use latch_core::commits::{CommitStats, COMMIT_SECONDS_BUCKETS};
use tower::util::MapResponseLayer;

use crate::serve::ConnectionStats;
use crate::AppState;

/// What a request was for, as `latch_http_responses_total` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Token,
    Revoke,
    Introspect,
    Metadata,
    Sentinel,
    IdV1,
    ApiV10,
    Admin,
    Health,
    Metrics,
    /// No route: `404`.
    Other,
    /// A handler that panicked (answered `500`, whatever its endpoint).
    Panicked,
}

impl Endpoint {
    const ALL: [Endpoint; 12] = [
        Endpoint::Token,
        Endpoint::Revoke,
        Endpoint::Introspect,
        Endpoint::Metadata,
        Endpoint::Sentinel,
        Endpoint::IdV1,
        Endpoint::ApiV10,
        Endpoint::Admin,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::Other,
        Endpoint::Panicked,
    ];

    fn label(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Revoke => "revoke",
            Endpoint::Introspect => "introspect",
            Endpoint::Metadata => "metadata",
            Endpoint::Sentinel => "sentinel",
            Endpoint::IdV1 => "id_v1",
            Endpoint::ApiV10 => "api_v1_0",
            Endpoint::Admin => "admin",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::Other => "other",
            Endpoint::Panicked => "panicked",
        }
    }
}

/// Status codes are 100 to 999 (`http::StatusCode` refuses others).
const STATUSES: usize = 900;

/// Responses by endpoint and status code, since start-up: what an operator watches for a
/// wave of failed authentication (`401`, `429`), of unavailable storage (`503`), or of
/// revocations. Counting one is a relaxed atomic add, with no lookup or lock. Responses hyper
/// makes itself (to a request it cannot parse, or whose head is too large) are not counted.
pub struct ResponseCounters {
    counts: Box<[AtomicU64]>,
}

impl Default for ResponseCounters {
    fn default() -> Self {
        Self {
            counts: (0..Endpoint::ALL.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl ResponseCounters {
    /// Counts a response of `endpoint`.
    pub(crate) fn count(&self, endpoint: Endpoint, status: StatusCode) {
        let slot = usize::from(status.as_u16())
            .saturating_sub(100)
            .min(STATUSES - 1);
        self.counts[endpoint as usize * STATUSES + slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the non-zero counters as `latch_http_responses_total`.
    pub(crate) fn render(&self, body: &mut String) {
        let name = "latch_http_responses_total";
        let _ = writeln!(
            body,
            "# HELP {name} Responses since start-up, by endpoint and status code.\n# TYPE {name} counter"
        );
        for endpoint in Endpoint::ALL {
            let row = &self.counts[endpoint as usize * STATUSES..][..STATUSES];
            for (slot, count) in row.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        body,
                        "{name}{{endpoint=\"{}\",status=\"{}\"}} {count}",
                        endpoint.label(),
                        slot + 100
                    );
                }
            }
        }
    }
}

/// The layer that counts a route's responses as `endpoint`'s (every response the route
/// makes, its `405`s included).
pub(crate) fn counted(
    state: &Arc<AppState>,
    endpoint: Endpoint,
) -> MapResponseLayer<impl Fn(Response) -> Response + Clone + Send + Sync + 'static> {
    let counters = state.responses.clone();
    MapResponseLayer::new(move |response: Response| {
        counters.count(endpoint, response.status());
        response
    })
}

pub(crate) async fn handle(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let c = state.authority.cleanup_stats();
    let mut body = String::new();
    state.responses.render(&mut body);
    let mut counter = |name: &str, help: &str, kind: &str, value: &dyn Display| {
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    counter(
        "latch_cleanup_tokens_deleted_total",
        "Expired token rows deleted by the clean-up since start-up.",
        "counter",
        &c.tokens_deleted,
    );
    counter(
        "latch_cleanup_grants_deleted_total",
        "Expired grant rows deleted by the clean-up since start-up.",
        "counter",
        &c.grants_deleted,
    );
    counter(
        "latch_cleanup_audit_deleted_total",
        "Audit records past the retention period deleted by the clean-up since start-up.",
        "counter",
        &c.audit_deleted,
    );
    counter(
        "latch_cleanup_runs_total",
        "Completed clean-up runs since start-up.",
        "counter",
        &c.runs,
    );
    counter(
        "latch_cleanup_last_run_timestamp_seconds",
        "When the last clean-up run finished (0 = never).",
        "gauge",
        &c.last_run,
    );
    let w = state.authority.store().commit_stats();
    counter(
        "latch_store_commits_total",
        "Group commits since start-up: transactions that made one or more writes durable.",
        "counter",
        &w.commits,
    );
    counter(
        "latch_store_commit_failures_total",
        "Batches of writes that failed to commit (each write in them was answered 503).",
        "counter",
        &w.failed,
    );
    counter(
        "latch_store_writes_total",
        "Writes (issuances, rotations, revocations, admin changes) in the committed batches.",
        "counter",
        &w.writes,
    );
    counter(
        "latch_store_writer_checkpoints_total",
        "SQLite: checkpoints the writer ran itself to rewind the WAL, holding up every write meanwhile.",
        "counter",
        &w.writer_checkpoints,
    );
    counter(
        "latch_store_writer_checkpoint_seconds_total",
        "SQLite: time the writer spent in its own checkpoints.",
        "counter",
        &w.writer_checkpoint_seconds,
    );
    counter(
        "latch_store_revocation_marks",
        "SQLite: access tokens revoked alone, and revoked grants holding access tokens, whose \
         marks are held in memory (the index of the revocation log) until they expire; at the \
         bound (docs/deploy.md) a revocation marks the tokens' rows instead.",
        "gauge",
        &state.authority.store().revocation_marks(),
    );
    commit_histogram(&mut body, &w);
    connections(&mut body, &state.listeners);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Each listener's connections: served now, the most it serves at once, and how often every
/// one was taken (an alert on `open` near `max` sees a flood before clients time out).
fn connections(body: &mut String, listeners: &[(&'static str, Arc<ConnectionStats>)]) {
    type Value = fn(&ConnectionStats) -> u64;
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "latch_http_connections",
            "Connections a listener is serving now.",
            "gauge",
            |c| c.open() as u64,
        ),
        (
            "latch_http_connections_max",
            "The most connections a listener serves at once; past it, newcomers wait in the listen backlog.",
            "gauge",
            |c| c.max() as u64,
        ),
        (
            "latch_http_connections_at_limit_total",
            "Times every connection slot of a listener was taken when it would accept another.",
            "counter",
            ConnectionStats::at_limit,
        ),
    ];
    for (name, help, kind, value) in families {
        let _ = writeln!(body, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (listener, stats) in listeners {
            let _ = writeln!(body, "{name}{{listener=\"{listener}\"}} {}", value(stats));
        }
    }
}

/// The batches' durations as a Prometheus histogram (cumulative buckets, sum and count).
fn commit_histogram(body: &mut String, w: &CommitStats) {
    let name = "latch_store_commit_duration_seconds";
    let _ = writeln!(
        body,
        "# HELP {name} Time from a batch's first write to the end of its commit.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    let bounds = COMMIT_SECONDS_BUCKETS.iter().map(|b| b.to_string());
    for (le, count) in bounds.chain(["+Inf".to_owned()]).zip(w.duration_buckets) {
        cumulative += count;
        let _ = writeln!(body, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(body, "{name}_sum {}", w.duration_seconds);
    let _ = writeln!(body, "{name}_count {cumulative}");
}
