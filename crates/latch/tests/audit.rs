//! The audit trail: every revocation is recorded (who, what died, when, from where, why),
//! never with a token value, and read back through the admin API with filters and paging.

#[macro_use]
mod common;

use common::{Auth, TestServer};
use latch_store::postgres::AUDIT_LOCK_KEY;
use reqwest::Method;
use serde_json::{json, Value};

async fn audit(s: &TestServer, query: &str) -> Value {
    let resp = s
        .admin(Method::GET, &format!("/tenants/default/audit{query}"), None)
        .await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn events(page: &Value) -> Vec<Value> {
    page["events"].as_array().unwrap().clone()
}

backend_test! {
    async fn every_kind_of_revocation_is_recorded_with_who_what_and_why() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let g = s.grant_for(&svc, "alice", None).await;
        let (at, rt) = (g["access_token"].as_str().unwrap(), g["refresh_token"].as_str().unwrap());
        let grant_id = g["grant_id"].as_str().unwrap();

        // A client revokes a refresh token: the grant and its two live tokens die.
        assert_eq!(s.revoke(Auth::Basic(&svc), rt).await.status(), 200);
        // Unknown and already-dead tokens record nothing.
        assert_eq!(s.revoke(Auth::Basic(&svc), rt).await.status(), 200);
        assert_eq!(s.revoke(Auth::Basic(&svc), "garbage").await.status(), 200);
        let page = audit(&s, "").await;
        let e = &events(&page)[0];
        assert_eq!(events(&page).len(), 1, "{page}");
        assert_eq!(e["actor"], "svc");
        assert_eq!(e["route"], "oauth2/revoke");
        assert_eq!(e["reason"], "client_request");
        assert_eq!(e["grant_id"], grant_id);
        assert_eq!(e["subject"], "alice");
        assert_eq!((e["grants"].as_u64(), e["tokens"].as_u64()), (Some(1), Some(2)));
        assert_eq!(e["address"], "127.0.0.1");
        assert!(e["at"].as_i64().unwrap() > 0);
        assert!(!page.to_string().contains(at) && !page.to_string().contains("latch_"));

        // Reuse detection.
        let g2 = s.grant_for(&svc, "bob", None).await;
        let old = g2["refresh_token"].as_str().unwrap();
        assert_eq!(s.refresh(Auth::Basic(&svc), old).await.status(), 200);
        assert_eq!(s.refresh(Auth::Basic(&svc), old).await.status(), 400);
        // Log out everywhere, by an operator.
        s.grant_for(&svc, "carol", None).await;
        s.grant_for(&svc, "carol", None).await;
        s.admin(Method::DELETE, "/tenants/default/subjects/carol/grants", None).await;
        // A removed client.
        let gone = s.confidential("gone", "read").await;
        s.grant_for(&gone, "dave", None).await;
        s.admin(Method::DELETE, "/tenants/default/clients/gone", None).await;
        // A removed client that held no grant: an operator's act, recorded all the same.
        s.confidential("idle", "read").await;
        s.admin(Method::DELETE, "/tenants/default/clients/idle", None).await;

        let all = events(&audit(&s, "").await);
        let summary: Vec<(String, String, String, u64)> = all
            .iter()
            .map(|e| {
                (
                    e["actor"].as_str().unwrap().to_owned(),
                    e["route"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().unwrap().to_owned(),
                    e["grants"].as_u64().unwrap(),
                )
            })
            .collect();
        let expect = |a: &str, r: &str, why: &str, n: u64| (a.to_owned(), r.to_owned(), why.to_owned(), n);
        assert_eq!(
            summary,
            vec![
                expect("svc", "oauth2/revoke", "client_request", 1),
                expect("svc", "oauth2/token", "reuse_detected", 1),
                expect("admin", "admin", "logout_everywhere", 2),
                expect("admin", "admin", "client_removed", 1),
                expect("admin", "admin", "client_removed", 0),
            ]
        );
        assert_eq!(all[1]["subject"], "bob");
        assert_eq!(all[2]["subject"], "carol");
        // A removal names the client removed, as a client's own subject.
        for (e, client) in all[3..].iter().zip(["gone", "idle"]) {
            assert_eq!((&e["subject"], &e["subject_kind"]), (&json!(client), &json!("client")));
        }
        let idle = events(&audit(&s, "?client_subject=idle").await);
        assert_eq!(idle.len(), 1);
        assert_eq!(idle[0]["reason"], "client_removed");
        assert_eq!(all[2]["tokens"], 4, "two grants, an access and a refresh token each");
    }
}

backend_test! {
    async fn a_listing_refuses_a_query_parameter_it_does_not_read_or_one_left_empty() {
        // Read as if filtered, each answered everything before.
        let s = TestServer::start().await;
        for path in [
            "/tenants/default/audit?client_id=svc",
            "/tenants/default/audit?until=1700000000",
            "/tenants/default/audit?subject=",
            "/tenants/default/audit?subject=alice&client_subject=",
            "/tenants?owner=x",
            "/tenants/default/clients?after=",
            "/tenants/default/subjects/alice/grants?after=g",
        ] {
            let resp = s.admin(Method::GET, path, None).await;
            assert_eq!(resp.status(), 400, "{path}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "invalid_request", "{path}");
        }
        // What each reads is still read.
        for path in [
            "/tenants/default/audit?subject=alice&since=1&after=0&limit=5",
            "/tenants?after=a&limit=5",
            "/tenants/default/clients?after=a&limit=5",
            "/tenants/default/subjects/alice/grants?limit=5",
        ] {
            let resp = s.admin(Method::GET, path, None).await;
            assert_eq!(resp.status(), 200, "{path}");
        }
    }
}

backend_test! {
    async fn an_access_token_revocation_records_one_token() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = s.client_credentials(&svc).await["access_token"].as_str().unwrap().to_owned();
        assert_eq!(s.revoke(Auth::Post(&svc), &at).await.status(), 200);
        let e = &events(&audit(&s, "").await)[0];
        assert_eq!((e["grants"].as_u64(), e["tokens"].as_u64()), (Some(0), Some(1)));
        assert_eq!(e["subject"], "svc");
    }
}

backend_test! {
    async fn the_trail_filters_by_subject_and_time_and_pages() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        for subject in ["alice", "bob", "alice", "alice"] {
            let g = s.grant_for(&svc, subject, None).await;
            s.revoke(Auth::Basic(&svc), g["refresh_token"].as_str().unwrap()).await;
            s.advance(10);
        }
        assert_eq!(events(&audit(&s, "?subject=alice").await).len(), 3);
        assert_eq!(events(&audit(&s, "?subject=bob").await).len(), 1);
        assert!(events(&audit(&s, "?subject=alice").await).iter().all(|e| e["subject_kind"] == "user"));
        let first_at = events(&audit(&s, "").await)[0]["at"].as_i64().unwrap();
        let since = events(&audit(&s, &format!("?since={}", first_at + 15)).await);
        assert_eq!(since.len(), 2, "the last two, 20 and 30 s after the first");

        let page1 = audit(&s, "?limit=3").await;
        assert_eq!(events(&page1).len(), 3);
        let cursor = page1["next_after"].as_i64().expect("a next page");
        let page2 = audit(&s, &format!("?limit=3&after={cursor}")).await;
        assert_eq!(events(&page2).len(), 1);
        assert_eq!(page2["next_after"], Value::Null);

        // A client acting for itself is a subject of its own, apart from a user of its name.
        let machine = s.client_credentials(&svc).await;
        s.revoke(Auth::Basic(&svc), machine["access_token"].as_str().unwrap()).await;
        let own = events(&audit(&s, "?client_subject=svc").await);
        assert_eq!(own.len(), 1, "{own:?}");
        assert_eq!((own[0]["subject"].as_str(), own[0]["subject_kind"].as_str()), (Some("svc"), Some("client")));
        assert!(events(&audit(&s, "?subject=svc").await).is_empty());
        let user_svc = s.grant_for(&svc, "svc", None).await;
        s.revoke(Auth::Basic(&svc), user_svc["refresh_token"].as_str().unwrap()).await;
        assert_eq!(events(&audit(&s, "?subject=svc").await).len(), 1);
        assert_eq!(events(&audit(&s, "?client_subject=svc").await).len(), 1);

        for bad in ["?limit=0", "?limit=5000", "?since=yesterday", "?after=x", "?limit=1&limit=2", "?subject=a&client_subject=b"] {
            let resp = s.admin(Method::GET, &format!("/tenants/default/audit{bad}"), None).await;
            common::assert_error(resp, 400, "invalid_request").await;
        }
        let resp = s.admin(Method::GET, "/tenants/nope/audit", None).await;
        common::assert_error(resp, 404, "not_found").await;
        let none = s.http.get(s.url("/admin/v1/tenants/default/audit")).send().await.unwrap();
        assert_eq!(none.status(), 401);
    }
}

