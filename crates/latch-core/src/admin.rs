//! Operations for operators and trusted first-party backends: client management, grants
//! issued directly to a subject, and revocation by grant or by subject.

use crate::audit::{self, AuditEvent, AuditPage, AuditQuery, Killed, Origin, Reason};
use crate::authority::Authority;
use crate::client::{
    AccessTokenRevocation, AuthMethod, Client, GrantType, Introspects, SecretHash,
};
use crate::error::{Error, StoreError};
use crate::grant::{Grant, Revocation};
use crate::grant_flow::IssuedTokens;
use crate::id::{ClientId, GrantId, Subject, TenantId};
use crate::scope::Scope;
use crate::secret::generate_secret;
use crate::store::{ClientPage, GrantPage, TenantPage};

/// The actor recorded for operator actions.
const ADMIN: &str = "admin";

/// A client to register. Missing secrets of confidential clients are generated.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// The tenant.
    pub tenant: TenantId,
    /// The client id.
    pub id: ClientId,
    /// How it authenticates.
    pub auth_method: AuthMethod,
    /// The secret: in clear (it will be hashed), already hashed, or none.
    pub secret: SecretSpec,
    /// Grant types it may use.
    pub grant_types: Vec<GrantType>,
    /// Its widest scope.
    pub scope: Scope,
    /// Redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Access token lifetime in seconds.
    pub access_token_ttl: u32,
    /// Refresh token lifetime in seconds.
    pub refresh_token_ttl: u32,
    /// Rotation grace in seconds.
    pub rotation_grace: u32,
    /// What revoking one of its access tokens kills.
    pub access_token_revocation: AccessTokenRevocation,
    /// Which tokens it may introspect.
    pub introspects: Introspects,
}

/// How a client's secret is given.
#[derive(Clone)]
pub enum SecretSpec {
    /// Generate one and return it once.
    Generate,
    /// This secret, in clear.
    Plain(String),
    /// This argon2id hash (from a configuration file).
    Hashed(SecretHash),
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecretSpec::Generate => "Generate",
            SecretSpec::Plain(_) => "Plain(<secret>)",
            SecretSpec::Hashed(_) => "Hashed(<argon2id>)",
        })
    }
}

impl Authority {
    async fn require_tenant(&self, tenant: &TenantId) -> Result<(), Error> {
        if self.store.tenant_exists(tenant).await? {
            Ok(())
        } else {
            Err(Error::NotFound(format!("no tenant {tenant}").into()))
        }
    }

    /// Builds a client from a spec; returns it and the secret in clear when one was
    /// generated or given in clear.
    async fn build_client(
        &self,
        spec: ClientSpec,
        declared: bool,
    ) -> Result<(Client, Option<String>), Error> {
        let (secret, plain) = match (spec.auth_method.is_confidential(), spec.secret) {
            (false, SecretSpec::Generate) => (None, None),
            (false, _) => {
                return Err(Error::invalid_request(
                    "a public client (token_endpoint_auth_method none) cannot have a secret",
                ))
            }
            (true, SecretSpec::Generate) => {
                let s = generate_secret();
                (Some(self.secrets.hash(&s).await), Some(s))
            }
            (true, SecretSpec::Plain(s)) => {
                if s.is_empty() {
                    return Err(Error::invalid_request("client_secret is empty"));
                }
                (Some(self.secrets.hash(&s).await), Some(s))
            }
            (true, SecretSpec::Hashed(h)) => (Some(h), None),
        };
        if spec.grant_types.is_empty() {
            return Err(Error::invalid_request("grant_types is empty"));
        }
        let client = Client {
            tenant: spec.tenant,
            id: spec.id,
            secret,
            auth_method: spec.auth_method,
            grant_types: spec.grant_types,
            scope: spec.scope,
            redirect_uris: spec.redirect_uris,
            access_token_ttl: spec.access_token_ttl,
            refresh_token_ttl: spec.refresh_token_ttl,
            rotation_grace: spec.rotation_grace,
            access_token_revocation: spec.access_token_revocation,
            introspects: spec.introspects,
            created_at: self.clock.now(),
            declared,
        };
        client.validate()?;
        Ok((client, plain))
    }

