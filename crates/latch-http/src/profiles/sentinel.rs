//! Profile for seed `000_eae351095e2c7941.txt`:
//! `POST /sentinel/api/account/{accountid}/token/revoke?v=1.0`.
//!
//! The account is the tenant. `token`, `client_id` and `client_secret` are required form
//! fields. The effect is the document's: the user's session dies in *all* applications of the
//! account, so every live grant of the token's subject in the tenant is revoked. An unknown
//! account, an unknown client or a wrong secret is `401` ("Bad Authentication (invalid site
//! or application id)"); an unknown or already revoked token is a `200`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::Response;
use latch_core::revoke::Effect;

use crate::error::ApiError;
use crate::form::{decode_component, query_parameters, Form};
use crate::oauth2::revoke::{revoke, revoked};
use crate::tenant;
use crate::{AppState, Peer};

/// Checks the version query parameter. The document's URL reads `?v1.0` while its table
/// names a parameter `v` with default `1.0`, so `?v=1.0`, the literal `?v1.0` and no version
/// are all accepted, once; any other version is a `400`. Names are read decoded, trimmed and
/// in any case, so no spelling (`?v2.0=`, `?v%32.0`, `?v%3D2.0`, `?V=2.0`, `?v+=2.0`) slips
/// another version past the check. Other parameters (a gateway's) are left alone, as on
/// every form route ([`crate::form::query_parameters`]).
fn check_version(query: Option<&str>) -> Result<(), ApiError> {
    let mut versions = 0;
    for (name, value) in query_parameters(query.unwrap_or_default()) {
        let name = name.trim().to_ascii_lowercase();
        let supported = match name.as_str() {
            "v" => matches!(
                decode_component(value.as_bytes()).as_deref(),
                Ok("" | "1.0" | "1")
            ),
            // The literal `?v1.0`: a name with no value.
            "v1.0" => value.is_empty(),
            // Another name that starts as a version would (`v`, then a digit, `.` or `=`)
            // is a wrong version; any other name (`?verbose`) is not a version at all.
            other
                if other.strip_prefix('v').is_some_and(|rest| {
                    rest.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '=')
                }) =>
            {
                false
            }
            _ => continue,
        };
        versions += 1;
        if !supported || versions > 1 {
            return Err(ApiError::invalid_request(
                "unsupported API version; use v=1.0",
            ));
        }
    }
    Ok(())
}

pub(crate) async fn handle(
    State(state): State<Arc<AppState>>,
    account: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    peer: Peer,
    request: Request,
) -> Result<Response, ApiError> {
    check_version(query.as_deref())?;
    let (parts, form) = Form::from_request(request).await?;
    let headers = &parts.headers;
    for field in ["token", "client_id", "client_secret"] {
        form.require(field)?;
    }
    // An account id that cannot even be decoded names no account: the document's 401.
    let Ok(Path(account)) = account else {
        return Err(ApiError::invalid_client(false));
    };
    let tenant = tenant::resolve(&state, &account)
        .await?
        .ok_or_else(|| ApiError::invalid_client(false))?;
    revoke(
        &state,
        &tenant,
        peer,
        "sentinel",
        headers,
        &form,
        Effect::AllGrantsOfSubject,
    )
    .await?;
    Ok(revoked())
}

#[cfg(test)]
mod tests {
    use super::check_version;

    #[test]
    fn versions() {
        for ok in [
            None,
            Some(""),
            Some("v=1.0"),
            Some("v1.0"),
            Some("v=1"),
            Some("x=y&v1.0"),
            Some("V=1.0"),
            Some("verbose&vendor=x"),
            Some("trace=1&trace=2&v=1.0"),
            Some("sig=%FF&v1.0"),
        ] {
            assert!(check_version(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            Some("v=2.0"),
            Some("v2.0"),
            Some("v=1.0&v=1.0"),
            Some("v=abc"),
            Some("v=%zz"),
            Some("v%3D2.0"),
            Some("V=2.0"),
            Some("V2.0"),
            Some("v.2"),
            Some("v+=2.0"),
            Some("v%20=2.0"),
            Some("+v=2.0"),
            Some("v=2.0%FF"),
            Some("v=1.0&v1.0"),
            Some("v2.0%FF"),
            Some("v%32.0%zz"),
        ] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }
}