backend_test! {
    async fn the_sentinel_profile_records_a_logout_everywhere() {
        let s = TestServer::start().await;
        let app = s
            .create_client(
                "default",
                json!({
                    "client_id": "app",
                    "client_secret": "app-secret",
                    "token_endpoint_auth_method": "client_secret_post",
                    "grant_types": ["refresh_token"],
                }),
            )
            .await;
        let g = s.grant_for(&app, "erin", None).await;
        s.grant_for(&app, "erin", None).await;
        let resp = s
            .post_form(
                "/sentinel/api/account/default/token/revoke?v=1.0",
                Auth::Post(&app),
                &[("token", g["refresh_token"].as_str().unwrap())],
            )
            .await;
        assert_eq!(resp.status(), 200);
        let e = &events(&audit(&s, "").await)[0];
        assert_eq!(e["route"], "sentinel");
        assert_eq!(e["reason"], "logout_everywhere");
        assert_eq!(e["actor"], "app");
        assert_eq!(e["grants"], 2);
    }
}

/// What a server started with `extra` arguments, logging at `trace`, logged of a refresh
/// token's revocation, then of a client's grants' (`CLIENT_GRANTS`), with a token sent in a
/// query string meanwhile; and the grant whose refresh token it revoked.
async fn logs_of_two_revocations(extra: &[&str]) -> (String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--admin-token",
        common::ADMIN_TOKEN,
        "--database-url",
        "sqlite://latch.db",
        "--log",
        "trace",
    ];
    args.extend_from_slice(extra);
    let p = common::Process::serve(dir.path(), &args, &[]);
    let http = reqwest::Client::new();
    let resp = common::admin_at(
        &http,
        &p.base,
        Method::POST,
        "/tenants/default/clients",
        Some(json!({ "client_id": "svc", "client_secret": "svc-secret", "grant_types": ["refresh_token"] })),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let svc = common::TestClient {
        id: "svc".into(),
        secret: Some("svc-secret".into()),
    };
    let g: Value = common::admin_at(
        &http,
        &p.base,
        Method::POST,
        "/tenants/default/grants",
        Some(json!({ "client_id": "svc", "subject": "alice" })),
    )
    .await
    .json()
    .await
    .unwrap();
    let rt = g["refresh_token"].as_str().unwrap();
    let resp = common::post_form_at(
        &http,
        &p.base,
        "/oauth2/revoke",
        Auth::Basic(&svc),
        &[("token", rt)],
    )
    .await;
    assert_eq!(resp.status(), 200);
    // A client's grants revoked on a task of its own are logged in the request's span too.
    let bob = json!({ "client_id": "svc", "subject": "bob" });
    let path = "/tenants/default/grants";
    let resp = common::admin_at(&http, &p.base, Method::POST, path, Some(bob)).await;
    assert_eq!(resp.status(), 201);
    let resp = common::admin_at(&http, &p.base, Method::DELETE, CLIENT_GRANTS, None).await;
    assert_eq!(resp.status(), 200);
    // A token wrongly sent in a query string is not logged either (spans carry the path only).
    http.get(format!("{}/healthz?token=leak-me-not", p.base))
        .send()
        .await
        .unwrap();
    let status = p.terminate();
    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(status.success(), "exit {status}; the server's log:\n{logs}");
    (logs, g)
}

