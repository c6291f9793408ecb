//! `application/x-www-form-urlencoded` request bodies, parsed strictly and once for every
//! route and profile.
//!
//! Strict means: the content type must be a form (charset, if given, UTF-8); the body must
//! fit the size limit; percent-encoding must be valid and decode to UTF-8; and no parameter
//! may appear twice (RFC 6749 §3.2). A parameter with an empty value counts as absent
//! (RFC 6749 §3.1).

use std::future::{poll_fn, Future};
use std::task::Poll;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use crate::error::ApiError;
use crate::serve::{Connection, DEFAULT_READ_TIMEOUT};

/// The largest form body accepted. Real requests are a few hundred bytes.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// The most parameters a form may have. OAuth requests carry a handful; the bound keeps the
/// duplicate check (a scan of the parameters so far, the cheapest way for a handful) from
/// costing a 64 KiB body of thousands of one-letter names a quadratic amount of CPU before
/// anything is authenticated.
pub const MAX_FORM_PARAMS: usize = 128;

/// A parsed form.
#[derive(Debug, Default)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// A parameter's value; `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every parameter, decoded, in the order sent (empty values included).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A required parameter.
    pub fn require(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key)
            .ok_or_else(|| ApiError::invalid_request(format!("missing parameter: {key}")))
    }

    /// Parses a form body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::parse_with(body, false)
    }

    /// Parses a form body, ignoring raw (unencoded) whitespace around names and values.
    /// Raw whitespace is not valid form encoding, so this only changes the reading of
    /// malformed bodies, such as a line break pasted into a `curl -d` argument.
    pub fn parse_trimming(body: &[u8]) -> Result<Self, ApiError> {
        Self::parse_with(body, true)
    }

    fn parse_with(body: &[u8], trim: bool) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in body.split(|&b| b == b'&') {
            let part = if trim { part.trim_ascii() } else { part };
            if part.is_empty() {
                continue;
            }
            let (k, v) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &b""[..]),
            };
            let (k, v) = if trim {
                (k.trim_ascii(), v.trim_ascii())
            } else {
                (k, v)
            };
            if pairs.len() == MAX_FORM_PARAMS {
                return Err(ApiError::invalid_request(format!(
                    "more than {MAX_FORM_PARAMS} parameters"
                )));
            }
            let key = decode_component(k)?;
            let value = decode_component(v)?;
            if pairs.iter().any(|(existing, _)| *existing == key) {
                return Err(ApiError::invalid_request(format!(
                    "parameter {} is given more than once",
                    printable(&key)
                )));
            }
            pairs.push((key, value));
        }
        Ok(Self { pairs })
    }

    /// Checks that the URI carries no OAuth parameter and the content type, then reads and
    /// parses the body; returns the request's head beside the form, so that handlers borrow
    /// its headers (axum's `HeaderMap` extractor would clone them for every request).
    ///
    /// OAuth's endpoints take their parameters in the body (RFC 6749 §3.2, RFC 7009 §2.1,
    /// RFC 7662 §2.1) and credentials must never be in the URI (RFC 6749 §2.3.1): one sent
    /// there is refused rather than ignored, since ignoring it would answer a request the
    /// client did not make (a `scope` dropped widens the token; a `token` dropped revokes
    /// nothing, with a `200`). Other query parameters (a gateway's, a version) are left to
    /// the route (§3.2 lets an endpoint's URI have a query).
    pub async fn from_request(request: Request) -> Result<(Parts, Self), ApiError> {
        Self::read(request, false).await
    }

    /// Like [`Form::from_request`], with [`Form::parse_trimming`].
    pub async fn from_request_trimming(request: Request) -> Result<(Parts, Self), ApiError> {
        Self::read(request, true).await
    }

    async fn read(request: Request, trim: bool) -> Result<(Parts, Self), ApiError> {
        let (parts, body) = request.into_parts();
        refuse_oauth_parameters(parts.uri.query())?;
        check_content_type(&parts.headers)?;
        let bytes = read_body(&parts, body, MAX_FORM_BYTES).await?;
        let form = Self::parse_with(&bytes, trim)?;
        Ok((parts, form))
    }
}

/// The parameters of OAuth's token, revocation and introspection requests (and of the grants
/// latch does not serve), refused in a form endpoint's URI ([`Form::from_request`]).
const OAUTH_PARAMETERS: &[&str] = &[
    "grant_type",
    "scope",
    "refresh_token",
    "token",
    "token_type_hint",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "code",
    "code_verifier",
    "redirect_uri",
    "username",
    "password",
    "resource",
    "audience",
];

fn refuse_oauth_parameters(query: Option<&str>) -> Result<(), ApiError> {
    let named = query_parameters(query.unwrap_or_default())
        .map(|(name, _)| name)
        .find(|name| OAUTH_PARAMETERS.contains(&name.as_str()));
    match named {
        Some(name) => Err(ApiError::invalid_request(format!(
            "parameter {name} must be sent in the request body, not in the URI (RFC 6749 §2.3.1, \
             §3.2)"
        ))),
        None => Ok(()),
    }
}

/// A URI query's parameters as (decoded name, raw value), read leniently: the query belongs
/// to the route and to whatever gateway added to it, so a name may repeat, and one that does
/// not decode strictly is read as near as it can be (a `%` without two hex digits kept as
/// is, bytes that are not UTF-8 as U+FFFD), never skipped: a name that starts as one latch
/// reads (`v2.0%FF`) is still seen as such.
pub(crate) fn query_parameters(query: &str) -> impl Iterator<Item = (String, &str)> {
    query.split('&').map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_lossy(name.as_bytes()), value)
    })
}

