//! [`TokenStore`] on SQLite.

use std::sync::LazyLock;

use async_trait::async_trait;
use latch_core::client::SecretHash;
use latch_core::clock::UnixTime;
use latch_core::grant::{
    Grant, NewToken, Rotation, RotationOutcome, RotationPrecondition, TokenRecord,
};
use latch_core::id::{ClientId, GrantId, Subject, TenantId};
use latch_core::scope::Scope;
use latch_core::store::{GrantPage, StoreResult, TokenStore};
use latch_core::token::{TokenHash, TokenKind};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{live_clients, SqliteStore};

fn kind_code(kind: TokenKind) -> i64 {
    match kind {
        TokenKind::Access => 0,
        TokenKind::Refresh => 1,
    }
}

/// Whom a grant belongs to: what each of its access tokens carries (schema version 6), so
/// that reading one needs no lookup of the grant.
struct Owner<'a> {
    tenant: &'a str,
    client_id: &'a str,
    subject: &'a str,
}

fn insert_tokens(
    c: &Connection,
    grant: &GrantId,
    owner: &Owner<'_>,
    tokens: &[NewToken],
) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at, generation, \
                             tenant_id, client_id, subject) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for t in tokens {
        // Refresh tokens are read with their grant regardless (its refresh generation), so
        // they carry nothing of it.
        let owner = (t.kind == TokenKind::Access).then_some(owner);
        stmt.execute(params![
            t.hash.as_bytes(),
            grant.as_str(),
            kind_code(t.kind),
            t.scope.as_str(),
            t.issued_at,
            t.expires_at,
            t.generation,
            owner.map(|o| o.tenant),
            owner.map(|o| o.client_id),
            owner.map(|o| o.subject),
        ])?;
    }
    Ok(())
}

const GRANT_COLUMNS: &str =
    "id, tenant_id, client_id, subject, scope, created_at, expires_at, revoked_at";

fn grant_from_row(r: &Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: GrantId::from_stored(r.get(0)?),
        tenant: TenantId::from_stored(r.get(1)?),
        client_id: ClientId::from_stored(r.get(2)?),
        subject: Subject::from_stored(r.get(3)?),
        scope: Scope::from_stored(r.get::<_, String>(4)?),
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

/// A token's columns and its grant's, as [`token_at`] reads them, from `tokens t` joined
/// with `grants g` [`ON_GRANT`].
pub(super) const TOKEN_COLUMNS: &str = "t.kind, t.grant_id, \
     coalesce(t.tenant_id, g.tenant_id), coalesce(t.client_id, g.client_id), \
     coalesce(t.subject, g.subject), t.scope, t.issued_at, t.expires_at, t.revoked_at, \
     g.revoked_at, t.rotated_at, t.grace_used, t.generation, coalesce(g.refresh_generation, 0)";

/// The join condition of `grants g` to `tokens t`: only a token that does not carry its
/// grant's owner (a refresh token, or a row from before schema version 6) is joined. A NULL
/// key makes SQLite skip the search in `grants` altogether, where a condition beside the
/// key would not: it searches first, then tests. The revocation of such an access token's
/// grant reaches it through the grant's revocation-log mark, looked up by the grant id the
/// token row holds (or, the log's index full, its own row's `revoked_at`: `revocations.rs`),
/// and a grant outlives each of its tokens (its expiry is the latest of theirs), so the
/// grant row has nothing more to say.
pub(super) const ON_GRANT: &str = "ON g.id = iif(t.subject IS NULL, t.grant_id, NULL)";

/// One token with its grant, on a connection already chosen.
pub(super) fn select_token(
    c: &Connection,
    hash: &TokenHash,
) -> rusqlite::Result<Option<TokenRecord>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t LEFT JOIN grants g {ON_GRANT} WHERE t.hash = ?1"
        )
    });
    Ok(c.prepare_cached(&SQL)?
        .query_row([hash.as_bytes()], |r| token_at(r, 0, hash))
        .optional()?
        .flatten())
}

/// Reads the token `hash` from the row's [`TOKEN_COLUMNS`], starting at column `base`; `None`
/// when the row holds no token, or a token whose grant is gone (counted as unknown).
pub(super) fn token_at(
    r: &Row<'_>,
    base: usize,
    hash: &TokenHash,
) -> rusqlite::Result<Option<TokenRecord>> {
    // The tenant is NOT NULL in both tables: NULL means no row.
    if r.get_ref(base + 2)? == rusqlite::types::ValueRef::Null {
        return Ok(None);
    }
    Ok(Some(TokenRecord {
        hash: *hash,
        kind: if r.get::<_, i64>(base)? == 1 {
            TokenKind::Refresh
        } else {
            TokenKind::Access
        },
        grant_id: GrantId::from_stored(r.get(base + 1)?),
        tenant: TenantId::from_stored(r.get(base + 2)?),
        client_id: ClientId::from_stored(r.get(base + 3)?),
        subject: Subject::from_stored(r.get(base + 4)?),
        scope: Scope::from_stored(r.get::<_, String>(base + 5)?),
        issued_at: r.get(base + 6)?,
        expires_at: r.get(base + 7)?,
        revoked_at: r.get(base + 8)?,
        grant_revoked_at: r.get(base + 9)?,
        rotated_at: r.get(base + 10)?,
        grace_used: r.get(base + 11)?,
        generation: r.get(base + 12)?,
        grant_generation: r.get(base + 13)?,
    }))
}