/// The admin path that revokes client `svc`'s grants.
const CLIENT_GRANTS: &str = "/tenants/default/clients/svc/grants";

/// No token, secret or query string in `logs` of [`logs_of_two_revocations`].
fn assert_no_secret_in(logs: &str, g: &Value) {
    for token in ["refresh_token", "access_token"] {
        assert!(!logs.contains(g[token].as_str().unwrap()), "{token} logged");
    }
    assert!(!logs.contains("svc-secret"));
    assert!(
        !logs.contains("leak-me-not") && logs.contains("/healthz"),
        "path logged, query not"
    );
}

#[tokio::test]
async fn each_revocation_is_one_structured_log_event_without_token_values() {
    let (logs, g) = logs_of_two_revocations(&[]).await;
    let path = CLIENT_GRANTS;
    let events: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("latch::audit"))
        .collect();
    assert_eq!(events.len(), 2, "{logs}");
    assert!(
        events[1].contains(path) && events[1].contains("grants=1"),
        "{}",
        events[1]
    );
    for field in [
        "client_request",
        "oauth2/revoke",
        "alice",
        g["grant_id"].as_str().unwrap(),
        "127.0.0.1",
    ] {
        assert!(
            events[0].contains(field),
            "{field} missing from {}",
            events[0]
        );
    }
    assert_no_secret_in(&logs, &g);
}

