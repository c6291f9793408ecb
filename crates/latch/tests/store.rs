//! The storage layer on both back-ends, below HTTP: what the HTTP tests cannot see, such
//! as the audit record each revocation returns when concurrent revocations share a statement
//! (the PostgreSQL committer batches them).

#[macro_use]
mod common;

use std::sync::Arc;

use common::{OtherNode, TestDb};
use latch_core::audit::{AuditContext, AuditEvent, AuditQuery, Reason};
use latch_core::client::{AccessTokenRevocation, AuthMethod, Client, Introspects, SecretHash};
use latch_core::grant::{
    Grant, NewToken, Revocation, Rotation, RotationOutcome, RotationPrecondition, TokenRecord,
};
use latch_core::id::{ClientId, GrantId, Subject, TenantId};
use latch_core::scope::Scope;
use latch_core::store::{Purged, RevocationPlan, Storage, Sweep};
use latch_core::token::{TokenHash, TokenKind};
use latch_core::StoreError;
use latch_store::DatabaseUrl;

fn subject(i: usize) -> Subject {
    Subject::parse(&format!("user{i}")).unwrap()
}

/// A grant of `subject(i)` to "app", with one token of each `(name, kind, expires_at)`.
async fn issue(store: &dyn Storage, i: usize, tokens: &[(&str, TokenKind, i64)]) -> Vec<TokenHash> {
    issue_expiring(store, i, 20_000, tokens).await.1
}

/// [`issue`], for a grant that expires at `expires_at`; returns its id too.
async fn issue_expiring(
    store: &dyn Storage,
    i: usize,
    expires_at: i64,
    tokens: &[(&str, TokenKind, i64)],
) -> (GrantId, Vec<TokenHash>) {
    let grant = Grant {
        id: GrantId::generate(),
        tenant: TenantId::default_tenant(),
        client_id: ClientId::parse("app").unwrap(),
        subject: subject(i),
        scope: Scope::parse("read").unwrap(),
        created_at: 100,
        expires_at,
        revoked_at: None,
    };
    let tokens: Vec<NewToken> = tokens
        .iter()
        .map(|&(name, kind, expires_at)| NewToken {
            hash: TokenHash::of(name),
            kind,
            scope: Scope::parse("read").unwrap(),
            issued_at: 100,
            expires_at,
            generation: 0,
        })
        .collect();
    ensure_app(store).await;
    assert!(
        store.issue(&grant, &tokens, None).await.unwrap(),
        "client app exists"
    );
    (grant.id, tokens.iter().map(|t| t.hash).collect())
}

/// Creates the client "app" that [`issue`]'s grants name, unless it exists: a grant is
/// stored only for a client that does.
async fn ensure_app(store: &dyn Storage) {
    let app = client(&TenantId::default_tenant(), "app", 3600);
    match store.create_client(&app).await {
        Ok(()) | Err(StoreError::Conflict) => {}
        Err(e) => panic!("creating client app: {e}"),
    }
}

/// Exchanges the grant's first refresh token `old` once (at 200): the new access token
/// "at1-next" and refresh token "rt1-next", whose hashes it returns.
async fn rotate_once(store: &dyn Storage, grant: &GrantId, old: TokenHash) -> [TokenHash; 2] {
    let new_token = |name: &str, kind, generation| NewToken {
        hash: TokenHash::of(name),
        kind,
        scope: Scope::parse("read").unwrap(),
        issued_at: 200,
        expires_at: 10_000,
        generation,
    };
    let rotation = Rotation {
        grant_id: grant.clone(),
        tenant: TenantId::default_tenant(),
        client_id: ClientId::parse("app").unwrap(),
        subject: subject(0),
        client_secret: None,
        old,
        old_generation: 0,
        precondition: RotationPrecondition::Unused,
        new_tokens: vec![
            new_token("at1-next", TokenKind::Access, 0),
            new_token("rt1-next", TokenKind::Refresh, 1),
        ],
        grant_expires_at: 20_000,
        now: 200,
        client_has_grace: true,
    };
    assert_eq!(
        store.rotate(&rotation).await.unwrap(),
        RotationOutcome::Rotated
    );
    [TokenHash::of("at1-next"), TokenHash::of("rt1-next")]
}

/// Runs a whole expiry sweep at `now` in batches of `limit` rows; returns what it deleted
/// and how many batches it took.
async fn sweep(store: &dyn Storage, now: i64, limit: u32) -> (Purged, usize) {
    let (mut total, mut batches) = (Purged::default(), 0);
    let mut from = Sweep::START;
    loop {
        let (purged, next) = store.purge_expired(now, from, limit).await.unwrap();
        total.tokens += purged.tokens;
        total.grants += purged.grants;
        batches += 1;
        assert!(batches < 100, "the sweep does not end");
        match next {
            Some(next) => from = next,
            None => return (total, batches),
        }
    }
}

fn audit(i: usize, reason: Reason, at: i64) -> AuditContext {
    AuditContext::new(
        TenantId::default_tenant(),
        format!("actor{i}"),
        "test",
        reason,
        None,
        at,
    )
    .about(None, Some(&subject(i)))
}

/// The token `hash` as `store` reads it by both of the hot path's reads: alone, and with the
/// client "app".
async fn read_both(store: &dyn Storage, hash: &TokenHash) -> (TokenRecord, TokenRecord) {
    let tenant = TenantId::default_tenant();
    let app = ClientId::parse("app").unwrap();
    let alone = store.token(hash).await.unwrap().expect("the token exists");
    let (_, with_client) = store.client_and_token(&tenant, &app, hash).await.unwrap();
    (alone, with_client.expect("the token exists"))
}

/// When `store` reads the token `hash` as revoked, by both of the hot path's reads.
async fn revoked_at(store: &dyn Storage, hash: &TokenHash) -> Option<i64> {
    let (alone, with_client) = read_both(store, hash).await;
    assert_eq!(alone.revoked_at, with_client.revoked_at);
    alone.revoked_at
}

backend_test! {
    async fn a_revoked_token_reads_revoked_on_every_store_of_the_database_and_after_a_restart() {
        let db = TestDb::fresh().await;
        let (a, b) = (
            latch_store::open(&db.url).await.unwrap(),
            latch_store::open(&db.url).await.unwrap(),
        );
        let hashes = issue(&*a, 1, &[("at1", TokenKind::Access, 10_000)]).await;
        let other = issue(&*a, 2, &[("at2", TokenKind::Access, 10_000)]).await;
        // Both stores have read the token live (and caught up with the revocations so far).
        assert_eq!(revoked_at(&*a, &hashes[0]).await, None);
        assert_eq!(revoked_at(&*b, &hashes[0]).await, None);

        let revoke = Revocation::Token(hashes[0]);
        let event = a.revoke(&revoke, &audit(1, Reason::ClientRequest, 300)).await.unwrap();
        assert_eq!(event.map(|e| (e.grants, e.tokens)), Some((0, 1)));
        // The other store (another process on the SQLite file, another node on PostgreSQL)
        // sees it at once, and finds nothing left to revoke.
        assert_eq!(revoked_at(&*b, &hashes[0]).await, Some(300));
        assert_eq!(revoked_at(&*a, &hashes[0]).await, Some(300));
        let again = b.revoke(&revoke, &audit(1, Reason::ClientRequest, 400)).await.unwrap();
        assert!(again.is_none(), "{again:?}");
        assert_eq!(revoked_at(&*b, &other[0]).await, None, "only that token");

        // Gone without a clean shutdown (a close would wait for the other store's readers),
        // as after a crash: what was answered is in the database, or in its WAL.
        drop((a, b));
        let restarted = latch_store::open(&db.url).await.unwrap();
        assert_eq!(revoked_at(&*restarted, &hashes[0]).await, Some(300));
        assert_eq!(revoked_at(&*restarted, &other[0]).await, None);
        drop(restarted);
        drop(db);
    }
}

/// Whether `store` reads the token `hash` as revoked, alone or with its grant, by both of the
/// hot path's reads.
async fn is_revoked(store: &dyn Storage, hash: &TokenHash) -> bool {
    let (alone, with_client) = read_both(store, hash).await;
    assert_eq!(alone.is_revoked(), with_client.is_revoked());
    alone.is_revoked()
}

backend_test! {
    async fn a_revoked_grant_kills_every_token_in_it_including_those_of_a_rotation() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let pair = |i: usize| {
            [(format!("at{i}"), TokenKind::Access), (format!("rt{i}"), TokenKind::Refresh)]
        };
        let mut grants = Vec::new();
        for i in 1..=3 {
            let [(at, a), (rt, r)] = pair(i);
            grants.push(
                issue_expiring(&*store, i, 20_000, &[(&at, a, 10_000), (&rt, r, 20_000)]).await,
            );
        }
        // Grant 1's refresh token is exchanged once: the new tokens belong to it too.
        let rotated = rotate_once(&*store, &grants[0].0, grants[0].1[1]).await;
        let other = latch_store::open(&db.url).await.unwrap();
        for hash in grants.iter().flat_map(|(_, h)| h).chain(&rotated) {
            assert!(!is_revoked(&*store, hash).await);
            assert!(!is_revoked(&*other, hash).await);
        }

        // Grant 1 revoked by its id, grant 2 by its subject (log out everywhere).
        let by_id = Revocation::Grant(grants[0].0.clone());
        store.revoke(&by_id, &audit(1, Reason::ClientRequest, 300)).await.unwrap();
        let everywhere = Revocation::Subject {
            tenant: TenantId::default_tenant(),
            subject: subject(2),
        };
        store.revoke(&everywhere, &audit(2, Reason::LogoutEverywhere, 300)).await.unwrap();
        // On this store, and on another of the same database (another process on the
        // SQLite file, another node on PostgreSQL) that had read them live.
        for store in [&store, &other] {
            for hash in grants[..2].iter().flat_map(|(_, h)| h).chain(&rotated) {
                assert!(is_revoked(&**store, hash).await);
            }
            for hash in &grants[2].1 {
                assert!(!is_revoked(&**store, hash).await, "another subject's grant");
            }
        }
        // And after a restart.
        drop((store, other));
        let restarted = latch_store::open(&db.url).await.unwrap();
        assert!(is_revoked(&*restarted, &rotated[0]).await);
        assert!(!is_revoked(&*restarted, &grants[2].1[0]).await);
        drop(restarted);
        drop(db);
    }
}

backend_test! {
    async fn logging_out_counts_only_the_tokens_still_alive() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let hashes = issue(
            &*store,
            1,
            &[("at", TokenKind::Access, 10_000), ("rt", TokenKind::Refresh, 10_000)],
        )
        .await;
        let single = Revocation::Token(hashes[0]);
        store.revoke(&single, &audit(1, Reason::ClientRequest, 300)).await.unwrap();
        let everywhere = Revocation::Subject {
            tenant: TenantId::default_tenant(),
            subject: subject(1),
        };
        let event = store
            .revoke(&everywhere, &audit(1, Reason::LogoutEverywhere, 400))
            .await
            .unwrap()
            .expect("the grant was alive");
        assert_eq!((event.grants, event.tokens), (1, 1), "the access token was already dead");
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn the_clean_up_keeps_a_revoked_token_revoked_until_it_expires() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let soon = issue(&*store, 1, &[("soon", TokenKind::Access, 1_000)]).await;
        let late = issue(&*store, 2, &[("late", TokenKind::Access, 10_000)]).await;
        for (i, hash) in [(1, soon[0]), (2, late[0])] {
            let revoke = Revocation::Token(hash);
            store.revoke(&revoke, &audit(i, Reason::ClientRequest, 300)).await.unwrap();
        }
        let (purged, _) = sweep(&*store, 5_000, 100).await;
        assert_eq!(purged.tokens, 1);
        assert!(store.token(&soon[0]).await.unwrap().is_none());
        assert_eq!(revoked_at(&*store, &late[0]).await, Some(300));
        drop(store);
        let restarted = latch_store::open(&db.url).await.unwrap();
        assert_eq!(revoked_at(&*restarted, &late[0]).await, Some(300));
        drop(restarted);
        drop(db);
    }
}

backend_test! {
    async fn a_sweep_in_small_batches_deletes_exactly_the_expired_tokens_and_grants() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        // Seven grants with an access token each, expired at 5,000, and a refresh token that
        // lives as long as its grant: the even grants expired, the odd ones alive.
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        let mut grants = Vec::new();
        for i in 0..7 {
            let expires_at = if i % 2 == 0 { 1_000 } else { 20_000 };
            let (access, refresh) = (format!("at{i}"), format!("rt{i}"));
            let (grant, hashes) = issue_expiring(
                &*store,
                i,
                expires_at,
                &[(&access, TokenKind::Access, 1_000), (&refresh, TokenKind::Refresh, expires_at)],
            )
            .await;
            gone.push(hashes[0]);
            if i % 2 == 0 {
                gone.push(hashes[1]);
            } else {
                kept.push(hashes[1]);
            }
            grants.push((grant, i % 2 == 1));
        }
        // 14 tokens in batches of 3 (the last runs to the end of the table), then 7 grants.
        let (purged, batches) = sweep(&*store, 5_000, 3).await;
        assert_eq!((purged.tokens, purged.grants), (11, 4));
        assert_eq!(batches, 5 + 3);
        for hash in &gone {
            assert!(store.token(hash).await.unwrap().is_none());
        }
        for hash in &kept {
            assert!(store.token(hash).await.unwrap().is_some());
        }
        let tenant = TenantId::default_tenant();
        for (grant, live) in &grants {
            assert_eq!(store.grant(&tenant, grant).await.unwrap().is_some(), *live, "{grant:?}");
        }
        // A second sweep finds nothing left, and a batch as large as a table ends it at once.
        let (again, batches) = sweep(&*store, 5_000, 1_000).await;
        assert_eq!((again.tokens, again.grants, batches), (0, 0, 2));
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn concurrent_revocations_each_return_their_own_audit_record() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let mut hashes = Vec::new();
        for i in 0..40 {
            let name = format!("t{i}");
            hashes.extend(issue(&*store, i, &[(&name, TokenKind::Access, 10_000)]).await);
        }
        // Every token once, and the first ten a second time, all at once.
        let asked: Vec<usize> = (0..40).chain(0..10).collect();
        let revocations: Vec<_> = asked
            .iter()
            .map(|&i| (Revocation::Token(hashes[i]), audit(i, Reason::ClientRequest, 200)))
            .collect();
        let revoking = revocations.iter().map(|(r, a)| store.revoke(r, a));
        let answers = futures_util::future::join_all(revoking).await;

        let mut killed_by = vec![0; 40];
        let mut ids = Vec::new();
        for (&i, answer) in asked.iter().zip(answers) {
            if let Some(event) = answer.unwrap() {
                killed_by[i] += 1;
                assert_eq!(event.actor, format!("actor{i}"), "{event:?}");
                assert_eq!(event.subject, Some(subject(i)), "{event:?}");
                assert_eq!((event.grants, event.tokens), (0, 1));
                ids.push(event.id);
            }
        }
        assert_eq!(
            killed_by,
            vec![1; 40],
            "each token is killed, and recorded, exactly once"
        );
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 40);
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn concurrent_presented_revocations_each_get_their_own_token_and_verdict() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let tenant = TenantId::default_tenant();
        let app = ClientId::parse("app").unwrap();
        store.create_client(&client(&tenant, "app", 60)).await.unwrap();
        let mut issued = Vec::new();
        for i in 0..12 {
            let names = [format!("a{i}"), format!("r{i}")];
            let tokens = [
                (names[0].as_str(), TokenKind::Access, 10_000),
                (names[1].as_str(), TokenKind::Refresh, 10_000),
            ];
            issued.push(issue(&*store, i, &tokens).await);
        }
        // As the domain judges: a refresh token takes its grant, an access token of an even
        // subject itself; an odd subject's access token is "not owned", revoking nothing.
        let plan: RevocationPlan = Arc::new(|record| {
            let i: usize = record.subject.as_str()["user".len()..].parse().unwrap();
            let audit = audit(i, Reason::ClientRequest, 200);
            match record.kind {
                TokenKind::Refresh => Some((Revocation::Grant(record.grant_id.clone()), audit)),
                TokenKind::Access if i % 2 == 0 => Some((Revocation::Token(record.hash), audit)),
                TokenKind::Access => None,
            }
        });
        // Every access token, the first four a second time, three grants of odd subjects by
        // their refresh tokens (each kill then counts both tokens of its grant, whatever the
        // order), and tokens never issued; beside each, a lookup of a token with its client
        // (introspection's), all at once, so that PostgreSQL shares statements among them.
        let mut asked: Vec<TokenHash> = (0..12).chain(0..4).map(|i| issued[i][0]).collect();
        asked.extend([issued[1][1], issued[7][1], issued[9][1]]);
        asked.extend((0..3).map(|k| TokenHash::of(&format!("never{k}"))));
        let revoking = asked.iter().map(|hash| {
            let (store, plan, tenant, app) = (&store, plan.clone(), &tenant, &app);
            async move {
                let (client, read) = store.client_for_revocation(tenant, app, hash).await?;
                assert_eq!(client.map(|c| c.id), Some(app.clone()));
                store.revoke_presented(hash, read, plan).await
            }
        });
        let looking = asked.iter().map(|hash| store.client_and_token(&tenant, &app, hash));
        let (revoked, looked) = futures_util::future::join(
            futures_util::future::join_all(revoking),
            futures_util::future::join_all(looking),
        )
        .await;

        let mut recorded = [0; 12];
        for (hash, (answer, lookup)) in asked.iter().zip(revoked.into_iter().zip(looked)) {
            let (record, event) = answer.unwrap();
            let (client, token) = lookup.unwrap();
            assert_eq!(client.map(|c| c.id), Some(app.clone()));
            assert_eq!(token.map(|t| t.hash), record.as_ref().map(|r| r.hash));
            let Some(record) = record else {
                assert!(event.is_none());
                continue;
            };
            assert_eq!(record.hash, *hash, "each revocation reads its own token");
            let i: usize = record.subject.as_str()["user".len()..].parse().unwrap();
            if let Some(event) = event {
                let expected = match record.kind {
                    TokenKind::Refresh => (1, 2),
                    TokenKind::Access => (0, 1),
                };
                assert_eq!((event.grants, event.tokens), expected, "{event:?}");
                assert_eq!(event.actor, format!("actor{i}"));
                recorded[i] += 1;
            }
        }
        for (i, tokens) in issued.iter().enumerate() {
            let grant_revoked = [1, 7, 9].contains(&i);
            assert_eq!(
                recorded[i],
                usize::from(i % 2 == 0) + usize::from(grant_revoked),
                "subject {i}: each kill recorded once, nothing for what was not owned"
            );
            assert_eq!(is_revoked(&*store, &tokens[0]).await, i % 2 == 0 || grant_revoked);
            assert_eq!(is_revoked(&*store, &tokens[1]).await, grant_revoked);
        }
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn an_access_token_whose_grant_died_after_it_was_read_is_not_killed_again() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let tenant = TenantId::default_tenant();
        let app = ClientId::parse("app").unwrap();
        store.create_client(&client(&tenant, "app", 60)).await.unwrap();
        let tokens = [("a0", TokenKind::Access, 10_000), ("r0", TokenKind::Refresh, 10_000)];
        let [access, refresh] = issue(&*store, 0, &tokens).await[..] else {
            unreachable!()
        };
        // As the domain judges: a revoked token, or one of a revoked grant, kills nothing.
        let plan: RevocationPlan = Arc::new(|record| {
            if record.is_revoked() {
                return None;
            }
            let audit = audit(0, Reason::ClientRequest, 200);
            Some(match record.kind {
                TokenKind::Refresh => (Revocation::Grant(record.grant_id.clone()), audit),
                TokenKind::Access => (Revocation::Token(record.hash), audit),
            })
        });
        // A sign-out revoking both tokens at once: the access token is read (ahead of the
        // write, on PostgreSQL) before the refresh token's revocation kills their grant.
        let (_, access_read) = store.client_for_revocation(&tenant, &app, &access).await.unwrap();
        let (_, refresh_read) = store.client_for_revocation(&tenant, &app, &refresh).await.unwrap();
        let (_, grant_event) =
            store.revoke_presented(&refresh, refresh_read, plan.clone()).await.unwrap();
        let grant_event = grant_event.expect("the grant was alive");
        assert_eq!((grant_event.grants, grant_event.tokens), (1, 2), "{grant_event:?}");
        let (_, again) = store.revoke_presented(&access, access_read, plan).await.unwrap();
        assert!(again.is_none(), "the token died with its grant, not again: {again:?}");
        let query = AuditQuery { limit: 10, ..AuditQuery::default() };
        assert_eq!(store.audit_events(&tenant, &query).await.unwrap().events.len(), 1);
        assert!(is_revoked(&*store, &access).await);
        drop(store);
        drop(db);
    }
}

