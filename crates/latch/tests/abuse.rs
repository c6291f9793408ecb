//! Abuse containment: failed client authentication is rate-limited per client id and per
//! source address, with `429` and `Retry-After`, and the limit releases with its window.

#[macro_use]
mod common;

use common::{assert_error, Auth, TestClient, TestServer};

fn wrong(id: &str) -> TestClient {
    TestClient {
        id: id.into(),
        secret: Some("wrong".into()),
    }
}

backend_test! {
    async fn failed_authentication_is_limited_per_client_id_and_released_by_the_window() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let other = s.confidential("other", "read").await;
        // Defaults: 10 failures per client id per 60 s.
        for _ in 0..10 {
            assert_error(s.revoke(Auth::Basic(&wrong("svc")), "x").await, 401, "invalid_client").await;
        }
        let resp = s.revoke(Auth::Basic(&wrong("svc")), "x").await;
        let wait: u32 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        assert_error(resp, 429, "too_many_requests").await;
        // Every route shares the limit; another client is unaffected.
        let token = s.post_form("/oauth2/token", Auth::Basic(&svc), &[("grant_type", "client_credentials")]).await;
        assert_error(token, 429, "too_many_requests").await;
        assert_eq!(s.client_credentials(&other).await["token_type"], "Bearer");

        // The window ends: the right secret works again.
        s.advance(60);
        assert_eq!(s.client_credentials(&svc).await["token_type"], "Bearer");
    }
}

backend_test! {
    async fn failed_authentication_is_limited_per_source_address() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        // Defaults: 50 failures per address per 60 s, spread over many client ids.
        for i in 0..50 {
            let resp = s.revoke(Auth::Basic(&wrong(&format!("guess-{i}"))), "x").await;
            assert_error(resp, 401, "invalid_client").await;
        }
        let resp = s.post_form("/oauth2/token", Auth::Basic(&svc), &[("grant_type", "client_credentials")]).await;
        assert_error(resp, 429, "too_many_requests").await;
        s.advance(61);
        assert_eq!(s.client_credentials(&svc).await["token_type"], "Bearer");
    }
}
