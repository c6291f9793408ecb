//! Reads on a pooled connection, each one prepared (and cached) statement.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::LazyLock;

use latch_core::audit::{AuditEvent, AuditPage, AuditQuery, Reason};
use latch_core::client::{
    AccessTokenRevocation, AuthMethod, Client, GrantType, Introspects, SecretHash,
};
use latch_core::clock::UnixTime;
use latch_core::grant::{Grant, TokenRecord};
use latch_core::id::{ClientId, GrantId, Subject, TenantId};
use latch_core::scope::Scope;
use latch_core::store::{ClientPage, GrantPage, StoreResult, TenantPage};
use latch_core::token::{TokenHash, TokenKind};
use latch_core::StoreError;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::store_error;
use crate::audit_query::{
    audit_events_sql, audit_first_after_sql, audit_query_start, AuditSelect, AUDIT_BLOCK_BITS,
};

type Conn = deadpool_postgres::ClientWrapper;

fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt {what} in the database"))
}

fn u32_of(v: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| corrupt(what))
}

pub(super) async fn tenant_exists(c: &Conn, tenant: &TenantId) -> StoreResult<bool> {
    let stmt = c
        .prepare_cached("SELECT 1 FROM tenants WHERE id = $1")
        .await
        .map_err(|e| store_error(&e))?;
    c.query_opt(&stmt, &[&tenant.as_str()])
        .await
        .map(|r| r.is_some())
        .map_err(|e| store_error(&e))
}

pub(super) async fn list_tenants(
    c: &Conn,
    page: Option<&TenantPage>,
) -> StoreResult<Vec<TenantId>> {
    let after = page.and_then(|p| p.after.as_ref()).map(TenantId::as_str);
    // LIMIT NULL is none.
    let limit = page.map(|p| i64::from(p.limit));
    let rows = c
        .query(
            "SELECT id FROM tenants WHERE ($1::text IS NULL OR id > $1::text) \
             ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await
        .map_err(|e| store_error(&e))?;
    Ok(rows
        .iter()
        .map(|r| TenantId::from_stored(r.get(0)))
        .collect())
}

const CLIENT_COLUMNS: &str = "tenant_id, client_id, secret_hash, auth_method, grant_types, \
     scope, redirect_uris, access_token_ttl, refresh_token_ttl, rotation_grace, \
     access_token_revocation, created_at, declared, introspects";

fn client_from_row(r: &Row) -> StoreResult<Client> {
    let secret = r.get::<_, Option<String>>(2).map(SecretHash::from_stored);
    let auth_method: String = r.get(3);
    let grant_types: String = r.get(4);
    let scope: String = r.get(5);
    let redirect_uris: String = r.get(6);
    let access: String = r.get(10);
    let introspects: String = r.get(13);
    Ok(Client {
        tenant: TenantId::from_stored(r.get(0)),
        id: ClientId::from_stored(r.get(1)),
        secret,
        auth_method: AuthMethod::parse(&auth_method).map_err(|_| corrupt("auth_method"))?,
        grant_types: grant_types
            .split(' ')
            .filter_map(GrantType::parse)
            .collect(),
        scope: Scope::from_stored(scope),
        redirect_uris: redirect_uris
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        access_token_ttl: u32_of(r.get(7), "access_token_ttl")?,
        refresh_token_ttl: u32_of(r.get(8), "refresh_token_ttl")?,
        rotation_grace: u32_of(r.get(9), "rotation_grace")?,
        access_token_revocation: AccessTokenRevocation::parse(&access)
            .map_err(|_| corrupt("access_token_revocation"))?,
        introspects: Introspects::parse(&introspects).map_err(|_| corrupt("introspects"))?,
        created_at: r.get(11),
        declared: r.get(12),
    })
}

pub(super) async fn client(
    c: &Conn,
    tenant: &TenantId,
    id: &ClientId,
) -> StoreResult<Option<Client>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE tenant_id = $1 AND client_id = $2"
        ))
        .await
        .map_err(|e| store_error(&e))?;
    c.query_opt(&stmt, &[&tenant.as_str(), &id.as_str()])
        .await
        .map_err(|e| store_error(&e))?
        .as_ref()
        .map(client_from_row)
        .transpose()
}