/// With `--log-format json` every line is one JSON object, and each revocation's audit event
/// carries its details as fields a log pipeline can select on.
#[tokio::test]
async fn json_logs_are_one_object_a_line_with_each_revocations_fields() {
    let (logs, g) = logs_of_two_revocations(&["--log-format", "json"]).await;
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() > 2, "{logs}");
    for line in &lines {
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(line.get(key).is_some(), "{key} missing from {line}");
        }
    }
    let events: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "latch::audit")
        .collect();
    assert_eq!(events.len(), 2, "{logs}");
    let revoked = &events[0]["fields"];
    assert_eq!(revoked["message"], "revoked");
    assert_eq!(revoked["route"], "oauth2/revoke");
    assert_eq!(revoked["reason"], "client_request");
    assert_eq!(revoked["subject"], "alice");
    assert_eq!(revoked["grant_id"], g["grant_id"]);
    assert_eq!(revoked["address"], "127.0.0.1");
    assert_eq!(revoked["grants"], 1);
    // A client's grants revoked on a task of its own, in the request's span.
    assert_eq!(events[1]["fields"]["route"], "admin");
    assert_eq!(events[1]["fields"]["grants"], 1);
    let path = format!("/admin/v1{CLIENT_GRANTS}");
    assert_eq!(events[1]["span"]["path"], path, "{}", events[1]);
    assert_no_secret_in(&logs, &g);
}

backend_test! {
    async fn concurrent_revocations_are_each_recorded_once_with_their_own_details() {
        // Concurrent one-token revocations share a statement on PostgreSQL; each killed token
        // must still get exactly one audit row carrying its own revocation's details, and a
        // token revoked twice at once is killed (and recorded) once.
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let mut tokens = Vec::new();
        for i in 0..30 {
            let g = s.grant_for(&svc, &format!("user{i}"), None).await;
            tokens.push(g["access_token"].as_str().unwrap().to_owned());
        }
        let twice = tokens.iter().chain(tokens.iter().take(10));
        let statuses = futures_util::future::join_all(
            twice.map(|t| async { s.revoke(Auth::Basic(&svc), t).await.status() }),
        )
        .await;
        assert!(statuses.iter().all(|st| *st == 200), "{statuses:?}");
        for t in &tokens {
            assert!(!s.is_active(t).await);
        }
        let page = audit(&s, "?limit=100").await;
        let all = events(&page);
        assert_eq!(all.len(), 30, "{page}");
        let mut subjects: Vec<&str> = all.iter().map(|e| e["subject"].as_str().unwrap()).collect();
        subjects.sort_unstable();
        let mut expected: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
        expected.sort_unstable();
        assert_eq!(subjects, expected);
        for e in &all {
            assert_eq!((e["grants"].as_u64(), e["tokens"].as_u64()), (Some(0), Some(1)), "{e}");
            assert_eq!(e["actor"], "svc");
        }
        let mut ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 30, "audit ids are distinct");
    }
}

/// A server on a fresh PostgreSQL schema, with client `svc` and an access token it holds.
async fn postgres_server_with_a_token() -> (TestServer, common::TestClient, String) {
    let db = common::TestDb::fresh_on(common::Backend::Postgres).await;
    let s = TestServer::start_on(db).await;
    let svc = s.confidential("svc", "read").await;
    let token = s.grant_for(&svc, "alice", None).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    (s, svc, token)
}