fn client(tenant: &TenantId, id: &str, ttl: u32) -> Client {
    Client {
        tenant: tenant.clone(),
        id: ClientId::parse(id).unwrap(),
        secret: None,
        auth_method: AuthMethod::None,
        grant_types: vec![],
        scope: Scope::parse("read").unwrap(),
        redirect_uris: vec![],
        access_token_ttl: ttl,
        refresh_token_ttl: 60,
        rotation_grace: 0,
        access_token_revocation: AccessTokenRevocation::Token,
        introspects: Introspects::Any,
        created_at: 100,
        declared: false,
    }
}

backend_test! {
    async fn concurrent_lookups_of_clients_and_tokens_each_get_their_own_answer() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let (home, away) = (TenantId::default_tenant(), TenantId::parse("away").unwrap());
        store.create_tenant(&away, 100).await.unwrap();
        // One client id in two tenants (told apart by their token lifetimes), and a second
        // client in the first tenant only.
        for (tenant, id, ttl) in [(&home, "app", 1), (&away, "app", 2), (&home, "other", 3)] {
            store.create_client(&client(tenant, id, ttl)).await.unwrap();
        }
        let mut hashes = Vec::new();
        for i in 0..8 {
            hashes.extend(issue(&*store, i, &[(&format!("t{i}"), TokenKind::Access, 10_000)]).await);
        }
        // Five kinds of lookup in turn: an odd period, so that however SQLite's batches
        // take turns between their lanes, each batch mixes them (it remembers the clients
        // it has read, which must stay apart by tenant).
        let asked: Vec<(&TenantId, &str, Option<u32>, TokenHash, bool)> = (0..60)
            .map(|i| {
                let (tenant, id, ttl) = match i % 5 {
                    0 => (&home, "app", Some(1)),
                    1 => (&away, "app", Some(2)),
                    2 => (&home, "other", Some(3)),
                    3 => (&away, "other", None),
                    _ => (&home, "ghost", None),
                };
                let known = i % 3 != 0;
                let hash = if known { hashes[i % 8] } else { TokenHash::of(&format!("none{i}")) };
                (tenant, id, ttl, hash, known)
            })
            .collect();
        // All at once, so that the PostgreSQL back-end answers them in shared statements.
        let looking = asked.iter().map(|(tenant, id, _, hash, _)| {
            let id = ClientId::parse(id).unwrap();
            let store = &store;
            async move { store.client_and_token(tenant, &id, hash).await }
        });
        let answers = futures_util::future::join_all(looking).await;
        for ((tenant, id, ttl, hash, known), answer) in asked.iter().zip(answers) {
            let (c, t) = answer.unwrap();
            assert_eq!(
                c.map(|c| (c.tenant, c.id.as_str().to_owned(), c.access_token_ttl)),
                ttl.map(|ttl| ((*tenant).clone(), (*id).to_owned(), ttl)),
            );
            assert_eq!(t.map(|t| t.hash), known.then_some(*hash));
        }
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn a_client_changed_between_two_reads_is_read_afresh() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let home = TenantId::default_tenant();
        let id = ClientId::parse("app").unwrap();
        store.create_client(&client(&home, "app", 1)).await.unwrap();
        let hash = issue(&*store, 0, &[("t0", TokenKind::Access, 10_000)]).await[0];
        let ttl = |c: Option<Client>| c.map(|c| c.access_token_ttl);
        assert_eq!(ttl(store.client(&home, &id).await.unwrap()), Some(1));
        assert_eq!(ttl(store.client_and_token(&home, &id, &hash).await.unwrap().0), Some(1));
        // Changed, then removed: each read after the write sees it, never a copy read before.
        store.upsert_client(&client(&home, "app", 2)).await.unwrap();
        assert_eq!(ttl(store.client_and_token(&home, &id, &hash).await.unwrap().0), Some(2));
        assert_eq!(ttl(store.client(&home, &id).await.unwrap()), Some(2));
        let removal = audit(0, Reason::ClientRemoved, 200);
        assert!(store.delete_client(&home, &id, &removal).await.unwrap().is_some());
        assert_eq!(ttl(store.client(&home, &id).await.unwrap()), None);
        assert_eq!(ttl(store.client_and_token(&home, &id, &hash).await.unwrap().0), None);
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn a_declared_client_keeps_its_secret_and_its_row_until_the_file_stops_declaring_it() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let home = TenantId::default_tenant();
        let (app, other) = (ClientId::parse("app").unwrap(), ClientId::parse("other").unwrap());
        let confidential = |id: &str, ttl| Client {
            secret: Some(latch_core::secret::hash_secret(id)),
            auth_method: AuthMethod::ClientSecretBasic,
            ..client(&home, id, ttl)
        };
        store
            .upsert_client(&Client { declared: true, ..confidential("app", 1) })
            .await
            .unwrap();
        store
            .upsert_client(&Client { declared: true, ..confidential("other", 1) })
            .await
            .unwrap();
        let declared = |c: Option<Client>| c.map(|c| c.declared);
        assert_eq!(declared(store.client(&home, &app).await.unwrap()), Some(true));
        // Declared again at a later start, with a new setting: the setting changes, the row
        // (its creation time) stays.
        store
            .upsert_client(&Client { declared: true, created_at: 999, ..confidential("app", 2) })
            .await
            .unwrap();
        let again = store.client(&home, &app).await.unwrap().unwrap();
        assert_eq!((again.access_token_ttl, again.created_at), (2, 100));
        // Even a caller that skipped the domain's check changes nothing.
        let secret = SecretHash::from_stored("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into());
        let stored = |c: Option<Client>| c.and_then(|c| c.secret).expect("a stored secret");
        let app_secret = stored(store.client(&home, &app).await.unwrap());
        assert!(!store.set_client_secret(&home, &app, &app_secret, &secret).await.unwrap());
        let removal = audit(0, Reason::ClientRemoved, 200);
        assert!(store.delete_client(&home, &app, &removal).await.unwrap().is_none());
        assert_eq!(declared(store.client(&home, &app).await.unwrap()), Some(true));
        // The file still declares `app`, no longer `other`: `other` alone is released.
        let released = store
            .undeclare_clients_except(&[(home.clone(), app.clone())])
            .await
            .unwrap();
        assert_eq!(released, vec![(home.clone(), other.clone())]);
        assert_eq!(declared(store.client(&home, &other).await.unwrap()), Some(false));
        assert_eq!(declared(store.client(&home, &app).await.unwrap()), Some(true));
        let other_secret = stored(store.client(&home, &other).await.unwrap());
        assert!(store.set_client_secret(&home, &other, &other_secret, &secret).await.unwrap());
        assert!(store.delete_client(&home, &other, &removal).await.unwrap().is_some());
        // Nothing left to release but `app`, once the file names nothing.
        assert!(store
            .undeclare_clients_except(&[(home.clone(), app.clone())])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.undeclare_clients_except(&[]).await.unwrap(), vec![(home, app)]);

        // Nor does a tenant's removal take a declared client with it: refused in the write.
        let away = TenantId::parse("away").unwrap();
        store.create_tenant(&away, 100).await.unwrap();
        store
            .upsert_client(&Client { declared: true, ..client(&away, "there", 1) })
            .await
            .unwrap();
        let removal = AuditContext::new(away.clone(), "admin", "test", Reason::TenantRemoved, None, 300);
        assert!(matches!(store.delete_tenant(&away, &removal).await, Err(StoreError::Conflict)));
        assert!(store.tenant_exists(&away).await.unwrap());
        assert!(store.client(&away, &ClientId::parse("there").unwrap()).await.unwrap().is_some());
        store.undeclare_clients_except(&[]).await.unwrap();
        assert!(store.delete_tenant(&away, &removal).await.unwrap().is_some());
        drop(store);
        drop(db);
    }
}

/// A grant of `subject(i)` to client `id` of `tenant`, with one access token `name`, as an
/// issuance that read (authenticated) its client before a removal and writes after it.
fn late_issuance(tenant: &TenantId, id: &str, name: &str) -> (Grant, Vec<NewToken>) {
    let grant = Grant {
        id: GrantId::generate(),
        tenant: tenant.clone(),
        client_id: ClientId::parse(id).unwrap(),
        subject: subject(0),
        scope: Scope::parse("read").unwrap(),
        created_at: 300,
        expires_at: 20_000,
        revoked_at: None,
    };
    let token = NewToken {
        hash: TokenHash::of(name),
        kind: TokenKind::Access,
        scope: Scope::parse("read").unwrap(),
        issued_at: 300,
        expires_at: 10_000,
        generation: 0,
    };
    (grant, vec![token])
}

backend_test! {
    async fn a_grant_whose_client_or_tenant_was_removed_before_the_write_is_not_stored() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let (home, away) = (TenantId::default_tenant(), TenantId::parse("away").unwrap());
        let app = ClientId::parse("app").unwrap();
        issue(&*store, 0, &[("before", TokenKind::Access, 10_000)]).await;
        let removal = audit(0, Reason::ClientRemoved, 200);
        assert!(store.delete_client(&home, &app, &removal).await.unwrap().is_some());
        let (grant, tokens) = late_issuance(&home, "app", "after-client");
        assert!(!store.issue(&grant, &tokens, None).await.unwrap(), "nothing stored");
        assert!(store.token(&TokenHash::of("after-client")).await.unwrap().is_none());
        assert!(store.grant(&home, &grant.id).await.unwrap().is_none());

        store.create_tenant(&away, 100).await.unwrap();
        store.create_client(&client(&away, "app", 3600)).await.unwrap();
        let removal = AuditContext::new(away.clone(), "admin", "test", Reason::TenantRemoved, None, 200);
        assert!(store.delete_tenant(&away, &removal).await.unwrap().is_some());
        let (grant, tokens) = late_issuance(&away, "app", "after-tenant");
        assert!(!store.issue(&grant, &tokens, None).await.unwrap(), "nothing stored");
        // Nor does anything read once the tenant is back.
        store.create_tenant(&away, 400).await.unwrap();
        assert!(store.token(&TokenHash::of("after-tenant")).await.unwrap().is_none());
        assert!(store.grant(&away, &grant.id).await.unwrap().is_none());
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn a_grant_is_stored_only_for_the_client_as_it_authenticated() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let home = TenantId::default_tenant();
        let id = ClientId::parse("svc").unwrap();
        let with_secret = |secret: &str| Client {
            secret: Some(latch_core::secret::hash_secret(secret)),
            ..client(&home, "svc", 3600)
        };
        store.create_client(&with_secret("first")).await.unwrap();
        // A request authenticates: this is the client it read.
        let first = store.client(&home, &id).await.unwrap().unwrap();

        // Meanwhile the client is removed and created again under its id (a leaked secret
        // replaced, say): the request's issuance stores nothing.
        let removal = audit(0, Reason::ClientRemoved, 200);
        assert!(store.delete_client(&home, &id, &removal).await.unwrap().is_some());
        store.create_client(&with_secret("second")).await.unwrap();
        let (grant, tokens) = late_issuance(&home, "svc", "stale");
        let stored = store.issue(&grant, &tokens, first.secret.as_ref());
        assert!(!stored.await.unwrap(), "issued on the removed client's credentials");
        assert!(store.token(&TokenHash::of("stale")).await.unwrap().is_none());
        assert!(store.grant(&home, &grant.id).await.unwrap().is_none());

        // The client as it is now gets its grant; after a new secret, only on that secret,
        // even queued right behind the change (SQLite: the writer's memo of the client is
        // forgotten by it).
        let second = store.client(&home, &id).await.unwrap().unwrap();
        let third = latch_core::secret::hash_secret("third");
        let (a, a_tokens) = late_issuance(&home, "svc", "before-change");
        let (b, b_tokens) = late_issuance(&home, "svc", "after-change");
        let (before, changed, after) = futures_util::future::join3(
            store.issue(&a, &a_tokens, second.secret.as_ref()),
            store.set_client_secret(&home, &id, second.secret.as_ref().unwrap(), &third),
            store.issue(&b, &b_tokens, second.secret.as_ref()),
        )
        .await;
        assert!(changed.unwrap());
        assert!(before.unwrap(), "the client as it was then");
        assert!(!after.unwrap(), "issued on the replaced secret");
        assert!(store.token(&TokenHash::of("after-change")).await.unwrap().is_none());
        let (c, c_tokens) = late_issuance(&home, "svc", "on-the-new-secret");
        assert!(store.issue(&c, &c_tokens, Some(&third)).await.unwrap());

        // A rotation that read the secret before that change (a concurrent rotation, or the
        // client's removal and re-creation) replaces nothing.
        let fourth = latch_core::secret::hash_secret("fourth");
        let stale = store.set_client_secret(&home, &id, second.secret.as_ref().unwrap(), &fourth);
        assert!(!stale.await.unwrap(), "replaced a secret it never read");
        let now = store.client(&home, &id).await.unwrap().unwrap();
        assert_eq!(now.secret.as_ref().map(|s| s.as_str()), Some(third.as_str()));

        // Nor is a refresh token exchanged for a request authenticated with a replaced
        // secret: nothing changes, and the same exchange on the current secret goes through.
        let (d, mut d_tokens) = late_issuance(&home, "svc", "unused");
        d_tokens[0] = NewToken { kind: TokenKind::Refresh, hash: TokenHash::of("rt-svc"), ..d_tokens[0].clone() };
        assert!(store.issue(&d, &d_tokens, Some(&third)).await.unwrap());
        let exchange = |secret: &SecretHash| Rotation {
            grant_id: d.id.clone(),
            tenant: home.clone(),
            client_id: id.clone(),
            subject: d.subject.clone(),
            client_secret: Some(secret.clone()),
            old: TokenHash::of("rt-svc"),
            old_generation: 0,
            precondition: RotationPrecondition::Unused,
            new_tokens: vec![NewToken { hash: TokenHash::of("rt-svc-next"), generation: 1, ..d_tokens[0].clone() }],
            grant_expires_at: 20_000,
            now: 400,
            client_has_grace: false,
        };
        let stale = exchange(second.secret.as_ref().unwrap());
        assert_eq!(store.rotate(&stale).await.unwrap(), RotationOutcome::ClientChanged);
        assert!(store.token(&TokenHash::of("rt-svc-next")).await.unwrap().is_none());
        let old = store.token(&TokenHash::of("rt-svc")).await.unwrap().unwrap();
        assert_eq!(old.rotated_at, None, "the old token is not claimed");
        assert_eq!(store.rotate(&exchange(&third)).await.unwrap(), RotationOutcome::Rotated);
        drop(store);
        drop(db);
    }
}

