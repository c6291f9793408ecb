//! `credentials::extract` on an arbitrary `Authorization` header and form body. The input is
//! split at its first newline: the header value before it, the form body after it (no newline:
//! the whole input is the header value and the body is empty). A header value that HTTP would
//! not carry is left out, and a body that is not a valid form is read as an empty form, so that
//! every input reaches `extract`. It must return credentials or a 4xx error, never panic.
#![no_main]

use http::{header, HeaderMap, HeaderValue};
use latch_http::credentials::extract;
use latch_http::form::Form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (authorization, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(authorization) {
        headers.insert(header::AUTHORIZATION, value);
    }
    let form = Form::parse(body).unwrap_or_default();
    match extract(&headers, &form) {
        Ok(presented) => {
            // Only a Basic header yields Basic credentials.
            assert_eq!(presented.basic, headers.contains_key(header::AUTHORIZATION));
        }
        Err(e) => assert!(e.status().is_client_error(), "{e:?}"),
    }
});