pub(super) async fn list_clients(
    c: &Conn,
    tenant: &TenantId,
    page: Option<&ClientPage>,
) -> StoreResult<Vec<Client>> {
    let after = page.and_then(|p| p.after.as_ref()).map(ClientId::as_str);
    // LIMIT NULL is none.
    let limit = page.map(|p| i64::from(p.limit));
    let rows = c
        .query(
            &format!(
                "SELECT {CLIENT_COLUMNS} FROM clients WHERE tenant_id = $1 \
                 AND ($2::text IS NULL OR client_id > $2::text) ORDER BY client_id LIMIT $3"
            ),
            &[&tenant.as_str(), &after, &limit],
        )
        .await
        .map_err(|e| store_error(&e))?;
    rows.iter().map(client_from_row).collect()
}

/// A token's columns and its grant's, as [`token_from_row`] decodes them, from `tokens t`
/// joined as [`WITH_GRANT`] says.
const TOKEN_COLUMNS: &str = "t.kind, t.grant_id, coalesce(t.tenant_id, g.tenant_id), \
     coalesce(t.client_id, g.client_id), coalesce(t.subject, g.subject), t.scope, \
     t.issued_at, t.expires_at, t.revoked_at, coalesce(r.revoked_at, g.revoked_at), \
     t.rotated_at, t.grace_used, t.generation, coalesce(g.refresh_generation, 0)";

/// How `tokens t` is joined with its grant. A token that carries its grant's owner (an
/// access token, schema version 5) needs nothing of the grant but whether it was revoked:
/// a probe of `grants_revoked`, the small index of revoked grants (`r`). The others (refresh
/// tokens, which need the refresh generation; access tokens written before version 5, or by
/// an older node) are joined with their grant's row (`g`). Each side is a subquery gated on
/// `t.subject` (kept apart by `OFFSET 0`, so the condition on `t` becomes a one-time filter
/// and the other side's index is not searched at all, where a join condition would be
/// tested after the search). A grant outlives each of its tokens (its expiry is the latest
/// of theirs), so its row has nothing more to say about an access token.
const WITH_GRANT: &str = "LEFT JOIN LATERAL (SELECT g.tenant_id, g.client_id, g.subject, \
       g.revoked_at, g.refresh_generation FROM grants g \
       WHERE g.id = t.grant_id AND t.subject IS NULL OFFSET 0) g ON TRUE \
     LEFT JOIN LATERAL (SELECT r.revoked_at FROM grants r \
       WHERE r.id = t.grant_id AND r.revoked_at IS NOT NULL AND t.subject IS NOT NULL \
       OFFSET 0) r ON TRUE";

pub(super) async fn token(c: &Conn, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {TOKEN_COLUMNS} FROM tokens t {WITH_GRANT} WHERE t.hash = $1")
    });
    let stmt = c.prepare_cached(&SQL).await.map_err(|e| store_error(&e))?;
    c.query_opt(&stmt, &[&hash.as_bytes()])
        .await
        .map_err(|e| store_error(&e))?
        .map_or(Ok(None), |r| token_from_row(&r, hash))
}

/// What [`clients_and_tokens`] looks up: a client and a token.
pub(super) struct ClientAndToken {
    pub(super) tenant: TenantId,
    pub(super) client: ClientId,
    pub(super) hash: TokenHash,
}

