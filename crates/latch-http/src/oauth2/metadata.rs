//! `GET /.well-known/oauth-authorization-server[{issuer path}][/tenants/{tenant}]` (RFC 8414).
//! A tenant's metadata sits at the well-known path with its issuer's path appended (§3).

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use latch_core::client::GrantType;
use serde::Serialize;

use crate::error::ApiError;
use crate::tenant::Tenant;
use crate::AppState;

#[derive(Serialize)]
pub(crate) struct Metadata {
    issuer: String,
    token_endpoint: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    grant_types_supported: Vec<&'static str>,
    /// latch has no authorization endpoint, so no response type. Sent empty all the same,
    /// knowingly against RFC 8414 §3.2's "Claims with zero elements MUST be omitted": §2
    /// makes this one REQUIRED, the two cannot both hold here, and clients that parse it
    /// fail without it. (Erratum 7793, reported, would let it be left out.)
    response_types_supported: [&'static str; 0],
    /// Sorted, each once; left out when the tenant's clients have no scope (RFC 8414 §3.2:
    /// "Claims with zero elements MUST be omitted").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes_supported: Vec<String>,
    token_endpoint_auth_methods_supported: [&'static str; 3],
    revocation_endpoint_auth_methods_supported: [&'static str; 3],
    introspection_endpoint_auth_methods_supported: [&'static str; 2],
}

/// Where the metadata of an issuer without a path is (RFC 8414 §3).
const WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";

/// The paths the metadata is served at, for an issuer whose path is `issuer_path`: the
/// well-known path with the issuer's path appended (RFC 8414 §3), then, for an issuer with a
/// path, the well-known path alone, as before there was a path. For the default tenant that
/// second one is also what reaches latch behind a proxy that strips the issuer's path when a
/// client appends the well-known path to the issuer instead (the legacy form of §5; another
/// tenant's, `/tenants/{tenant}/.well-known/…` after stripping, is not served). Each also
/// with a tenant's path (`/tenants/{tenant}`) appended.
pub(crate) fn paths(issuer_path: &str) -> Vec<String> {
    let mut prefixes = vec![format!("{WELL_KNOWN}{issuer_path}")];
    if !issuer_path.is_empty() {
        prefixes.push(WELL_KNOWN.to_owned());
    }
    prefixes
        .into_iter()
        .flat_map(|p| [format!("{p}/tenants/{{tenant}}"), p])
        .collect()
}

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    Tenant(tenant): Tenant,
    uri: Uri,
) -> Result<Json<Metadata>, ApiError> {
    // A client must discard metadata whose issuer is not the one its well-known URL was
    // built from (§3.3). The default tenant's issuer has no `/tenants/default`, so its
    // metadata is not also served there, where it would name an issuer no client may accept.
    let tenant_path = AppState::tenant_path(&tenant);
    let issuer_path = state.issuer_path();
    let path = uri.path();
    let served = path
        .strip_suffix(tenant_path.as_str())
        .is_some_and(|prefix| {
            prefix == WELL_KNOWN || prefix.strip_prefix(WELL_KNOWN) == Some(issuer_path)
        });
    if !served {
        return Err(ApiError::not_found(format!(
            "the {tenant} tenant's metadata is at {WELL_KNOWN}{issuer_path}{tenant_path}"
        )));
    }
    // The scopes a tenant's clients may obtain, together.
    let scopes_supported = state.authority.scopes_supported(&tenant).await?.to_vec();
    Ok(Json(Metadata {
        issuer: state.issuer_for(&tenant),
        token_endpoint: state.endpoint_url(&tenant, "/oauth2/token"),
        revocation_endpoint: state.endpoint_url(&tenant, "/oauth2/revoke"),
        introspection_endpoint: state.endpoint_url(&tenant, "/oauth2/introspect"),
        grant_types_supported: GrantType::ALL.iter().map(|g| g.as_str()).collect(),
        response_types_supported: [],
        scopes_supported,
        token_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        revocation_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        introspection_endpoint_auth_methods_supported: [
            "client_secret_basic",
            "client_secret_post",
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::paths;

    /// The router panics on a route it cannot hold (a conflict, a duplicate, a segment it
    /// reads as a capture): issuer paths of each kind the configuration accepts (a trailing
    /// `/` is trimmed before: `AppState::new`) must make routes it takes, beside those of
    /// every tenant.
    #[test]
    fn the_metadata_routes_of_any_accepted_issuer_path_build() {
        for issuer_path in [
            "",
            "/latch",
            "/tenants",
            "/tenants/x",
            "/a:b/c@d/e*f/$(x)",
            "/a//b",
            "/%7Bx%7D",
            "/.well-known/oauth-authorization-server",
        ] {
            let mut router = axum::Router::<()>::new();
            for path in paths(issuer_path) {
                router = router.route(&path, axum::routing::get(|| async {}));
            }
            drop(router);
        }
    }
}