/// What an issuance locks of its client's row (the demo client `app`), taken by another
/// session: a removal waits for it, other issuances do not.
const CLIENT_ROW_FOR_SHARE: &str =
    "SELECT 1 FROM clients WHERE tenant_id = 'default' AND client_id = 'app' FOR SHARE";

backend_test! {
    async fn no_issuance_racing_its_clients_removal_leaves_a_live_token() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let home = TenantId::default_tenant();
        ensure_app(&*store).await;
        // Issuances on both sides of the removal, all at once, so that some share its batch
        // (SQLite) or its pipelined run (PostgreSQL), before and after it.
        let issuances: Vec<_> = (0..48)
            .map(|i| late_issuance(&home, "app", &format!("racing{i}")))
            .collect();
        let removal = audit(0, Reason::ClientRemoved, 200);
        let app = ClientId::parse("app").unwrap();
        let issue = |range: std::ops::Range<usize>| {
            futures_util::future::join_all(
                issuances[range].iter().map(|(grant, tokens)| store.issue(grant, tokens, None)),
            )
        };
        // PostgreSQL commits the removal on a connection of its own, so the database orders
        // it against the issuances' batch, and it could take the client's row before any of
        // them: a session holding the row `FOR SHARE` (as an issuance does) holds the
        // removal off until the first half has committed, so that some are stored. The
        // second half waits for the removal on this node (`UnderWay`); what an issuance's
        // lock does against a removal another node runs, the cross-node test below shows.
        let holder = match db.is_postgres() {
            true => Some(OtherNode::begin(&db, CLIENT_ROW_FOR_SHARE).await),
            false => None,
        };
        let first_half = async {
            let stored = issue(0..24).await;
            if let Some(holder) = holder {
                holder.commit().await;
            }
            stored
        };
        // Queued in this order: half the issuances, the removal, the other half.
        let (before, removed, after) = futures_util::future::join3(
            first_half,
            store.delete_client(&home, &app, &removal),
            issue(24..48),
        )
        .await;
        assert!(removed.unwrap().is_some());
        let mut outcomes = Vec::new();
        for (i, stored) in before.into_iter().chain(after).enumerate() {
            let token = store.token(&TokenHash::of(&format!("racing{i}"))).await.unwrap();
            let stored = stored.unwrap();
            match (stored, token) {
                (false, None) => {}
                (true, Some(token)) => assert!(token.is_revoked(), "issuance {i} is live"),
                (stored, token) => panic!("issuance {i}: stored {stored}, read {token:?}"),
            }
            outcomes.push(stored);
        }
        // Issuances were stored while the client existed (SQLite removes its row with the
        // removal's last write, PostgreSQL's removal is one), and revoked by the removal all
        // the same. (Issuances refused once it is gone: the test above, and the next one
        // across nodes.)
        assert!(outcomes.contains(&true), "{outcomes:?}");
        drop(store);
        drop(db);
    }
}

/// Across PostgreSQL nodes: an issuance whose statement starts while another node's removal
/// of its client is not yet committed waits for that removal, and then stores nothing (its
/// snapshot still held the client; without the lock it would have stored a grant that the
/// removal's revocation never saw).
#[tokio::test]
async fn postgres_an_issuance_racing_another_nodes_client_removal_stores_nothing() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    let remover = OtherNode::begin(
        &db,
        "DELETE FROM clients WHERE tenant_id = 'default' AND client_id = 'app'",
    )
    .await;
    let (grant, tokens) = late_issuance(&TenantId::default_tenant(), "app", "racing");
    let issuing = tokio::spawn({
        let store = store.clone();
        async move { store.issue(&grant, &tokens, None).await }
    });
    // Until the issuance waits for the removal's row lock.
    remover
        .until_waited_on(&db, "INSERT INTO grants", &issuing)
        .await;
    remover.commit().await;
    assert!(!issuing.await.unwrap().unwrap(), "nothing stored");
    assert!(store
        .token(&TokenHash::of("racing"))
        .await
        .unwrap()
        .is_none());
    drop(store);
    drop(db);
}

/// Across PostgreSQL nodes: an issuance, then an exchange of a refresh token, authenticated
/// on a client secret that another node is replacing (its UPDATE not yet committed), wait
/// for the new secret and then store nothing. With the client's row locked only `FOR KEY
/// SHARE` (the issuance) or not at all (the exchange), both went through on the old secret
/// and could commit after a revocation of the client's grants that its owner ran once the
/// new secret was in place: what a leaked secret obtained outlived both.
#[tokio::test]
async fn postgres_writes_on_a_secret_another_node_is_replacing_wait_and_store_nothing() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let home = TenantId::default_tenant();
    let first = SecretHash::from_stored("first".into());
    let svc = Client {
        secret: Some(first.clone()),
        ..client(&home, "svc", 3600)
    };
    store.create_client(&svc).await.unwrap();
    let (grant, mut tokens) = late_issuance(&home, "svc", "rt");
    tokens[0].kind = TokenKind::Refresh;
    assert!(store.issue(&grant, &tokens, Some(&first)).await.unwrap());

    let replacing = |secret: &str| {
        format!("UPDATE clients SET secret_hash = '{secret}' WHERE client_id = 'svc'")
    };
    let other_node = OtherNode::begin(&db, &replacing("second")).await;
    let (late, late_tokens) = late_issuance(&home, "svc", "late");
    let issuing = tokio::spawn({
        let (store, first) = (store.clone(), first.clone());
        async move { store.issue(&late, &late_tokens, Some(&first)).await }
    });
    other_node
        .until_waited_on(&db, "INSERT INTO grants", &issuing)
        .await;
    other_node.commit().await;
    assert!(!issuing.await.unwrap().unwrap(), "issued on the old secret");
    assert!(store.token(&TokenHash::of("late")).await.unwrap().is_none());

    let second = SecretHash::from_stored("second".into());
    let other_node = OtherNode::begin(&db, &replacing("third")).await;
    let exchange = exchange_of_rt(&grant, &tokens[0], Some(second));
    let exchanging = tokio::spawn({
        let store = store.clone();
        async move { store.rotate(&exchange).await }
    });
    other_node
        .until_waited_on(&db, "client_id = $2 FOR SHARE", &exchanging)
        .await;
    other_node.commit().await;
    assert_eq!(
        exchanging.await.unwrap().unwrap(),
        RotationOutcome::ClientChanged
    );
    assert!(store
        .token(&TokenHash::of("rt-next"))
        .await
        .unwrap()
        .is_none());
    let old = store.token(&TokenHash::of("rt")).await.unwrap().unwrap();
    assert_eq!(old.rotated_at, None, "the old token is not claimed");
    drop(store);
    drop(db);
}

/// PostgreSQL: a write of a value PostgreSQL cannot store (a NUL in text, which the domain
/// refuses before it gets here) fails alone. It used to abort its whole batch, so that every
/// other request's write committed with it answered 503. The committer is held on a first
/// batch (another node locks its client's row) while the bad write and an issuance for
/// another client queue behind it, so that the two share the next batch.
#[tokio::test]
async fn postgres_a_value_the_database_cannot_store_fails_its_write_alone() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let home = TenantId::default_tenant();
    for id in ["held", "other"] {
        store.create_client(&client(&home, id, 3600)).await.unwrap();
    }
    let other_node = OtherNode::begin(
        &db,
        "UPDATE clients SET secret_hash = secret_hash WHERE client_id = 'held'",
    )
    .await;
    let (first, first_tokens) = late_issuance(&home, "held", "first");
    let held = tokio::spawn({
        let store = store.clone();
        async move { store.issue(&first, &first_tokens, None).await }
    });
    other_node
        .until_waited_on(&db, "INSERT INTO grants", &held)
        .await;
    let bad = Client {
        redirect_uris: vec!["https://a/\0".into()],
        ..client(&home, "bad", 3600)
    };
    let (second, second_tokens) = late_issuance(&home, "other", "second");
    let (created, issued) = {
        let mut both = std::pin::pin!(async {
            tokio::join!(
                store.create_client(&bad),
                store.issue(&second, &second_tokens, None)
            )
        });
        // One poll queues both writes (each is sent to the committer at its first poll).
        assert!(futures_util::poll!(both.as_mut()).is_pending());
        other_node.commit().await;
        assert!(held.await.unwrap().unwrap());
        both.await
    };
    assert!(created.is_err(), "the NUL was stored");
    assert!(issued.unwrap(), "the other write shares the failure");
    assert!(store
        .token(&TokenHash::of("second"))
        .await
        .unwrap()
        .is_some());
    drop(store);
    drop(db);
}

/// A clock that moves `step` seconds forward each time it is read, once told to.
struct Ticking {
    now: std::sync::atomic::AtomicI64,
    step: std::sync::atomic::AtomicI64,
}

impl latch_core::clock::Clock for Ticking {
    fn now(&self) -> latch_core::clock::UnixTime {
        use std::sync::atomic::Ordering::SeqCst;
        self.now.fetch_add(self.step.load(SeqCst), SeqCst)
    }

    fn tells_the_machines_time(&self) -> bool {
        false
    }
}

backend_test! {
    async fn a_clean_up_run_judges_every_row_by_one_time_however_long_it_takes() {
        // A grant whose one token expires with it. The run starts a second before the two
        // are past the allowance, and its clock moves on by more than the allowance while it
        // runs: read anew for the grants after the tokens, it deleted the grant (and its
        // revocation) and kept the token, which then read as of a grant never revoked.
        use latch_core::cleanup::EXPIRY_GRACE;
        use std::sync::atomic::Ordering::SeqCst;
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let home = TenantId::default_tenant();
        store.create_client(&client(&home, "svc", 3600)).await.unwrap();
        let (mut grant, tokens) = late_issuance(&home, "svc", "at");
        grant.expires_at = tokens[0].expires_at;
        assert!(store.issue(&grant, &tokens, None).await.unwrap());
        let clock = Arc::new(Ticking {
            now: (grant.expires_at + EXPIRY_GRACE - 1).into(),
            step: 0.into(),
        });
        let authority = latch_core::Authority::new(store.clone(), clock.clone());
        clock.step.store(EXPIRY_GRACE + 100, SeqCst);
        authority.purge_expired().await.unwrap();
        let token_kept = store.token(&TokenHash::of("at")).await.unwrap().is_some();
        let grant_kept = store.grant(&home, &grant.id).await.unwrap().is_some();
        assert_eq!((token_kept, grant_kept), (true, true), "one cut-off: nothing had expired by it");
        drop(store);
        drop(db);
    }
}

/// The exchange, at 400, of refresh token `rt` (`refresh`, of `grant`, never exchanged) for
/// `rt-next`, by its client with `secret` as the request's authentication read it.
fn exchange_of_rt(grant: &Grant, refresh: &NewToken, secret: Option<SecretHash>) -> Rotation {
    Rotation {
        grant_id: grant.id.clone(),
        tenant: grant.tenant.clone(),
        client_id: grant.client_id.clone(),
        subject: grant.subject.clone(),
        client_secret: secret,
        old: TokenHash::of("rt"),
        old_generation: 0,
        precondition: RotationPrecondition::Unused,
        new_tokens: vec![NewToken {
            hash: TokenHash::of("rt-next"),
            generation: 1,
            ..refresh.clone()
        }],
        grant_expires_at: 20_000,
        now: 400,
        client_has_grace: false,
    }
}

/// Where [`CuttingProxy`] cuts a connection, once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cut {
    /// The `COMMIT` reaches PostgreSQL, which commits; its answer does not come back.
    AnswerLost,
    /// The `COMMIT` reaches PostgreSQL, which commits; its answer is held back, the client's
    /// side left open and silent, until the client gives up (its deadline) and closes it.
    AnswerHeld,
    /// The `COMMIT` never reaches PostgreSQL, whose side of the connection stays open and
    /// silent (a network cut that closes nothing): the transaction stays in progress.
    CommitLostSilently,
    /// The first answer after a refresh-token exchange's statement was sent (before any
    /// `COMMIT`; its batch's statements are pipelined, so the exchange has run) is held back,
    /// and both sides of the connection kept open and silent: the client gives up at its
    /// deadline, and the backend waits, idle in its transaction, holding its locks.
    ExchangeAnswerHeld,
    /// The answer to a batch's opening statement (the audit trail's lock taken, the
    /// transaction's id read) is held back, both sides kept open: the client never learns
    /// the transaction's id, and the backend waits, idle in it, holding the lock.
    BatchBeginAnswerHeld,
}

/// A TCP proxy to the test PostgreSQL that, once told where ([`Cut`]), cuts the connection
/// that next carries a `COMMIT` there, closing the client's side: the client never hears
/// how its `COMMIT` went.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::Mutex<Option<Cut>>>,
    /// Sides kept open by a silent cut or a held answer, until the proxy goes.
    held: Arc<std::sync::Mutex<Vec<tokio::net::tcp::OwnedWriteHalf>>>,
}

