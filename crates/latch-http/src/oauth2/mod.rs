//! The OAuth 2.0 endpoints, one file each, and what they share.

pub(crate) mod introspect;
pub(crate) mod metadata;
pub(crate) mod revoke;
pub(crate) mod token;

use std::sync::Mutex;

use axum::http::HeaderMap;
use latch_core::client::Client;
use latch_core::grant::TokenRecord;
use latch_core::id::TenantId;
use latch_core::revoke::TokenToRevoke;
use latch_core::secret::{Admission, Throttled};
use latch_core::{Credentials, IssuedTokens};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::credentials;
use crate::error::ApiError;
use crate::form::Form;
use crate::log_budget::LogBudget;
use crate::{AppState, Peer};

/// One client authentication in progress: credentials extracted and the rate limit
/// checked. Every OAuth route and profile authenticates through one of the functions below,
/// so this is the one place failures are rate-limited.
struct Attempt<'a> {
    state: &'a AppState,
    tenant: &'a TenantId,
    peer: Peer,
    presented: credentials::PresentedCredentials,
    /// The place reserved for verifying the presented secret ([`Admission`]), given back
    /// when the attempt ends, after its failure (if any) was counted: finished or dropped
    /// (its client hung up).
    reserved: Mutex<Option<[u8; 32]>>,
}

impl Admission for Attempt<'_> {
    fn admit(&self, fingerprint: &[u8; 32]) -> Result<(), Throttled> {
        let guessed = guessed_client(self.credentials());
        let now = self.state.authority.now();
        self.state
            .auth_limiter
            .reserve(self.tenant, guessed, self.peer.0, fingerprint, now)
            .map_err(Throttled)?;
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        // One verification per attempt: a second would have been reserved alone.
        if let Some(earlier) = reserved.replace(*fingerprint) {
            self.release(&earlier);
        }
        Ok(())
    }
}

impl Attempt<'_> {
    fn release(&self, fingerprint: &[u8; 32]) {
        let guessed = guessed_client(self.credentials());
        self.state
            .auth_limiter
            .release(self.tenant, guessed, self.peer.0, fingerprint);
    }

    /// Logs a failed authentication: with the client's id when a client has it, else with a
    /// fingerprint of the presented id alone. An id no client has may be what a client sent
    /// in its place by mistake (its secret, with Basic's fields swapped; a token), and
    /// neither may reach the logs. The fingerprint is keyed by a secret of this process, so
    /// that the logs cannot confirm a guessed secret offline (as a plain hash of a chosen,
    /// weak one would, at a hash's speed rather than argon2id's); it still groups repeated
    /// failures of one id until the process restarts.
    fn log_failure(&self, known: bool) {
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        static BUDGET: LogBudget = LogBudget::new();
        let Some(left_out) = BUDGET.admit() else {
            return;
        };
        let client_id = self.credentials().client_id();
        if known {
            tracing::info!(tenant = %self.tenant, client_id = %client_id.escape_debug(), left_out, "client authentication failed");
        } else {
            let key = KEY.get_or_init(rand::random);
            let digest = Sha256::new()
                .chain_update(key)
                .chain_update(client_id.as_bytes())
                .finalize();
            let fingerprint: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            tracing::info!(
                tenant = %self.tenant,
                client_id_fingerprint = %fingerprint,
                left_out,
                "client authentication failed: no client has the presented id"
            );
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let reserved = self.reserved.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(fingerprint) = reserved.take() {
            self.release(&fingerprint);
        }
    }
}

impl<'a> Attempt<'a> {
    fn start(
        state: &'a AppState,
        tenant: &'a TenantId,
        headers: &HeaderMap,
        form: &Form,
        peer: Peer,
    ) -> Result<Self, ApiError> {
        let presented = credentials::extract(headers, form)?;
        let guessed = guessed_client(&presented.credentials);
        let now = state.authority.now();
        if let Some(wait) = state.auth_limiter.blocked(tenant, guessed, peer.0, now) {
            return Err(ApiError::too_many_requests(wait));
        }
        Ok(Self {
            state,
            tenant,
            peer,
            presented,
            reserved: Mutex::new(None),
        })
    }

