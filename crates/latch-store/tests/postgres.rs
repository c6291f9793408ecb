//! The PostgreSQL store against the local server (`.ci/run` starts it): what the HTTP tests
//! cannot see, such as the audit record each revocation returns when the committer batches
//! concurrent revocations into one statement.

use latch_core::audit::{AuditContext, Reason};
use latch_core::grant::{Grant, NewToken, Revocation};
use latch_core::id::{ClientId, GrantId, Subject, TenantId};
use latch_core::scope::Scope;
use latch_core::store::{RevocationStore, TokenStore};
use latch_core::token::{TokenHash, TokenKind};
use latch_store::PgStore;

const PG_BASE: &str = "postgres://root@127.0.0.1:5432/test";

/// A schema of its own, dropped when the test is done.
struct Schema(String);

impl Schema {
    async fn create() -> Self {
        let name = format!("store_test_{}", std::process::id());
        execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        ))
        .await;
        Self(name)
    }

    fn url(&self) -> String {
        format!("{PG_BASE}?options=-c%20search_path%3D{}", self.0)
    }

    async fn drop(self) {
        execute(&format!("DROP SCHEMA {} CASCADE", self.0)).await;
    }
}

async fn execute(sql: &str) {
    let (client, conn) = tokio_postgres::connect(PG_BASE, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (see .ci/run)");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(sql)
        .await
        .expect("PostgreSQL statement");
    drop(client);
    let _ = conn.await;
}

fn subject(i: usize) -> Subject {
    Subject::parse(&format!("user{i}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_each_return_their_own_audit_record() {
    let schema = Schema::create().await;
    let store = PgStore::connect(&schema.url()).await.unwrap();
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
    let answers =
        futures_util::future::join_all(revocations.iter().map(|(r, a)| store.revoke(r, a))).await;

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
    schema.drop().await;
}
