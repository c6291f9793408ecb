//! The revocation engine (RFC 7009). Every revocation route, standard or seed profile, ends
//! here; a route only chooses the [`Effect`].

use std::sync::Arc;

use crate::audit::{self, AuditContext, Killed, Origin, Reason};
use crate::authority::{Authority, Credentials};
use crate::cleanup::EXPIRY_GRACE;
use crate::client::{AccessTokenRevocation, Client};
use crate::clock::UnixTime;
use crate::error::Error;
use crate::grant::{Revocation, TokenRecord};
use crate::id::{ClientId, GrantId, Subject, TenantId};
use crate::secret::Admission;
use crate::store::{RevocationPlan, TokenRead};
use crate::token::{PresentedToken, TokenHash, TokenKind};

/// What a successful revocation request kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// RFC 7009: a refresh token takes its whole grant with it; an access token takes itself
    /// or its grant, as the owning client is configured.
    Token,
    /// Every live grant of the token's subject in the tenant, across all clients: the user is
    /// logged out of every application.
    AllGrantsOfSubject,
}

/// What a revocation request did. Every variant is answered `200` by RFC 7009 routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Something was revoked, durably.
    Revoked(Revoked),
    /// What the revocation would reach is dead already (`kills_something`): the token (or,
    /// for a grant or a subject, its grant) was revoked, or it expired by more than the
    /// clocks' allowance: nothing to do.
    AlreadyInactive,
    /// The token is malformed, unknown, or of another tenant.
    Unknown,
    /// The token belongs to another client and the caller is public: nothing was done, and
    /// the caller is not told (it proves no identity, so it must not learn which tokens exist).
    NotOwned,
}

/// The details of a revocation, for the response and the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The grant of the presented token.
    pub grant_id: GrantId,
    /// Its subject.
    pub subject: Subject,
    /// The kind of the presented token.
    pub kind: TokenKind,
    /// How much was killed: one token, one grant, or several grants.
    pub scope: RevokedScope,
    /// What the write killed (all zero if a concurrent request killed it first).
    pub killed: Killed,
}

/// How far a revocation reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokedScope {
    /// Only the presented token.
    Token,
    /// The presented token's grant.
    Grant,
    /// Every grant of the subject.
    Subject,
}

/// A well-formed token presented for revocation, as [`Authority::authenticate_revoking`]
/// found it: its hash, and the token itself if storage read it with the client.
#[derive(Debug)]
pub struct TokenToRevoke {
    hash: TokenHash,
    read: TokenRead,
}

impl Authority {
    /// [`Authority::authenticate`], for a client that presents `token` for revocation. The
    /// token is `None` when it is malformed (so unknown without a lookup); otherwise storage
    /// may read it now, with the client, or later, inside the revoking write
    /// ([`crate::store::Storage::client_for_revocation`]).
    pub async fn authenticate_revoking(
        &self,
        tenant: &TenantId,
        credentials: &Credentials,
        token: &str,
        admission: &dyn Admission,
    ) -> Result<(Client, Option<TokenToRevoke>), Error> {
        let id = ClientId::parse(credentials.client_id()).map_err(|_| Error::UnknownClient)?;
        let (client, token) = match PresentedToken::parse(token) {
            Some(presented) => {
                let (client, read) = self
                    .store
                    .client_for_revocation(tenant, &id, &presented.hash)
                    .await?;
                let token = TokenToRevoke {
                    hash: presented.hash,
                    read,
                };
                (client, Some(token))
            }
            None => (self.store.client(tenant, &id).await?, None),
        };
        Ok((
            self.check_credentials(client, credentials, admission)
                .await?,
            token,
        ))
    }

