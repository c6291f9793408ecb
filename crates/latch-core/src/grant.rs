//! Grants and the stored state of tokens.

use crate::client::SecretHash;
use crate::clock::UnixTime;
use crate::id::{ClientId, GrantId, Subject, TenantId};
use crate::scope::Scope;
use crate::token::{TokenHash, TokenKind};

/// The family of tokens one authorization produced. Revoking a grant kills every token in it.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The grant's id.
    pub id: GrantId,
    /// Its tenant.
    pub tenant: TenantId,
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The resource owner.
    pub subject: Subject,
    /// Everything the resource owner granted; refreshed access tokens may narrow it.
    pub scope: Scope,
    /// When it was created.
    pub created_at: UnixTime,
    /// When its last token expires; after that the grant is dead without being revoked.
    pub expires_at: UnixTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

/// A token to be stored.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// The hash of the token string; the only form that is stored.
    pub hash: TokenHash,
    /// Access or refresh.
    pub kind: TokenKind,
    /// The token's scope (an access token's may be narrower than its grant's).
    pub scope: Scope,
    /// Issue time.
    pub issued_at: UnixTime,
    /// Expiry time.
    pub expires_at: UnixTime,
    /// For refresh tokens: how many rotations precede it in its grant (0 for the first).
    pub generation: u32,
}

/// A stored token, looked up by hash, together with its grant's state.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    /// The token's hash.
    pub hash: TokenHash,
    /// Access or refresh, as stored.
    pub kind: TokenKind,
    /// The grant it belongs to.
    pub grant_id: GrantId,
    /// The grant's tenant.
    pub tenant: TenantId,
    /// The client the grant was issued to.
    pub client_id: ClientId,
    /// The grant's subject.
    pub subject: Subject,
    /// The token's scope.
    pub scope: Scope,
    /// Issue time.
    pub issued_at: UnixTime,
    /// Expiry time.
    pub expires_at: UnixTime,
    /// When this token was revoked: alone, or with its grant where storage records a
    /// grant's revocation on the grant's tokens (SQLite does, for access tokens, once the
    /// index of its revocation log is full).
    pub revoked_at: Option<UnixTime>,
    /// When its grant was revoked: from the grant's row where storage read the token with
    /// its grant, or from a mark of the grant's revocation (SQLite's access tokens).
    pub grant_revoked_at: Option<UnixTime>,
    /// Refresh tokens: when it was exchanged for a new one.
    pub rotated_at: Option<UnixTime>,
    /// Refresh tokens: whether its one use within the rotation grace period was spent.
    pub grace_used: bool,
    /// Refresh tokens: its place in the rotation chain.
    pub generation: u32,
    /// Refresh tokens: the newest refresh generation of the grant (storage may leave it 0
    /// for an access token, which has no use for it).
    pub grant_generation: u32,
}

impl TokenRecord {
    /// True when the token or its grant was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some() || self.grant_revoked_at.is_some()
    }

    /// True when the token is usable now: not revoked, its grant not revoked, not expired,
    /// and (refresh tokens) not yet rotated.
    pub fn is_active(&self, now: UnixTime) -> bool {
        !self.is_revoked() && now < self.expires_at && self.rotated_at.is_none()
    }
}

/// What a revocation kills.
#[derive(Clone, Debug)]
pub enum Revocation {
    /// One token.
    Token(TokenHash),
    /// One grant, with every token in it.
    Grant(GrantId),
    /// Every grant of a subject in a tenant, across all clients ("log out everywhere").
    Subject {
        /// The tenant.
        tenant: TenantId,
        /// The subject.
        subject: Subject,
    },
    /// Every grant of a tenant (the tenant is being removed).
    Tenant(TenantId),
    /// Every grant issued to a client (the client is being removed).
    Client {
        /// The tenant.
        tenant: TenantId,
        /// The client.
        client_id: ClientId,
    },
}

/// The condition under which a refresh token may be exchanged, checked atomically by storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationPrecondition {
    /// The token has never been used.
    Unused,
    /// The token was rotated, its grace use is unspent, and it is the grant's newest
    /// rotated token (its successor is the grant's current generation).
    GraceUnspent,
}

/// An atomic refresh-token exchange: mark the old token used and store the new ones, or do
/// nothing if the precondition no longer holds (a concurrent use won the race).
#[derive(Clone, Debug)]
pub struct Rotation {
    /// The grant.
    pub grant_id: GrantId,
    /// The grant's tenant and client, which the request authenticated as.
    pub tenant: TenantId,
    /// See `tenant`.
    pub client_id: ClientId,
    /// The grant's subject (so that PostgreSQL holds an exchange back only for a log-out of
    /// its own subject, not of its tenant's every one).
    pub subject: Subject,
    /// The stored secret hash the request authenticated against (`None`: a client without
    /// a secret). The exchange happens only if the client still has it when the write runs:
    /// a secret rotated, or the client removed and created again, after the request
    /// authenticated and before its write stops it, as it stops an issuance.
    pub client_secret: Option<SecretHash>,
    /// The refresh token being exchanged.
    pub old: TokenHash,
    /// Its generation, as read.
    pub old_generation: u32,
    /// What must still hold for the exchange to happen.
    pub precondition: RotationPrecondition,
    /// The tokens to store (a new access token and a new refresh token).
    pub new_tokens: Vec<NewToken>,
    /// When the grant now expires.
    pub grant_expires_at: UnixTime,
    /// The time of the exchange.
    pub now: UnixTime,
    /// Whether the client has a grace period. Whether the grant has forked (a grace use left
    /// it a second unused refresh token, which the exchange must retire) storage reads from
    /// the grant itself, whatever the client's grace period is now; for a client with one it
    /// also looks when the grant records nothing (a fork older than the record, whose
    /// grace-used token was already deleted when the record was added).
    pub client_has_grace: bool,
}

/// The result of [`Rotation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationOutcome {
    /// The exchange happened.
    Rotated,
    /// The precondition failed: someone else used the token first, or the grant died.
    Lost,
    /// The client no longer has the secret the request authenticated with (or is gone):
    /// nothing changed.
    ClientChanged,
}