impl CuttingProxy {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::Mutex::new(None));
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cuts, holds) = (cut.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect("127.0.0.1:5432")
                    .await
                    .unwrap();
                let (mut client_in, mut client_out) = client.into_split();
                let (mut server_in, mut server_out) = server.into_split();
                let (cut, held, held_answers) = (cuts.clone(), holds.clone(), holds.clone());
                // Closes the client's side once its reader or writer half says so.
                let (close_client, mut closing) = tokio::sync::watch::channel(false);
                let upstream_cut = cut.clone();
                // For `ExchangeAnswerHeld`: 1 once the exchange's statement went up (its
                // answer is held), 2 once held (PostgreSQL's side is kept when the client
                // goes).
                let exchange = Arc::new(std::sync::atomic::AtomicU8::new(0));
                let (exchange_up, exchange_down) = (exchange.clone(), exchange);
                tokio::spawn(async move {
                    // The startup message has no type byte; every later one has.
                    let mut len = [0u8; 4];
                    if client_in.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                    if client_in.read_exact(&mut startup).await.is_err()
                        || server_out.write_all(&len).await.is_err()
                        || server_out.write_all(&startup).await.is_err()
                    {
                        return;
                    }
                    while let Some((head, body)) = message(&mut client_in).await {
                        let commit = head[0] == b'Q' && body.starts_with(b"COMMIT\0");
                        if commit && take(&upstream_cut, Cut::CommitLostSilently) {
                            held.lock().unwrap().push(server_out);
                            let _ = close_client.send(true);
                            return;
                        }
                        // The exchange's statement, parsed once per connection.
                        let parse = head[0] == b'P' && contains(&body, b"claimed AS");
                        if parse && take(&upstream_cut, Cut::ExchangeAnswerHeld) {
                            exchange_up.store(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        if server_out.write_all(&head).await.is_err()
                            || server_out.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                    // The client went: a held exchange keeps PostgreSQL's side open.
                    if exchange_up.load(std::sync::atomic::Ordering::SeqCst) == 2 {
                        held.lock().unwrap().push(server_out);
                    }
                });
                tokio::spawn(async move {
                    let mut after_begin = false;
                    loop {
                        let next = tokio::select! {
                            next = message(&mut server_in) => next,
                            _ = closing.changed() => return,
                        };
                        let Some((head, body)) = next else { return };
                        // The exchange's execution answers with a `CommandComplete`.
                        let holding = std::sync::atomic::Ordering::SeqCst;
                        if head[0] == b'C' && exchange_down.load(holding) == 1 {
                            exchange_down.store(2, holding);
                            held_answers.lock().unwrap().push(client_out);
                            return;
                        }
                        // A batch's opening statement answers one row, after its `BEGIN` (which
                        // tokio-postgres spells `START TRANSACTION`).
                        let begin = [&b"BEGIN\0"[..], b"START TRANSACTION\0"];
                        if head[0] == b'C' && begin.iter().any(|tag| body.starts_with(tag)) {
                            after_begin = true;
                        } else if head[0] == b'C' {
                            let opening = after_begin && body.starts_with(b"SELECT 1\0");
                            after_begin = false;
                            if opening && take(&cut, Cut::BatchBeginAnswerHeld) {
                                exchange_down.store(2, holding);
                                held_answers.lock().unwrap().push(client_out);
                                return;
                            }
                        }
                        if head[0] == b'C' && body.starts_with(b"COMMIT\0") {
                            if take(&cut, Cut::AnswerLost) {
                                return;
                            }
                            if take(&cut, Cut::AnswerHeld) {
                                held_answers.lock().unwrap().push(client_out);
                                return;
                            }
                        }
                        if client_out.write_all(&head).await.is_err()
                            || client_out.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, cut, held }
    }

    /// `url` (the test PostgreSQL's) through this proxy.
    fn url(&self, url: &str) -> DatabaseUrl {
        DatabaseUrl::parse(&url.replacen("127.0.0.1:5432", &self.addr.to_string(), 1)).unwrap()
    }

    /// Cuts the next connection that carries a `COMMIT` there.
    fn arm(&self, cut: Cut) {
        *self.cut.lock().unwrap() = Some(cut);
    }

    /// Whether the cut was made.
    fn made(&self) -> bool {
        self.cut.lock().unwrap().is_none()
    }
}

impl Drop for CuttingProxy {
    /// Closes the sides a silent cut kept open: their backends' transactions, in
    /// progress and holding locks, would otherwise keep the test's schema from being dropped.
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Whether `bytes` holds `part`.
fn contains(bytes: &[u8], part: &[u8]) -> bool {
    bytes.windows(part.len()).any(|w| w == part)
}

/// Takes the pending cut if it is `this` one.
fn take(cut: &std::sync::Mutex<Option<Cut>>, this: Cut) -> bool {
    let mut cut = cut.lock().unwrap();
    let taken = *cut == Some(this);
    if taken {
        *cut = None;
    }
    taken
}

/// One message of the PostgreSQL protocol after the startup: a type byte, then a length
/// that counts itself, then the rest.
async fn message(from: &mut tokio::net::tcp::OwnedReadHalf) -> Option<([u8; 5], Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    from.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    from.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

/// PostgreSQL: a refresh-token exchange whose `COMMIT` answer was lost with the connection,
/// or came later than the query deadline (the exchange committed either way), is answered
/// as exchanged: the committer asks PostgreSQL on a new connection whether the batch's
/// transaction committed. Answered unavailable, its client would retry with the token it had
/// just retired: a reuse, and its grant revoked.
#[tokio::test]
async fn postgres_an_exchange_whose_commit_answer_was_lost_or_late_is_answered_as_committed() {
    for (cut, url_query) in [(Cut::AnswerLost, ""), (Cut::AnswerHeld, "&query_timeout=1")] {
        an_exchange_whose_commit_answer_is_cut(cut, url_query).await;
    }
}

async fn an_exchange_whose_commit_answer_is_cut(cut: Cut, url_query: &str) {
    let (db, proxy, store, grant, tokens) = behind_a_cutting_proxy(url_query).await;
    proxy.arm(cut);
    let outcome = store
        .rotate(&exchange_of_rt(&grant, &tokens[0], None))
        .await;
    assert!(proxy.made(), "{cut:?}: no COMMIT answer was cut");
    assert_eq!(outcome.unwrap(), RotationOutcome::Rotated, "{cut:?}");
    let old = store.token(&TokenHash::of("rt")).await.unwrap().unwrap();
    assert_eq!(old.rotated_at, Some(400));
    assert!(store
        .token(&TokenHash::of("rt-next"))
        .await
        .unwrap()
        .is_some());
    // The committer goes on, on its new connection.
    let (later, later_tokens) = late_issuance(&grant.tenant, "svc", "later");
    assert!(store.issue(&later, &later_tokens, None).await.unwrap());
    drop((store, proxy, db));
}

/// PostgreSQL: when the `COMMIT` itself was lost, on a connection the network cut without
/// closing PostgreSQL's side, the transaction stays in progress; after a bounded wait
/// (every write of the node waits meanwhile) the committer ends its backend, so that it
/// holds no lock and can commit nothing later, and answers it unavailable: the exchange
/// never happens. So too with a query deadline shorter than that wait: the waits shrink to
/// fit it, so that the backend is still ended.
#[tokio::test]
async fn postgres_an_exchange_whose_commit_was_lost_silently_is_answered_unavailable() {
    for url_query in ["", "&query_timeout=1"] {
        an_exchange_whose_commit_is_lost_silently(url_query).await;
    }
}

async fn an_exchange_whose_commit_is_lost_silently(url_query: &str) {
    let (db, proxy, store, grant, tokens) = behind_a_cutting_proxy(url_query).await;
    proxy.arm(Cut::CommitLostSilently);
    let outcome = store
        .rotate(&exchange_of_rt(&grant, &tokens[0], None))
        .await;
    assert!(proxy.made(), "no COMMIT was lost");
    // Answered once the wait for the transaction to end ran out, not at the query deadline.
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(e)) if !e.contains("query_timeout")),
        "{outcome:?}"
    );
    // Ended while its connection is still open: it locks none of its rows any more.
    let locked = "SELECT (SELECT count(*) FROM tokens) \
                  - (SELECT count(*) FROM (SELECT 1 FROM tokens FOR UPDATE SKIP LOCKED) t)";
    assert_eq!(
        db.query_i64(locked).await,
        0,
        "its backend still holds its rows"
    );
    proxy.held.lock().unwrap().clear();
    let (later, later_tokens) = late_issuance(&grant.tenant, "svc", "later");
    assert!(store.issue(&later, &later_tokens, None).await.unwrap());
    let old = store.token(&TokenHash::of("rt")).await.unwrap().unwrap();
    assert_eq!(old.rotated_at, None);
    drop((store, proxy, db));
}

/// PostgreSQL: a batch given up at the query deadline before its `COMMIT` was sent (the
/// answer to its exchange held by a network cut that closed nothing) is answered
/// unavailable, and its backend, idle in the transaction on its side of the connection, is
/// ended: it holds none of the batch's locks (every batch needing one of its rows would wait
/// for them until the server noticed its peer gone, minutes to hours later), and the
/// exchange never happens.
#[tokio::test]
async fn postgres_a_batch_given_up_before_its_commit_leaves_no_backend_holding_its_locks() {
    let (db, proxy, store, grant, tokens) = behind_a_cutting_proxy("&query_timeout=1").await;
    proxy.arm(Cut::ExchangeAnswerHeld);
    let exchange = exchange_of_rt(&grant, &tokens[0], None);
    let rotating = tokio::spawn({
        let store = store.clone();
        async move { store.rotate(&exchange).await }
    });
    // The exchange ran: its rows are locked, before the deadline gives its batch up.
    let locked = "SELECT (SELECT count(*) FROM tokens) \
                  - (SELECT count(*) FROM (SELECT 1 FROM tokens FOR UPDATE SKIP LOCKED) t)";
    assert!(
        until(&db, locked, |held| held > 0).await,
        "the exchange locked nothing"
    );
    let outcome = rotating.await.unwrap();
    assert!(proxy.made(), "no exchange's answer was held");
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(e)) if e.contains("query_timeout")),
        "{outcome:?}"
    );
    // Ended, while its connection is still open: bounded at a minute.
    assert!(
        until(&db, locked, |held| held == 0).await,
        "its backend still holds its rows"
    );
    let old = store.token(&TokenHash::of("rt")).await.unwrap().unwrap();
    assert_eq!(old.rotated_at, None);
    let (later, later_tokens) = late_issuance(&grant.tenant, "svc", "later");
    assert!(store.issue(&later, &later_tokens, None).await.unwrap());
    drop((store, proxy, db));
}

/// Polls `sql` on `db` until its count satisfies `done`, for at most a minute.
async fn until(db: &TestDb, sql: &str, done: impl Fn(i64) -> bool) -> bool {
    for _ in 0..600 {
        if done(db.query_i64(sql).await) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// PostgreSQL: a batch whose opening statement's answer is lost (latch never learns its
/// transaction's id, so cannot end its backend) is ended by the server once it sits idle
/// past the batch's deadline (`idle_in_transaction_session_timeout`, set for the batch):
/// the audit trail's lock it took goes with it, and every node can read the trail's head
/// again, rather than answer `503` until the server noticed its peer gone.
#[tokio::test]
async fn postgres_a_batch_whose_opening_answer_is_lost_is_ended_by_the_server() {
    let (db, proxy, store, grant, tokens) = behind_a_cutting_proxy("&query_timeout=1").await;
    proxy.arm(Cut::BatchBeginAnswerHeld);
    let outcome = store
        .rotate(&exchange_of_rt(&grant, &tokens[0], None))
        .await;
    assert!(proxy.made(), "no batch's opening answer was held");
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(e)) if e.contains("query_timeout")),
        "{outcome:?}"
    );
    let audit_lock = "SELECT count(*) FROM pg_locks \
                      WHERE locktype = 'advisory' AND objid = 'audit'::regclass::oid";
    assert!(
        until(&db, audit_lock, |held| held == 0).await,
        "the audit lock is still held"
    );
    let old = store.token(&TokenHash::of("rt")).await.unwrap().unwrap();
    assert_eq!(old.rotated_at, None);
    drop((store, proxy, db));
}

/// A store on a fresh PostgreSQL schema reached through a [`CuttingProxy`], with client
/// `svc` and a grant holding refresh token `rt`; `url_query` is appended to the store's URL.
/// The schema comes first, so that it drops last, once the proxy has closed what it held (a
/// test that fails drops them so too).
async fn behind_a_cutting_proxy(
    url_query: &str,
) -> (TestDb, CuttingProxy, Arc<dyn Storage>, Grant, Vec<NewToken>) {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let proxy = CuttingProxy::start().await;
    let store = latch_store::open(&proxy.url(&(db.url_string() + url_query)))
        .await
        .unwrap();
    let home = TenantId::default_tenant();
    store
        .create_client(&client(&home, "svc", 3600))
        .await
        .unwrap();
    let (grant, mut tokens) = late_issuance(&home, "svc", "rt");
    tokens[0].kind = TokenKind::Refresh;
    assert!(store.issue(&grant, &tokens, None).await.unwrap());
    (db, proxy, store, grant, tokens)
}

/// PostgreSQL: a node whose clock is further than `MAX_CLOCK_SKEW` off the database's does
/// not start (nor would it sweep): two nodes further apart than the clean-up's allowance
/// could find a token live whose revocation one of them has already deleted. Within it, it
/// starts; SQLite has no other clock to compare with.
#[tokio::test]
async fn postgres_a_node_whose_clock_is_off_the_databases_does_not_start_or_clean_up() {
    use latch_core::cleanup::MAX_CLOCK_SKEW;
    use latch_core::clock::{Clock, SystemClock, UnixTime};
    /// The machine's time, shifted by so many seconds.
    struct Off(UnixTime);
    impl Clock for Off {
        fn now(&self) -> UnixTime {
            SystemClock.now() + self.0
        }
    }
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let settings = common::settings_for(&db);
    for (ahead, starts) in [
        (MAX_CLOCK_SKEW + 5, false),
        (-MAX_CLOCK_SKEW - 5, false),
        (MAX_CLOCK_SKEW - 5, true),
    ] {
        match latch::server::Server::start(&settings, Arc::new(Off(ahead))).await {
            Ok(server) => {
                assert!(starts, "started {ahead} s off");
                server.shutdown().await.unwrap();
            }
            Err(e) => {
                assert!(!starts, "{ahead} s off: {e:#}");
                assert!(format!("{e:#}").contains("off the database's"), "{e:#}");
            }
        }
    }
    // Nor does it clean up once its clock has gone off since.
    let store = latch_store::open(&db.url).await.unwrap();
    let far_off = latch_core::Authority::new(store, Arc::new(Off(MAX_CLOCK_SKEW + 5)));
    let refused = far_off.purge_expired().await.unwrap_err();
    assert!(
        refused.to_string().contains("off the database's"),
        "{refused}"
    );
    drop(far_off);
    drop(db);
}

/// PostgreSQL: a node whose clock drifts off the database's after it started is not ready
/// (`/readyz` answers 503 `clock_off`, so a load balancer takes it out of rotation) until
/// its clock is set right; the check at the start and before each clean-up run alone never
/// saw it on a node that does not clean up.
#[tokio::test]
async fn postgres_a_node_whose_clock_drifted_off_the_databases_is_not_ready() {
    use latch_core::cleanup::MAX_CLOCK_SKEW;
    use latch_core::clock::{Clock, SystemClock, UnixTime};
    use std::sync::atomic::{AtomicI64, Ordering};
    /// The machine's time, shifted by as many seconds as it is told.
    struct Drifting(Arc<AtomicI64>);
    impl Clock for Drifting {
        fn now(&self) -> UnixTime {
            SystemClock.now() + self.0.load(Ordering::Relaxed)
        }
    }
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let drift = Arc::new(AtomicI64::new(0));
    let clock = Arc::new(Drifting(drift.clone()));
    let server = latch::server::Server::start(&common::settings_for(&db), clock)
        .await
        .unwrap();
    let ready = async || {
        let url = format!("http://{}/readyz", server.addr);
        let response = reqwest::get(url).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    for off in [-MAX_CLOCK_SKEW - 5, MAX_CLOCK_SKEW + 5] {
        drift.store(off, Ordering::Relaxed);
        let (status, body) = ready().await;
        assert_eq!(status, 503, "{off} s off");
        assert_eq!(body["status"], "clock_off", "{body}");
    }
    drift.store(MAX_CLOCK_SKEW - 5, Ordering::Relaxed);
    assert_eq!(ready().await.0, 200, "within the allowance");
    server.shutdown().await.unwrap();
    drop(db);
}

/// PostgreSQL: the clean-up's sweep runs beside the node's writes, and waits for no other
/// node. Another node holds a lock on an expired token row (as a long tenant removal does):
/// the sweep leaves that row for its next run, deletes the other expired one, and a
/// revocation meanwhile commits at once. Waiting for the lock, the sweep held the rows it
/// had already deleted locked until the query deadline, and the node's writes on them (a
/// subject's log-out revokes its expired grants too) waited with it.
#[tokio::test]
async fn postgres_a_sweep_leaves_a_row_another_node_holds_locked_for_its_next_run() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    let t = TenantId::default_tenant();
    // Two expired tokens (at 10,000 and 15,000), and a live one.
    let (grant, tokens) = late_issuance(&t, "app", "expired");
    assert!(store.issue(&grant, &tokens, None).await.unwrap());
    let (mut grant, mut tokens) = late_issuance(&t, "app", "expired-too");
    grant.expires_at = 15_000;
    tokens[0].expires_at = 15_000;
    assert!(store.issue(&grant, &tokens, None).await.unwrap());
    let (mut grant, mut tokens) = late_issuance(&t, "app", "live");
    grant.expires_at = 1_000_000;
    tokens[0].expires_at = 1_000_000;
    assert!(store.issue(&grant, &tokens, None).await.unwrap());
    let holder = OtherNode::begin(
        &db,
        "SELECT 1 FROM tokens WHERE expires_at = 10000 FOR UPDATE",
    )
    .await;
    let (purged, _) = store
        .purge_expired(20_000, Sweep::START, 1_000)
        .await
        .unwrap();
    assert_eq!(purged.tokens, 1, "the unlocked expired token went");
    let revoked = store
        .revoke(
            &Revocation::Token(TokenHash::of("live")),
            &audit(1, Reason::ClientRequest, 400),
        )
        .await
        .unwrap();
    assert_eq!(revoked.map(|e| e.tokens), Some(1));
    assert!(store
        .token(&TokenHash::of("expired"))
        .await
        .unwrap()
        .is_some());
    holder.commit().await;
    let (purged, _) = store
        .purge_expired(20_000, Sweep::START, 1_000)
        .await
        .unwrap();
    assert_eq!(purged.tokens, 1, "the locked one went on the next run");
    assert!(store
        .token(&TokenHash::of("expired"))
        .await
        .unwrap()
        .is_none());
    drop(store);
    drop(db);
}

