//! `POST /oauth2/revoke`, RFC 7009 to the letter.

#[macro_use]
mod common;

use common::{assert_error, Auth, TestServer};
use serde_json::json;

backend_test! {
    async fn revoking_an_access_token_makes_it_inactive() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = s.client_credentials(&svc).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(s.is_active(&at).await);

        let resp = s.revoke(Auth::Basic(&svc), &at).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert!(
            resp.text().await.unwrap().is_empty(),
            "RFC 7009 §2.2: empty body"
        );
        assert_eq!(s.introspect(&at).await, json!({ "active": false }));
    }
}

backend_test! {
    async fn revoking_a_refresh_token_kills_its_whole_grant() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let g = s.grant_for(&svc, "alice", None).await;
        let (at, rt) = (
            g["access_token"].as_str().unwrap(),
            g["refresh_token"].as_str().unwrap(),
        );
        // A second access token in the same grant, via rotation.
        let refreshed: serde_json::Value = s.refresh(Auth::Basic(&svc), rt).await.json().await.unwrap();
        let (at2, rt2) = (
            refreshed["access_token"].as_str().unwrap(),
            refreshed["refresh_token"].as_str().unwrap(),
        );
        assert!(s.is_active(at).await && s.is_active(at2).await && s.is_active(rt2).await);

        assert_eq!(s.revoke(Auth::Post(&svc), rt2).await.status(), 200);
        for t in [at, at2, rt2] {
            assert!(!s.is_active(t).await, "{t} still active");
        }
        let again = s.refresh(Auth::Basic(&svc), rt2).await;
        assert_error(again, 400, "invalid_grant").await;
    }
}

backend_test! {
    async fn revoking_an_already_rotated_refresh_token_still_kills_its_grant() {
        // A client that revokes while its own refresh is in flight must not leave the
        // refreshed tokens alive.
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let g = s.grant_for(&svc, "alice", None).await;
        let old = g["refresh_token"].as_str().unwrap();
        let new: serde_json::Value = s.refresh(Auth::Basic(&svc), old).await.json().await.unwrap();
        assert_eq!(s.revoke(Auth::Basic(&svc), old).await.status(), 200);
        for t in ["access_token", "refresh_token"] {
            assert!(!s.is_active(new[t].as_str().unwrap()).await, "{t} survived");
        }
    }
}

backend_test! {
    async fn a_wrong_or_unknown_hint_still_revokes() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let g = s.grant_for(&svc, "alice", None).await;
        let rt = g["refresh_token"].as_str().unwrap();
        let resp = s
            .post_form(
                "/oauth2/revoke",
                Auth::Basic(&svc),
                &[("token", rt), ("token_type_hint", "access_token")],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(!s.is_active(rt).await);

        let at = s.client_credentials(&svc).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let resp = s
            .post_form(
                "/oauth2/revoke",
                Auth::Basic(&svc),
                &[("token", &at), ("token_type_hint", "id_token")],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(!s.is_active(&at).await);
    }
}

backend_test! {
    async fn unknown_malformed_and_already_revoked_tokens_get_an_empty_200() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        for t in [
            "garbage",
            "latch_at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "latch_rt_\u{e9}\u{e9}",
        ] {
            let resp = s.revoke(Auth::Basic(&svc), t).await;
            assert_eq!(resp.status(), 200, "{t}");
            assert!(resp.text().await.unwrap().is_empty());
        }
        let at = s.client_credentials(&svc).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(s.revoke(Auth::Basic(&svc), &at).await.status(), 200);
        assert_eq!(s.revoke(Auth::Basic(&svc), &at).await.status(), 200);
    }
}

backend_test! {
    async fn an_expired_token_revokes_to_200() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = s.client_credentials(&svc).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        s.advance(3601);
        assert!(!s.is_active(&at).await);
        assert_eq!(s.revoke(Auth::Basic(&svc), &at).await.status(), 200);
    }
}

backend_test! {
    async fn a_confidential_client_cannot_revoke_another_clients_token_and_is_told() {
        let s = TestServer::start().await;
        let owner = s.confidential("owner", "read").await;
        let other = s.confidential("other", "read").await;
        let at = s.client_credentials(&owner).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let resp = s.revoke(Auth::Basic(&other), &at).await;
        assert_error(resp, 400, "invalid_request").await;
        assert!(
            s.is_active(&at).await,
            "token must survive a foreign revoke"
        );
    }
}

backend_test! {
    async fn a_public_client_revokes_its_own_tokens_and_silently_fails_on_others() {
        let s = TestServer::start().await;
        let app = s.public("spa", "read").await;
        let other = s.public("other-spa", "read").await;
        let mine = s.grant_for(&app, "alice", None).await;
        let rt = mine["refresh_token"].as_str().unwrap();
        let at = mine["access_token"].as_str().unwrap();

        // Another public client: a silent 200, and nothing happens.
        let resp = s.revoke(Auth::Public(&other), rt).await;
        assert_eq!(resp.status(), 200);
        assert!(s.is_active(rt).await && s.is_active(at).await);

        // The owner: revoked, with the grant.
        assert_eq!(s.revoke(Auth::Public(&app), rt).await.status(), 200);
        assert!(!s.is_active(rt).await && !s.is_active(at).await);
    }
}

