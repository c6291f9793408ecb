//! `Form::parse` (and its whitespace-trimming variant, used by the `api_v1_0` profile) on
//! arbitrary bytes: it must return `Ok` or an error, never panic.
#![no_main]

use latch_http::form::{decode_component, Form};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(form) = Form::parse(data) {
        let _ = form.get("token");
        let _ = form.require("client_id");
    }
    let _ = Form::parse_trimming(data);
    let _ = decode_component(data);
});
