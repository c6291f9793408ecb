//! The `refresh_token` grant (RFC 6749 §6) with rotation and reuse detection
//! (RFC 9700 §4.14.2).
//!
//! Every use of a refresh token returns a new one and retires the old. Presenting a retired
//! token means two parties hold it, one of them likely a thief, so the whole grant dies.
//! A client may be given a grace period in which the token it just rotated is accepted once
//! more, for apps that race their own refreshes. That leaves two unused refresh tokens in the
//! grant; storage retires the other when either is exchanged (`TokenStore::rotate`), so that
//! presenting it later is a reuse, not a second chain.

use super::{mint, require_grant_type, IssuedTokens};
use crate::audit::{Origin, Reason};
use crate::authority::Authority;
use crate::client::{defaults, Client, GrantType};
use crate::clock::UnixTime;
use crate::error::Error;
use crate::grant::{Revocation, Rotation, RotationOutcome, RotationPrecondition, TokenRecord};
use crate::scope::Scope;
use crate::token::{PresentedToken, TokenKind};

/// How many times a lost race is re-examined before giving up. A second look always
/// resolves it (the winner's write is visible), so this bound is never reached in practice.
const MAX_ATTEMPTS: usize = 3;

/// What may be done with a presented refresh token.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Exchange it under this precondition.
    Exchange(RotationPrecondition),
    /// It was already used outside the grace period: revoke the grant.
    Reuse,
    /// It is revoked or expired.
    Dead,
}

/// Applies the rotation rule to a token's stored state. A token already exchanged is a reuse
/// even once it has expired (RFC 9700 §4.14.2): its grant lives on in the successor, and a
/// stolen old token replayed late is as much a sign of theft as one replayed early; but one
/// the grace period would still cover, were it not expired, is the client racing its own
/// refresh across the expiry, which the grace period forgives: dead, not a reuse.
fn judge(record: &TokenRecord, client: &Client, now: UnixTime) -> Verdict {
    if record.is_revoked() {
        return Verdict::Dead;
    }
    let Some(rotated_at) = record.rotated_at else {
        return if now >= record.expires_at {
            Verdict::Dead
        } else {
            Verdict::Exchange(RotationPrecondition::Unused)
        };
    };
    // Bounded here too: a client stored with a longer grace before the bound existed.
    let grace = client.rotation_grace.min(defaults::MAX_ROTATION_GRACE);
    let in_grace = grace > 0
        && now - rotated_at <= i64::from(grace)
        && !record.grace_used
        && record.generation + 1 == record.grant_generation;
    match (in_grace, now < record.expires_at) {
        (true, true) => Verdict::Exchange(RotationPrecondition::GraceUnspent),
        (true, false) => Verdict::Dead,
        (false, _) => Verdict::Reuse,
    }
}

fn invalid_grant(msg: &'static str) -> Error {
    Error::InvalidGrant(msg.into())
}

