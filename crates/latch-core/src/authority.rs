//! [`Authority`]: the entry point of the domain. It holds storage, the clock and the secret
//! verifier; each OAuth flow adds its methods in its own module (`grant/`, `revoke.rs`,
//! `introspect.rs`, `admin.rs`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tracing::Instrument;

use crate::audit::{self, AuditContext, Killed, Origin, Reason};
use crate::cleanup::CleanupStats;
use crate::client::Client;
use crate::clock::{Clock, UnixTime};
use crate::error::{Error, StoreError};
use crate::grant::{Revocation, TokenRecord};
use crate::id::{ClientId, TenantId};
use crate::secret::{Admission, SecretVerifier, Throttled};
use crate::store::Storage;
use crate::token::PresentedToken;

/// Client credentials as presented, before they are checked. Extracting them from a request
/// (Basic header, form body) is the HTTP layer's job; deciding whether they are good is ours.
#[derive(Clone)]
pub enum Credentials {
    /// `client_secret_basic`: id and secret from the `Authorization: Basic` header, already
    /// form-decoded (RFC 6749 §2.3.1).
    Basic {
        /// The client id.
        id: String,
        /// The secret.
        secret: String,
    },
    /// `client_secret_post`: id and secret from the form body.
    Post {
        /// The client id.
        id: String,
        /// The secret.
        secret: String,
    },
    /// `none`: a public client names itself with `client_id` and proves nothing.
    Public {
        /// The client id.
        id: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { id, .. } => write!(f, "Basic({id:?}, <secret>)"),
            Credentials::Post { id, .. } => write!(f, "Post({id:?}, <secret>)"),
            Credentials::Public { id } => write!(f, "Public({id:?})"),
        }
    }
}

impl Credentials {
    /// The client id the caller claims.
    pub fn client_id(&self) -> &str {
        match self {
            Credentials::Basic { id, .. }
            | Credentials::Post { id, .. }
            | Credentials::Public { id } => id,
        }
    }
}

/// The OAuth 2.0 authorization server's domain logic.
pub struct Authority {
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) secrets: SecretVerifier,
    pub(crate) cleanup: CleanupStats,
    /// How long audit records are kept, in seconds; `None`: for ever.
    pub(crate) audit_retention: Option<UnixTime>,
    /// Each tenant's `scopes_supported`, for the metadata document.
    pub(crate) scopes: crate::metadata::ScopesCache,
    /// Work a request started that goes on when its caller hangs up (a client's grants
    /// revoked chunk after chunk), which a stop waits for ([`Authority::finish_background`]).
    pub(crate) background: tokio_util::task::TaskTracker,
}

impl Authority {
    /// An authority over the given storage and clock.
    pub fn new(store: Arc<dyn Storage>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            secrets: SecretVerifier::new(),
            cleanup: CleanupStats::default(),
            audit_retention: None,
            scopes: Default::default(),
            background: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits for what requests left running when their callers hung up (a client's grants
    /// revoked chunk after chunk): a server runs it as it stops, once it serves no more,
    /// before it closes the store (whose last checkpoint would otherwise race that work's
    /// writes, and the process's end cut it off part-way). Work started after it is waited
    /// for by a later call.
    pub async fn finish_background(&self) {
        self.background.close();
        self.background.wait().await;
        self.background.reopen();
    }

    /// Runs a write that revokes many grants (on SQLite, chunk after chunk) on a task of its
    /// own, so that it runs to its end even when its caller goes away, a client hanging up
    /// or a proxy timing out: the rest of a removed or compromised client's grants, or of a
    /// subject's logged out everywhere, would live on, and a removed client stay registered,
    /// until the next start finished it. A stopping
    /// server waits for it ([`Authority::finish_background`]). It runs within the request's
    /// span (its method and path, at debug level), as it would on the request's own task.
    pub(crate) async fn to_the_end<T: Send + 'static>(
        &self,
        write: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let running = self
            .background
            .spawn(write.instrument(tracing::Span::current()));
        match running.await {
            Ok(done) => done,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only a runtime shutting down cancels it.
                Err(_) => Err(StoreError::Unavailable("shutting down".into())),
            },
        }
    }

