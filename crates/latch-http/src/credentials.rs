//! Client credentials from a request: `client_secret_basic` (with the RFC 6749 §2.3.1
//! form-decoding of id and secret), `client_secret_post`, or `none` (a public client naming
//! itself). Written once; every route and profile uses it.

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use latch_core::Credentials;

use crate::error::ApiError;
use crate::form::{decode_component, Form};

/// Credentials found in a request, and whether they came from a Basic header (a 401 then
/// carries a Basic challenge).
#[derive(Debug)]
pub struct PresentedCredentials {
    /// The credentials.
    pub credentials: Credentials,
    /// True when they came from `Authorization: Basic`.
    pub basic: bool,
}

/// Extracts client credentials from the `Authorization` header and the form.
///
/// - A malformed Basic header (bad base64, no colon, bad encoding) is `invalid_request`.
/// - Another scheme is `invalid_client` with a Basic challenge.
/// - Basic and a body secret at once is `invalid_request` (RFC 6749 §2.3: one method only);
///   so is a body `client_id` that differs from the Basic one, and so are several
///   `Authorization` headers (which of them would be the client's?).
/// - No credentials at all is `invalid_client`.
pub fn extract(headers: &HeaderMap, form: &Form) -> Result<PresentedCredentials, ApiError> {
    let body_id = form.get("client_id");
    let body_secret = form.get("client_secret");

    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Err(ApiError::invalid_request(
                "several Authorization headers: send one",
            ));
        }
        let (id, secret) = parse_basic(value.as_bytes())?;
        if body_secret.is_some() {
            return Err(ApiError::invalid_request(
                "use one client authentication method: Basic or client_secret in the body, not both",
            ));
        }
        if body_id.is_some_and(|b| b != id) {
            return Err(ApiError::invalid_request(
                "client_id in the body differs from the one in the Authorization header",
            ));
        }
        return Ok(PresentedCredentials {
            credentials: Credentials::Basic { id, secret },
            basic: true,
        });
    }

    let credentials = match (body_id, body_secret) {
        (Some(id), Some(secret)) => Credentials::Post {
            id: id.to_owned(),
            secret: secret.to_owned(),
        },
        (Some(id), None) => Credentials::Public { id: id.to_owned() },
        (None, Some(_)) => {
            return Err(ApiError::invalid_request(
                "client_secret was given without client_id",
            ))
        }
        (None, None) => return Err(ApiError::invalid_client(false)),
    };
    Ok(PresentedCredentials {
        credentials,
        basic: false,
    })
}

/// Parses `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(value: &[u8]) -> Result<(String, String), ApiError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| ApiError::invalid_request("malformed Authorization header"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::invalid_client(true));
    }
    let malformed = || ApiError::invalid_request("malformed Basic credentials");
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| malformed())?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(malformed)?;
    let id = decode_component(&decoded[..colon]).map_err(|_| malformed())?;
    let secret = decode_component(&decoded[colon + 1..]).map_err(|_| malformed())?;
    if id.is_empty() {
        return Err(malformed());
    }
    Ok((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode(raw));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let got = extract(&basic("my%20app:p%3Ass+word"), &Form::default()).unwrap();
        match got.credentials {
            Credentials::Basic { id, secret } => {
                assert_eq!(id, "my app");
                assert_eq!(secret, "p:ss word");
            }
            other => panic!("{other:?}"),
        }
        assert!(got.basic);
    }

    #[test]
    fn malformed_basic_is_rejected() {
        assert!(extract(&basic("no-colon"), &Form::default()).is_err());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(extract(&h, &Form::default()).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        let e = extract(&h, &Form::default()).unwrap_err();
        assert_eq!(e.status(), 401);
    }

    #[test]
    fn two_methods_at_once_are_refused() {
        let form = Form::parse(b"client_secret=x").unwrap();
        assert_eq!(extract(&basic("a:b"), &form).unwrap_err().status(), 400);
    }

    #[test]
    fn body_credentials() {
        let f = Form::parse(b"client_id=a&client_secret=b").unwrap();
        assert!(matches!(
            extract(&HeaderMap::new(), &f).unwrap().credentials,
            Credentials::Post { .. }
        ));
        let f = Form::parse(b"client_id=a").unwrap();
        assert!(matches!(
            extract(&HeaderMap::new(), &f).unwrap().credentials,
            Credentials::Public { .. }
        ));
        let e = extract(&HeaderMap::new(), &Form::default()).unwrap_err();
        assert_eq!(e.status(), 401);
    }
}