    /// Registers a new client. Returns it with the secret in clear if one was generated (it
    /// is shown once and never stored).
    pub async fn create_client(&self, spec: ClientSpec) -> Result<(Client, Option<String>), Error> {
        self.require_tenant(&spec.tenant).await?;
        spec.id.check_new()?;
        let generated = matches!(spec.secret, SecretSpec::Generate);
        let (client, plain) = self.build_client(spec, false).await?;
        let created = self.store.create_client(&client).await;
        self.scopes.forget(&client.tenant);
        match created {
            Ok(()) => Ok((client, plain.filter(|_| generated))),
            Err(StoreError::Conflict) => {
                // A constraint failed: if the tenant was removed since it was found (the
                // client's foreign key), the tenant is what is missing.
                self.require_tenant(&client.tenant).await?;
                Err(Error::Conflict(
                    format!("client {} already exists", client.id).into(),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Registers or replaces a client declared in the configuration file, and marks it
    /// declared ([`Client::declared`]).
    pub async fn declare_client(&self, spec: ClientSpec) -> Result<Client, Error> {
        self.require_tenant(&spec.tenant).await?;
        // A client declared before ids were so checked is declared again as it is: refusing
        // it would stop every start.
        if self.store.client(&spec.tenant, &spec.id).await?.is_none() {
            spec.id.check_new()?;
        }
        let (client, _) = self.build_client(spec, true).await?;
        let upserted = self.store.upsert_client(&client).await;
        self.scopes.forget(&client.tenant);
        if let Err(e) = upserted {
            if matches!(e, StoreError::Conflict) {
                // As in `create_client`: a tenant removed since it was found.
                self.require_tenant(&client.tenant).await?;
            }
            return Err(e.into());
        }
        self.secrets.forget(&client.tenant, &client.id);
        Ok(client)
    }

    /// Once the configuration file's clients are declared: every stored client marked
    /// declared that the file no longer lists (`declared`) becomes an ordinary client, kept
    /// with its grants and from then on managed through the admin API or the CLI. Returns
    /// those clients. Removing a client (and revoking its grants) because a file stopped
    /// naming it would turn an editing slip into a mass sign-out.
    pub async fn undeclare_clients_except(
        &self,
        declared: &[(TenantId, ClientId)],
    ) -> Result<Vec<(TenantId, ClientId)>, Error> {
        Ok(self.store.undeclare_clients_except(declared).await?)
    }

    /// One client.
    pub async fn client(&self, tenant: &TenantId, id: &ClientId) -> Result<Client, Error> {
        self.require_tenant(tenant).await?;
        self.store
            .client(tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no client {id}").into()))
    }

    /// A tenant's clients, sorted by id: every one, or a page.
    pub async fn clients(
        &self,
        tenant: &TenantId,
        page: Option<&ClientPage>,
    ) -> Result<Vec<Client>, Error> {
        self.require_tenant(tenant).await?;
        Ok(self.store.list_clients(tenant, page).await?)
    }

    /// Replaces a confidential client's secret (generated when `None`) and returns the new
    /// secret in clear. The old secret stops working at once.
    pub async fn rotate_secret(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        new_secret: Option<String>,
    ) -> Result<String, Error> {
        let client = self.client(tenant, id).await?;
        refuse_declared(&client)?;
        let Some(replaced) = client.secret.as_ref().filter(|_| client.is_confidential()) else {
            return Err(Error::invalid_request("a public client has no secret"));
        };
        let secret = match new_secret {
            Some(s) if s.is_empty() => {
                return Err(Error::invalid_request("client_secret is empty"))
            }
            Some(s) => s,
            None => generate_secret(),
        };
        let hash = self.secrets.hash(&secret).await;
        if !self
            .store
            .set_client_secret(tenant, id, replaced, &hash)
            .await?
        {
            return Err(self.why_unchanged(tenant, id).await);
        }
        self.secrets.forget(tenant, id);
        Ok(secret)
    }

    /// Removes a client and revokes every grant it holds. Returns what died (nothing, when
    /// another caller removing it too wrote the record).
    pub async fn delete_client(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        origin: Origin,
    ) -> Result<Killed, Error> {
        refuse_declared(&self.client(tenant, id).await?)?;
        // The record names the client as its subject (a client's own subject, which no
        // user's equals), so that `client_subject=ID` finds its removal.
        let context = self
            .audit_context(tenant, ADMIN, origin, Reason::ClientRemoved)
            .about(None, Some(&Subject::of_client(id)));
        let (store, removed, removed_id) = (self.store.clone(), tenant.clone(), id.clone());
        let deleted = self
            .to_the_end(async move {
                logged(store.delete_client(&removed, &removed_id, &context).await)
            })
            .await;
        self.scopes.forget(tenant);
        let event = match deleted {
            Ok(Some(event)) => event,
            // Gone before it began, or given up because a start declared the client
            // meanwhile (the store's `Conflict`): said as what the client is now.
            Ok(None) | Err(StoreError::Conflict) => {
                return Err(self.why_unchanged(tenant, id).await)
            }
            Err(e) => return Err(e.into()),
        };
        self.secrets.forget(tenant, id);
        Ok(audit::killed(&event))
    }

    /// Revokes every grant issued to a client, which stays: for a compromised client, with
    /// its secret rotated ([`rotate_secret`](Self::rotate_secret)) first. A client the
    /// configuration declares may have its grants revoked too (it changes nothing the file
    /// says). Recorded as an operator's revocation (`admin`) naming the client as its subject,
    /// as its removal is, so that the trail's `client_subject=ID` finds it. Returns what died.
    pub async fn revoke_client_grants(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        origin: Origin,
    ) -> Result<Killed, Error> {
        self.client(tenant, id).await?;
        let context = self
            .audit_context(tenant, ADMIN, origin, Reason::Admin)
            .about(None, Some(&Subject::of_client(id)));
        // Each record is logged as it commits, so one that a later chunk's failure cuts
        // short is logged all the same.
        let (store, tenant, id) = (self.store.clone(), tenant.clone(), id.clone());
        let revoked = self.to_the_end(async move {
            let mut killed = Killed::default();
            let mut recorded = |event: AuditEvent| {
                audit::log(&event);
                killed.grants += event.grants;
                killed.tokens += event.tokens;
            };
            let done = store.revoke_client_grants(&tenant, &id, &context, &mut recorded);
            done.await.map(|()| killed)
        });
        Ok(revoked.await?)
    }

    /// Finishes the removals of clients and tenants, and the revocations of a client's
    /// grants, that a crash (a stop, for a revocation) left under way
    /// ([`ClientStore::finish_interrupted_removals`](crate::store::ClientStore::finish_interrupted_removals)),
    /// recording each in the log as any is. A server runs it as it starts.
    pub async fn finish_interrupted_removals(&self) -> Result<usize, Error> {
        let events = (self.store)
            .finish_interrupted_removals(self.clock.now())
            .await?;
        for event in &events {
            audit::log(event);
        }
        if !events.is_empty() {
            self.secrets.clear();
        }
        Ok(events.len())
    }

    /// Issues tokens for a subject that a trusted backend signed in itself. A refresh token is
    /// included when the client may use the `refresh_token` grant.
    pub async fn issue_for_subject(
        &self,
        tenant: &TenantId,
        client_id: &ClientId,
        subject: Subject,
        requested: Option<&Scope>,
    ) -> Result<IssuedTokens, Error> {
        let mut client = self.client(tenant, client_id).await?;
        // The write stores the grant only if the client is still as read (its secret too,
        // which matters to a client's own token requests). One changed in between (removed,
        // or its secret rotated) is read again once: gone, it is a `404`; changed once more,
        // a `409` to retry.
        for again in [true, false] {
            let scope = Scope::narrow(&client.scope, requested)?;
            let with_refresh = client.allows(GrantType::RefreshToken);
            match self
                .new_grant(&client, subject.clone(), scope, with_refresh)
                .await
            {
                Err(Error::InvalidClient) if again => {
                    client = self.client(tenant, client_id).await?;
                }
                Err(Error::InvalidClient) => break,
                other => return other,
            }
        }
        Err(Error::Conflict(
            format!("client {client_id} changed while the grant was issued; try again").into(),
        ))
    }

    /// A page of a subject's live grants, newest first.
    pub async fn live_grants(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        page: &GrantPage,
    ) -> Result<Vec<Grant>, Error> {
        self.require_tenant(tenant).await?;
        Ok(self
            .store
            .live_grants(tenant, subject, self.clock.now(), page)
            .await?)
    }

    /// Revokes one grant. `NotFound` when the tenant has no such grant; revoking a dead grant
    /// again succeeds and kills nothing.
    pub async fn revoke_grant(
        &self,
        tenant: &TenantId,
        id: &GrantId,
        origin: Origin,
    ) -> Result<Killed, Error> {
        self.require_tenant(tenant).await?;
        let grant = self
            .store
            .grant(tenant, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no grant {id}").into()))?;
        let context = self
            .audit_context(tenant, ADMIN, origin, Reason::Admin)
            .about(Some(id), Some(&grant.subject));
        self.revoke_audited(&Revocation::Grant(id.clone()), &context)
            .await
    }

    /// Revokes every grant of a subject ("log out everywhere"). Returns what died.
    pub async fn logout_everywhere(
        &self,
        tenant: &TenantId,
        subject: &Subject,
        origin: Origin,
    ) -> Result<Killed, Error> {
        self.require_tenant(tenant).await?;
        let context = self
            .audit_context(tenant, ADMIN, origin, Reason::LogoutEverywhere)
            .about(None, Some(subject));
        let revocation = Revocation::Subject {
            tenant: tenant.clone(),
            subject: subject.clone(),
        };
        // On SQLite, a subject holding many grants is logged out chunk after chunk; logged
        // as it ends, even when its caller has gone.
        let store = self.store.clone();
        let event = self
            .to_the_end(async move {
                let event = store.revoke(&revocation, &context).await?;
                if let Some(e) = &event {
                    audit::log(e);
                }
                Ok(event)
            })
            .await?;
        Ok(audit::killed(&event))
    }

    /// A page of a tenant's audit trail.
    pub async fn audit_events(
        &self,
        tenant: &TenantId,
        query: &AuditQuery,
    ) -> Result<AuditPage, Error> {
        // The trail outlives what it records: a removed tenant's (with the removal's record,
        // when it revoked something) stays readable; only a tenant id with neither a tenant nor a trail is unknown.
        if !self.store.tenant_exists(tenant).await? {
            let any = AuditQuery {
                subject: None,
                since: None,
                after: None,
                limit: 1,
            };
            if self
                .store
                .audit_events(tenant, &any)
                .await?
                .events
                .is_empty()
            {
                return Err(Error::NotFound(format!("no tenant {tenant}").into()));
            }
        }
        Ok(self.store.audit_events(tenant, query).await?)
    }
}

impl Authority {
    /// Tenants by id: a page of them, or all.
    pub async fn tenants(&self, page: Option<&TenantPage>) -> Result<Vec<TenantId>, Error> {
        Ok(self.store.list_tenants(page).await?)
    }

    /// Creates a tenant; `Conflict` if it exists.
    pub async fn create_tenant(&self, tenant: &TenantId) -> Result<(), Error> {
        match self.store.create_tenant(tenant, self.clock.now()).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict) => Err(Error::Conflict(
                format!("tenant {tenant} already exists").into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a tenant unless it exists (declarative configuration).
    pub async fn ensure_tenant(&self, tenant: &TenantId) -> Result<(), Error> {
        match self.create_tenant(tenant).await {
            Err(Error::Conflict(_)) => Ok(()),
            other => other,
        }
    }

    /// Removes a tenant: every grant in it is revoked and every client removed (as the
    /// store's `delete_tenant` says). The `default` tenant cannot be removed.
    pub async fn delete_tenant(&self, tenant: &TenantId, origin: Origin) -> Result<(), Error> {
        if tenant.as_str() == TenantId::DEFAULT {
            return Err(Error::invalid_request(
                "the default tenant cannot be removed",
            ));
        }
        let holds_declared = |names: &str| {
            Error::Conflict(
                format!(
                    "tenant {tenant} holds clients declared in the configuration file{names}: \
                     remove them there first (the next start would register them again, or \
                     fail to)"
                )
                .into(),
            )
        };
        // Named here; the store checks again in its write (a start may declare one since).
        let declared: Vec<String> = (self.store.list_clients(tenant, None).await?.into_iter())
            .filter(|c| c.declared)
            .map(|c| c.id.to_string())
            .collect();
        if !declared.is_empty() {
            return Err(holds_declared(&format!(" ({})", declared.join(", "))));
        }
        let context = self.audit_context(tenant, ADMIN, origin, Reason::TenantRemoved);
        let (store, removed) = (self.store.clone(), tenant.clone());
        let deleted = self
            .to_the_end(async move { logged(store.delete_tenant(&removed, &context).await) })
            .await;
        self.scopes.forget(tenant);
        match deleted {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::NotFound(format!("no tenant {tenant}").into())),
            Err(StoreError::Conflict) => return Err(holds_declared("")),
            Err(e) => return Err(e.into()),
        }
        // Its clients are gone; their cached verifications can never match again, but drop
        // them rather than wait for eviction.
        self.secrets.clear();
        Ok(())
    }
}

impl Authority {
    /// Why a write the store refused left a client unchanged: it is gone, or the
    /// configuration declared it since it was read (a node starting with a new file).
    async fn why_unchanged(&self, tenant: &TenantId, id: &ClientId) -> Error {
        match self.store.client(tenant, id).await {
            Ok(Some(client)) => refuse_declared(&client).err().unwrap_or_else(|| {
                Error::Conflict(format!("client {id} changed during the request; retry").into())
            }),
            Ok(None) => Error::NotFound(format!("no client {id}").into()),
            Err(e) => e.into(),
        }
    }
}

/// A client declared in the configuration file is changed or removed only there: the next
/// start would write it back as the file says.
fn refuse_declared(client: &Client) -> Result<(), Error> {
    if client.declared {
        return Err(Error::Conflict(
            format!(
                "client {} is declared in the configuration file: change or remove it there \
                 (a change made here would be undone at the next start)",
                client.id
            )
            .into(),
        ));
    }
    Ok(())
}

/// A removal's outcome, its audit record (if it wrote one) logged first: on the removal's
/// own task, so that it is logged even when the caller has gone.
fn logged(
    removed: Result<Option<Option<AuditEvent>>, StoreError>,
) -> Result<Option<Option<AuditEvent>>, StoreError> {
    if let Ok(Some(Some(e))) = &removed {
        audit::log(e);
    }
    removed
}
