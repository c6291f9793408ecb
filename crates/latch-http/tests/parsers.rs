//! Property tests of the request parsers every route shares: the form body
//! (`form::Form::parse`, `form::decode_component`) and client authentication
//! (`credentials::extract`). Whatever bytes arrive, they answer `Ok` or an `ApiError`, never a
//! panic; and what a well-behaved client encodes, they decode exactly.
//!
//! The fuzz targets in `fuzz/` drive the same functions with coverage guidance.

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use latch_core::Credentials;
use latch_http::credentials::extract;
use latch_http::form::{decode_component, Form, MAX_FORM_BYTES};
use proptest::prelude::*;

/// `application/x-www-form-urlencoded` encoding of one component (and RFC 6749 §2.3.1's
/// encoding of a client id or secret): unreserved bytes as they are, space as `+`, anything
/// else as `%XX` (upper- or lower-case hex, both are valid).
fn form_encode(s: &str, lower_hex: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ if lower_hex => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Every byte as `%XX`, unreserved ones included (a valid, if verbose, encoding).
fn encode_every_byte(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// Bytes that look like a form: mostly the characters the parser treats specially.
fn formish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let alphabet: Vec<u8> = b"ab=&%+2F0c9zZ \n\t\r;\xff\xc3\xa9\x00".to_vec();
    prop::collection::vec(prop::sample::select(alphabet), 0..96)
}

/// Arbitrary header value bytes, and ones that start like a Basic header.
fn authorization_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // "Basic " + base64 of arbitrary bytes: the decoder's inner layers.
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|raw| format!(
            "Basic {}",
            STANDARD.encode(raw)
        )
        .into_bytes()),
        // "Basic " + base64 of form-ish text with a colon somewhere.
        (formish_bytes(), formish_bytes()).prop_map(|(a, b)| {
            let mut raw = a;
            raw.push(b':');
            raw.extend(b);
            format!("Basic {}", STANDARD.encode(raw)).into_bytes()
        }),
        // Scheme variations and junk after the scheme.
        ("[bB]asic|[bB]earer|BASIC|Digest|Basi|", "[ -~]{0,40}")
            .prop_map(|(scheme, rest)| format!("{scheme} {rest}").into_bytes()),
    ]
}

fn headers_with(authorization: Option<&[u8]>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

/// The form of a body, or an empty form when the body is not one.
fn form_or_default(body: &[u8]) -> Form {
    Form::parse(body).unwrap_or_default()
}

proptest! {
    #[test]
    fn form_parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Form::parse(&bytes);
        let _ = Form::parse_trimming(&bytes);
    }

    #[test]
    fn form_parse_never_panics_on_formish_bytes(bytes in formish_bytes()) {
        if let Ok(form) = Form::parse(&bytes) {
            // Whatever parsed is queryable.
            let _ = form.get("a");
            let _ = form.require("token");
        }
        let _ = Form::parse_trimming(&bytes);
    }

    #[test]
    fn decode_component_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_component(&bytes);
    }

    #[test]
    fn decode_component_inverts_full_percent_encoding(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let decoded = decode_component(encode_every_byte(&bytes).as_bytes()).ok();
        match std::str::from_utf8(&bytes) {
            Ok(s) => prop_assert_eq!(decoded.as_deref(), Some(s)),
            Err(_) => prop_assert!(decoded.is_none(), "non-UTF-8 bytes must be refused"),
        }
    }

    #[test]
    fn encoded_pairs_parse_back(
        pairs in prop::collection::btree_map(".{1,24}", ".{1,48}", 0..12),
        lower_hex in any::<bool>(),
    ) {
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k, lower_hex), form_encode(v, lower_hex)))
            .collect::<Vec<_>>()
            .join("&");
        let form = Form::parse(body.as_bytes());
        prop_assert!(form.is_ok(), "{:?} did not parse", body);
        let form = form.unwrap();
        for (k, v) in &pairs {
            prop_assert_eq!(form.get(k), Some(v.as_str()), "key {:?} in {:?}", k, body);
        }
    }

    #[test]
    fn a_repeated_parameter_is_always_refused(
        pairs in prop::collection::btree_map("[a-z_]{1,12}", ".{0,16}", 1..6),
        pick in any::<prop::sample::Index>(),
        again in ".{0,16}",
    ) {
        let (dup_key, _) = pairs.iter().nth(pick.index(pairs.len())).unwrap();
        let mut parts: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k, false), form_encode(v, false)))
            .collect();
        parts.push(format!("{}={}", form_encode(dup_key, false), form_encode(&again, false)));
        prop_assert!(Form::parse(parts.join("&").as_bytes()).is_err());
    }

    #[test]
    fn extract_never_panics(
        authorization in prop::option::of(authorization_bytes()),
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..128), formish_bytes()],
        credentials_in_body in prop::option::of((".{0,16}", prop::option::of(".{0,16}"))),
    ) {
        let headers = headers_with(authorization.as_deref());
        let _ = extract(&headers, &form_or_default(&body));
        if let Some((id, secret)) = credentials_in_body {
            let mut pairs = BTreeMap::new();
            pairs.insert("client_id", id);
            if let Some(secret) = secret {
                pairs.insert("client_secret", secret);
            }
            let body = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", form_encode(v, false)))
                .collect::<Vec<_>>()
                .join("&");
            let form = Form::parse(body.as_bytes()).unwrap();
            if let Err(e) = extract(&headers, &form) {
                // Every refusal is a client error.
                prop_assert!(e.status().is_client_error(), "{:?}", e);
            }
        }
    }

    #[test]
    fn basic_credentials_round_trip_per_rfc6749_2_3_1(
        id in ".{1,40}",
        secret in ".{0,60}",
        lower_hex in any::<bool>(),
        scheme in "[bB][aA][sS][iI][cC]",
    ) {
        let raw = format!("{}:{}", form_encode(&id, lower_hex), form_encode(&secret, lower_hex));
        let value = format!("{scheme} {}", STANDARD.encode(raw));
        let headers = headers_with(Some(value.as_bytes()));
        let presented = extract(&headers, &Form::default());
        prop_assert!(presented.is_ok(), "{:?} refused: {:?}", value, presented.err());
        let presented = presented.unwrap();
        prop_assert!(presented.basic);
        match presented.credentials {
            Credentials::Basic { id: got_id, secret: got_secret } => {
                prop_assert_eq!(got_id, id);
                prop_assert_eq!(got_secret, secret);
            }
            _ => prop_assert!(false, "Basic credentials were not read as Basic"),
        }
    }

    #[test]
    fn basic_with_the_same_body_client_id_is_accepted(id in ".{1,40}", secret in ".{0,40}") {
        let raw = format!("{}:{}", form_encode(&id, false), form_encode(&secret, false));
        let headers = headers_with(Some(format!("Basic {}", STANDARD.encode(raw)).as_bytes()));
        let body = format!("client_id={}", form_encode(&id, false));
        let presented = extract(&headers, &Form::parse(body.as_bytes()).unwrap());
        prop_assert!(presented.is_ok(), "{:?}", presented.err());
    }
}

#[test]
fn a_body_over_the_limit_still_parses_without_panicking() {
    // `Form::parse` itself has no limit (the reader enforces it); a big body is just slow.
    let mut body = b"token=".to_vec();
    body.resize(MAX_FORM_BYTES * 2, b'A');
    assert_eq!(
        Form::parse(&body).unwrap().get("token").unwrap().len(),
        MAX_FORM_BYTES * 2 - 6
    );
}