    /// Revokes a token on behalf of an authenticated `caller`: `token` as
    /// [`Authority::authenticate_revoking`] found it (`None`: malformed, which revokes
    /// nothing).
    ///
    /// The token type hint is deliberately not taken: a latch token's kind is in its prefix
    /// and both kinds live under one key, so one lookup finds either, and a wrong or unknown
    /// hint cannot change the outcome (RFC 7009 §2.2).
    ///
    /// Returns only once the revocation is durable. What dies is judged on the token as
    /// storage reads it for the write ([`crate::store::Storage::revoke_presented`]). A token
    /// of another client is never revoked: a confidential caller gets `invalid_request`, a
    /// public one [`Outcome::NotOwned`].
    pub async fn revoke(
        &self,
        caller: Client,
        token: Option<TokenToRevoke>,
        effect: Effect,
        origin: Origin,
    ) -> Result<Outcome, Error> {
        let Some(token) = token else {
            return Ok(Outcome::Unknown);
        };
        let reason = match effect {
            Effect::Token => Reason::ClientRequest,
            Effect::AllGrantsOfSubject => Reason::LogoutEverywhere,
        };
        let context = self.audit_context(&caller.tenant, caller.id.as_str(), origin, reason);
        let request = Arc::new(Request {
            caller,
            effect,
            now: self.clock.now(),
            context,
        });
        let plan: RevocationPlan = {
            let request = request.clone();
            Arc::new(move |record| match request.judge(record) {
                Judgement::Revoke(verdict) => Some((verdict.revocation, verdict.context)),
                Judgement::Answer(_) | Judgement::Refuse(_) => None,
            })
        };
        let (store, TokenToRevoke { hash, read }) = (self.store.clone(), token);
        let revoking = {
            let request = request.clone();
            async move {
                let (record, event) = store.revoke_presented(&hash, read, plan).await?;
                // Logged here, so that a log-out run to its end after its caller hung up
                // is logged too.
                if let Some(e) = &event {
                    audit::log(e);
                }
                // Asked again through a token whose grant the first chunks of a log-out cut
                // off by a failure revoked: judged alone it revokes nothing, but the rest of
                // that log-out is still owed.
                if let Some(r) = &record {
                    if request.effect == Effect::AllGrantsOfSubject
                        && matches!(
                            request.judge(r),
                            Judgement::Answer(Outcome::AlreadyInactive)
                        )
                    {
                        let finished = store
                            .finish_subject_logout(&r.tenant, &r.subject, request.now)
                            .await?;
                        if let Some(e) = &finished {
                            audit::log(e);
                        }
                    }
                }
                Ok((record, event))
            }
        };
        let (record, event) = match effect {
            Effect::Token => revoking.await?,
            // On SQLite, a subject holding many grants is logged out chunk after chunk.
            Effect::AllGrantsOfSubject => self.to_the_end(revoking).await?,
        };
        let Some(record) = record else {
            return Ok(Outcome::Unknown);
        };
        // The same judgement of the same record as the one storage acted on.
        let scope = match request.judge(&record) {
            Judgement::Revoke(verdict) => verdict.scope,
            Judgement::Answer(outcome) => return Ok(outcome),
            Judgement::Refuse(error) => return Err(error),
        };
        Ok(Outcome::Revoked(Revoked {
            grant_id: record.grant_id,
            subject: record.subject,
            kind: record.kind,
            scope,
            killed: audit::killed(&event),
        }))
    }
}

/// A revocation request, judged against the presented token wherever storage reads it.
struct Request {
    caller: Client,
    effect: Effect,
    now: UnixTime,
    context: AuditContext,
}

/// What a request makes of the token it presents.
enum Judgement {
    /// Revoke this.
    Revoke(Verdict),
    /// Revoke nothing; answer this.
    Answer(Outcome),
    /// Revoke nothing; fail with this.
    Refuse(Error),
}

struct Verdict {
    revocation: Revocation,
    scope: RevokedScope,
    context: AuditContext,
}

impl Request {
    /// The one place that judges a revocation request. Pure: the same record always gets the
    /// same judgement.
    fn judge(&self, record: &TokenRecord) -> Judgement {
        let caller = &self.caller;
        if record.tenant != caller.tenant {
            return Judgement::Answer(Outcome::Unknown);
        }
        if record.client_id != caller.id {
            return if caller.is_confidential() {
                Judgement::Refuse(Error::invalid_request(
                    "the token was not issued to this client",
                ))
            } else {
                Judgement::Answer(Outcome::NotOwned)
            };
        }
        let (revocation, scope) = decide(caller, record, self.effect);
        if !kills_something(record, scope, self.now) {
            return Judgement::Answer(Outcome::AlreadyInactive);
        }
        let grant = match scope {
            RevokedScope::Subject => None,
            RevokedScope::Token | RevokedScope::Grant => Some(&record.grant_id),
        };
        let context = self.context.clone().about(grant, Some(&record.subject));
        Judgement::Revoke(Verdict {
            revocation,
            scope,
            context,
        })
    }
}

/// Whether revoking `scope` through this token can still kill something.
///
/// The token alone: it must be unrevoked, unused, and not expired by more than the clocks'
/// allowance ([`EXPIRY_GRACE`]): a token just expired by this node's clock is not by a clock
/// that lags it (another node's, or this one stepped back), which would take it as live were
/// its revocation skipped. Its row is kept as long, so the revocation has something to mark.
///
/// Its grant or its subject's grants: the token only names them, so it may have been revoked
/// alone before (a local sign-out, then a sign-out everywhere with the same token), and a
/// refresh token already exchanged still names its grant, which lives on in the successor,
/// whatever its own expiry. But its grant must not be revoked: a token of a revoked grant
/// speaks for no session any more, and replayed, a sign-out everywhere must not end the
/// sessions its user opened since. Nor may an access token have expired past the allowance:
/// by then the clean-up may have deleted its grant's row or revocation mark before its own
/// row, and the token could no longer tell that its grant was revoked. (A refresh token is
/// never revoked alone: its `revoked_at` is its grant's.)
fn kills_something(record: &TokenRecord, scope: RevokedScope, now: UnixTime) -> bool {
    let kept = now < record.expires_at.saturating_add(EXPIRY_GRACE);
    match scope {
        RevokedScope::Token => kept && record.rotated_at.is_none() && !record.is_revoked(),
        RevokedScope::Grant | RevokedScope::Subject => match record.kind {
            TokenKind::Access => kept && record.grant_revoked_at.is_none(),
            TokenKind::Refresh => (kept || record.rotated_at.is_some()) && !record.is_revoked(),
        },
    }
}

