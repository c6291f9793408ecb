//! The token endpoint's grant types, one file each, and the minting they share.

mod client_credentials;
mod refresh;

use crate::authority::Authority;
use crate::client::{Client, GrantType};
use crate::clock::UnixTime;
use crate::error::Error;
use crate::grant::{Grant, NewToken};
use crate::id::{GrantId, Subject};
use crate::scope::Scope;
use crate::token::{TokenKind, TokenSecret};

/// Tokens just issued, in clear, on their way to the client (RFC 6749 §5.1).
#[derive(Debug)]
pub struct IssuedTokens {
    /// The grant they belong to.
    pub grant_id: GrantId,
    /// The access token.
    pub access_token: TokenSecret,
    /// Its lifetime in seconds.
    pub expires_in: u32,
    /// The new refresh token, if the grant has one.
    pub refresh_token: Option<TokenSecret>,
    /// The access token's scope.
    pub scope: Scope,
}

/// Mints a token and the record that stores its hash.
fn mint(
    kind: TokenKind,
    scope: &Scope,
    now: UnixTime,
    ttl: u32,
    generation: u32,
) -> (TokenSecret, NewToken) {
    let secret = TokenSecret::mint(kind);
    let record = NewToken {
        hash: secret.hash(),
        kind,
        scope: scope.clone(),
        issued_at: now,
        expires_at: now + i64::from(ttl),
        generation,
    };
    (secret, record)
}

impl Authority {
    /// Creates a grant for `subject` and stores it with an access token and, when
    /// `with_refresh`, a refresh token. Used by `client_credentials` and the admin API.
    pub(crate) async fn new_grant(
        &self,
        client: &Client,
        subject: Subject,
        scope: Scope,
        with_refresh: bool,
    ) -> Result<IssuedTokens, Error> {
        let now = self.clock.now();
        let access_ttl = if with_refresh {
            client.access_token_ttl_beside_refresh()
        } else {
            client.access_token_ttl
        };
        let (access, access_rec) = mint(TokenKind::Access, &scope, now, access_ttl, 0);
        let mut records = vec![access_rec];
        let mut expires_at = now + i64::from(access_ttl);
        let refresh = with_refresh.then(|| {
            let (refresh, refresh_rec) =
                mint(TokenKind::Refresh, &scope, now, client.refresh_token_ttl, 0);
            expires_at = expires_at.max(refresh_rec.expires_at);
            records.push(refresh_rec);
            refresh
        });
        let grant = Grant {
            id: GrantId::generate(),
            tenant: client.tenant.clone(),
            client_id: client.id.clone(),
            subject,
            scope: scope.clone(),
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        if !self
            .store
            .issue(&grant, &records, client.secret.as_ref())
            .await?
        {
            // The client was removed (or its tenant, or it was created again, or its secret
            // changed) after it was read: nothing was stored.
            return Err(Error::InvalidClient);
        }
        Ok(IssuedTokens {
            grant_id: grant.id,
            access_token: access,
            expires_in: access_ttl,
            refresh_token: refresh,
            scope,
        })
    }
}

/// Checks that the client may use `grant`.
fn require_grant_type(client: &Client, grant: GrantType) -> Result<(), Error> {
    if client.allows(grant) {
        Ok(())
    } else {
        Err(Error::UnauthorizedClient(
            format!("this client may not use the {} grant", grant.as_str()).into(),
        ))
    }
}