/// A fresh PostgreSQL database holding tenant `t`, with client `app` in it.
async fn tenant_t_with_client_app() -> (TestDb, Arc<dyn Storage>, TenantId) {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let t = TenantId::parse("t").unwrap();
    store.create_tenant(&t, 100).await.unwrap();
    store.create_client(&client(&t, "app", 3600)).await.unwrap();
    (db, store, t)
}

/// The removal of tenant `t`, as the admin API asks for it, running on its own.
fn removing_tenant(
    store: &Arc<dyn Storage>,
    t: &TenantId,
) -> tokio::task::JoinHandle<Result<Option<Option<AuditEvent>>, StoreError>> {
    let (store, t) = (store.clone(), t.clone());
    tokio::spawn(async move {
        let removal =
            AuditContext::new(t.clone(), "admin", "test", Reason::TenantRemoved, None, 200);
        store.delete_tenant(&t, &removal).await
    })
}

/// Across PostgreSQL nodes: a tenant removal while another node creates a client in that
/// tenant waits for the creation and removes that client too, instead of failing (with its
/// whole batch) on the client's foreign key.
#[tokio::test]
async fn postgres_a_tenant_removal_racing_another_nodes_client_creation_removes_that_client() {
    let (db, store, t) = tenant_t_with_client_app().await;
    let creator = OtherNode::begin(
        &db,
        "CREATE TEMP TABLE late ON COMMIT DROP AS SELECT * FROM clients WHERE tenant_id = 't'; \
         UPDATE late SET client_id = 'late'; \
         INSERT INTO clients SELECT * FROM late",
    )
    .await;
    let removing = removing_tenant(&store, &t);
    // Until the removal waits for the creation's lock on the tenant's row.
    creator.until_waited_on(&db, "tenants", &removing).await;
    creator.commit().await;
    assert!(
        removing.await.unwrap().unwrap().is_some(),
        "the tenant was removed"
    );
    let late = ClientId::parse("late").unwrap();
    assert!(store.client(&t, &late).await.unwrap().is_none());
    assert!(!store.tenant_exists(&t).await.unwrap());
    drop(store);
    drop(db);
}

/// Across PostgreSQL nodes: a tenant removal while another node declares (in its
/// configuration file) a client the tenant already has, an update of the client's row that
/// takes no lock on the tenant's, waits for it and refuses, as it refuses a declared client
/// it finds at once; before, it deleted the client the other node had just declared.
#[tokio::test]
async fn postgres_a_tenant_removal_racing_another_nodes_declaration_of_its_client_is_refused() {
    let (db, store, t) = tenant_t_with_client_app().await;
    let declarer = OtherNode::begin(
        &db,
        "UPDATE clients SET declared = TRUE WHERE tenant_id = 't' AND client_id = 'app'",
    )
    .await;
    let removing = removing_tenant(&store, &t);
    declarer.until_waited_on(&db, "clients", &removing).await;
    declarer.commit().await;
    assert!(
        matches!(removing.await.unwrap(), Err(StoreError::Conflict)),
        "the removal is refused"
    );
    assert!(store.tenant_exists(&t).await.unwrap());
    let app = ClientId::parse("app").unwrap();
    let kept = store
        .client(&t, &app)
        .await
        .unwrap()
        .expect("the declared client stays");
    assert!(kept.declared);
    drop(store);
    drop(db);
}

backend_test! {
    async fn concurrent_issuances_each_store_their_grant_with_its_own_tokens() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        // Grants with one token and with two, all at once, so that the PostgreSQL back-end
        // stores them in shared statements.
        let issuing = (0..40).map(|i| {
            let store = &store;
            async move {
                let names = [format!("a{i}"), format!("r{i}")];
                let tokens: Vec<_> = names[..1 + i % 2]
                    .iter()
                    .zip([TokenKind::Access, TokenKind::Refresh])
                    .map(|(name, kind)| (name.as_str(), kind, 10_000 + i as i64))
                    .collect();
                issue(&**store, i, &tokens).await
            }
        });
        let issued = futures_util::future::join_all(issuing).await;
        for (i, hashes) in issued.iter().enumerate() {
            assert_eq!(hashes.len(), 1 + i % 2);
            let mut grants = Vec::new();
            for (hash, kind) in hashes.iter().zip([TokenKind::Access, TokenKind::Refresh]) {
                let token = store.token(hash).await.unwrap().expect("the token was stored");
                assert_eq!((token.kind, token.expires_at), (kind, 10_000 + i as i64));
                assert_eq!(token.subject, subject(i), "its grant's subject");
                grants.push(token.grant_id);
            }
            grants.dedup();
            assert_eq!(grants.len(), 1, "a grant's tokens share it");
        }
        drop(store);
        drop(db);
    }
}

backend_test! {
    /// The audit trail's index by subject is keyed by blocks of 65,536 ids first (SQLite
    /// schema version 10, PostgreSQL 8): a subject's events are still found in id order,
    /// page by page, across blocks, and apart from other subjects' and tenants'.
    async fn a_subjects_audit_events_are_found_in_id_order_across_blocks_page_by_page() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let block = 1i64 << 16;
        // alice's records near the edges of blocks 0-2, none in blocks 3 and 4, one in
        // block 5; bob's next to each of hers, and another tenant's alice's in block 7.
        let alice = [1, block - 2, block, 2 * block + 7, 5 * block + 1];
        let mut rows = Vec::new();
        for (i, id) in alice.iter().enumerate() {
            rows.push(format!("({id}, 'default', {}, 'alice')", 100 + i));
            rows.push(format!("({}, 'default', 100, 'bob')", id + 1));
            rows.push(format!("({}, 'other', 100, 'alice')", 7 * block + i as i64));
        }
        insert_audit_records(&db, &rows).await;
        let tenant = TenantId::default_tenant();
        let page = |after: Option<i64>, since: Option<i64>, limit: u32| {
            let query = AuditQuery {
                subject: Some(Subject::parse("alice").unwrap()),
                since,
                after,
                limit,
            };
            let store = &store;
            let tenant = &tenant;
            async move {
                let events = store.audit_events(tenant, &query).await.unwrap().events;
                assert!(events.iter().all(|e| e.subject.as_ref().unwrap().as_str() == "alice"));
                events.iter().map(|e| e.id).collect::<Vec<i64>>()
            }
        };
        assert_eq!(page(None, None, 100).await, alice);
        // Paged two by two, each page resuming after the last id of the one before.
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let ids = page(after, None, 2).await;
            if ids.is_empty() {
                break;
            }
            after = ids.last().copied();
            pages.push(ids);
        }
        assert_eq!(
            pages,
            [vec![1, block - 2], vec![block, 2 * block + 7], vec![5 * block + 1]]
        );
        assert_eq!(page(Some(i64::MIN), None, 1).await, [1], "a negative `after` is 0");
        assert_eq!(page(Some(5 * block + 1), None, 10).await, Vec::<i64>::new());
        // With `since`, within the span a page reads (`AUDIT_SINCE_SPAN` ids).
        assert_eq!(page(Some(block), Some(103), 10).await, [2 * block + 7]);
        assert_eq!(page(None, None, 0).await, Vec::<i64>::new());
        let everyone = AuditQuery { limit: 100, ..AuditQuery::default() };
        assert_eq!(store.audit_events(&tenant, &everyone).await.unwrap().events.len(), 10);
        if db.is_postgres() {
            let index = |name: &str| {
                format!(
                    "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() \
                     AND indexname = '{name}'"
                )
            };
            assert_eq!(db.query_i64(&index("audit_by_subject_in_block")).await, 1);
            assert_eq!(db.query_i64(&index("audit_by_subject")).await, 0);
        }
        drop(store);
        drop(db);
    }
}

backend_test! {
    /// A page asked for with `since` reads at most `AUDIT_SINCE_SPAN` ids from the tenant's
    /// first record past its cursor (the trail has no index by time): short of the trail's
    /// end it stops there, however few events it found, and says where; following
    /// `next_after` finds every event, in
    /// order, for every subject or one. Unbounded, a page of a long trail's recent events
    /// read the whole trail first (on PostgreSQL, past the query deadline: never answered).
    async fn a_page_since_a_time_reads_a_bounded_span_and_says_where_it_stopped() {
        use latch_core::audit::AUDIT_SINCE_SPAN as SPAN;
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let rows = [
            (1, 100, "alice"),
            (2, 100, "bob"),
            (SPAN + 50, 200, "alice"),
            (3 * SPAN + 1, 300, "bob"),
            (3 * SPAN + 2, 300, "alice"),
        ]
        .map(|(id, at, who)| format!("({id}, 'default', {at}, '{who}')"));
        insert_audit_records(&db, &rows).await;
        let tenant = TenantId::default_tenant();
        let pages = |subject: Option<&str>, since: Option<i64>| {
            let (store, tenant) = (&store, &tenant);
            let subject = subject.map(|s| Subject::parse(s).unwrap());
            async move {
                let (mut pages, mut after) = (Vec::new(), None);
                for _ in 0..10 {
                    let query = AuditQuery { subject: subject.clone(), since, after, limit: 10 };
                    let page = store.audit_events(tenant, &query).await.unwrap();
                    pages.push(page.events.iter().map(|e| e.id).collect::<Vec<i64>>());
                    match page.next_after {
                        Some(next) => after = Some(next),
                        None => return pages,
                    }
                }
                panic!("no end after 10 pages: {pages:?}");
            }
        };
        // The span counts from the tenant's first record past the cursor: the gap between
        // SPAN + 50 and 3 * SPAN + 1 costs no empty page.
        let empty = Vec::<i64>::new();
        assert_eq!(
            pages(None, Some(150)).await,
            [empty.clone(), vec![SPAN + 50], vec![3 * SPAN + 1, 3 * SPAN + 2]]
        );
        assert_eq!(
            pages(Some("alice"), Some(150)).await,
            [empty, vec![SPAN + 50], vec![3 * SPAN + 2]]
        );
        // Without `since`, a page reads on to its limit.
        assert_eq!(
            pages(None, None).await,
            [vec![1, 2, SPAN + 50, 3 * SPAN + 1, 3 * SPAN + 2]]
        );
        drop(store);
        drop(db);
    }
}

/// Writes audit records behind latch's back, each `(id, tenant_id, at, subject)` as SQL.
async fn insert_audit_records(db: &TestDb, rows: &[String]) {
    db.execute(&format!(
        "INSERT INTO audit (id, tenant_id, at, subject, actor, route, reason, grants, tokens) \
         SELECT r.*, 'admin', 'admin', 'admin', 1, 0 FROM (VALUES {}) AS r",
        rows.join(", ")
    ))
    .await;
    if db.is_postgres() {
        // As if the sequence had handed those ids out: a read returns none past its last.
        db.execute("SELECT setval('audit_id_seq', max(id)) FROM audit")
            .await;
    }
}

/// Nodes of one PostgreSQL database are upgraded one at a time: an older node goes on
/// starting on a schema a newer one migrated, as long as every later migration says it keeps
/// older nodes correct, and refuses once one does not. The database is left as it was.
#[tokio::test]
async fn postgres_nodes_older_than_the_schema_start_only_where_its_migrations_allow() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    drop(latch_store::open(&db.url).await.unwrap());
    let newest = "SELECT max(version)::BIGINT FROM latch_migrations";
    let ours = db.query_i64(newest).await;
    let record = |version: i64, safe: bool| {
        format!(
            "INSERT INTO latch_migrations (version, older_nodes_safe) VALUES ({version}, {safe})"
        )
    };

    // A later migration that keeps older nodes correct: this node starts, and works.
    db.execute(&record(ours + 1, true)).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let hashes = issue(&*store, 1, &[("at1", TokenKind::Access, 10_000)]).await;
    assert_eq!(revoked_at(&*store, &hashes[0]).await, None);
    drop(store);
    assert_eq!(db.query_i64(newest).await, ours + 1);

    // One that does not: this node refuses to start.
    db.execute(&record(ours + 2, false)).await;
    let Err(error) = latch_store::open(&db.url).await else {
        panic!("a latch of schema {ours} opened a database it cannot use correctly");
    };
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "from version {} on it is not safe for a latch that knows only up to version {ours}",
            ours + 2
        )),
        "{message}"
    );
    assert_eq!(db.query_i64(newest).await, ours + 2);
}

/// PostgreSQL compares identifiers byte by byte (schema version 3, the "C" collation, as
/// SQLite's BINARY), and a database of version 2 holding tokens migrates to it (and to every
/// later version) intact.
#[tokio::test]
async fn postgres_identifiers_compare_byte_by_byte_also_after_migrating_a_version_2_database() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let hashes = issue(&*store, 1, &[("at1", TokenKind::Access, 10_000)]).await;
    drop(store);
    // From the catalogs: `information_schema.columns` checks privileges on every table of
    // the database, and fails on one a concurrent test is dropping.
    let in_c = "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                JOIN pg_collation l ON l.oid = a.attcollation \
                WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' \
                  AND a.attnum > 0 AND NOT a.attisdropped AND l.collname = 'C'";
    // tenants.id; clients' two keys; grants' id, tenant, client and subject; tokens'
    // grant; the audit trail's tenant, grant and subject; and since version 5 an access
    // token's owner (tenant, client, subject).
    assert_eq!(db.query_i64(in_c).await, 14);

    // Back to version 2: versions 5's and 6's additions gone, every column in the
    // database's collation, versions 3 and later not recorded.
    let mut to_default = String::from(
        "ALTER TABLE tokens DROP COLUMN tenant_id, DROP COLUMN client_id, \
           DROP COLUMN subject; DROP INDEX grants_revoked; \
         DROP TRIGGER grace_use_forks_its_grant ON tokens; DROP FUNCTION latch_record_fork(); \
         ALTER TABLE grants DROP COLUMN forked_generation; \
         ALTER TABLE clients DROP COLUMN declared, DROP COLUMN introspects; \
         DROP INDEX audit_by_subject_in_block; \
         CREATE INDEX audit_by_subject ON audit (tenant_id, subject, id); \
         DROP INDEX tokens_by_grant_kind; CREATE INDEX tokens_by_grant ON tokens (grant_id);",
    );
    for (table, columns) in [
        ("tenants", &["id"][..]),
        ("clients", &["tenant_id", "client_id"]),
        ("grants", &["id", "tenant_id", "client_id", "subject"]),
        ("tokens", &["grant_id"]),
        ("audit", &["tenant_id", "grant_id", "subject"]),
    ] {
        for column in columns {
            to_default.push_str(&format!(
                "ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT COLLATE \"default\";"
            ));
        }
    }
    db.execute(&format!(
        "{to_default} DELETE FROM latch_migrations WHERE version >= 3"
    ))
    .await;
    assert_eq!(db.query_i64(in_c).await, 0);

    let store = latch_store::open(&db.url).await.unwrap();
    assert_eq!(db.query_i64(in_c).await, 14);
    assert_eq!(
        db.query_i64("SELECT max(version)::BIGINT FROM latch_migrations")
            .await,
        10
    );
    // Version 4 dropped the indexes on expiry times (the clean-up sweeps the tables).
    // From the catalogs, as above (`pg_indexes` reads every index's definition).
    let on_expiry = "SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
                     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey) \
                     WHERE i.relnamespace = current_schema()::regnamespace \
                       AND a.attname = 'expires_at'";
    assert_eq!(db.query_i64(on_expiry).await, 0);
    // The token is found through the rebuilt indexes, and revoked through them.
    assert_eq!(revoked_at(&*store, &hashes[0]).await, None);
    let revoke = Revocation::Token(hashes[0]);
    let event = store
        .revoke(&revoke, &audit(1, Reason::ClientRequest, 300))
        .await
        .unwrap();
    assert_eq!(event.map(|e| e.tokens), Some(1));
    assert_eq!(revoked_at(&*store, &hashes[0]).await, Some(300));
    drop(store);
    drop(db);
}