/// The one place that decides what a revocation kills.
fn decide(caller: &Client, record: &TokenRecord, effect: Effect) -> (Revocation, RevokedScope) {
    let grant = || {
        (
            Revocation::Grant(record.grant_id.clone()),
            RevokedScope::Grant,
        )
    };
    match (effect, record.kind, caller.access_token_revocation) {
        (Effect::AllGrantsOfSubject, _, _) => (
            Revocation::Subject {
                tenant: record.tenant.clone(),
                subject: record.subject.clone(),
            },
            RevokedScope::Subject,
        ),
        (Effect::Token, TokenKind::Refresh, _) => grant(),
        (Effect::Token, TokenKind::Access, AccessTokenRevocation::Grant) => grant(),
        (Effect::Token, TokenKind::Access, AccessTokenRevocation::Token) => {
            (Revocation::Token(record.hash), RevokedScope::Token)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::AuthMethod;
    use crate::id::{ClientId, TenantId};
    use crate::scope::Scope;
    use crate::token::TokenHash;

    fn caller(access: AccessTokenRevocation) -> Client {
        Client {
            access_token_revocation: access,
            ..crate::client::sample_client()
        }
    }

    fn record(kind: TokenKind) -> TokenRecord {
        TokenRecord {
            hash: TokenHash::of("t"),
            kind,
            grant_id: GrantId::generate(),
            tenant: TenantId::default_tenant(),
            client_id: ClientId::parse("app").unwrap(),
            subject: Subject::parse("alice").unwrap(),
            scope: Scope::default(),
            issued_at: 0,
            expires_at: 100,
            revoked_at: None,
            grant_revoked_at: None,
            rotated_at: None,
            grace_used: false,
            generation: 0,
            grant_generation: 0,
        }
    }

    fn request(caller: Client) -> Request {
        Request {
            context: AuditContext::new(
                caller.tenant.clone(),
                caller.id.as_str(),
                "test",
                Reason::ClientRequest,
                None,
                50,
            ),
            caller,
            effect: Effect::Token,
            now: 50,
        }
    }

    #[test]
    fn a_token_of_another_client_is_refused_to_a_confidential_caller_and_ignored_for_a_public_one()
    {
        let mut other = record(TokenKind::Access);
        other.client_id = ClientId::parse("someone-else").unwrap();
        let mut confidential = caller(AccessTokenRevocation::Token);
        confidential.auth_method = AuthMethod::ClientSecretBasic;
        confidential.secret = Some(crate::client::SecretHash::from_stored("$argon2id$x".into()));
        assert!(matches!(
            request(confidential).judge(&other),
            Judgement::Refuse(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            request(caller(AccessTokenRevocation::Token)).judge(&other),
            Judgement::Answer(Outcome::NotOwned)
        ));
    }

    #[test]
    fn a_dead_or_foreign_tenant_token_revokes_nothing() {
        let app = || request(caller(AccessTokenRevocation::Token));
        // Expired past the clocks' allowance (`now` is 50)...
        let mut expired = record(TokenKind::Access);
        expired.expires_at = 50 - EXPIRY_GRACE;
        assert!(matches!(
            app().judge(&expired),
            Judgement::Answer(Outcome::AlreadyInactive)
        ));
        // ...but within it, both kinds are still revoked, for the clocks that lag this one.
        for kind in [TokenKind::Access, TokenKind::Refresh] {
            let mut just_expired = record(kind);
            just_expired.expires_at = 51 - EXPIRY_GRACE;
            assert!(matches!(app().judge(&just_expired), Judgement::Revoke(_)));
        }
        // A rotated refresh token past its own expiry still names its live grant; an unrotated
        // one expired as long names nothing alive.
        let mut stale = record(TokenKind::Refresh);
        stale.expires_at = 50 - EXPIRY_GRACE;
        assert!(matches!(
            app().judge(&stale),
            Judgement::Answer(Outcome::AlreadyInactive)
        ));
        stale.rotated_at = Some(10);
        let Judgement::Revoke(verdict) = app().judge(&stale) else {
            panic!("a rotated refresh token's grant is revoked");
        };
        assert_eq!(verdict.scope, RevokedScope::Grant);
        // Not so once the grant is revoked, whichever way storage recorded it.
        let mut revoked = record(TokenKind::Refresh);
        revoked.revoked_at = Some(10);
        assert!(matches!(
            app().judge(&revoked),
            Judgement::Answer(Outcome::AlreadyInactive)
        ));
        let mut grant_revoked = record(TokenKind::Access);
        grant_revoked.grant_revoked_at = Some(10);
        let mut everywhere = request(caller(AccessTokenRevocation::Token));
        everywhere.effect = Effect::AllGrantsOfSubject;
        for judged in [
            request(caller(AccessTokenRevocation::Grant)).judge(&grant_revoked),
            everywhere.judge(&grant_revoked),
            everywhere.judge(&revoked),
        ] {
            assert!(matches!(
                judged,
                Judgement::Answer(Outcome::AlreadyInactive)
            ));
        }
        let mut elsewhere = record(TokenKind::Access);
        elsewhere.tenant = TenantId::parse("other").unwrap();
        assert!(matches!(
            app().judge(&elsewhere),
            Judgement::Answer(Outcome::Unknown)
        ));
    }

    #[test]
    fn an_access_token_revoked_alone_still_takes_its_grant_or_subject_when_asked_to() {
        let mut token = record(TokenKind::Access);
        token.revoked_at = Some(10);
        // Alone, it is dead already...
        assert!(matches!(
            request(caller(AccessTokenRevocation::Token)).judge(&token),
            Judgement::Answer(Outcome::AlreadyInactive)
        ));
        // ...but its grant, or its subject's grants, may not be.
        let Judgement::Revoke(verdict) =
            request(caller(AccessTokenRevocation::Grant)).judge(&token)
        else {
            panic!("its grant is revoked");
        };
        assert_eq!(verdict.scope, RevokedScope::Grant);
        let mut everywhere = request(caller(AccessTokenRevocation::Token));
        everywhere.effect = Effect::AllGrantsOfSubject;
        let Judgement::Revoke(verdict) = everywhere.judge(&token) else {
            panic!("its subject's grants are revoked");
        };
        assert_eq!(verdict.scope, RevokedScope::Subject);
        // Expired past the allowance, it may no longer know that its grant was revoked.
        let mut expired = record(TokenKind::Access);
        expired.expires_at = 50 - EXPIRY_GRACE;
        let mut everywhere = request(caller(AccessTokenRevocation::Grant));
        everywhere.effect = Effect::AllGrantsOfSubject;
        assert!(matches!(
            everywhere.judge(&expired),
            Judgement::Answer(Outcome::AlreadyInactive)
        ));
    }

    #[test]
    fn a_live_token_is_revoked_with_its_grant_and_subject_in_the_audit_context() {
        let live = record(TokenKind::Refresh);
        let Judgement::Revoke(verdict) = request(caller(AccessTokenRevocation::Token)).judge(&live)
        else {
            panic!("a live refresh token of the caller is revoked");
        };
        assert_eq!(verdict.scope, RevokedScope::Grant);
        assert_eq!(verdict.context.grant_id.as_ref(), Some(&live.grant_id));
        assert_eq!(verdict.context.subject.as_ref(), Some(&live.subject));
        assert_eq!(verdict.context.at, 50);
    }

    #[test]
    fn a_refresh_token_always_takes_its_grant() {
        for setting in [AccessTokenRevocation::Token, AccessTokenRevocation::Grant] {
            let (rev, scope) = decide(&caller(setting), &record(TokenKind::Refresh), Effect::Token);
            assert!(matches!(rev, Revocation::Grant(_)));
            assert_eq!(scope, RevokedScope::Grant);
        }
    }

    #[test]
    fn an_access_token_takes_itself_or_its_grant_as_configured() {
        let r = record(TokenKind::Access);
        let (rev, _) = decide(&caller(AccessTokenRevocation::Token), &r, Effect::Token);
        assert!(matches!(rev, Revocation::Token(h) if h == r.hash));
        let (rev, _) = decide(&caller(AccessTokenRevocation::Grant), &r, Effect::Token);
        assert!(matches!(rev, Revocation::Grant(id) if id == r.grant_id));
    }

    #[test]
    fn logout_everywhere_takes_every_grant_of_the_subject() {
        for kind in [TokenKind::Access, TokenKind::Refresh] {
            let (rev, scope) = decide(
                &caller(AccessTokenRevocation::Token),
                &record(kind),
                Effect::AllGrantsOfSubject,
            );
            assert!(
                matches!(rev, Revocation::Subject { ref subject, .. } if subject.as_str() == "alice")
            );
            assert_eq!(scope, RevokedScope::Subject);
        }
    }
}