/// Decodes a form component as [`decode_component`] does, keeping what does not decode.
fn decode_lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(&unescape(raw).0).into_owned()
}

/// Keeps client-supplied text (a parameter name, a path segment) safe and short enough to
/// echo in an error message.
pub(crate) fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Decodes one form component: `+` is a space, `%XX` a byte; the result must be UTF-8.
pub fn decode_component(raw: &[u8]) -> Result<String, ApiError> {
    let (out, well_formed) = unescape(raw);
    if !well_formed {
        return Err(ApiError::invalid_request("invalid percent-encoding"));
    }
    String::from_utf8(out).map_err(|_| ApiError::invalid_request("parameters must be UTF-8"))
}

/// `raw` with `+` as a space and `%XX` as its byte, and whether every `%` had two hex digits
/// after it (one that had not is kept as it is).
fn unescape(raw: &[u8]) -> (Vec<u8>, bool) {
    // Runs without `+` or `%` (a whole token, usually) are copied at once.
    let mut out = Vec::with_capacity(raw.len());
    let mut well_formed = true;
    let mut rest = raw;
    while let Some(at) = memchr::memchr2(b'+', b'%', rest) {
        out.extend_from_slice(&rest[..at]);
        if rest[at] == b'+' {
            out.push(b' ');
            rest = &rest[at + 1..];
            continue;
        }
        let byte = match rest.get(at + 1..at + 3) {
            Some(&[hi, lo]) => hex_digit(hi).zip(hex_digit(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match byte {
            Some(byte) => {
                out.push(byte);
                rest = &rest[at + 3..];
            }
            None => {
                well_formed = false;
                out.push(b'%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
    (out, well_formed)
}

/// The value of one hexadecimal digit (no sign, unlike `u8::from_str_radix`).
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let wrong =
        || ApiError::invalid_request("Content-Type must be application/x-www-form-urlencoded");
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(wrong)?;
    let mut parts = value.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(wrong());
    }
    for param in parts {
        if let Some((name, val)) = param.split_once('=') {
            let val = val.trim().trim_matches('"');
            if name.trim().eq_ignore_ascii_case("charset") && !val.eq_ignore_ascii_case("utf-8") {
                return Err(ApiError::invalid_request(
                    "only the UTF-8 charset is supported",
                ));
            }
        }
    }
    Ok(())
}

/// Reads a body of at most `limit` bytes; larger is `413`. A body not received within the
/// connection's read timeout ([`Connection`]) is `408`, so that a client trickling its body
/// does not hold a connection (and a handler) for ever.
pub async fn read_body(
    parts: &Parts,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut read = std::pin::pin!(axum::body::to_bytes(body, limit));
    // A form's few bytes nearly always arrive with the request's head: read them without
    // arming a timer, which would cost every request a timer registration.
    let read = match poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
        Poll::Ready(read) => read,
        Poll::Pending => {
            let timeout = parts
                .extensions
                .get::<Connection>()
                .map_or(DEFAULT_READ_TIMEOUT, |c| c.read_timeout);
            tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ApiError::body_timeout(timeout))?
        }
    };
    read.map_err(|e| {
        // `to_bytes` fails either because the limit was hit or because the connection broke.
        if e.into_inner().is::<http_body_util::LengthLimitError>() {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::invalid_request("the request body could not be read")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes() {
        let f = Form::parse(b"a=1&b=hello+world&c=%C3%A9&d=").unwrap();
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.get("b"), Some("hello world"));
        assert_eq!(f.get("c"), Some("é"));
        assert_eq!(f.get("d"), None, "empty values count as absent");
        assert_eq!(f.get("e"), None);
    }

    #[test]
    fn rejects_duplicates_bad_escapes_and_non_utf8() {
        assert!(Form::parse(b"token=a&token=b").is_err());
        assert!(Form::parse(b"token=&token=b").is_err());
        assert!(Form::parse(b"token=%zz").is_err());
        assert!(Form::parse(b"token=%4").is_err());
        assert!(
            Form::parse(b"token=%+F").is_err(),
            "a sign is not a hex digit"
        );
        assert!(Form::parse(b"token=%-1").is_err());
        assert!(Form::parse(b"token=%FF").is_err());
        assert!(Form::parse(b"token=\xff").is_err());
    }

    #[test]
    fn a_form_has_at_most_max_form_params_parameters() {
        let body = |n: usize| {
            (0..n)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let full = Form::parse(body(MAX_FORM_PARAMS).as_bytes()).unwrap();
        assert_eq!(full.get("p0"), Some("v"));
        let err = Form::parse(body(MAX_FORM_PARAMS + 1).as_bytes()).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        // Empty parts between `&`s are not parameters.
        let sparse = body(MAX_FORM_PARAMS).replace('&', "&&");
        assert!(Form::parse(sparse.as_bytes()).is_ok());
    }

    #[test]
    fn trimming_ignores_raw_whitespace_only() {
        let f = Form::parse_trimming(b"client_secret=abc\n         &token=x+y").unwrap();
        assert_eq!(f.get("client_secret"), Some("abc"));
        assert_eq!(f.get("token"), Some("x y"), "encoded spaces are kept");
        let strict = Form::parse(b"client_secret=abc\n  &token=x").unwrap();
        assert_eq!(strict.get("client_secret"), Some("abc\n  "));
    }
}