/// Another PostgreSQL node in the middle of a write batch: it holds the trail's lock shared, as
/// every batch does, and has taken an audit id for a record it has not committed yet.
async fn other_node_writing_a_record(s: &TestServer) -> common::OtherNode {
    common::OtherNode::begin(
        &s.db,
        &format!(
            "SELECT pg_advisory_xact_lock_shared({AUDIT_LOCK_KEY}); \
             INSERT INTO audit (tenant_id, at, actor, route, reason, subject, grants, tokens) \
             VALUES ('default', 1, 'other-node', 'admin', 'admin', 'bob', 1, 0)"
        ),
    )
    .await
}

/// PostgreSQL, several nodes: audit ids come from one sequence, taken mid-transaction, and
/// transactions commit in the order they end, so a record can commit after one with a later
/// id. A read of the trail waits (100 ms at most) for the batches writing when it comes, and
/// never shows a record past one still being written: a reader following `next_after` never
/// steps over one. Here the other node's batch outlasts the wait, so the read fails, `503`,
/// rather than show this node's later record alone; once it commits, both are read, in order.
#[tokio::test]
async fn postgres_a_read_of_the_trail_never_steps_over_a_record_still_being_written() {
    let (s, svc, token) = postgres_server_with_a_token().await;
    let other = other_node_writing_a_record(&s).await;
    // This node's record takes the next id and commits first.
    assert_eq!(s.revoke(Auth::Basic(&svc), &token).await.status(), 200);
    let resp = s
        .admin(Method::GET, "/tenants/default/audit?after=0", None)
        .await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    other.commit().await;
    let page = audit(&s, "?after=0").await;
    let actors: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["other-node", "svc"], "{page}");
}

/// Ids once settled stay settled: a page within those this node has seen settled takes no
/// lock, so a walk through the trail's history goes on while another node's batch writes
/// (holding the lock shared, as every batch does), where a page that reaches the trail's head
/// still waits for that batch (here it outlasts the wait: `503`). Before, every page waited,
/// and every node's batches behind it.
#[tokio::test]
async fn postgres_a_page_of_settled_history_takes_no_lock() {
    let (s, svc, token) = postgres_server_with_a_token().await;
    let more = [
        s.grant_for(&svc, "bob", None).await,
        s.grant_for(&svc, "carol", None).await,
    ];
    for t in std::iter::once(token.as_str())
        .chain(more.iter().map(|g| g["access_token"].as_str().unwrap()))
    {
        assert_eq!(s.revoke(Auth::Basic(&svc), t).await.status(), 200);
    }
    let ids: Vec<i64> = events(&audit(&s, "?after=0").await)
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);

    let other = other_node_writing_a_record(&s).await;
    let page = audit(&s, "?after=0&limit=2").await;
    let read: Vec<i64> = events(&page)
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(read, ids[..2]);
    assert_eq!(page["next_after"].as_i64(), Some(ids[1]));
    let head = s
        .admin(
            Method::GET,
            &format!("/tenants/default/audit?after={}", ids[1]),
            None,
        )
        .await;
    assert_eq!(head.status(), 503);
    other.commit().await;
    let rest = events(&audit(&s, &format!("?after={}", ids[1])).await);
    assert_eq!(
        rest.len(),
        2,
        "this node's last record, then the other node's"
    );
}

/// The other half of the same rule: while a read of the trail settles its ids (it holds the
/// lock exclusively, for a moment), a write batch waits, and then commits.
#[tokio::test]
async fn postgres_a_revocation_waits_while_a_read_of_the_trail_settles_its_ids() {
    let (s, svc, token) = postgres_server_with_a_token().await;
    let reader = common::OtherNode::begin(
        &s.db,
        &format!("SELECT pg_advisory_xact_lock({AUDIT_LOCK_KEY})"),
    )
    .await;
    let revoking = tokio::spawn({
        let (http, base, svc) = (s.http.clone(), s.base.clone(), svc.clone());
        async move {
            let body = common::form(&[("token", &token)]);
            http.post(format!("{base}/oauth2/revoke"))
                .header(
                    "authorization",
                    common::basic_header(&svc.id, svc.secret.as_deref().unwrap()),
                )
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    reader
        .until_waited_on(&s.db, "pg_advisory_xact_lock_shared", &revoking)
        .await;
    reader.commit().await;
    assert_eq!(revoking.await.unwrap(), 200);
    assert_eq!(events(&audit(&s, "").await).len(), 1);
}