/// Retires, as used with its grace spent, every other unused refresh token of the grant
/// whose token `r` exchanges. There is one only after a grace use, which leaves two (the one
/// the first exchange returned, and the grace use's): the first of them exchanged retires
/// the other, so that presenting it afterwards is a reuse and the grant does not go on as
/// two chains (RFC 9700 §4.14.2). Searched through the grant's tokens by kind and rotation
/// (schema version 13), so that it reads the unused refresh tokens alone, not the grant's
/// every row: a chain exchanged in a loop keeps its retired tokens until they expire, and
/// each exchange would read them all.
fn retire_siblings(c: &Connection, r: &Rotation) -> rusqlite::Result<usize> {
    c.prepare_cached(RETIRE_SIBLINGS_SQL)?.execute(params![
        r.grant_id.as_str(),
        r.old.as_bytes(),
        r.now
    ])
}

/// [`retire_siblings`]'s statement: grant `?1`, the token exchanged `?2`, the time `?3`.
const RETIRE_SIBLINGS_SQL: &str = "UPDATE tokens INDEXED BY tokens_by_grant_kind \
     SET rotated_at = ?3, grace_used = 1 \
     WHERE grant_id = ?1 AND kind = 1 AND hash <> ?2 \
       AND rotated_at IS NULL AND revoked_at IS NULL";

#[async_trait]
impl TokenStore for SqliteStore {
    async fn token(&self, hash: &TokenHash) -> StoreResult<Option<TokenRecord>> {
        let hash = *hash;
        let marks = self.marks.clone();
        self.read_batched(move |c, _| {
            let mut record = select_token(c, &hash)?;
            if let Some(record) = &mut record {
                marks.apply(record);
            }
            Ok(record)
        })
        .await
    }