/// Many lookups of a client and a token, answered in order; each side is `None` when
/// absent. Two statements sent together (one round trip): the batch's distinct clients, and
/// its tokens. A batch's lookups nearly all name the same few clients, so each is probed,
/// sent and decoded once per batch rather than once per lookup (introspection +5%, see
/// docs/benchmarks.md). Every lookup is a primary-key probe (`LATERAL`, so the plan cannot
/// turn into a scan however many keys there are).
///
/// The two statements see two snapshots, both taken after every lookup of the batch was
/// asked: a revocation or client removal acknowledged before a request is seen by it.
pub(super) async fn clients_and_tokens(
    c: &Conn,
    lookups: &[ClientAndToken],
) -> StoreResult<Vec<(Option<Client>, Option<TokenRecord>)>> {
    static CLIENTS_SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT c.* FROM unnest($1::TEXT[], $2::TEXT[]) AS q(tenant, client) \
             JOIN LATERAL (SELECT {CLIENT_COLUMNS} FROM clients \
               WHERE tenant_id = q.tenant AND client_id = q.client) c ON TRUE"
        )
    });
    static TOKENS_SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT tg.* FROM unnest($1::BYTEA[]) WITH ORDINALITY AS q(hash, i) \
             LEFT JOIN LATERAL (SELECT {TOKEN_COLUMNS} FROM tokens t {WITH_GRANT} \
               WHERE t.hash = q.hash) tg ON TRUE \
             ORDER BY q.i"
        )
    });
    let mut named: Vec<(&str, &str)> = Vec::new();
    for l in lookups {
        let key = (l.tenant.as_str(), l.client.as_str());
        if !named.contains(&key) {
            named.push(key);
        }
    }
    let tenants: Vec<&str> = named.iter().map(|k| k.0).collect();
    let clients: Vec<&str> = named.iter().map(|k| k.1).collect();
    let hashes: Vec<&[u8]> = lookups.iter().map(|l| l.hash.as_bytes()).collect();
    let (clients_stmt, tokens_stmt) = tokio::try_join!(
        c.prepare_cached(&CLIENTS_SQL),
        c.prepare_cached(&TOKENS_SQL)
    )
    .map_err(|e| store_error(&e))?;
    let client_keys: [&(dyn ToSql + Sync); 2] = [&tenants, &clients];
    let token_keys: [&(dyn ToSql + Sync); 1] = [&hashes];
    // Polled together, the two queries go out before either answer is awaited.
    let (client_rows, token_rows) = tokio::try_join!(
        c.query(&clients_stmt, &client_keys),
        c.query(&tokens_stmt, &token_keys)
    )
    .map_err(|e| store_error(&e))?;
    if token_rows.len() != lookups.len() {
        return Err(corrupt("lookup result"));
    }
    let found = client_rows
        .iter()
        .map(client_from_row)
        .collect::<StoreResult<Vec<Client>>>()?;
    token_rows
        .iter()
        .zip(lookups)
        .map(|(r, l)| {
            let client = found
                .iter()
                .find(|c| c.tenant == l.tenant && c.id == l.client)
                .cloned();
            Ok((client, token_from_row(r, &l.hash)?))
        })
        .collect()
}

/// Decodes a row of [`TOKEN_COLUMNS`]: `None` when it holds no token (a lookup's miss), or a
/// token that needs its grant and whose grant is gone (counted as unknown).
fn token_from_row(r: &Row, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
    // The tenant is NOT NULL in `grants`, and set in a token row that carries its owner.
    let Some(tenant) = r.get::<_, Option<String>>(2) else {
        return Ok(None);
    };
    Ok(Some(TokenRecord {
        hash: *hash,
        kind: if r.get::<_, i16>(0) == 1 {
            TokenKind::Refresh
        } else {
            TokenKind::Access
        },
        grant_id: GrantId::from_stored(r.get(1)),
        tenant: TenantId::from_stored(tenant),
        client_id: ClientId::from_stored(r.get(3)),
        subject: Subject::from_stored(r.get(4)),
        scope: Scope::from_stored(r.get::<_, String>(5)),
        issued_at: r.get(6),
        expires_at: r.get(7),
        revoked_at: r.get(8),
        grant_revoked_at: r.get(9),
        rotated_at: r.get(10),
        grace_used: r.get(11),
        generation: u32_of(r.get(12), "generation")?,
        grant_generation: u32_of(r.get(13), "refresh_generation")?,
    }))
}

const GRANT_COLUMNS: &str =
    "id, tenant_id, client_id, subject, scope, created_at, expires_at, revoked_at";

fn grant_from_row(r: &Row) -> Grant {
    Grant {
        id: GrantId::from_stored(r.get(0)),
        tenant: TenantId::from_stored(r.get(1)),
        client_id: ClientId::from_stored(r.get(2)),
        subject: Subject::from_stored(r.get(3)),
        scope: Scope::from_stored(r.get::<_, String>(4)),
        created_at: r.get(5),
        expires_at: r.get(6),
        revoked_at: r.get(7),
    }
}