/// PostgreSQL, schema version 5: an access token carries its grant's owner and is read
/// without the grant's row, yet its grant's revocation reaches it however the grant was
/// revoked, by a node of this version or by an older one (which knows nothing of the owner
/// columns); and an access token written by an older node is read with its grant.
#[tokio::test]
async fn postgres_access_tokens_carry_their_owner_and_die_with_a_grant_any_node_revokes() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let (grant, hashes) = issue_expiring(
        &*store,
        1,
        20_000,
        &[
            ("at1", TokenKind::Access, 10_000),
            ("rt1", TokenKind::Refresh, 20_000),
        ],
    )
    .await;
    let owner_of = |hash: &TokenHash| {
        let hex: String = hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "SELECT count(*) FROM tokens WHERE hash = '\\x{hex}' \
             AND tenant_id = 'default' AND client_id = 'app' AND subject = 'user1'"
        )
    };
    assert_eq!(
        db.query_i64(&owner_of(&hashes[0])).await,
        1,
        "the access token's owner"
    );
    assert_eq!(
        db.query_i64(&owner_of(&hashes[1])).await,
        0,
        "a refresh token has none"
    );
    // A rotation's new access token carries it too.
    let rotated = rotate_once(&*store, &grant, hashes[1]).await;
    assert_eq!(db.query_i64(&owner_of(&rotated[0])).await, 1);
    assert_eq!(db.query_i64(&owner_of(&rotated[1])).await, 0);

    // A token an older node wrote: no owner columns.
    db.execute(&format!(
        "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
         VALUES ('\\x{}', '{}', 0, 'read', 100, 10000)",
        TokenHash::of("old-node")
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        grant.as_str()
    ))
    .await;
    let old_node = TokenHash::of("old-node");
    for hash in [&hashes[0], &old_node] {
        let (alone, with_client) = read_both(&*store, hash).await;
        for record in [alone, with_client] {
            assert_eq!(record.kind, TokenKind::Access);
            assert_eq!(record.grant_id, grant);
            assert_eq!(record.tenant, TenantId::default_tenant());
            assert_eq!(record.client_id.as_str(), "app");
            assert_eq!(record.subject, subject(1));
            assert_eq!(record.grant_revoked_at, None);
        }
    }

    // An older node revokes the grant with its own statement: the grant's row alone.
    db.execute(&format!(
        "UPDATE grants SET revoked_at = 700 WHERE id = '{}' AND revoked_at IS NULL",
        grant.as_str()
    ))
    .await;
    for hash in [&hashes[0], &old_node, &hashes[1], &rotated[0], &rotated[1]] {
        let (alone, with_client) = read_both(&*store, hash).await;
        assert_eq!(alone.grant_revoked_at, Some(700));
        assert_eq!(with_client.grant_revoked_at, Some(700));
        assert!(alone.is_revoked() && with_client.is_revoked());
    }

    // And through this node: a second grant, revoked by its subject (log out everywhere).
    let (_, others) =
        issue_expiring(&*store, 2, 20_000, &[("at2", TokenKind::Access, 10_000)]).await;
    assert!(!is_revoked(&*store, &others[0]).await);
    let by_subject = Revocation::Subject {
        tenant: TenantId::default_tenant(),
        subject: subject(2),
    };
    store
        .revoke(&by_subject, &audit(2, Reason::LogoutEverywhere, 800))
        .await
        .unwrap();
    assert!(is_revoked(&*store, &others[0]).await);

    // A token that needs its grant's row, whose grant is gone, is unknown; one that carries
    // its owner is read on its own (its grant outlives it, so it has expired by then).
    db.execute(&format!(
        "DELETE FROM grants WHERE id = '{}'",
        grant.as_str()
    ))
    .await;
    assert!(store.token(&hashes[1]).await.unwrap().is_none());
    assert!(store.token(&old_node).await.unwrap().is_none());
    let (_, missing) = store
        .client_and_token(
            &TenantId::default_tenant(),
            &ClientId::parse("app").unwrap(),
            &old_node,
        )
        .await
        .unwrap();
    assert!(missing.is_none());
    drop(store);
    drop(db);
}

// ---- a grant a grace use forked --------------------------------------------------------------

/// Exchanges the refresh token named `old`, of generation `old_generation`, of `grant` under
/// `precondition` (at 200) for a new refresh token named `new`, as for a client with a grace
/// period or without one.
async fn exchange(
    store: &dyn Storage,
    grant: &GrantId,
    old: (&str, u32),
    precondition: RotationPrecondition,
    new: &str,
    client_has_grace: bool,
) -> RotationOutcome {
    let rotation = exchange_of(grant, old, precondition, new, client_has_grace);
    store.rotate(&rotation).await.unwrap()
}

/// The exchange [`exchange`] asks for.
fn exchange_of(
    grant: &GrantId,
    (old, old_generation): (&str, u32),
    precondition: RotationPrecondition,
    new: &str,
    client_has_grace: bool,
) -> Rotation {
    Rotation {
        grant_id: grant.clone(),
        tenant: TenantId::default_tenant(),
        client_id: ClientId::parse("app").unwrap(),
        subject: subject(0),
        client_secret: None,
        old: TokenHash::of(old),
        old_generation,
        precondition,
        new_tokens: vec![NewToken {
            hash: TokenHash::of(new),
            kind: TokenKind::Refresh,
            scope: Scope::parse("read").unwrap(),
            issued_at: 200,
            expires_at: 10_000,
            generation: old_generation + 1,
        }],
        grant_expires_at: 20_000,
        now: 200,
        client_has_grace,
    }
}

/// A grant of refresh token "{name}0", exchanged once for "{name}1", then used once more in
/// its grace period for "{name}2": two unused refresh tokens of generation 1, a fork.
async fn forked_grant(store: &dyn Storage, name: &str) -> GrantId {
    let first = format!("{name}0");
    let (grant, _) =
        issue_expiring(store, 1, 20_000, &[(&first, TokenKind::Refresh, 10_000)]).await;
    for (precondition, new) in [
        (RotationPrecondition::Unused, format!("{name}1")),
        (RotationPrecondition::GraceUnspent, format!("{name}2")),
    ] {
        let outcome = exchange(store, &grant, (&first, 0), precondition, &new, true).await;
        assert_eq!(outcome, RotationOutcome::Rotated, "{new}");
    }
    grant
}

/// `hash` as a blob literal of the database's dialect.
fn hex_literal(hash: &TokenHash, postgres: bool) -> String {
    let hex: String = hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    if postgres {
        format!("'\\x{hex}'::BYTEA")
    } else {
        format!("x'{hex}'")
    }
}

/// Whether the refresh token named `name` has been exchanged or retired (its grant lives on).
async fn is_retired(store: &dyn Storage, name: &str) -> bool {
    let token = store.token(&TokenHash::of(name)).await.unwrap().unwrap();
    assert!(!token.is_revoked(), "{name} is not revoked");
    token.rotated_at.is_some()
}

backend_test! {
    async fn a_forked_grant_goes_on_as_one_chain_even_once_its_client_has_no_grace_period() {
        // The client's grace period was set to 0 after the grace use: the exchange of either
        // unused token still retires the other, as the grant records the fork.
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let grant = forked_grant(&*store, "rt").await;
        assert!(!is_retired(&*store, "rt1").await && !is_retired(&*store, "rt2").await);
        let outcome = exchange(&*store, &grant, ("rt2", 1), RotationPrecondition::Unused, "rt3", false).await;
        assert_eq!(outcome, RotationOutcome::Rotated);
        assert!(is_retired(&*store, "rt1").await, "the fork's other token is retired");
        let other = store.token(&TokenHash::of("rt1")).await.unwrap().unwrap();
        assert!(other.grace_used, "and has no grace use left");
        assert!(!is_retired(&*store, "rt3").await);
        drop(store);
        drop(db);
    }
}

backend_test! {
    async fn a_fork_open_when_the_database_is_migrated_is_recorded_by_the_migration() {
        // Grants forked by a latch that did not record forks (schema version 7 on SQLite, 5
        // on PostgreSQL): the migration finds the forks still open whose grace-used token is
        // still stored. Where the clean-up had deleted it, an exchange for a client with a
        // grace period still retires the other token.
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let grant = forked_grant(&*store, "rt").await;
        let purged = forked_grant(&*store, "purged").await;
        drop(store);
        db.execute(&format!(
            "DELETE FROM tokens WHERE hash = {}",
            hex_literal(&TokenHash::of("purged0"), db.is_postgres())
        ))
        .await;
        db.execute(if db.is_postgres() {
            "DROP INDEX audit_by_subject_in_block; DROP INDEX tokens_by_grant_kind; \
             CREATE INDEX tokens_by_grant ON tokens (grant_id); \
             CREATE INDEX audit_by_subject ON audit (tenant_id, subject, id); \
             DROP TRIGGER grace_use_forks_its_grant ON tokens; DROP FUNCTION latch_record_fork(); \
             ALTER TABLE grants DROP COLUMN forked_generation; \
             ALTER TABLE clients DROP COLUMN declared, DROP COLUMN introspects; \
             DELETE FROM latch_migrations WHERE version >= 6;"
        } else {
            "DROP TABLE subject_logouts; DROP TABLE client_grant_revocations; DROP TABLE removals; \
             DROP INDEX audit_by_subject_in_block; DROP INDEX tokens_by_grant_kind; \
             CREATE INDEX tokens_by_grant ON tokens (grant_id); \
             CREATE INDEX audit_by_subject ON audit (tenant_id, subject, id); \
             DROP TRIGGER grace_use_forks_its_grant; \
             ALTER TABLE grants DROP COLUMN forked_generation; \
             ALTER TABLE clients DROP COLUMN declared; \
             ALTER TABLE clients DROP COLUMN introspects; PRAGMA user_version = 7;"
        })
        .await;
        let store = latch_store::open(&db.url).await.unwrap();
        let outcome = exchange(&*store, &grant, ("rt1", 1), RotationPrecondition::Unused, "rt3", false).await;
        assert_eq!(outcome, RotationOutcome::Rotated);
        assert!(is_retired(&*store, "rt2").await, "the fork's other token is retired");
        let outcome = exchange(
            &*store,
            &purged,
            ("purged2", 1),
            RotationPrecondition::Unused,
            "purged3",
            true,
        )
        .await;
        assert_eq!(outcome, RotationOutcome::Rotated);
        assert!(is_retired(&*store, "purged1").await, "the fork's other token is retired");
        drop(store);
        drop(db);
    }
}

/// Across PostgreSQL nodes: a grace use of rt0 on one node and, on another at the same time,
/// the exchange of rt1 (the token rt0's first exchange returned) leave the grant one chain,
/// also where the exchange read the client without a grace period (it was just set to 0).
/// Each exchange locks the grant's row first; without that, the exchange's statement did not
/// see the grace use's token (committed after it started) and both went on.
#[tokio::test]
async fn postgres_a_grace_use_racing_another_nodes_exchange_leaves_one_chain() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let (node_a, node_b) = (
        latch_store::open(&db.url).await.unwrap(),
        latch_store::open(&db.url).await.unwrap(),
    );
    let (grant, _) =
        issue_expiring(&*node_a, 1, 20_000, &[("rt0", TokenKind::Refresh, 10_000)]).await;
    let first = exchange(
        &*node_a,
        &grant,
        ("rt0", 0),
        RotationPrecondition::Unused,
        "rt1",
        true,
    )
    .await;
    assert_eq!(first, RotationOutcome::Rotated);

    // Both exchanges start while a third session holds the grant's row.
    let holder = holding_grant(&db, &grant).await;
    let grace_use = tokio::spawn({
        let (node, grant) = (node_a.clone(), grant.clone());
        async move {
            exchange(
                &*node,
                &grant,
                ("rt0", 0),
                RotationPrecondition::GraceUnspent,
                "rt2",
                true,
            )
            .await
        }
    });
    let next = tokio::spawn({
        let (node, grant) = (node_b.clone(), grant.clone());
        async move {
            exchange(
                &*node,
                &grant,
                ("rt1", 1),
                RotationPrecondition::Unused,
                "rt3",
                false,
            )
            .await
        }
    });
    holder
        .until_waited_on_by_all(&db, "FROM grants WHERE id = $1", &[&grace_use, &next])
        .await;
    holder.commit().await;
    // Either the grace use went first and the exchange retired its token, or the exchange
    // went first and the grace use found the grant moved on (a reuse, for the caller).
    let grace_use = grace_use.await.unwrap();
    assert_eq!(next.await.unwrap(), RotationOutcome::Rotated);
    let unused = "SELECT count(*) FROM tokens WHERE kind = 1 AND rotated_at IS NULL \
                  AND revoked_at IS NULL";
    assert_eq!(
        db.query_i64(unused).await,
        1,
        "one chain (the grace use {grace_use:?})"
    );
    assert!(!is_retired(&*node_a, "rt3").await);
    drop((node_a, node_b));
    drop(db);
}

/// The node's connections (pool, pipelined reads, committer) use TLS as the URL's `sslmode`
/// asks, and `verify-ca` / `verify-full` check the server's certificate against
/// `sslrootcert`. The local PostgreSQL serves TLS with a self-signed certificate for
/// `localhost` (Debian's default), which serves as its own CA here.
#[tokio::test]
async fn postgres_connections_use_tls_as_the_url_asks_and_check_the_certificate() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let schema = db.schema.clone().unwrap();
    assert_eq!(
        db.query_i64("SELECT (current_setting('ssl') = 'on')::INT4::INT8")
            .await,
        1,
        "this test needs PostgreSQL with ssl = on"
    );
    let (admin, conn) = tokio_postgres::connect(&common::pg_url(&schema), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let cert: String = admin
        .query_one("SELECT current_setting('ssl_cert_file')", &[])
        .await
        .unwrap()
        .get(0);
    // This node's connections, by TLS or not: (with TLS, without).
    let connections = |name: String| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(
                    "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
                     FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                     WHERE a.application_name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    let url = |host: &str, name: &str, tls: &str| {
        format!(
            "postgres://root@{host}:5432/test?options=-c%20search_path%3D{schema}\
             &application_name={name}{tls}"
        )
    };
    let root = format!("&sslrootcert={cert}");
    for (host, name, tls) in [
        ("127.0.0.1", "plain", String::new()),
        ("127.0.0.1", "required", "&sslmode=require".to_owned()),
        ("127.0.0.1", "ca", format!("&sslmode=verify-ca{root}")),
        ("localhost", "full", format!("&sslmode=verify-full{root}")),
    ] {
        let store = latch_store::open(&DatabaseUrl::parse(&url(host, name, &tls)).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        store.ping().await.unwrap();
        let (with, without) = connections(name.to_owned()).await;
        if name == "plain" {
            assert!(
                with == 0 && without > 0,
                "{name}: {with} with TLS, {without} without"
            );
        } else {
            assert!(
                with > 0 && without == 0,
                "{name}: {with} with TLS, {without} without"
            );
        }
        drop(store);
    }
    // The certificate names localhost, not 127.0.0.1; and no other CA vouches for it.
    let other_ca = std::fs::read_dir("/etc/ssl/certs")
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "pem")
                && !p.ends_with(std::path::Path::new(&cert).file_name().unwrap())
        })
        .expect("a CA certificate in /etc/ssl/certs");
    for (host, tls) in [
        ("127.0.0.1", format!("&sslmode=verify-full{root}")),
        (
            "localhost",
            format!("&sslmode=verify-full&sslrootcert={}", other_ca.display()),
        ),
        (
            "localhost",
            format!("&sslmode=verify-ca&sslrootcert={}", other_ca.display()),
        ),
    ] {
        let refused =
            latch_store::open(&DatabaseUrl::parse(&url(host, "refused", &tls)).unwrap()).await;
        let Err(e) = refused else {
            panic!("{host} {tls}: connected")
        };
        assert!(e.to_string().contains("certificate"), "{host} {tls}: {e}");
    }
    drop(admin);
    let _ = conn.await;
}

/// On PostgreSQL a log-out everywhere (as a removal: a write whose work has no bound) commits
/// on a connection of its own, apart from the node's other writes: one held up (here by
/// another node's lock on one of its grants, as a subject holding many grants holds it up
/// for as long as revoking them takes) holds up no other write of the node meanwhile.
#[tokio::test]
async fn postgres_a_long_logout_holds_up_no_other_write_of_its_node() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let (_, tokens, holder, logout) = logout_held_up(&db, &store).await;
    let other = TenantId::parse("other").unwrap();
    store.create_tenant(&other, 300).await.unwrap();
    let issued = issue(&*store, 2, &[("another", TokenKind::Access, 10_000)]).await;
    assert!(
        !logout.is_finished(),
        "the other writes waited for the log-out"
    );
    holder.commit().await;
    let event = logout.await.unwrap().unwrap().expect("recorded");
    assert_eq!((event.grants, event.tokens), (1, 1));
    assert!(store.token(&tokens[0]).await.unwrap().unwrap().is_revoked());
    assert!(!store.token(&issued[0]).await.unwrap().unwrap().is_revoked());
}