    fn credentials(&self) -> &Credentials {
        &self.presented.credentials
    }

    /// The attempt's answer; a failed authentication counts against the rate limit.
    fn finish<T>(&self, outcome: Result<T, latch_core::Error>) -> Result<T, ApiError> {
        outcome.map_err(|e| {
            let known = matches!(e, latch_core::Error::InvalidClient);
            if known || matches!(e, latch_core::Error::UnknownClient) {
                // Only a secret verified against a client's stored hash (admitted above: a
                // wrong secret is never in the verification cache) guessed at that client.
                // An id no client has, or a client without a secret, guesses nothing, and
                // counted under its id a burst of made-up ids would fill the limiter with
                // counters of their own (their address's counter still counts them).
                let verified = self
                    .reserved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some();
                let guessed = guessed_client(self.credentials()).filter(|_| verified);
                let now = self.state.authority.now();
                self.state
                    .auth_limiter
                    .failed(self.tenant, guessed, self.peer.0, now);
                self.log_failure(known);
            }
            ApiError::from(e).with_basic_challenge(self.presented.basic)
        })
    }
}

/// The client whose secret the credentials try, which its rate limit protects: none for a
/// public client's (an id alone), which guess nothing. Counting them against the id would let
/// anyone lock a public client (whose id ships with its application) out for every user, by
/// presenting a few secrets under its id; those attempts count against their address, and a
/// failure counts against the id only when a secret was verified against the client's hash
/// ([`Attempt::finish`]).
fn guessed_client(credentials: &Credentials) -> Option<&str> {
    match credentials {
        Credentials::Basic { id, .. } | Credentials::Post { id, .. } => Some(id),
        Credentials::Public { .. } => None,
    }
}

/// Extracts and checks the client's credentials.
pub(crate) async fn authenticate(
    state: &AppState,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
    peer: Peer,
) -> Result<Client, ApiError> {
    let attempt = Attempt::start(state, tenant, headers, form, peer)?;
    let outcome = state
        .authority
        .authenticate(tenant, attempt.credentials(), &attempt)
        .await;
    attempt.finish(outcome)
}

/// [`authenticate`], also looking up the `token` the client presents in the same read of
/// the store (introspection needs both).
pub(crate) async fn authenticate_presenting(
    state: &AppState,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
    peer: Peer,
    token: &str,
) -> Result<(Client, Option<TokenRecord>), ApiError> {
    let attempt = Attempt::start(state, tenant, headers, form, peer)?;
    let outcome = state
        .authority
        .authenticate_presenting(tenant, attempt.credentials(), token, &attempt)
        .await;
    attempt.finish(outcome)
}

/// [`authenticate`], for a client presenting `token` for revocation.
pub(crate) async fn authenticate_revoking(
    state: &AppState,
    tenant: &TenantId,
    headers: &HeaderMap,
    form: &Form,
    peer: Peer,
    token: &str,
) -> Result<(Client, Option<TokenToRevoke>), ApiError> {
    let attempt = Attempt::start(state, tenant, headers, form, peer)?;
    let outcome = state
        .authority
        .authenticate_revoking(tenant, attempt.credentials(), token, &attempt)
        .await;
    attempt.finish(outcome)
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Serialize)]
pub(crate) struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "String::is_empty")]
    scope: String,
    /// Only in admin responses: the grant, so a backend can revoke it later.
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_id: Option<&'a str>,
}

impl<'a> TokenResponse<'a> {
    pub(crate) fn new(issued: &'a IssuedTokens, with_grant_id: bool) -> Self {
        Self {
            access_token: issued.access_token.expose(),
            token_type: "Bearer",
            expires_in: issued.expires_in,
            refresh_token: issued.refresh_token.as_ref().map(|t| t.expose()),
            scope: issued.scope.to_string(),
            grant_id: with_grant_id.then(|| issued.grant_id.as_str()),
        }
    }
}
