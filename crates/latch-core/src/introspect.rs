//! Token introspection (RFC 7662).

use crate::authority::Authority;
use crate::client::{Client, Introspects};
use crate::clock::UnixTime;
use crate::error::Error;
use crate::grant::TokenRecord;
use crate::id::{ClientId, GrantId, Subject};
use crate::scope::Scope;
use crate::token::TokenKind;

/// What introspection reveals about an active token. An inactive token reveals nothing.
#[derive(Clone, Debug)]
pub struct ActiveToken {
    /// Access or refresh.
    pub kind: TokenKind,
    /// Its scope.
    pub scope: Scope,
    /// The client it was issued to.
    pub client_id: ClientId,
    /// The resource owner.
    pub subject: Subject,
    /// Expiry.
    pub exp: UnixTime,
    /// Issue time.
    pub iat: UnixTime,
    /// A public identifier of this token.
    pub jti: String,
    /// Its grant.
    pub grant_id: GrantId,
}

impl Authority {
    /// Introspects a token for an authenticated `caller`: `record` is the presented token
    /// as [`Authority::authenticate_presenting`] found it (`None`: malformed or unknown).
    /// Only confidential clients may introspect, and only tokens of their own tenant are
    /// ever active; to a client registered to introspect its own tokens alone
    /// ([`Introspects::Own`]), only those.
    ///
    /// `Ok(None)` is "inactive". A storage failure never reaches here as "inactive" (the
    /// read that found `record` fails with an `Err` instead): answering inactive because the
    /// database hiccupped would log every user out.
    pub fn introspect(
        &self,
        caller: &Client,
        record: Option<TokenRecord>,
    ) -> Result<Option<ActiveToken>, Error> {
        if !caller.is_confidential() {
            return Err(Error::InvalidClient);
        }
        let Some(record) = record else {
            return Ok(None);
        };
        if record.tenant != caller.tenant || !record.is_active(self.clock.now()) {
            return Ok(None);
        }
        // Another client's token, to one that may read only its own: as if unknown, so that
        // it learns nothing of which tokens exist.
        if caller.introspects == Introspects::Own && record.client_id != caller.id {
            return Ok(None);
        }
        Ok(Some(ActiveToken {
            kind: record.kind,
            jti: record.hash.jti(),
            scope: record.scope,
            client_id: record.client_id,
            subject: record.subject,
            exp: record.expires_at,
            iat: record.issued_at,
            grant_id: record.grant_id,
        }))
    }
}