/// And a write that may need a row such a write holds locked (an issuance for the client
/// being removed, which waits on the client's row) waits for it apart, before it joins a
/// batch: in the bounded writes' batch it would hold up every other write of the node behind
/// that lock, then fail them all at the query deadline.
#[tokio::test]
async fn postgres_a_write_waiting_on_a_long_removal_holds_up_no_other_write_of_its_node() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let (grant, _) = issue_expiring(&*store, 1, 20_000, &[("at", TokenKind::Access, 10_000)]).await;
    let holder = holding_grant(&db, &grant).await;
    let removal = removing(&store, "app");
    // Its client's row deleted, it waits on the grant's.
    holder.until_waited_on(&db, "UPDATE grants", &removal).await;
    let issuance = tokio::spawn({
        let store = store.clone();
        async move {
            let grant = Grant {
                id: GrantId::generate(),
                tenant: TenantId::default_tenant(),
                client_id: ClientId::parse("app").unwrap(),
                subject: subject(2),
                scope: Scope::parse("read").unwrap(),
                created_at: 100,
                expires_at: 20_000,
                revoked_at: None,
            };
            let token = NewToken {
                hash: TokenHash::of("another"),
                kind: TokenKind::Access,
                scope: Scope::parse("read").unwrap(),
                issued_at: 100,
                expires_at: 10_000,
                generation: 0,
            };
            store.issue(&grant, &[token], None).await
        }
    });
    store
        .create_tenant(&TenantId::parse("other").unwrap(), 300)
        .await
        .unwrap();
    assert!(!removal.is_finished() && !issuance.is_finished());
    // Still in its transaction (PostgreSQL ends it after 10 s idle): the tenant did not wait
    // for it.
    holder.commit().await;
    let removed = removal.await.unwrap().unwrap();
    assert!(
        removed.is_some_and(|event| event.is_some()),
        "removed, recorded"
    );
    assert!(
        !issuance.await.unwrap().unwrap(),
        "nothing issued to a removed client"
    );
}

/// A write held back for a long one (here a grant's revocation, which may need the grant a
/// log-out of its subject holds) waits no longer than the query deadline: it is then
/// refused, as a batch PostgreSQL leaves unanswered is, instead of waiting for as long as the
/// log-out does (here, for as long as another session holds one of its grants).
#[tokio::test]
async fn postgres_a_write_held_back_for_a_long_one_is_refused_at_the_query_deadline() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let url = DatabaseUrl::parse(&format!("{}&query_timeout=1", db.url_string())).unwrap();
    let store = latch_store::open(&url).await.unwrap();
    let (grant, _, holder, logout) = logout_held_up(&db, &store).await;
    let context = audit(0, Reason::ClientRequest, 200).about(Some(&grant), Some(&subject(1)));
    let refused = store
        .revoke(&Revocation::Grant(grant.clone()), &context)
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(e)) if e.contains("a removal or a log-out")),
        "{refused:?}"
    );
    assert!(!logout.is_finished());
    holder.commit().await;
    let event = logout.await.unwrap().unwrap().expect("recorded");
    assert_eq!(event.grants, 1);
}

/// A long write (here a client's removal) lets the writes let through to the bounded queue
/// before it began go first, even those whose callers gave up: an issuance for the client,
/// its batch held up by another session, is stored, then revoked by the removal, which
/// waits for it before it goes to the database. The removal went at once before, and took
/// the client's row: the issuance's batch waited behind it, each of its writes refused at
/// the query deadline (here, the removal is seen waiting for that other session).
#[tokio::test]
async fn postgres_a_long_write_lets_the_writes_queued_before_it_go_first() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    let holder = OtherNode::begin(
        &db,
        "SELECT 1 FROM clients WHERE tenant_id = 'default' AND client_id = 'app' \
         FOR NO KEY UPDATE",
    )
    .await;
    // An issuance for `app`, its batch held up, whose caller then gives up: the write goes
    // on all the same.
    let (grant, tokens) = late_issuance(&TenantId::default_tenant(), "app", "queued");
    let issuing = tokio::spawn({
        let store = store.clone();
        async move { store.issue(&grant, &tokens, None).await }
    });
    holder.until_waited_on(&db, "clients", &issuing).await;
    issuing.abort();
    // The removal of `app` begins, and waits for it: it does not go to the database, where
    // its DELETE would wait for the holder too.
    let removal = removing(&store, "app");
    let mut went_first = false;
    for _ in 0..20 {
        went_first |= holder.waiting(&db, "DELETE FROM clients").await > 0;
        tokio::task::yield_now().await;
    }
    holder.commit().await;
    // (Checked once nothing holds a lock: a test failing while its sessions hold some
    // cannot drop its schema.)
    let removed = removal.await.unwrap();
    assert!(!went_first, "the removal went to the database first");
    assert!(removed.unwrap().is_some());
    let queued = store.token(&TokenHash::of("queued")).await.unwrap();
    let queued = queued.expect("stored, before the removal");
    assert!(queued.is_revoked(), "and revoked by it");
}

/// A long write queued behind another (here a subject's log-out behind a client's removal
/// another session holds up) holds nothing up while it waits: the subject's refresh-token
/// exchange goes through, and the log-out, once it runs, revokes what it issued. It counted
/// as under way from when it was queued, and the exchange was refused at the query deadline.
#[tokio::test]
async fn postgres_a_long_write_queued_behind_another_holds_nothing_up() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let url = DatabaseUrl::parse(&format!("{}&query_timeout=5", db.url_string())).unwrap();
    let store = latch_store::open(&url).await.unwrap();
    let home = TenantId::default_tenant();
    let (grant, _) =
        issue_expiring(&*store, 0, 20_000, &[("rt0", TokenKind::Refresh, 10_000)]).await;
    let (holder, removal) = web_removal_held_up(&db, &store).await;
    holder.until_waited_on(&db, "g.client_id", &removal).await;
    // The log-out of subject 0, queued behind the removal (one poll).
    let logout = Revocation::Subject {
        tenant: home.clone(),
        subject: subject(0),
    };
    let context = audit(1, Reason::LogoutEverywhere, 200);
    let logging_out = store.revoke(&logout, &context);
    tokio::pin!(logging_out);
    assert!(futures_util::poll!(logging_out.as_mut()).is_pending());
    let unused = RotationPrecondition::Unused;
    let exchanged = store
        .rotate(&exchange_of(&grant, ("rt0", 0), unused, "rt0-next", false))
        .await;
    holder.commit().await;
    // (Checked once nothing holds a lock: a test failing while its sessions hold some
    // cannot drop its schema.)
    let (removed, logged_out) = (removal.await.unwrap(), logging_out.await);
    assert_eq!(exchanged.unwrap(), RotationOutcome::Rotated);
    assert!(removed.unwrap().is_some());
    assert_eq!(logged_out.unwrap().expect("recorded").grants, 1);
    let next = store
        .token(&TokenHash::of("rt0-next"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        next.is_revoked(),
        "the log-out revoked the exchange's token"
    );
}

/// Client `web` of the default tenant, with one grant (its access token `web-at`) that
/// another session holds locked, and its removal under way (not yet waiting on that lock).
async fn web_removal_held_up(
    db: &TestDb,
    store: &Arc<dyn Storage>,
) -> (
    OtherNode,
    tokio::task::JoinHandle<Result<Option<Option<AuditEvent>>, StoreError>>,
) {
    let home = TenantId::default_tenant();
    store
        .create_client(&client(&home, "web", 3600))
        .await
        .unwrap();
    let (web, web_tokens) = late_issuance(&home, "web", "web-at");
    assert!(store.issue(&web, &web_tokens, None).await.unwrap());
    let holder = holding_grant(db, &web.id).await;
    (holder, removing(store, "web"))
}

/// The removal of client `id` of the default tenant, under way on a task of its own.
fn removing(
    store: &Arc<dyn Storage>,
    id: &str,
) -> tokio::task::JoinHandle<Result<Option<Option<AuditEvent>>, StoreError>> {
    let (store, id) = (store.clone(), ClientId::parse(id).unwrap());
    tokio::spawn(async move {
        let context = audit(0, Reason::ClientRemoved, 200);
        (store.delete_client(&TenantId::default_tenant(), &id, &context)).await
    })
}

/// A removal runs for as long as it takes, whatever timeouts the server sets: here every
/// session of latch's has a `lock_timeout` of 1 ms and a `statement_timeout` of 200 ms (as a
/// role's or a database's settings would give it), and the removal waits longer for another
/// session's lock on its client's grant, then removes the client.
#[tokio::test]
async fn postgres_a_long_write_keeps_no_server_timeout() {
    let db = TestDb::fresh_on(common::Backend::Postgres).await;
    let timeouts = "options=-c%20lock_timeout%3D1%20-c%20statement_timeout%3D200%20";
    let url = db.url_string().replace("options=", timeouts);
    let store = latch_store::open(&DatabaseUrl::parse(&url).unwrap())
        .await
        .unwrap();
    let home = TenantId::default_tenant();
    let (holder, removal) = web_removal_held_up(&db, &store).await;
    let wait = std::time::Duration::from_millis(400);
    let outlasted = holder
        .waited_on_for(&db, "g.client_id", wait, &removal)
        .await;
    holder.commit().await;
    // (Checked once nothing holds a lock: a test failing while its sessions hold some
    // cannot drop its schema.)
    let removed = removal.await.unwrap();
    assert!(outlasted, "the removal gave up waiting: {removed:?}");
    assert!(removed.unwrap().is_some());
    let web_id = ClientId::parse("web").unwrap();
    assert!(store.client(&home, &web_id).await.unwrap().is_none());
    let token = store.token(&TokenHash::of("web-at")).await.unwrap();
    assert!(
        token.is_none_or(|t| t.is_revoked()),
        "its client's token lives on"
    );
}

/// A log-out of `subject(1)` under way on `store` and waiting on another session's lock on
/// its one grant (issued here, with one access token): the grant, its tokens, that session,
/// and the log-out.
async fn logout_held_up(
    db: &TestDb,
    store: &Arc<dyn Storage>,
) -> (
    GrantId,
    Vec<TokenHash>,
    OtherNode,
    tokio::task::JoinHandle<Result<Option<AuditEvent>, StoreError>>,
) {
    let (grant, tokens) =
        issue_expiring(&**store, 1, 20_000, &[("at", TokenKind::Access, 10_000)]).await;
    let holder = holding_grant(db, &grant).await;
    let logout = tokio::spawn({
        let store = store.clone();
        async move {
            let logout = Revocation::Subject {
                tenant: TenantId::default_tenant(),
                subject: subject(1),
            };
            store
                .revoke(&logout, &audit(0, Reason::LogoutEverywhere, 200))
                .await
        }
    });
    holder.until_waited_on(db, "UPDATE grants", &logout).await;
    (grant, tokens, holder, logout)
}

/// Another node's session holding `grant`'s row locked.
async fn holding_grant(db: &TestDb, grant: &GrantId) -> OtherNode {
    let lock = format!(
        "SELECT 1 FROM grants WHERE id = '{}' FOR UPDATE",
        grant.as_str()
    );
    OtherNode::begin(db, &lock).await
}

/// Grants of client `app` written straight into a SQLite database, `n` of them, live (no
/// tokens): a large client without the time its issuances would take.
fn bulk_grants(n: usize) -> String {
    format!(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {n}) \
         INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
         SELECT 'bulk-' || i, 'default', 'app', 'bulk', 'read', 100, 20000 FROM k"
    )
}

/// SQLite's one writer holds every other write up while a write runs, so a client's removal
/// revokes its grants in chunks (schema version 11), each a commit of its own, and other
/// writes pass in between: here a write queued just after the removal began is answered
/// before the removal is, and the removal still kills every grant, with one audit record
/// counting them all.
#[tokio::test]
async fn sqlite_other_writes_pass_between_the_chunks_of_a_large_clients_removal() {
    other_writes_pass_between_the_chunks_of(Large::ClientRemoval).await;
}

/// The same for a tenant's removal.
#[tokio::test]
async fn sqlite_other_writes_pass_between_the_chunks_of_a_large_tenants_removal() {
    other_writes_pass_between_the_chunks_of(Large::TenantRemoval).await;
}

/// The same for the revocation of every grant of a client that stays, each chunk with an
/// audit record of its own.
#[tokio::test]
async fn sqlite_other_writes_pass_between_the_chunks_of_a_large_clients_grants_revocation() {
    other_writes_pass_between_the_chunks_of(Large::ClientGrants).await;
}

/// The same for a log-out everywhere of a subject holding as many grants (schema version
/// 14), with one audit record.
#[tokio::test]
async fn sqlite_other_writes_pass_between_the_chunks_of_a_large_subjects_logout() {
    other_writes_pass_between_the_chunks_of(Large::SubjectLogout).await;
}

/// What revokes a large client's grants in chunks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Large {
    ClientRemoval,
    TenantRemoval,
    ClientGrants,
    /// Every grant the client holds is made its subject's first.
    SubjectLogout,
}

/// Revokes the grants of client `app`, holding 12,001 of them, as `large` says while another
/// write is queued.
async fn other_writes_pass_between_the_chunks_of(large: Large) {
    let db = TestDb::fresh_on(common::Backend::Sqlite).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    let tokens = issue(
        &*store,
        1,
        &[
            ("at-a", TokenKind::Access, 10_000),
            ("rt-a", TokenKind::Refresh, 10_000),
        ],
    )
    .await;
    db.execute(&bulk_grants(12_000)).await;
    if large == Large::SubjectLogout {
        db.execute("UPDATE grants SET subject = 'bulk'").await;
    }
    let home = TenantId::default_tenant();
    let app = ClientId::parse("app").unwrap();
    let reason = match large {
        Large::ClientRemoval => Reason::ClientRemoved,
        Large::TenantRemoval => Reason::TenantRemoved,
        Large::ClientGrants => Reason::Admin,
        Large::SubjectLogout => Reason::LogoutEverywhere,
    };
    let context = audit(0, reason, 200);
    let done = std::sync::atomic::AtomicBool::new(false);
    let other = TenantId::parse("other").unwrap();
    let batches = store.commit_stats().commits;
    let (events, ()) = futures_util::future::join(
        async {
            let removed = |event: Option<Option<AuditEvent>>| -> Vec<AuditEvent> {
                event.expect("app existed").into_iter().collect()
            };
            let events = match large {
                Large::TenantRemoval => {
                    removed(store.delete_tenant(&home, &context).await.unwrap())
                }
                Large::ClientRemoval => {
                    removed(store.delete_client(&home, &app, &context).await.unwrap())
                }
                Large::ClientGrants => {
                    let mut events = Vec::new();
                    let mut recorded = |event| events.push(event);
                    (store.revoke_client_grants(&home, &app, &context, &mut recorded))
                        .await
                        .unwrap();
                    events
                }
                Large::SubjectLogout => {
                    let logout = Revocation::Subject {
                        tenant: home.clone(),
                        subject: Subject::parse("bulk").unwrap(),
                    };
                    let event = store.revoke(&logout, &context).await.unwrap();
                    event.into_iter().collect()
                }
            };
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            events
        },
        async {
            // Queued just after the revocation's first write (`join` polls it first), so
            // before its chunks: each of them needs the answer to the one before.
            tokio::task::yield_now().await;
            store.create_tenant(&other, 300).await.unwrap();
            assert!(
                !done.load(std::sync::atomic::Ordering::SeqCst),
                "the other write waited for the whole revocation"
            );
        },
    )
    .await;
    let (grants, tokens_killed) = events.iter().fold((0, 0), |(g, t), e| {
        assert_eq!(e.reason, reason);
        (g + e.grants, t + e.tokens)
    });
    assert_eq!((grants, tokens_killed), (12_001, 2));
    // A removal: its first write, three chunks of up to 5,000 grants and its record's, five
    // commits (the other write shares one of them, or adds its own), and one record. A
    // revocation of the grants: three chunks, each with its record. A log-out: three chunks,
    // the last with its record.
    let (commits, records) = match large {
        Large::ClientGrants => (3, 3),
        Large::SubjectLogout => (3, 1),
        Large::ClientRemoval | Large::TenantRemoval => (5, 1),
    };
    assert_eq!(events.len(), records);
    let committed = store.commit_stats().commits - batches;
    assert!(committed >= commits, "{committed} commits");
    for hash in &tokens {
        assert!(store.token(hash).await.unwrap().unwrap().is_revoked());
    }
    let live = "SELECT count(*) FROM grants WHERE revoked_at IS NULL";
    assert_eq!(db.query_i64(live).await, 0);
    assert_eq!(db.query_i64("SELECT count(*) FROM removals").await, 0);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM subject_logouts").await,
        0
    );
    let recorded = format!(
        "SELECT count(*) FROM audit WHERE reason = '{}'",
        reason.as_str()
    );
    assert_eq!(db.query_i64(&recorded).await, records as i64);
    let clients = "SELECT count(*) FROM clients WHERE client_id = 'app'";
    let kept = i64::from(matches!(large, Large::ClientGrants | Large::SubjectLogout));
    assert_eq!(db.query_i64(clients).await, kept);
}

