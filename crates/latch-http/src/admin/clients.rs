//! `/admin/v1/tenants/{tenant}/clients[/{client_id}[/secret | /grants]]`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use latch_core::admin::{ClientSpec, SecretSpec};
use latch_core::audit::Killed;
use latch_core::client::{
    defaults, AccessTokenRevocation, AuthMethod, Client, GrantType, Introspects,
};
use latch_core::id::{ClientId, TenantId};
use latch_core::scope::Scope;
use latch_core::store::ClientPage;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{cursor, listing_query, next_cursor, origin, page_limit, Admin, JsonBody, Params};
use crate::error::ApiError;
use crate::tenant::named;
use crate::{no_store, AppState, Peer};

/// A client as the admin API shows it. The secret never appears.
#[derive(Serialize)]
pub(crate) struct ClientView {
    client_id: String,
    tenant: String,
    token_endpoint_auth_method: &'static str,
    grant_types: Vec<&'static str>,
    scope: String,
    redirect_uris: Vec<String>,
    access_token_ttl: u32,
    refresh_token_ttl: u32,
    rotation_grace_period: u32,
    access_token_revocation: &'static str,
    /// Which tokens it may introspect: `any` of its tenant, or its `own`.
    introspects: &'static str,
    created_at: i64,
    /// Declared in the configuration file, which alone changes or removes it.
    declared: bool,
}

impl From<&Client> for ClientView {
    fn from(c: &Client) -> Self {
        Self {
            client_id: c.id.to_string(),
            tenant: c.tenant.to_string(),
            token_endpoint_auth_method: c.auth_method.as_str(),
            grant_types: c.grant_types.iter().map(|g| g.as_str()).collect(),
            scope: c.scope.to_string(),
            redirect_uris: c.redirect_uris.clone(),
            access_token_ttl: c.access_token_ttl,
            refresh_token_ttl: c.refresh_token_ttl,
            rotation_grace_period: c.rotation_grace,
            access_token_revocation: c.access_token_revocation.as_str(),
            introspects: c.introspects.as_str(),
            created_at: c.created_at,
            declared: c.declared,
        }
    }
}

/// `POST …/clients` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewClient {
    client_id: String,
    client_secret: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    scope: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    access_token_ttl: Option<u32>,
    refresh_token_ttl: Option<u32>,
    rotation_grace_period: Option<u32>,
    access_token_revocation: Option<String>,
    introspects: Option<String>,
}

impl NewClient {
    fn into_spec(self, tenant: TenantId) -> Result<ClientSpec, latch_core::Error> {
        let auth_method = self
            .token_endpoint_auth_method
            .as_deref()
            .map_or(Ok(AuthMethod::ClientSecretBasic), AuthMethod::parse)?;
        let grant_types = match self.grant_types {
            None => GrantType::defaults_for(auth_method),
            Some(names) => GrantType::parse_list(&names)?,
        };
        Ok(ClientSpec {
            tenant,
            id: ClientId::parse(&self.client_id)?,
            auth_method,
            secret: self
                .client_secret
                .map_or(SecretSpec::Generate, SecretSpec::Plain),
            grant_types,
            scope: Scope::parse(self.scope.as_deref().unwrap_or(""))?,
            redirect_uris: self.redirect_uris,
            access_token_ttl: self.access_token_ttl.unwrap_or(defaults::ACCESS_TOKEN_TTL),
            refresh_token_ttl: self
                .refresh_token_ttl
                .unwrap_or(defaults::REFRESH_TOKEN_TTL),
            rotation_grace: self
                .rotation_grace_period
                .unwrap_or(defaults::ROTATION_GRACE),
            access_token_revocation: self.access_token_revocation.as_deref().map_or(
                Ok(AccessTokenRevocation::default()),
                AccessTokenRevocation::parse,
            )?,
            introspects: (self.introspects.as_deref())
                .map_or(Ok(Introspects::default()), Introspects::parse)?,
        })
    }
}