    /// Whether work a request left running when its caller hung up is still under way.
    pub fn background_running(&self) -> bool {
        !self.background.is_empty()
    }

    /// Keeps audit records for `days` days: the clean-up deletes older ones. `None` (the
    /// default) keeps them for ever.
    pub fn with_audit_retention(mut self, days: Option<u32>) -> Self {
        self.audit_retention = days.map(|d| UnixTime::from(d) * 86_400);
        self
    }

    /// The storage, for operations outside the OAuth flows (readiness, tenants).
    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// Now, by the authority's clock.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// The audit context of a revocation happening now.
    pub(crate) fn audit_context(
        &self,
        tenant: &TenantId,
        actor: &str,
        origin: Origin,
        reason: Reason,
    ) -> AuditContext {
        AuditContext::new(
            tenant.clone(),
            actor,
            origin.route,
            reason,
            origin.address,
            self.clock.now(),
        )
    }

    /// Applies a revocation, durably and audited, and emits its audit log event. Every
    /// revocation in the domain goes through here.
    pub(crate) async fn revoke_audited(
        &self,
        revocation: &Revocation,
        context: &AuditContext,
    ) -> Result<Killed, Error> {
        let event = self.store.revoke(revocation, context).await?;
        if let Some(e) = &event {
            audit::log(e);
        }
        Ok(audit::killed(&event))
    }

    /// Authenticates a client of `tenant`. Every failure is the same `invalid_client`, so the
    /// answer does not tell an unknown client from a wrong secret.
    ///
    /// A confidential client may present its secret by Basic or in the body (both prove
    /// possession); a public client may only name itself; a confidential client that
    /// presents no secret, and a public client that presents one, are refused.
    pub async fn authenticate(
        &self,
        tenant: &TenantId,
        credentials: &Credentials,
        admission: &dyn Admission,
    ) -> Result<Client, Error> {
        let id = ClientId::parse(credentials.client_id()).map_err(|_| Error::UnknownClient)?;
        let client = self.store.client(tenant, &id).await?;
        self.check_credentials(client, credentials, admission).await
    }

    /// [`Authority::authenticate`], plus the token the client presents, looked up in the
    /// same read of the store. The token is `None` when it is malformed or unknown; what it
    /// may reveal, and to whom, is the caller's (introspection's) decision.
    pub async fn authenticate_presenting(
        &self,
        tenant: &TenantId,
        credentials: &Credentials,
        token: &str,
        admission: &dyn Admission,
    ) -> Result<(Client, Option<TokenRecord>), Error> {
        let id = ClientId::parse(credentials.client_id()).map_err(|_| Error::UnknownClient)?;
        let (client, record) = match PresentedToken::parse(token) {
            Some(presented) => {
                self.store
                    .client_and_token(tenant, &id, &presented.hash)
                    .await?
            }
            None => (self.store.client(tenant, &id).await?, None),
        };
        Ok((
            self.check_credentials(client, credentials, admission)
                .await?,
            record,
        ))
    }

    pub(crate) async fn check_credentials(
        &self,
        client: Option<Client>,
        credentials: &Credentials,
        admission: &dyn Admission,
    ) -> Result<Client, Error> {
        let client = client.ok_or(Error::UnknownClient)?;
        let ok = match credentials {
            Credentials::Basic { secret, .. } | Credentials::Post { secret, .. } => {
                client.is_confidential()
                    && self
                        .secrets
                        .verify(&client, secret, admission)
                        .await
                        .map_err(|Throttled(wait)| Error::Throttled(wait))?
            }
            Credentials::Public { .. } => !client.is_confidential(),
        };
        if ok {
            Ok(client)
        } else {
            Err(Error::InvalidClient)
        }
    }
}