    async fn issue(
        &self,
        grant: &Grant,
        tokens: &[NewToken],
        client_secret: Option<&SecretHash>,
    ) -> StoreResult<bool> {
        let (grant, tokens) = (grant.clone(), tokens.to_vec());
        let client_secret = client_secret.cloned();
        // Built once: every issuance runs it.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!("INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
        });
        self.write(move |c| {
            // The grant is stored only if its client still exists, as it authenticated: the
            // writer runs removals and issuances one at a time, so a removal either comes
            // first (nothing stored) or finds this grant and revokes it.
            let secret = client_secret.as_ref().map(SecretHash::as_str);
            if !live_clients::exists(c, &grant.tenant, &grant.client_id, secret)? {
                return Ok(false);
            }
            c.prepare_cached(&SQL)?.execute(params![
                grant.id.as_str(),
                grant.tenant.as_str(),
                grant.client_id.as_str(),
                grant.subject.as_str(),
                grant.scope.as_str(),
                grant.created_at,
                grant.expires_at,
                grant.revoked_at,
            ])?;
            let owner = Owner {
                tenant: grant.tenant.as_str(),
                client_id: grant.client_id.as_str(),
                subject: grant.subject.as_str(),
            };
            insert_tokens(c, &grant.id, &owner, &tokens)?;
            Ok(true)
        })
        .await
    }

    async fn rotate(&self, rotation: &Rotation) -> StoreResult<RotationOutcome> {
        let r = rotation.clone();
        self.write(move |c| {
            // The client as the request authenticated it, or nothing (a removal revokes the
            // grant, which the claim below sees; this is for a secret rotated meanwhile).
            let secret = r.client_secret.as_ref().map(SecretHash::as_str);
            if !live_clients::exists(c, &r.tenant, &r.client_id, secret)? {
                return Ok(RotationOutcome::ClientChanged);
            }
            // The precondition and the mark are one UPDATE, so of two concurrent exchanges
            // of one token exactly one sees its row change.
            let claimed = match r.precondition {
                RotationPrecondition::Unused => c
                    .prepare_cached(
                        "UPDATE tokens SET rotated_at = ?3 \
                         WHERE hash = ?1 AND kind = 1 AND rotated_at IS NULL \
                           AND revoked_at IS NULL \
                           AND EXISTS (SELECT 1 FROM grants \
                                       WHERE id = ?2 AND revoked_at IS NULL)",
                    )?
                    .execute(params![r.old.as_bytes(), r.grant_id.as_str(), r.now])?,
                RotationPrecondition::GraceUnspent => c
                    .prepare_cached(
                        "UPDATE tokens SET grace_used = 1 \
                         WHERE hash = ?1 AND kind = 1 AND rotated_at IS NOT NULL \
                           AND grace_used = 0 AND revoked_at IS NULL \
                           AND EXISTS (SELECT 1 FROM grants WHERE id = ?2 \
                                       AND revoked_at IS NULL \
                                       AND refresh_generation = ?3 + 1)",
                    )?
                    .execute(params![
                        r.old.as_bytes(),
                        r.grant_id.as_str(),
                        r.old_generation
                    ])?,
            };
            if claimed == 0 {
                return Ok(RotationOutcome::Lost);
            }
            // The grant's row was just read by the claim above: its page is in the cache.
            let (tenant, client_id, subject, forked_generation): (
                String,
                String,
                String,
                Option<u32>,
            ) = c
                .prepare_cached(
                    "SELECT tenant_id, client_id, subject, forked_generation \
                     FROM grants WHERE id = ?1",
                )?
                .query_row([r.grant_id.as_str()], |g| {
                    Ok((g.get(0)?, g.get(1)?, g.get(2)?, g.get(3)?))
                })?;
            // Only a grace use forks a grant (schema version 8's trigger records it), so the
            // search for another unused token runs for grants that forked, whatever the
            // client's grace period is now; and for a client with a grace period, for a fork
            // made before version 8 whose grace-used token the clean-up had already deleted
            // (the migration could not see it).
            if r.precondition == RotationPrecondition::Unused
                && (forked_generation.is_some() || r.client_has_grace)
            {
                retire_siblings(c, &r)?;
            }
            let owner = Owner {
                tenant: &tenant,
                client_id: &client_id,
                subject: &subject,
            };
            insert_tokens(c, &r.grant_id, &owner, &r.new_tokens)?;
            c.prepare_cached(
                "UPDATE grants SET refresh_generation = max(refresh_generation, ?2), \
                                   expires_at = max(expires_at, ?3) \
                 WHERE id = ?1",
            )?
            .execute(params![
                r.grant_id.as_str(),
                r.old_generation + 1,
                r.grant_expires_at
            ])?;
            Ok(RotationOutcome::Rotated)
        })
        .await
    }

    async fn grant(&self, tenant: &TenantId, id: &GrantId) -> StoreResult<Option<Grant>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1 AND tenant_id = ?2"
            ))?
            .query_row([id.as_str(), tenant.as_str()], grant_from_row)
            .optional()
        })
    }

    async fn live_grants(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        now: UnixTime,
        page: &GrantPage,
    ) -> StoreResult<Vec<Grant>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants \
                 WHERE tenant_id = ?1 AND subject = ?2 AND revoked_at IS NULL AND expires_at > ?3 \
                 AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5"
            ))?;
            let before = page.before.as_ref().map(GrantId::as_str);
            let rows = stmt.query_map(
                params![tenant.as_str(), subject.as_str(), now, before, page.limit],
                grant_from_row,
            )?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// The search for a sibling reads the grant's unused refresh tokens only, however many
    /// retired ones its chain has left (each kept until it expires): read through the
    /// grant's every row, an exchange of a chain refreshed in a loop grew slower each time.
    #[test]
    fn the_search_for_a_sibling_reads_no_other_token_of_the_chain() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut c, super::super::Migrations::Apply).unwrap();
        let insert = |hash: &[u8], kind: u8, rotated_at: Option<i64>| {
            c.execute(
                "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at, \
                                     rotated_at) VALUES (?1, 'g', ?2, '', 0, 10000, ?3)",
                params![hash, kind, rotated_at],
            )
            .unwrap();
        };
        // A long chain's retired refresh tokens and its access tokens.
        for i in 0..2_000u32 {
            insert(&i.to_be_bytes(), 1, Some(1));
            insert(&(i + 1_000_000).to_be_bytes(), 0, None);
        }
        insert(b"exchanged", 1, None);
        insert(b"sibling", 1, None);
        let retired = c
            .prepare_cached(RETIRE_SIBLINGS_SQL)
            .unwrap()
            .execute(params!["g", b"exchanged".as_slice(), 5])
            .unwrap();
        assert_eq!(retired, 1, "the sibling, and it alone");
        let steps = c
            .prepare_cached(RETIRE_SIBLINGS_SQL)
            .unwrap()
            .get_status(StatementStatus::VmStep);
        assert!(
            steps < 200,
            "{steps} steps: the chain's other tokens were read"
        );
    }
}