fn client_id_of(raw: &str) -> Result<ClientId, ApiError> {
    ClientId::parse(raw).map_err(|_| ApiError::not_found("no such client"))
}

pub(crate) async fn create(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Params(tenant): Params<String>,
    JsonBody(body): JsonBody<NewClient>,
) -> Result<Response, ApiError> {
    let spec = body.into_spec(named(&tenant)?)?;
    let (client, generated) = state.authority.create_client(spec).await?;
    let mut view = serde_json::to_value(ClientView::from(&client)).unwrap_or_default();
    if let (Some(secret), Some(obj)) = (generated, view.as_object_mut()) {
        // Shown once; only its hash is stored.
        obj.insert("client_secret".into(), secret.into());
    }
    Ok(no_store((StatusCode::CREATED, Json(view)).into_response()))
}

/// `GET …/clients?after=…&limit=…`: a page of the tenant's clients, by id; `next_after`
/// is the cursor for the next page (`null` once a page comes back short).
pub(crate) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Params(tenant): Params<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = listing_query(query.as_deref(), &["after", "limit"])?;
    let page = ClientPage {
        after: cursor(&query, "after", "a client id", ClientId::parse)?,
        limit: page_limit(&query)?,
    };
    let clients = state
        .authority
        .clients(&named(&tenant)?, Some(&page))
        .await?;
    let next_after = next_cursor(&clients, page.limit, |c| c.id.as_str());
    let views: Vec<ClientView> = clients.iter().map(ClientView::from).collect();
    Ok(Json(json!({ "clients": views, "next_after": next_after })))
}

pub(crate) async fn show(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Params((tenant, client_id)): Params<(String, String)>,
) -> Result<Json<ClientView>, ApiError> {
    let client = state
        .authority
        .client(&named(&tenant)?, &client_id_of(&client_id)?)
        .await?;
    Ok(Json(ClientView::from(&client)))
}

pub(crate) async fn remove(
    _: Admin,
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Params((tenant, client_id)): Params<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let killed = state
        .authority
        .delete_client(&named(&tenant)?, &client_id_of(&client_id)?, origin(peer))
        .await?;
    let mut body = grants_revoked(&client_id, killed);
    body["deleted"] = json!(true);
    Ok(Json(body))
}

/// `DELETE …/clients/{id}/grants`: revokes every grant of the client, which stays (a
/// compromised client's tokens, after its secret is rotated).
pub(crate) async fn revoke_grants(
    _: Admin,
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Params((tenant, client_id)): Params<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let killed = state
        .authority
        .revoke_client_grants(&named(&tenant)?, &client_id_of(&client_id)?, origin(peer))
        .await?;
    Ok(Json(grants_revoked(&client_id, killed)))
}

/// The answer to a revocation of every grant of a client (removed or not): what died.
fn grants_revoked(client_id: &str, killed: Killed) -> serde_json::Value {
    json!({
        "client_id": client_id,
        "revoked_grants": killed.grants,
        "revoked_tokens": killed.tokens,
    })
}

/// `POST …/clients/{id}/secret` body: a new secret, or none to generate one.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSecret {
    client_secret: Option<String>,
}

pub(crate) async fn rotate_secret(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Params((tenant, client_id)): Params<(String, String)>,
    JsonBody(body): JsonBody<NewSecret>,
) -> Result<Response, ApiError> {
    let chosen = body.client_secret.is_some();
    let secret = state
        .authority
        .rotate_secret(
            &named(&tenant)?,
            &client_id_of(&client_id)?,
            body.client_secret,
        )
        .await?;
    // A generated secret is shown once; a chosen one is not sent back (the caller has it,
    // and whatever logs responses need not), as when a client is registered.
    let answer = if chosen {
        json!({ "client_id": client_id, "rotated": true })
    } else {
        json!({ "client_id": client_id, "rotated": true, "client_secret": secret })
    };
    Ok(no_store(Json(answer).into_response()))
}