backend_test! {
    async fn access_token_revocation_kills_only_the_token_by_default_or_the_grant_when_configured() {
        let s = TestServer::start().await;
        let narrow = s.confidential("narrow", "read").await;
        let g = s.grant_for(&narrow, "alice", None).await;
        assert_eq!(
            s.revoke(Auth::Basic(&narrow), g["access_token"].as_str().unwrap())
                .await
                .status(),
            200
        );
        assert!(!s.is_active(g["access_token"].as_str().unwrap()).await);
        assert!(
            s.is_active(g["refresh_token"].as_str().unwrap()).await,
            "default: the token only"
        );

        let wide = s
            .create_client(
                "default",
                json!({
                    "client_id": "wide",
                    "client_secret": "wide-secret",
                    "grant_types": ["refresh_token"],
                    "access_token_revocation": "grant",
                }),
            )
            .await;
        let g = s.grant_for(&wide, "bob", None).await;
        assert_eq!(
            s.revoke(Auth::Basic(&wide), g["access_token"].as_str().unwrap())
                .await
                .status(),
            200
        );
        assert!(
            !s.is_active(g["refresh_token"].as_str().unwrap()).await,
            "grant setting: all of it"
        );
    }
}

backend_test! {
    async fn request_errors() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;

        // Missing token.
        assert_error(
            s.post_form("/oauth2/revoke", Auth::Basic(&svc), &[]).await,
            400,
            "invalid_request",
        )
        .await;
        // Empty token counts as missing (RFC 6749 §3.1).
        assert_error(
            s.post_form("/oauth2/revoke", Auth::Basic(&svc), &[("token", "")])
                .await,
            400,
            "invalid_request",
        )
        .await;
        // A parameter twice.
        let resp = s
            .post_raw(
                "/oauth2/revoke",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("authorization", &common::basic_header("svc", "svc-secret")),
                ],
                b"token=a&token=b".to_vec(),
            )
            .await;
        assert_error(resp, 400, "invalid_request").await;
        // Wrong content type.
        let resp = s
            .post_raw(
                "/oauth2/revoke",
                &[
                    ("content-type", "application/json"),
                    ("authorization", &common::basic_header("svc", "svc-secret")),
                ],
                br#"{"token":"x"}"#.to_vec(),
            )
            .await;
        assert_error(resp, 400, "invalid_request").await;
        // GET.
        let resp = s.http.get(s.url("/oauth2/revoke")).send().await.unwrap();
        assert_eq!(resp.headers()["allow"], "POST");
        assert_error(resp, 405, "invalid_request").await;
        // Oversized body.
        let big = format!("token={}", "a".repeat(200 * 1024));
        let resp = s
            .post_raw(
                "/oauth2/revoke",
                &[("content-type", "application/x-www-form-urlencoded")],
                big.into_bytes(),
            )
            .await;
        assert_error(resp, 413, "invalid_request").await;
    }
}

backend_test! {
    async fn client_authentication_failures_are_401_with_a_basic_challenge_when_basic_was_used() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let at = s.client_credentials(&svc).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let wrong = common::TestClient {
            id: "svc".into(),
            secret: Some("nope".into()),
        };
        let unknown = common::TestClient {
            id: "ghost".into(),
            secret: Some("x".into()),
        };

        let resp = s.revoke(Auth::Basic(&wrong), &at).await;
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        assert_error(resp, 401, "invalid_client").await;

        let resp = s.revoke(Auth::Post(&wrong), &at).await;
        assert!(resp.headers().get("www-authenticate").is_none());
        assert_error(resp, 401, "invalid_client").await;

        assert_error(
            s.revoke(Auth::Basic(&unknown), &at).await,
            401,
            "invalid_client",
        )
        .await;
        assert_error(s.revoke(Auth::None, &at).await, 401, "invalid_client").await;
        // A confidential client naming itself without its secret.
        assert_error(
            s.revoke(Auth::Public(&svc), &at).await,
            401,
            "invalid_client",
        )
        .await;
        assert!(s.is_active(&at).await);
    }
}

backend_test! {
    async fn a_revocation_that_cannot_be_stored_is_503_and_changes_nothing() {
        let s = TestServer::start().await;
        let svc = s.confidential("svc", "read").await;
        let g = s.grant_for(&svc, "alice", None).await;
        let rt = g["refresh_token"].as_str().unwrap();

        // Make every write to grants fail, as a broken disk would.
        s.db.break_updates("grants").await;
        let resp = s.revoke(Auth::Basic(&svc), rt).await;
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_error(resp, 503, "temporarily_unavailable").await;
        assert!(
            s.is_active(rt).await,
            "a failed revocation must not half-happen"
        );

        // The database recovers; the retried revocation works without a restart.
        s.db.heal_updates("grants").await;
        assert_eq!(s.revoke(Auth::Basic(&svc), rt).await.status(), 200);
        assert!(!s.is_active(rt).await);
    }
}