pub(super) async fn grant(c: &Conn, tenant: &TenantId, id: &GrantId) -> StoreResult<Option<Grant>> {
    let row = c
        .query_opt(
            &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1 AND tenant_id = $2"),
            &[&id.as_str(), &tenant.as_str()],
        )
        .await
        .map_err(|e| store_error(&e))?;
    Ok(row.as_ref().map(grant_from_row))
}

pub(super) async fn live_grants(
    c: &Conn,
    tenant: &TenantId,
    subject: &Subject,
    now: UnixTime,
    page: &GrantPage,
) -> StoreResult<Vec<Grant>> {
    let before = page.before.as_ref().map(GrantId::as_str);
    let rows = c
        .query(
            &format!(
                "SELECT {GRANT_COLUMNS} FROM grants \
                 WHERE tenant_id = $1 AND subject = $2 AND revoked_at IS NULL AND expires_at > $3 \
                 AND ($4::text IS NULL OR id < $4::text) ORDER BY id DESC LIMIT $5"
            ),
            &[
                &tenant.as_str(),
                &subject.as_str(),
                &now,
                &before,
                &i64::from(page.limit),
            ],
        )
        .await
        .map_err(|e| store_error(&e))?;
    Ok(rows.iter().map(grant_from_row).collect())
}

/// How long a read of the audit trail waits for the write batches holding its lock
/// ([`settled_audit_id`]). The batches of every node that begin meanwhile wait behind the
/// read, so this bounds what a read can cost them; a batch still writing after it (a large
/// removal, say) fails the read, `503`, instead of holding every node's writes up.
const AUDIT_LOCK_TIMEOUT: &str = "100ms";

/// The last audit id the sequence has handed out, once every transaction that may hold an id
/// up to it has ended ([`audit_lock_key!`]): taking the lock exclusively waits for the write
/// batches holding it shared (at most [`AUDIT_LOCK_TIMEOUT`]), and the batches that begin
/// meanwhile wait behind this one. The sequence's last value is what it handed out last only
/// because it caches no values (`CACHE 1`, a `BIGSERIAL`'s); `pg_sequence_last_value`
/// needs only the `USAGE` a writer has on the sequence.
///
/// A statement of its own, so that the trail's read after it takes its snapshot once those
/// transactions have ended. (One statement would read the trail with a snapshot taken
/// before its wait.) `CASE` evaluates its branches in order: the timeout is set (for this
/// statement's transaction) before the lock is asked for, and the sequence is read once the
/// lock is held (and the role's `USAGE` on the sequence checked: `NULL` without it).
pub(super) async fn settled_audit_id(c: &Conn) -> StoreResult<i64> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT CASE \
               WHEN set_config('lock_timeout', '{AUDIT_LOCK_TIMEOUT}', true) IS NULL THEN NULL \
               WHEN pg_advisory_xact_lock({})::TEXT IS NULL THEN NULL \
               WHEN has_sequence_privilege('audit_id_seq', 'USAGE') \
                 THEN coalesce(pg_sequence_last_value('audit_id_seq'::regclass), 0) END",
            audit_lock_key!()
        )
    });
    let stmt = c.prepare_cached(&SQL).await.map_err(|e| store_error(&e))?;
    match c.query_one(&stmt, &[]).await {
        // `pg_sequence_last_value` is NULL before the first id, and (PostgreSQL 18) without
        // the privilege, which must not read as an empty trail.
        Ok(row) => row.get::<_, Option<i64>>(0).ok_or_else(|| {
            StoreError::Unavailable(
                "the database role lacks USAGE on audit_id_seq, needed to read the audit trail"
                    .into(),
            )
        }),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Err(StoreError::Unavailable(
            "the audit trail is being written by a long write (a removal, say); \
             try again shortly"
                .into(),
        )),
        Err(e) => Err(store_error(&e)),
    }
}