/// A revocation of a client's grants whose caller goes away part-way (its future dropped, as
/// a request's is when its client hangs up) goes on to its end, and
/// `Authority::finish_background`, which a stopping server runs before it closes the store,
/// waits for it.
#[tokio::test]
async fn sqlite_a_stop_waits_for_a_clients_grants_revocation_its_caller_left() {
    let db = TestDb::fresh_on(common::Backend::Sqlite).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    // Live by the system clock the authority's is set to.
    db.execute(&bulk_grants(50_000).replace("20000", "4000000000"))
        .await;
    let clock = Arc::new(latch_core::clock::ManualClock::starting_now());
    let authority = latch_core::Authority::new(store.clone(), clock);
    let live = "SELECT count(*) FROM grants WHERE revoked_at IS NULL";
    {
        let (home, app) = (TenantId::default_tenant(), ClientId::parse("app").unwrap());
        let origin = latch_core::audit::Origin::internal("test");
        let revoking = authority.revoke_client_grants(&home, &app, origin);
        tokio::pin!(revoking);
        // Dropped once its first chunk (of ten) has committed.
        while db.query_i64(live).await == 50_000 {
            tokio::select! {
                done = &mut revoking => panic!("answered before its caller left: {done:?}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(2)) => {}
            }
        }
    }
    assert!(
        db.query_i64(live).await > 0,
        "finished before its caller left"
    );
    authority.finish_background().await;
    assert_eq!(db.query_i64(live).await, 0);
    let recorded = "SELECT coalesce(sum(grants), 0) FROM audit WHERE grant_id IS NULL";
    assert_eq!(db.query_i64(recorded).await, 50_000);
}

/// A revocation of a client's grants that a stop cut off part-way (its future dropped after
/// its first chunk, as a server's shutdown timeout drops it) is finished by the next start
/// (`finish_interrupted_removals`), with the records it began with, and takes only the grants
/// issued by the time it was asked for: one issued since belongs to the client as it is now.
/// One issued before it at a later time (a clock stepped back since) is taken all the same.
#[tokio::test]
async fn sqlite_a_clients_grants_revocation_a_stop_cut_off_is_finished_by_the_next_start() {
    let db = TestDb::fresh_on(common::Backend::Sqlite).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    db.execute(&bulk_grants(50_000)).await;
    let live = "SELECT count(*) FROM grants WHERE revoked_at IS NULL";
    let (home, app) = (TenantId::default_tenant(), ClientId::parse("app").unwrap());
    // Issued at 300, before a revocation asked for at 200.
    let (ahead, ahead_tokens) = late_issuance(&home, "app", "ahead-of-the-clock");
    assert!(store.issue(&ahead, &ahead_tokens, None).await.unwrap());
    let asked = audit(0, Reason::Admin, 200).about(None, Some(&Subject::of_client(&app)));
    let first = std::sync::Mutex::new(Vec::new());
    {
        let mut recorded = |event| first.lock().unwrap().push(event);
        let revoking = store.revoke_client_grants(&home, &app, &asked, &mut recorded);
        tokio::pin!(revoking);
        // Cut off once the record of its first chunk (of ten) is handed over.
        while first.lock().unwrap().is_empty() {
            tokio::select! {
                done = &mut revoking => panic!("finished before it was cut off: {done:?}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(2)) => {}
            }
        }
    }
    let first = first.into_inner().unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let (mut since, since_tokens) = late_issuance(&home, "app", "issued-since");
    since.created_at = 400;
    assert!(store.issue(&since, &since_tokens, None).await.unwrap());
    let remaining = db.query_i64(live).await;
    assert!(remaining > 1, "finished before it was cut off");
    drop(store);

    let store = latch_store::open(&db.url).await.unwrap();
    let finished = store.finish_interrupted_removals(400).await.unwrap();
    assert_eq!(
        finished.iter().map(|e| e.grants).sum::<u64>(),
        u64::try_from(remaining - 1).unwrap()
    );
    for event in first.iter().chain(&finished) {
        assert_eq!(
            (event.at, event.reason, event.subject.as_ref()),
            (200, Reason::Admin, asked.subject.as_ref()),
            "{event:?}"
        );
    }
    assert_eq!(db.query_i64(live).await, 1, "the grant issued since lives");
    let since = store.token(&TokenHash::of("issued-since")).await.unwrap();
    assert!(!since.unwrap().is_revoked());
    let ahead = store
        .token(&TokenHash::of("ahead-of-the-clock"))
        .await
        .unwrap();
    assert!(ahead.unwrap().is_revoked());
    let recorded = "SELECT coalesce(sum(grants), 0) FROM audit WHERE grant_id IS NULL";
    assert_eq!(db.query_i64(recorded).await, 50_001);
    // Finished: a later start has nothing left to do.
    assert!(store
        .finish_interrupted_removals(500)
        .await
        .unwrap()
        .is_empty());
    drop(store);
}

/// A revocation of a client's grants asked for again after one was cut off (its caller's
/// retry) takes the same grants and more, and leaves the one cut off under way (it may have
/// been running in another process): the next start finds nothing left for it, records
/// nothing more, and ends it.
#[tokio::test]
async fn sqlite_a_clients_grants_revocation_asked_again_leaves_nothing_to_the_one_cut_off() {
    let db = TestDb::fresh_on(common::Backend::Sqlite).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    db.execute(&bulk_grants(12_000)).await;
    let (home, app) = (TenantId::default_tenant(), ClientId::parse("app").unwrap());
    let under_way = "SELECT count(*) FROM client_grant_revocations";
    let recorded = std::sync::atomic::AtomicUsize::new(0);
    {
        let mut count = |_| {
            recorded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        let asked = audit(0, Reason::Admin, 200);
        let revoking = store.revoke_client_grants(&home, &app, &asked, &mut count);
        tokio::pin!(revoking);
        while recorded.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::select! {
                done = &mut revoking => panic!("finished before it was cut off: {done:?}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(2)) => {}
            }
        }
    }
    assert_eq!(db.query_i64(under_way).await, 1);
    let again = audit(1, Reason::Admin, 300);
    store
        .revoke_client_grants(&home, &app, &again, &mut |_| {})
        .await
        .unwrap();
    let live = "SELECT count(*) FROM grants WHERE revoked_at IS NULL";
    assert_eq!(db.query_i64(live).await, 0);
    assert_eq!(
        db.query_i64(under_way).await,
        1,
        "the one cut off, untouched"
    );
    assert!(store
        .finish_interrupted_removals(400)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.query_i64(under_way).await, 0);
    let recorded = "SELECT coalesce(sum(grants), 0) FROM audit WHERE grant_id IS NULL";
    assert_eq!(
        db.query_i64(recorded).await,
        12_000,
        "each grant recorded once"
    );
}

/// A fresh SQLite store where client `app` holds grant 1's access token "at-app", and client
/// `other` a grant issued at 300 with the access token `other_token`: the removal tests' start.
async fn sqlite_with_app_and(
    other: &str,
    other_token: &str,
) -> (TestDb, Arc<dyn Storage>, Vec<TokenHash>) {
    let db = TestDb::fresh_on(common::Backend::Sqlite).await;
    let store = latch_store::open(&db.url).await.unwrap();
    let home = TenantId::default_tenant();
    ensure_app(&*store).await;
    store
        .create_client(&client(&home, other, 3600))
        .await
        .unwrap();
    let app = issue(&*store, 1, &[("at-app", TokenKind::Access, 10_000)]).await;
    let (grant, tokens) = late_issuance(&home, other, other_token);
    assert!(store.issue(&grant, &tokens, None).await.unwrap());
    (db, store, app)
}

/// A crash between the chunks of a client's (or a tenant's) removal leaves the client in place
/// with its removal recorded as under way, as it was before the removal began or with some of
/// its grants revoked. Removing it again finishes the removal, with the record it began; so
/// does a server's start (`finish_interrupted_removals`), but not a command's open.
#[tokio::test]
async fn sqlite_a_removal_a_crash_interrupted_is_finished() {
    let (db, store, app) = sqlite_with_app_and("app2", "at-app2").await;
    let home = TenantId::default_tenant();
    // As a crash leaves them: both removals recorded as under way, no chunk run yet.
    db.execute(
        "INSERT INTO removals (tenant_id, client_id, reason, at, actor, route, subject) \
         VALUES ('default', 'app', 'client_removed', 250, 'admin', 'admin', 'client:app'), \
                ('default', 'app2', 'client_removed', 250, 'admin', 'admin', 'client:app2');",
    )
    .await;

    // Removing `app` again finishes its removal, with the record it began.
    let removal = audit(0, Reason::ClientRemoved, 300);
    let app_id = ClientId::parse("app").unwrap();
    let event = store.delete_client(&home, &app_id, &removal).await.unwrap();
    let event = event.expect("app existed").expect("recorded");
    assert_eq!(
        (event.grants, event.tokens, event.at, event.actor.as_str()),
        (1, 1, 250, "admin")
    );
    assert!(store.token(&app[0]).await.unwrap().unwrap().is_revoked());
    // Revoked when the removal went on, not when it began (the grant was alive in between).
    let revoked_at = "SELECT revoked_at FROM grants WHERE client_id = ";
    assert_eq!(db.query_i64(&format!("{revoked_at}'app'")).await, 300);
    let at_app2 = TokenHash::of("at-app2");
    assert!(
        !store.token(&at_app2).await.unwrap().unwrap().is_revoked(),
        "not yet"
    );

    // Opening the database does not finish `app2`'s (a command's open beside a server
    // doing it must not race it); the store's `finish_interrupted_removals`, which a server
    // runs as it starts, does.
    drop(store);
    let store = latch_store::open(&db.url).await.unwrap();
    assert!(!store.token(&at_app2).await.unwrap().unwrap().is_revoked());
    let finished = store.finish_interrupted_removals(320).await.unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(
        (finished[0].grants, finished[0].tokens, finished[0].at),
        (1, 1, 250)
    );
    assert!(store.token(&at_app2).await.unwrap().unwrap().is_revoked());
    assert_eq!(db.query_i64(&format!("{revoked_at}'app2'")).await, 320);
    assert_eq!(db.query_i64("SELECT count(*) FROM removals").await, 0);
    let gone = "SELECT count(*) FROM clients WHERE client_id IN ('app', 'app2')";
    assert_eq!(db.query_i64(gone).await, 0);
    let records = "SELECT count(*) FROM audit WHERE reason = 'client_removed'";
    assert_eq!(db.query_i64(records).await, 2);

    // A tenant's removal the same, here beside an interrupted removal of one of its
    // clients, which the tenant's removal ends with it (what that one's chunks revoked is
    // recorded): created again, that client is not removed by a later start.
    let acme = TenantId::parse("acme").unwrap();
    store.create_tenant(&acme, 300).await.unwrap();
    store
        .create_client(&client(&acme, "svc", 3600))
        .await
        .unwrap();
    let (grant, tokens) = late_issuance(&acme, "svc", "at-acme");
    assert!(store.issue(&grant, &tokens, None).await.unwrap());
    db.execute(
        "INSERT INTO removals (tenant_id, client_id, reason, at, actor, route, grants, tokens) \
         VALUES ('acme', '', 'tenant_removed', 350, 'admin', 'admin', 0, 0), \
                ('acme', 'svc', 'client_removed', 340, 'admin', 'admin', 3, 4);",
    )
    .await;
    let event = store
        .delete_tenant(&acme, &audit(0, Reason::TenantRemoved, 400))
        .await
        .unwrap()
        .expect("acme existed")
        .expect("recorded");
    assert_eq!(
        (event.reason, event.grants, event.tokens, event.at),
        (Reason::TenantRemoved, 1, 1, 350)
    );
    assert!(store
        .token(&TokenHash::of("at-acme"))
        .await
        .unwrap()
        .unwrap()
        .is_revoked());
    assert_eq!(
        db.query_i64("SELECT count(*) FROM tenants WHERE id = 'acme'")
            .await,
        0
    );
    let chunks = "SELECT count(*) FROM audit WHERE tenant_id = 'acme' \
                  AND reason = 'client_removed' AND grants = 3 AND tokens = 4 AND at = 340";
    assert_eq!(
        db.query_i64(chunks).await,
        1,
        "the client's chunks went unrecorded"
    );
    assert_eq!(db.query_i64("SELECT count(*) FROM removals").await, 0);
    store.create_tenant(&acme, 400).await.unwrap();
    store
        .create_client(&client(&acme, "svc", 3600))
        .await
        .unwrap();
    assert!(store
        .finish_interrupted_removals(400)
        .await
        .unwrap()
        .is_empty());
    let svc = "SELECT count(*) FROM clients WHERE tenant_id = 'acme' AND client_id = 'svc'";
    assert_eq!(db.query_i64(svc).await, 1);
}

/// A grant issued to a client after its removal's chunks passed (the client exists until the
/// removal's last write) is revoked by that last write. A trigger makes one appear in the last
/// chunk's write, after it revoked: another client's live grant moved to the one removed.
#[tokio::test]
async fn sqlite_a_removal_revokes_the_grants_issued_after_its_chunks() {
    let (db, store, app) = sqlite_with_app_and("late", "at-late").await;
    let home = TenantId::default_tenant();
    db.execute(
        "CREATE TRIGGER late AFTER UPDATE OF grants ON removals WHEN NEW.client_id = 'app' \
         BEGIN \
           UPDATE grants SET client_id = 'app' WHERE client_id = 'late'; \
           UPDATE tokens SET client_id = 'app' WHERE client_id = 'late'; \
         END;",
    )
    .await;

    let app_id = ClientId::parse("app").unwrap();
    let removal = audit(0, Reason::ClientRemoved, 400);
    let event = store.delete_client(&home, &app_id, &removal).await.unwrap();
    let event = event.expect("app existed").expect("recorded");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM grants WHERE client_id = 'late'")
            .await,
        0
    );
    assert!(store.token(&app[0]).await.unwrap().unwrap().is_revoked());
    let late = TokenHash::of("at-late");
    assert!(
        store.token(&late).await.unwrap().unwrap().is_revoked(),
        "the grant issued after the chunks is revoked too"
    );
    assert_eq!((event.grants, event.tokens), (2, 2));
}

/// A client the configuration declares while its removal runs (a server starting on the file
/// meanwhile) is not removed: the removal is given up (`Conflict` to whoever asked), the
/// grants its chunks revoked staying revoked, and a start carries on.
#[tokio::test]
async fn sqlite_a_removal_gives_up_a_client_declared_meanwhile() {
    let db = TestDb::fresh_on(common::Backend::Sqlite).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    let app = issue(&*store, 1, &[("at-app", TokenKind::Access, 10_000)]).await;
    db.execute(
        "INSERT INTO removals (tenant_id, client_id, reason, at, actor, route) \
         VALUES ('default', 'app', 'client_removed', 250, 'admin', 'admin'); \
         UPDATE clients SET declared = 1 WHERE client_id = 'app';",
    )
    .await;
    assert!(store
        .finish_interrupted_removals(400)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(db.query_i64("SELECT count(*) FROM removals").await, 0);
    let app_row = "SELECT count(*) FROM clients WHERE client_id = 'app' AND declared";
    assert_eq!(db.query_i64(app_row).await, 1);
    assert!(store.token(&app[0]).await.unwrap().unwrap().is_revoked());
}

/// A client's removal another process gave up meanwhile (a start that found the client
/// declared by its configuration deleted the removal's row) answers `Conflict`, not
/// "removed": the client is still there, with the grants the chunks had not reached.
#[tokio::test]
async fn sqlite_a_removal_another_process_gave_up_is_a_conflict() {
    let db = TestDb::fresh_on(common::Backend::Sqlite).await;
    let store = latch_store::open(&db.url).await.unwrap();
    ensure_app(&*store).await;
    issue(&*store, 1, &[("at-app", TokenKind::Access, 10_000)]).await;
    // As the first chunk adds what it revoked, the other process gives the removal up.
    db.execute(
        "CREATE TRIGGER given_up AFTER UPDATE ON removals BEGIN \
           UPDATE clients SET declared = 1 WHERE client_id = 'app'; \
           DELETE FROM removals WHERE client_id = 'app'; \
         END",
    )
    .await;
    let tenant = TenantId::default_tenant();
    let app = ClientId::parse("app").unwrap();
    let removal = AuditContext::new(
        tenant.clone(),
        "admin",
        "test",
        Reason::ClientRemoved,
        None,
        300,
    );
    let removed = store.delete_client(&tenant, &app, &removal).await;
    assert!(matches!(removed, Err(StoreError::Conflict)), "{removed:?}");
    let app_row = "SELECT count(*) FROM clients WHERE client_id = 'app'";
    assert_eq!(db.query_i64(app_row).await, 1);
}
