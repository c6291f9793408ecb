//! The `client_credentials` grant (RFC 6749 §4.4).

use super::{require_grant_type, IssuedTokens};
use crate::authority::Authority;
use crate::client::{Client, GrantType};
use crate::error::Error;
use crate::id::Subject;
use crate::scope::Scope;

impl Authority {
    /// Issues an access token to a confidential client acting on its own behalf. No refresh
    /// token is issued (§4.4.3: "A refresh token SHOULD NOT be included").
    pub async fn client_credentials(
        &self,
        client: &Client,
        requested: Option<&Scope>,
    ) -> Result<IssuedTokens, Error> {
        require_grant_type(client, GrantType::ClientCredentials)?;
        if !client.is_confidential() {
            // §4.4: "MUST only be used by confidential clients".
            return Err(Error::UnauthorizedClient(
                "client_credentials requires a confidential client".into(),
            ));
        }
        let scope = Scope::narrow(&client.scope, requested)?;
        self.new_grant(client, Subject::of_client(&client.id), scope, false)
            .await
    }
}