/// A page of a tenant's audit trail, in id order, none of its records past
/// [`settled_audit_id`]: a record committed later never has a smaller id than one a page has
/// shown, so a reader following `after` misses none, whichever nodes wrote them.
///
/// An id once settled stays settled, so `known`, the latest this node has seen settled, spares
/// a page that ends within it the lock and its wait (and every node's write batches the wait
/// behind it): a walk through the trail's history takes it for none of its pages but those
/// that reach the trail's head.
pub(super) async fn audit_events(
    c: &Conn,
    tenant: &TenantId,
    query: &AuditQuery,
    known: &AtomicI64,
) -> StoreResult<AuditPage> {
    let first: Option<i64> = match query.since {
        Some(_) => c
            .query_one(
                audit_first_after_sql(|n| format!("${n}")).as_str(),
                &[&tenant.as_str(), &query.after.unwrap_or(0)],
            )
            .await
            .map_err(|e| store_error(&e))?
            .get(0),
        None => None,
    };
    let settled = known.load(Ordering::Acquire);
    if query.after.unwrap_or(0) < settled {
        let read_to = query.read_to(first, settled);
        let events = audit_page(c, tenant, query, read_to).await?;
        // Full, or stopped short of `settled` by its span: it needed no id past it.
        if events.len() >= query.limit as usize || read_to < settled {
            return Ok(AuditPage::new(events, query, read_to, settled));
        }
    }
    let settled = settled_audit_id(c).await?;
    known.fetch_max(settled, Ordering::AcqRel);
    let read_to = query.read_to(first, settled);
    let events = audit_page(c, tenant, query, read_to).await?;
    Ok(AuditPage::new(events, query, read_to, settled))
}

/// The events of a page of a tenant's audit trail ([`audit_events`]), read up to `read_to`
/// (every id up to it settled).
async fn audit_page(
    c: &Conn,
    tenant: &TenantId,
    query: &AuditQuery,
    read_to: i64,
) -> StoreResult<Vec<AuditEvent>> {
    let render = |n: usize| match n {
        2 => "$2::TEXT".into(),
        3 => "$3::BIGINT".into(),
        6 => "b.block".into(),
        n => format!("${n}"),
    };
    let subject = query.subject.as_ref().map(|s| s.as_str());
    let limit = i64::from(query.limit);
    // An `after` below 0 selects what 0 does (ids start at 1).
    let (after, first) = audit_query_start(query.after);
    let tenant = tenant.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> =
        vec![&tenant, &subject, &query.since, &after, &limit];
    let sql = match subject {
        None => {
            // Parameter 6 (the block) is only in the query by subject.
            params.push(&read_to);
            audit_events_sql(AuditSelect::All, true, |n| match n {
                7 => "$6".into(),
                n => render(n),
            })
        }
        // The blocks in order from the cursor's to the settled id's, each probed through
        // the index keyed by block, until `limit` events are found: in one statement, the
        // nested loop emitting each block's events in id order before the next block's.
        // (No outer ORDER BY: it would sort every block's events and lose the early stop.
        // The LIMIT inside keeps the subquery from being flattened, so a nested loop over
        // the series is the only plan; tests/store.rs checks the order across blocks.)
        Some(_) => {
            params.extend([&first as &(dyn ToSql + Sync), &read_to]);
            format!(
                "SELECT e.* FROM generate_series($6::BIGINT, \
                   $7::BIGINT >> {AUDIT_BLOCK_BITS}) AS b(block) \
                 CROSS JOIN LATERAL ({}) AS e LIMIT $5",
                audit_events_sql(AuditSelect::SubjectInBlock, true, render)
            )
        }
    };
    let rows = c
        .query(sql.as_str(), &params)
        .await
        .map_err(|e| store_error(&e))?;
    rows.iter()
        .map(|r| {
            let reason: String = r.get(5);
            Ok(AuditEvent {
                id: r.get(0),
                tenant: TenantId::from_stored(r.get(1)),
                at: r.get(2),
                actor: r.get(3),
                route: r.get(4),
                reason: Reason::parse(&reason).ok_or_else(|| corrupt("audit reason"))?,
                grant_id: r.get::<_, Option<String>>(6).map(GrantId::from_stored),
                subject: r.get::<_, Option<String>>(7).map(Subject::from_stored),
                grants: r.get::<_, i64>(8) as u64,
                tokens: r.get::<_, i64>(9) as u64,
                address: r.get(10),
            })
        })
        .collect::<StoreResult<Vec<_>>>()
}
