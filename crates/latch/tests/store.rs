//! The storage layer on both back-ends, below HTTP: what the HTTP tests cannot see, such
//! as the audit record each revocation returns when concurrent revocations share a statement
//! (the PostgreSQL committer batches them).

#[macro_use]
mod common;

use common::TestDb;
use latch_core::audit::{AuditContext, Reason};
use latch_core::grant::{Grant, NewToken, Revocation};
use latch_core::id::{ClientId, GrantId, Subject, TenantId};
use latch_core::scope::Scope;
use latch_core::token::{TokenHash, TokenKind};

fn subject(i: usize) -> Subject {
    Subject::parse(&format!("user{i}")).unwrap()
}

backend_test! {
    async fn concurrent_revocations_each_return_their_own_audit_record() {
        let db = TestDb::fresh().await;
        let store = latch_store::open(&db.url).await.unwrap();
        let tenant = TenantId::default_tenant();
        let hashes: Vec<TokenHash> = (0..40).map(|i| TokenHash::of(&format!("t{i}"))).collect();
        for (i, hash) in hashes.iter().enumerate() {
            let grant = Grant {
                id: GrantId::generate(),
                tenant: tenant.clone(),
                client_id: ClientId::parse("app").unwrap(),
                subject: subject(i),
                scope: Scope::parse("read").unwrap(),
                created_at: 100,
                expires_at: 10_000,
                revoked_at: None,
            };
            let token = NewToken {
                hash: *hash,
                kind: TokenKind::Access,
                scope: Scope::parse("read").unwrap(),
                issued_at: 100,
                expires_at: 10_000,
                generation: 0,
            };
            store.issue(&grant, &[token]).await.unwrap();
        }
        // Every token once, and the first ten a second time, all at once.
        let asked: Vec<usize> = (0..40).chain(0..10).collect();
        let revocations: Vec<_> = asked
            .iter()
            .map(|&i| {
                let audit = AuditContext {
                    tenant: tenant.clone(),
                    actor: format!("actor{i}"),
                    route: "test",
                    reason: Reason::ClientRequest,
                    address: None,
                    at: 200,
                    grant_id: None,
                    subject: Some(subject(i)),
                };
                (Revocation::Token(hashes[i]), audit)
            })
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