impl Authority {
    /// Exchanges a refresh token for a new access token and a new refresh token.
    pub async fn refresh(
        &self,
        client: &Client,
        refresh_token: &str,
        requested: Option<&Scope>,
        origin: Origin,
    ) -> Result<IssuedTokens, Error> {
        require_grant_type(client, GrantType::RefreshToken)?;
        let presented = PresentedToken::parse(refresh_token)
            .filter(|p| p.kind == TokenKind::Refresh)
            .ok_or_else(|| invalid_grant("the refresh token is invalid"))?;

        for _ in 0..MAX_ATTEMPTS {
            let record = self
                .store
                .token(&presented.hash)
                .await?
                // Another client's token is answered as an unknown one: its caller must not
                // learn that it exists (nor is its presentation a reuse: it cannot use it).
                .filter(|r| {
                    r.kind == TokenKind::Refresh
                        && r.tenant == client.tenant
                        && r.client_id == client.id
                })
                .ok_or_else(|| invalid_grant("the refresh token is invalid"))?;
            let now = self.clock.now();
            let precondition = match judge(&record, client, now) {
                Verdict::Dead => {
                    return Err(invalid_grant("the refresh token is expired or revoked"))
                }
                Verdict::Reuse => {
                    let context = self
                        .audit_context(
                            &client.tenant,
                            client.id.as_str(),
                            origin,
                            Reason::ReuseDetected,
                        )
                        .about(Some(&record.grant_id), Some(&record.subject));
                    self.revoke_audited(&Revocation::Grant(record.grant_id.clone()), &context)
                        .await?;
                    tracing::warn!(
                        grant_id = %record.grant_id,
                        client_id = %client.id,
                        "refresh token reuse detected; grant revoked"
                    );
                    return Err(invalid_grant(
                        "the refresh token was already used; the grant has been revoked",
                    ));
                }
                Verdict::Exchange(p) => p,
            };
            // The refresh token keeps the whole grant (§6: a new refresh token carries the
            // original scope); only the access token narrows, also to what the client may
            // have now: a scope taken off a client (its declaration in the configuration
            // changed) is no longer in the access tokens its grants mint.
            let allowed = record.scope.intersection(&client.scope);
            if allowed.is_empty() && !record.scope.is_empty() {
                return Err(Error::InvalidScope(
                    "the client is no longer allowed any of the grant's scope".into(),
                ));
            }
            if requested.is_some_and(|r| r.is_subset_of(&record.scope) && !r.is_subset_of(&allowed))
            {
                return Err(Error::InvalidScope(
                    "the client is no longer allowed all of the requested scope".into(),
                ));
            }
            let access_scope = Scope::narrow(&allowed, requested)?;
            let access_ttl = client.access_token_ttl_beside_refresh();
            let (access, access_rec) = mint(TokenKind::Access, &access_scope, now, access_ttl, 0);
            let (refresh, refresh_rec) = mint(
                TokenKind::Refresh,
                &record.scope,
                now,
                client.refresh_token_ttl,
                record.generation + 1,
            );
            let rotation = Rotation {
                grant_id: record.grant_id.clone(),
                tenant: client.tenant.clone(),
                client_id: client.id.clone(),
                subject: record.subject.clone(),
                client_secret: client.secret.clone(),
                old: record.hash,
                old_generation: record.generation,
                precondition,
                grant_expires_at: refresh_rec.expires_at.max(access_rec.expires_at),
                new_tokens: vec![access_rec, refresh_rec],
                now,
                client_has_grace: client.rotation_grace > 0,
            };
            match self.store.rotate(&rotation).await? {
                RotationOutcome::Rotated => {
                    return Ok(IssuedTokens {
                        grant_id: record.grant_id,
                        access_token: access,
                        expires_in: access_ttl,
                        refresh_token: Some(refresh),
                        scope: access_scope,
                    })
                }
                // A concurrent use won; look again: that is now a reuse (or a grace use).
                RotationOutcome::Lost => continue,
                // The secret the request authenticated with was rotated (or the client
                // removed and created again) meanwhile: as for an issuance, nothing is minted.
                RotationOutcome::ClientChanged => return Err(Error::InvalidClient),
            }
        }
        Err(invalid_grant("the refresh token is invalid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ClientId, GrantId, Subject, TenantId};
    use crate::token::TokenHash;

    fn client(grace: u32) -> Client {
        Client {
            grant_types: vec![GrantType::RefreshToken],
            refresh_token_ttl: 600,
            rotation_grace: grace,
            ..crate::client::sample_client()
        }
    }

    fn record(rotated_at: Option<i64>, generation: u32, grant_generation: u32) -> TokenRecord {
        TokenRecord {
            hash: TokenHash::of("t"),
            kind: TokenKind::Refresh,
            grant_id: GrantId::generate(),
            tenant: TenantId::default_tenant(),
            client_id: ClientId::parse("app").unwrap(),
            subject: Subject::parse("u").unwrap(),
            scope: Scope::default(),
            issued_at: 0,
            expires_at: 1000,
            revoked_at: None,
            grant_revoked_at: None,
            rotated_at,
            grace_used: false,
            generation,
            grant_generation,
        }
    }

    #[test]
    fn an_unused_token_is_exchanged() {
        assert_eq!(
            judge(&record(None, 0, 0), &client(0), 10),
            Verdict::Exchange(RotationPrecondition::Unused)
        );
    }

    #[test]
    fn strict_rotation_treats_any_second_use_as_reuse() {
        assert_eq!(
            judge(&record(Some(10), 0, 1), &client(0), 10),
            Verdict::Reuse
        );
    }

    #[test]
    fn grace_allows_one_more_use_of_the_previous_token_only() {
        let c = client(30);
        assert_eq!(
            judge(&record(Some(10), 0, 1), &c, 40),
            Verdict::Exchange(RotationPrecondition::GraceUnspent)
        );
        // Past the window.
        assert_eq!(judge(&record(Some(10), 0, 1), &c, 41), Verdict::Reuse);
        // Not the immediately previous token: its successor was rotated too.
        assert_eq!(judge(&record(Some(10), 0, 2), &c, 11), Verdict::Reuse);
        // Its grace use is spent.
        let mut spent = record(Some(10), 0, 1);
        spent.grace_used = true;
        assert_eq!(judge(&spent, &c, 11), Verdict::Reuse);
        // A client stored with a longer grace before the bound: the bound holds all the same.
        let long = client(3600);
        assert_eq!(
            judge(&record(Some(10), 0, 1), &long, 10 + 300),
            Verdict::Exchange(RotationPrecondition::GraceUnspent)
        );
        assert_eq!(
            judge(&record(Some(10), 0, 1), &long, 10 + 301),
            Verdict::Reuse
        );
    }

    #[test]
    fn revoked_or_expired_tokens_are_dead_not_reused() {
        let mut r = record(None, 0, 0);
        r.grant_revoked_at = Some(5);
        assert_eq!(judge(&r, &client(0), 10), Verdict::Dead);
        assert_eq!(judge(&record(None, 0, 0), &client(0), 1000), Verdict::Dead);
        let mut revoked_and_rotated = record(Some(5), 0, 1);
        revoked_and_rotated.revoked_at = Some(6);
        assert_eq!(judge(&revoked_and_rotated, &client(0), 10), Verdict::Dead);
    }

    #[test]
    fn a_rotated_token_replayed_after_its_expiry_is_still_a_reuse() {
        // Expired at 1000, rotated at 900: the grant lives on in its successor.
        assert_eq!(
            judge(&record(Some(900), 0, 1), &client(0), 1500),
            Verdict::Reuse
        );
        // A grace period that would still cover it does not outlast the token itself, yet
        // forgives the client racing its own refresh across the expiry: dead, not a reuse.
        assert_eq!(
            judge(&record(Some(990), 0, 1), &client(30), 1000),
            Verdict::Dead
        );
        assert_eq!(
            judge(&record(Some(990), 0, 1), &client(30), 1021),
            Verdict::Reuse
        );
        assert_eq!(
            judge(&record(Some(990), 0, 1), &client(30), 999),
            Verdict::Exchange(RotationPrecondition::GraceUnspent)
        );
    }
}
