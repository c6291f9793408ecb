//! Bad input, table-driven, on every endpoint and profile: malformed bodies, content types,
//! encodings, sizes, `Authorization` headers, client ids and tenants each get the right 4xx
//! with a JSON error in the route's spelling (`error_description`, or `errorDescription` for
//! the `id_v1` profile), never a 500, and the server keeps serving. Failed authentications
//! are not rate-limited here (that has its own tests, `abuse.rs`).
//!
//! The one thing that must *work* in the middle of all this: credentials that need RFC 6749
//! §2.3.1's form-encoding inside `Authorization: Basic` (an id and secret with `:`, `%`,
//! spaces, `+` and non-ASCII characters).
//!
//! Oversized bodies (1 MB, 10 MB) are sent over raw HTTP/1.1 that writes only the first
//! 96 KiB before reading the answer: the server must answer `413` from the declared length
//! (or, chunked, from the first 64 KiB). A client that insists on writing all 10 MB first
//! (reqwest does) may see the connection reset after the server's early `413` instead of the
//! answer; that is the client's way of handling an early response, not the server's.

#[macro_use]
mod common;

use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{basic_header, form, form_encode, TestClient, TestServer, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const FORM_CT: &str = "application/x-www-form-urlencoded";
/// A well-formed token that does not exist.
const UNKNOWN_TOKEN: &str = "latch_at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// A client whose credentials need RFC 6749 §2.3.1 encoding in a Basic header.
const WEIRD_ID: &str = "we:ird 50% app/\u{e9}t\u{e9}+1";
const WEIRD_SECRET: &str = "s:e cr%et+\u{fc}ber:";
const SECRET: &str = "svc-secret";
/// Over the 64 KiB form limit, and far over it.
const ONE_MB: usize = 1024 * 1024;
const TEN_MB: usize = 10 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// `error` + `error_description` (RFC 6749 §5.2).
    Snake,
    /// `error` + `errorDescription` (the `id_v1` profile).
    Camel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Token,
    Revoke,
    Introspect,
    /// Seed 000: credentials are required *form* fields.
    Sentinel,
    /// Seed 001: camelCase errors, credentials required.
    IdV1,
    /// Seed 002: RFC 7009 with a whitespace-trimming form reader.
    ApiV10,
}

#[derive(Clone, Debug)]
enum Expect {
    /// An error: status and `error` code.
    Error(u16, &'static str),
    /// Success.
    Ok,
}

#[derive(Debug)]
struct Case {
    what: String,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: Expect,
    style: Style,
}

/// A form endpoint, in a tenant that exists.
#[derive(Clone, Debug)]
struct Endpoint {
    path: String,
    kind: Kind,
}

impl Endpoint {
    fn style(&self) -> Style {
        if self.kind == Kind::IdV1 {
            Style::Camel
        } else {
            Style::Snake
        }
    }

    /// The parameters of a valid request, without credentials, with `token` given raw
    /// (already encoded, or deliberately not).
    fn body_with_raw_token(&self, raw_token: &str) -> String {
        match self.kind {
            Kind::Token => format!("grant_type=client_credentials&token={raw_token}"),
            _ => format!("token={raw_token}"),
        }
    }

    /// A valid body, without credentials.
    fn params(&self) -> String {
        match self.kind {
            Kind::Token => "grant_type=client_credentials".into(),
            _ => format!("token={UNKNOWN_TOKEN}"),
        }
    }

    /// Adds body credentials for the routes that take them only in the body.
    fn with_default_body_credentials(&self, body: String) -> String {
        if self.kind == Kind::Sentinel {
            format!("{body}&client_id=svc&client_secret={SECRET}")
        } else {
            body
        }
    }

    /// The headers of a valid request: a form content type, and Basic credentials except on
    /// the route that takes them only in the body.
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("content-type", FORM_CT.to_owned())];
        if self.kind != Kind::Sentinel {
            headers.push(("authorization", basic_header("svc", SECRET)));
        }
        headers
    }

    fn case(
        &self,
        what: &str,
        headers: Vec<(&'static str, String)>,
        body: impl Into<Vec<u8>>,
        expect: Expect,
    ) -> Case {
        Case {
            what: what.to_owned(),
            method: Method::POST,
            path: self.path.clone(),
            headers,
            body: body.into(),
            expect,
            style: self.style(),
        }
    }
}

fn with(
    mut headers: Vec<(&'static str, String)>,
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    headers.retain(|(n, _)| *n != name);
    headers.push((name, value.to_owned()));
    headers
}

fn without(
    mut headers: Vec<(&'static str, String)>,
    name: &'static str,
) -> Vec<(&'static str, String)> {
    headers.retain(|(n, _)| *n != name);
    headers
}

fn big(prefix: &str, len: usize) -> Vec<u8> {
    let mut body = prefix.as_bytes().to_vec();
    body.resize(len, b'A');
    body
}

const MULTIPART_CT: &str = "multipart/form-data; boundary=XyZzy";

fn multipart(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!(
            "--XyZzy\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    out.push_str("--XyZzy--\r\n");
    out.into_bytes()
}

/// Every bad-input row for one form endpoint.
/// `body` with unknown parameters added until it has `n` (RFC 6749 §3.1: they are ignored).
fn padded(body: &str, n: usize) -> String {
    let has = body.split('&').filter(|p| !p.is_empty()).count();
    let mut out = body.to_owned();
    for i in has..n {
        out.push_str(&format!("&x{i}=1"));
    }
    out
}

fn form_cases(ep: &Endpoint) -> Vec<Case> {
    use Expect::Error;
    let bad = || Error(400, "invalid_request");
    let too_big = || Error(413, "invalid_request");
    let unauthorized = || Error(401, "invalid_client");
    let h = ep.headers();
    let body = |raw: String| ep.with_default_body_credentials(raw);
    let good = body(ep.params());
    let mut cases = vec![
        ep.case(
            "a valid request (the baseline)",
            h.clone(),
            good.clone(),
            Expect::Ok,
        ),
        ep.case("empty body", h.clone(), "", bad()),
        ep.case(
            "no Content-Type",
            without(h.clone(), "content-type"),
            good.clone(),
            bad(),
        ),
        ep.case(
            "text/plain",
            with(h.clone(), "content-type", "text/plain"),
            good.clone(),
            bad(),
        ),
        ep.case(
            "a charset other than UTF-8",
            with(
                h.clone(),
                "content-type",
                &format!("{FORM_CT}; charset=ISO-8859-1"),
            ),
            good.clone(),
            bad(),
        ),
        ep.case(
            "a JSON body",
            with(h.clone(), "content-type", "application/json"),
            serde_json::to_vec(&json!({
                "grant_type": "client_credentials",
                "token": UNKNOWN_TOKEN,
                "client_id": "svc",
                "client_secret": SECRET,
            }))
            .unwrap(),
            bad(),
        ),
        ep.case(
            "a JSON body labelled as a form",
            h.clone(),
            format!("{{\"token\":\"{UNKNOWN_TOKEN}\"}}"),
            bad(),
        ),
        ep.case(
            "a multipart body",
            with(h.clone(), "content-type", MULTIPART_CT),
            multipart(&[
                ("grant_type", "client_credentials"),
                ("token", UNKNOWN_TOKEN),
                ("client_id", "svc"),
                ("client_secret", SECRET),
            ]),
            bad(),
        ),
        ep.case(
            "token=%zz",
            h.clone(),
            body(ep.body_with_raw_token("%zz")),
            bad(),
        ),
        ep.case(
            "token=%4 (truncated escape)",
            h.clone(),
            body(ep.body_with_raw_token("%4")),
            bad(),
        ),
        ep.case(
            "token=%FF (not UTF-8)",
            h.clone(),
            body(ep.body_with_raw_token("%FF")),
            bad(),
        ),
        ep.case(
            "token=%C3 (truncated UTF-8)",
            h.clone(),
            body(ep.body_with_raw_token("abc%C3")),
            bad(),
        ),
        ep.case(
            "raw 0xFF byte",
            h.clone(),
            {
                let mut b = body(ep.body_with_raw_token("x")).into_bytes();
                b.extend_from_slice(b"&junk=\xff\xfe");
                b
            },
            bad(),
        ),
        ep.case(
            "a duplicated parameter",
            h.clone(),
            format!("{good}&{}", ep.params()),
            bad(),
        ),
        ep.case(
            "a duplicated parameter whose name needs quoting (non-ASCII, a quote)",
            h.clone(),
            format!("{good}&%C3%A9=1&a%22%5C=1&%C3%A9=2"),
            bad(),
        ),
        ep.case(
            "as many parameters as a form may have (128)",
            h.clone(),
            padded(&good, 128),
            Expect::Ok,
        ),
        ep.case(
            "one parameter more than a form may have",
            h.clone(),
            padded(&good, 129),
            bad(),
        ),
        ep.case(
            "a duplicated parameter, once empty",
            h.clone(),
            match ep.kind {
                Kind::Token => body("grant_type=&grant_type=client_credentials".into()),
                _ => body(format!("token=&token={UNKNOWN_TOKEN}")),
            },
            bad(),
        ),
        ep.case(
            "a 1 MB token",
            h.clone(),
            big(&body(ep.body_with_raw_token("")), ONE_MB),
            too_big(),
        ),
        ep.case("a 10 MB body", h.clone(), big(&good, TEN_MB), too_big()),
        ep.case(
            "Authorization: Bearer",
            with(h.clone(), "authorization", "Bearer x"),
            good.clone(),
            unauthorized(),
        ),
        ep.case(
            "Authorization: Basic with bad base64",
            with(h.clone(), "authorization", "Basic !!!"),
            good.clone(),
            bad(),
        ),
        ep.case(
            "Authorization: Basic without a colon",
            with(
                h.clone(),
                "authorization",
                &format!("Basic {}", STANDARD.encode("svc")),
            ),
            good.clone(),
            bad(),
        ),
        ep.case(
            "Authorization: Basic with a bad escape inside",
            with(
                h.clone(),
                "authorization",
                &format!("Basic {}", STANDARD.encode("svc%zz:x")),
            ),
            good.clone(),
            bad(),
        ),
        ep.case(
            "Authorization: Basic and a client_secret in the body",
            with(h.clone(), "authorization", &basic_header("svc", SECRET)),
            format!("{}&client_secret={SECRET}", ep.params()),
            bad(),
        ),
        ep.case(
            "a client id of 10 KB in the body",
            without(h.clone(), "authorization"),
            format!(
                "{}&client_id={}&client_secret=x",
                ep.params(),
                "a".repeat(10 * 1024)
            ),
            unauthorized(),
        ),
        ep.case(
            "a client id with %00 in the body",
            without(h.clone(), "authorization"),
            format!("{}&client_id=svc%00&client_secret={SECRET}", ep.params()),
            unauthorized(),
        ),
        ep.case(
            "a client id with %0A in the body",
            without(h.clone(), "authorization"),
            format!("{}&client_id=svc%0A&client_secret={SECRET}", ep.params()),
            unauthorized(),
        ),
        ep.case(
            "a wrong secret in the body",
            without(h.clone(), "authorization"),
            format!("{}&client_id=svc&client_secret=wrong", ep.params()),
            unauthorized(),
        ),
        ep.case(
            "RFC 6749 §2.3.1 credentials in the body",
            without(h.clone(), "authorization"),
            format!(
                "{}&{}",
                ep.params(),
                form(&[("client_id", WEIRD_ID), ("client_secret", WEIRD_SECRET)])
            ),
            Expect::Ok,
        ),
    ];
    if ep.kind == Kind::Sentinel {
        // Credentials are required form fields here: a header on top is two methods at once.
        cases.push(ep.case(
            "Authorization: Basic and the required body credentials",
            with(h.clone(), "authorization", &basic_header("svc", SECRET)),
            good.clone(),
            bad(),
        ));
        cases.push(ep.case(
            "no client_secret",
            h.clone(),
            format!("{}&client_id=svc", ep.params()),
            bad(),
        ));
    } else {
        let mut twice = with(h.clone(), "authorization", &basic_header("svc", SECRET));
        twice.push(("authorization", basic_header("svc", SECRET)));
        cases.extend([
            ep.case(
                "two Authorization headers, both the client's Basic",
                twice,
                good.clone(),
                bad(),
            ),
            ep.case(
                "RFC 6749 §2.3.1 credentials in Basic",
                with(
                    h.clone(),
                    "authorization",
                    &basic_header(WEIRD_ID, WEIRD_SECRET),
                ),
                good.clone(),
                Expect::Ok,
            ),
            ep.case(
                "RFC 6749 §2.3.1 credentials in Basic, lower-case escapes and scheme",
                with(
                    h.clone(),
                    "authorization",
                    &format!(
                        "basic {}",
                        STANDARD.encode(format!(
                            "{}:{}",
                            form_encode(WEIRD_ID).to_lowercase(),
                            form_encode(WEIRD_SECRET).to_lowercase()
                        ))
                    ),
                ),
                good.clone(),
                Expect::Ok,
            ),
            // Unencoded, the id's `%` is a bad escape (and its `:` would split it).
            ep.case(
                "the §2.3.1 credentials in Basic without their encoding",
                with(
                    h.clone(),
                    "authorization",
                    &format!(
                        "Basic {}",
                        STANDARD.encode(format!("{WEIRD_ID}:{WEIRD_SECRET}"))
                    ),
                ),
                good.clone(),
                bad(),
            ),
            ep.case(
                "Basic and a different client_id in the body",
                h.clone(),
                format!("{}&client_id=other", ep.params()),
                bad(),
            ),
            ep.case(
                "Basic and the same client_id in the body",
                h.clone(),
                format!("{}&client_id=svc", ep.params()),
                Expect::Ok,
            ),
            ep.case(
                "a client id of 10 KB in Basic",
                with(
                    h.clone(),
                    "authorization",
                    &basic_header(&"a".repeat(10 * 1024), SECRET),
                ),
                good.clone(),
                unauthorized(),
            ),
            ep.case(
                "a client id with a NUL in Basic",
                with(h.clone(), "authorization", &basic_header("svc\0", SECRET)),
                good.clone(),
                unauthorized(),
            ),
            ep.case(
                "a client id with a line feed in Basic",
                with(h.clone(), "authorization", &basic_header("svc\n", SECRET)),
                good.clone(),
                unauthorized(),
            ),
            ep.case(
                "a wrong secret in Basic",
                with(h.clone(), "authorization", &basic_header("svc", "wrong")),
                good.clone(),
                unauthorized(),
            ),
            ep.case(
                "no credentials at all",
                without(h.clone(), "authorization"),
                good.clone(),
                unauthorized(),
            ),
        ]);
    }
    if ep.kind == Kind::Token {
        cases.extend([
            ep.case(
                "an unknown grant_type",
                h.clone(),
                "grant_type=password",
                Error(400, "unsupported_grant_type"),
            ),
            ep.case(
                "an unknown grant_type, with control characters",
                h.clone(),
                "grant_type=client%00credentials",
                Error(400, "unsupported_grant_type"),
            ),
            ep.case(
                "a scope with a character RFC 6749 §3.3 does not allow",
                h.clone(),
                "grant_type=client_credentials&scope=a%22b",
                Error(400, "invalid_scope"),
            ),
            ep.case(
                "grant_type as a JSON body",
                with(h.clone(), "content-type", "application/json"),
                r#"{"grant_type":"client_credentials"}"#,
                bad(),
            ),
        ]);
    }
    // RFC 6749 §3.2: OAuth parameters go in the body; one in the URI is refused, not ignored
    // (a scope there would be dropped and the token wider than asked; a secret there has
    // leaked to every log on the way). Another query parameter (a gateway's) is the route's.
    for (query, expect) in [
        ("scope=read", bad()),
        ("client_secret=x", bad()),
        ("tok%65n=x", bad()),
        ("x&scope=read&x", bad()),
        ("trace=1", Expect::Ok),
        // A gateway's query is the route's to read, however it is written.
        ("trace=1&trace=2", Expect::Ok),
        ("sig=%FF&x", Expect::Ok),
    ] {
        let mut in_uri = ep.case(
            &format!("a parameter in the URI: {query}"),
            h.clone(),
            good.clone(),
            expect,
        );
        let joint = if ep.path.contains('?') { '&' } else { '?' };
        in_uri.path = format!("{}{joint}{query}", ep.path);
        cases.push(in_uri);
    }
    let mut wrong_method = ep.case("GET", h.clone(), "", Error(405, "invalid_request"));
    wrong_method.method = Method::GET;
    cases.push(wrong_method);
    cases
}

/// The rows for tenants that do not exist (or cannot: malformed ids).
fn unknown_tenant_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for tenant in ["nope", "bad!id", "%FF", &"t".repeat(100)] {
        for (suffix, kind) in [
            ("/oauth2/token", Kind::Token),
            ("/oauth2/revoke", Kind::Revoke),
            ("/oauth2/introspect", Kind::Introspect),
            ("/api/id/v1/auth/token/revoke", Kind::IdV1),
            ("/api/v1.0/oauth2/revoke", Kind::ApiV10),
        ] {
            let ep = Endpoint {
                path: format!("/tenants/{tenant}{suffix}"),
                kind,
            };
            cases.push(ep.case(
                &format!("unknown tenant {tenant}"),
                ep.headers(),
                ep.params(),
                Expect::Error(404, "not_found"),
            ));
        }
        for path in [
            format!("/.well-known/oauth-authorization-server/tenants/{tenant}"),
            format!("/tenants/{tenant}/.well-known/oauth-authorization-server"),
        ] {
            cases.push(Case {
                what: format!("metadata of unknown tenant {tenant}"),
                method: Method::GET,
                path,
                headers: vec![],
                body: vec![],
                expect: Expect::Error(404, "not_found"),
                style: Style::Snake,
            });
        }
        if tenant == "%FF" {
            // See `a_sentinel_account_that_is_not_utf8_gets_a_json_401`.
            continue;
        }
        // Seed 000: an unknown account is a failed authentication.
        let ep = Endpoint {
            path: format!("/sentinel/api/account/{tenant}/token/revoke?v=1.0"),
            kind: Kind::Sentinel,
        };
        cases.push(ep.case(
            &format!("unknown account {tenant}"),
            ep.headers(),
            ep.with_default_body_credentials(ep.params()),
            Expect::Error(401, "invalid_client"),
        ));
    }
    cases
}

/// Rows for the admin API's JSON endpoints.
fn admin_cases() -> Vec<Case> {
    use Expect::Error;
    let bad = || Error(400, "invalid_request");
    let json_ct = "application/json";
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let h = || -> Vec<(&'static str, String)> {
        vec![
            ("content-type", json_ct.to_owned()),
            ("authorization", bearer.clone()),
        ]
    };
    let case = |what: &str,
                method: Method,
                path: &str,
                headers: Vec<(&'static str, String)>,
                body: Vec<u8>,
                expect: Expect| Case {
        what: what.to_owned(),
        method,
        path: format!("/admin/v1{path}"),
        headers,
        body,
        expect,
        style: Style::Snake,
    };
    let mut cases = Vec::new();
    // Each JSON-body endpoint, with a valid body for it.
    let endpoints: [(&str, Value); 4] = [
        ("/tenants", json!({ "tenant_id": "fresh" })),
        (
            "/tenants/default/clients",
            json!({ "client_id": "fresh", "client_secret": "x" }),
        ),
        (
            "/tenants/default/clients/svc/secret",
            json!({ "client_secret": "y" }),
        ),
        (
            "/tenants/default/grants",
            json!({ "client_id": "svc", "subject": "alice" }),
        ),
    ];
    for (path, valid) in &endpoints {
        let valid_bytes = serde_json::to_vec(valid).unwrap();
        let field = valid.as_object().unwrap().keys().next().unwrap().clone();
        let mut json_big = format!("{{\"{field}\":\"").into_bytes();
        json_big.resize(ONE_MB, b'a');
        json_big.extend_from_slice(b"\"}");
        let post = |what: &str, headers, body: Vec<u8>, expect| {
            case(what, Method::POST, path, headers, body, expect)
        };
        cases.extend([
            post("empty body", h(), vec![], bad()),
            post(
                "no Content-Type",
                without(h(), "content-type"),
                valid_bytes.clone(),
                bad(),
            ),
            post(
                "a form instead of JSON",
                with(h(), "content-type", FORM_CT),
                format!("{field}=x").into_bytes(),
                bad(),
            ),
            post(
                "a multipart body",
                with(h(), "content-type", MULTIPART_CT),
                multipart(&[(&field, "x")]),
                bad(),
            ),
            post(
                "malformed JSON",
                h(),
                format!("{{\"{field}\":").into_bytes(),
                bad(),
            ),
            post("a JSON array", h(), b"[]".to_vec(), bad()),
            post(
                "a non-UTF-8 JSON string",
                h(),
                {
                    let mut b = format!("{{\"{field}\":\"a").into_bytes();
                    b.extend_from_slice(b"\xff\xfe\"}");
                    b
                },
                bad(),
            ),
            post(
                "a duplicated field",
                h(),
                format!("{{\"{field}\":\"a\",\"{field}\":\"b\"}}").into_bytes(),
                bad(),
            ),
            post(
                "an unknown field",
                h(),
                format!("{{\"{field}\":\"a\",\"nonsense\":1}}").into_bytes(),
                bad(),
            ),
            post("a 1 MB field", h(), json_big, Error(413, "invalid_request")),
            post(
                "a 10 MB body",
                h(),
                big("{\"x\":\"", TEN_MB),
                Error(413, "invalid_request"),
            ),
            post(
                "no admin token",
                without(h(), "authorization"),
                valid_bytes.clone(),
                Error(401, "invalid_token"),
            ),
            post(
                "Basic instead of Bearer",
                with(h(), "authorization", &basic_header("admin", ADMIN_TOKEN)),
                valid_bytes.clone(),
                Error(401, "invalid_token"),
            ),
            post(
                "a wrong admin token",
                with(h(), "authorization", "Bearer wrong"),
                valid_bytes.clone(),
                Error(401, "invalid_token"),
            ),
        ]);
    }
    let post = |what: &str, path: &str, body: Value, expect| {
        case(
            what,
            Method::POST,
            path,
            h(),
            serde_json::to_vec(&body).unwrap(),
            expect,
        )
    };
    cases.extend([
        post(
            "a malformed tenant id",
            "/tenants",
            json!({ "tenant_id": "bad id" }),
            bad(),
        ),
        post(
            "a 10 KB tenant id",
            "/tenants",
            json!({ "tenant_id": "t".repeat(10 * 1024) }),
            bad(),
        ),
        post(
            "a client id with a NUL",
            "/tenants/default/clients",
            json!({ "client_id": "a\u{0}b", "client_secret": "x" }),
            bad(),
        ),
        post(
            "a client id with a line feed",
            "/tenants/default/clients",
            json!({ "client_id": "a\nb", "client_secret": "x" }),
            bad(),
        ),
        post(
            "a 10 KB client id",
            "/tenants/default/clients",
            json!({ "client_id": "c".repeat(10 * 1024), "client_secret": "x" }),
            bad(),
        ),
        post(
            "an unknown introspection setting",
            "/tenants/default/clients",
            json!({ "client_id": "x", "client_secret": "x", "introspects": "all" }),
            bad(),
        ),
        post(
            "a client id ending in a space",
            "/tenants/default/clients",
            json!({ "client_id": "app ", "client_secret": "x" }),
            bad(),
        ),
        post(
            "a client id with a right-to-left override",
            "/tenants/default/clients",
            json!({ "client_id": "app\u{202e}nimda", "client_secret": "x" }),
            bad(),
        ),
        post(
            "a client in an unknown tenant",
            "/tenants/nope/clients",
            json!({ "client_id": "x", "client_secret": "x" }),
            Error(404, "not_found"),
        ),
        post(
            "a client in a malformed tenant",
            "/tenants/bad!id/clients",
            json!({ "client_id": "x", "client_secret": "x" }),
            Error(404, "not_found"),
        ),
        post(
            "an unknown grant type",
            "/tenants/default/clients",
            json!({ "client_id": "x", "grant_types": ["password"] }),
            bad(),
        ),
        post(
            "a zero access-token lifetime",
            "/tenants/default/clients",
            json!({ "client_id": "x", "access_token_ttl": 0 }),
            bad(),
        ),
        post(
            "a zero refresh-token lifetime",
            "/tenants/default/clients",
            json!({ "client_id": "x", "refresh_token_ttl": 0 }),
            bad(),
        ),
        post(
            "a redirect URI with a NUL (PostgreSQL cannot store it)",
            "/tenants/default/clients",
            json!({ "client_id": "x", "redirect_uris": ["https://a/\u{0}"] }),
            bad(),
        ),
        post(
            "a rotation grace period above five minutes",
            "/tenants/default/clients",
            json!({ "client_id": "x", "grant_types": ["refresh_token"], "rotation_grace_period": 301 }),
            bad(),
        ),
        post(
            "a grant in an unknown tenant",
            "/tenants/nope/grants",
            json!({ "client_id": "svc", "subject": "alice" }),
            Error(404, "not_found"),
        ),
        post(
            "a grant for an unknown client",
            "/tenants/default/grants",
            json!({ "client_id": "nobody", "subject": "alice" }),
            Error(404, "not_found"),
        ),
        post(
            "a subject with control characters",
            "/tenants/default/grants",
            json!({ "client_id": "svc", "subject": "al\u{7}ice" }),
            bad(),
        ),
        post(
            "a secret for an unknown client",
            "/tenants/default/clients/nobody/secret",
            json!({}),
            Error(404, "not_found"),
        ),
    ]);
    let call = |what: &str, method: Method, path: &str, expect| {
        case(what, method, path, h(), vec![], expect)
    };
    cases.extend([
        call(
            "remove an unknown tenant",
            Method::DELETE,
            "/tenants/nope",
            Error(404, "not_found"),
        ),
        call(
            "remove an unknown grant",
            Method::DELETE,
            "/tenants/default/grants/nope",
            Error(404, "not_found"),
        ),
        call(
            "list clients of an unknown tenant",
            Method::GET,
            "/tenants/nope/clients",
            Error(404, "not_found"),
        ),
        call(
            "show an unknown client",
            Method::GET,
            "/tenants/default/clients/nobody",
            Error(404, "not_found"),
        ),
        call(
            "show a client id with %00",
            Method::GET,
            "/tenants/default/clients/a%00b",
            Error(404, "not_found"),
        ),
        call(
            "show a client id with %FF",
            Method::GET,
            "/tenants/default/clients/a%FFb",
            bad(),
        ),
        call(
            "grants of a subject in an unknown tenant",
            Method::GET,
            "/tenants/nope/subjects/alice/grants",
            Error(404, "not_found"),
        ),
        call(
            "log out a subject with a control character",
            Method::DELETE,
            "/tenants/default/subjects/a%0Ab/grants",
            bad(),
        ),
        call(
            "audit with a malformed query",
            Method::GET,
            "/tenants/default/audit?limit=%zz",
            bad(),
        ),
        call(
            "audit with a non-numeric limit",
            Method::GET,
            "/tenants/default/audit?limit=ten",
            bad(),
        ),
        call(
            "audit with limit 0",
            Method::GET,
            "/tenants/default/audit?limit=0",
            bad(),
        ),
        call(
            "audit with a duplicated parameter",
            Method::GET,
            "/tenants/default/audit?since=1&since=2",
            bad(),
        ),
        call(
            "audit of an unknown tenant",
            Method::GET,
            "/tenants/nope/audit",
            Error(404, "not_found"),
        ),
    ]);
    cases
}

/// What came back for one row.
struct Answer {
    status: u16,
    content_type: String,
    challenge: bool,
    body: Vec<u8>,
}

/// Bodies larger than this are sent by [`send_oversized`].
const RAW_ABOVE: usize = 64 * 1024;

async fn send(http: &reqwest::Client, base: &str, case: &Case) -> Result<Answer, String> {
    let mut req = http.request(case.method.clone(), format!("{base}{}", case.path));
    for (name, value) in &case.headers {
        req = req.header(*name, value.as_str());
    }
    let resp = req
        .body(case.body.clone())
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = resp.status().as_u16();
    let content_type = header("content-type").unwrap_or_default();
    let challenge = header("www-authenticate").is_some();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{status}, body unreadable: {e}"))?;
    Ok(Answer {
        status,
        content_type,
        challenge,
        body: body.to_vec(),
    })
}

/// Sends an oversized request as raw HTTP/1.1: the headers declare the whole body (or use
/// chunked encoding when `chunked`), but only the first 96 KiB of it are written before the
/// answer is read. The server must decide from the declared length, or from the first 64 KiB,
/// so this reads its answer deterministically, whereas a client that writes all 10 MB before
/// reading may find the connection reset under it (the server closes without draining).
fn send_oversized(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
    chunked: bool,
) -> Result<Answer, String> {
    use std::time::Duration;
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let sent = &body[..body.len().min(96 * 1024)];
    // Write errors are expected once the server has answered and closed.
    if chunked {
        for chunk in sent.chunks(8 * 1024) {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            if stream.write_all(&frame).is_err() {
                break;
            }
        }
    } else {
        let _ = stream.write_all(sent);
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived; what was read stands.
            Err(_) if !raw.is_empty() => break,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete answer: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut answer = Answer {
        status,
        content_type: String::new(),
        challenge: false,
        body: raw[split + 4..].to_vec(),
    };
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => answer.content_type = value.trim().to_owned(),
                "www-authenticate" => answer.challenge = true,
                "transfer-encoding" => return Err("unexpected chunked answer".into()),
                _ => {}
            }
        }
    }
    Ok(answer)
}

/// Sends one row's request and returns what is wrong with the answer, if anything.
async fn check(
    http: &reqwest::Client,
    base: &str,
    addr: std::net::SocketAddr,
    case: &Case,
) -> Option<String> {
    let answer = if case.body.len() > RAW_ABOVE {
        let (method, path, headers, body) = (
            case.method.to_string(),
            case.path.clone(),
            case.headers.clone(),
            case.body.clone(),
        );
        tokio::task::spawn_blocking(move || {
            send_oversized(addr, &method, &path, &headers, &body, false)
        })
        .await
        .unwrap()
    } else {
        send(http, base, case).await
    };
    let Answer {
        status,
        content_type,
        challenge,
        body: text,
    } = match answer {
        Ok(a) => a,
        Err(e) => return Some(e),
    };
    let shown = String::from_utf8_lossy(&text[..text.len().min(300)]).into_owned();
    if status >= 500 {
        return Some(format!("{status} {shown}"));
    }
    match &case.expect {
        Expect::Ok => {
            if status != 200 {
                return Some(format!("expected 200, got {status} {shown}"));
            }
            None
        }
        Expect::Error(want_status, want_code) => {
            let mut problems = Vec::new();
            if status != *want_status {
                problems.push(format!("status {status}, expected {want_status}"));
            }
            if content_type != "application/json" {
                problems.push(format!("content type {content_type:?}"));
            }
            match serde_json::from_slice::<Value>(&text) {
                Err(_) => problems.push("body is not JSON".into()),
                Ok(body) => {
                    if body["error"] != *want_code {
                        problems.push(format!("error {}, expected {want_code}", body["error"]));
                    }
                    let (field, other) = match case.style {
                        Style::Snake => ("error_description", "errorDescription"),
                        Style::Camel => ("errorDescription", "error_description"),
                    };
                    if !body[field].is_string() || body.get(other).is_some() {
                        problems.push(format!("description must be in {field} only"));
                    }
                    // RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E, whatever the input quoted.
                    let description = body[field].as_str().unwrap_or_default();
                    if let Some(c) = description
                        .chars()
                        .find(|c| !matches!(c, ' ' | '!' | '#'..='[' | ']'..='~'))
                    {
                        problems.push(format!("{c:?} in the description"));
                    }
                }
            }
            let sent_authorization = case.headers.iter().any(|(n, _)| *n == "authorization");
            if *want_code == "invalid_client" && sent_authorization && !challenge {
                problems.push("no WWW-Authenticate challenge after an Authorization header".into());
            }
            (!problems.is_empty())
                .then(|| format!("{} — got {status} {shown}", problems.join("; ")))
        }
    }
}

async fn client_in(s: &TestServer, tenant: &str, id: &str, secret: &str) -> TestClient {
    s.create_client(
        tenant,
        json!({
            "client_id": id,
            "client_secret": secret,
            "grant_types": ["client_credentials", "refresh_token"],
            "scope": "read",
        }),
    )
    .await
}

backend_test! {
    async fn every_endpoint_answers_bad_input_with_the_right_json_error() {
        let s = TestServer::start_with(|settings| {
            // This test makes hundreds of failed authentications on purpose; rate limiting
            // has its own tests (abuse.rs).
            settings.auth_limits = latch_http::AuthLimits {
                per_client: u32::MAX,
                per_address: u32::MAX,
                window: 60,
            };
        })
        .await;
        let resp = s.admin(Method::POST, "/tenants", Some(json!({ "tenant_id": "acme" }))).await;
        assert_eq!(resp.status(), 201);
        let mut clients = Vec::new();
        for tenant in ["default", "acme"] {
            clients.push(client_in(&s, tenant, "svc", SECRET).await);
            client_in(&s, tenant, WEIRD_ID, WEIRD_SECRET).await;
        }

        let mut endpoints = vec![Endpoint {
            path: "/sentinel/api/account/default/token/revoke?v=1.0".into(),
            kind: Kind::Sentinel,
        }, Endpoint {
            path: "/sentinel/api/account/acme/token/revoke".into(),
            kind: Kind::Sentinel,
        }];
        for prefix in ["", "/tenants/acme"] {
            for (suffix, kind) in [
                ("/oauth2/token", Kind::Token),
                ("/oauth2/revoke", Kind::Revoke),
                ("/oauth2/introspect", Kind::Introspect),
                ("/api/id/v1/auth/token/revoke", Kind::IdV1),
                ("/api/v1.0/oauth2/revoke", Kind::ApiV10),
            ] {
                endpoints.push(Endpoint { path: format!("{prefix}{suffix}"), kind });
            }
        }
        let mut cases: Vec<Case> = endpoints.iter().flat_map(form_cases).collect();
        cases.extend(unknown_tenant_cases());
        cases.extend(admin_cases());
        let unknown_path = Case {
            what: "an unknown path".into(),
            method: Method::POST,
            path: "/oauth2/authorize".into(),
            headers: vec![("content-type", FORM_CT.into())],
            body: vec![],
            expect: Expect::Error(404, "not_found"),
            style: Style::Snake,
        };
        cases.push(unknown_path);

        // A fresh connection per request, so that a connection the server closed after a
        // 413 cannot be blamed on the next row.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut failures = Vec::new();
        for case in &cases {
            if let Some(problem) = check(&http, &s.base, s.addr, case).await {
                failures.push(format!("{} {} [{}]: {problem}", case.method, case.path, case.what));
            }
        }

        // A body over the limit without Content-Length: only the streaming limit stops it.
        for ep in &endpoints {
            let (path, headers, body) = (ep.path.clone(), ep.headers(), big(&ep.with_default_body_credentials(ep.params()), ONE_MB));
            let addr = s.addr;
            let answer = tokio::task::spawn_blocking(move || send_oversized(addr, "POST", &path, &headers, &body, true))
                .await
                .unwrap();
            match answer {
                Ok(a) if a.status == 413 && a.content_type == "application/json" => {}
                Ok(a) => failures.push(format!("POST {} [a chunked 1 MB body]: got {} {}", ep.path, a.status, String::from_utf8_lossy(&a.body))),
                Err(e) => failures.push(format!("POST {} [a chunked 1 MB body]: {e}", ep.path)),
            }
        }

        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            cases.len() + endpoints.len(),
            failures.join("\n")
        );

        // The server still serves, in both tenants, with ordinary and §2.3.1 credentials.
        let at = s.client_credentials(&clients[0]).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(s.is_active(&at).await);
        let weird = TestClient { id: WEIRD_ID.into(), secret: Some(WEIRD_SECRET.into()) };
        let resp = s
            .post_form("/tenants/acme/oauth2/token", common::Auth::Basic(&weird), &[("grant_type", "client_credentials")])
            .await;
        assert_eq!(resp.status(), 200);
        let resp = s.post_form("/oauth2/revoke", common::Auth::Basic(&weird), &[("token", &at)]).await;
        common::assert_error(resp, 400, "invalid_request").await; // another client's token
        let resp = s.revoke(common::Auth::Basic(&clients[0]), &at).await;
        assert_eq!(resp.status(), 200);
        assert!(!s.is_active(&at).await);
        let ready = s.http.get(s.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_account_that_is_not_utf8_gets_a_json_401() {
    // Seed 000 answers an unknown account with 401 ("Bad Authentication (invalid site or
    // application id)"), in JSON like every other error; an account segment that does not
    // even decode to UTF-8 is no different.
    let s = TestServer::start().await;
    client_in(&s, "default", "svc", SECRET).await;
    let resp = s
        .post_raw(
            "/sentinel/api/account/%FF/token/revoke?v=1.0",
            &[("content-type", FORM_CT)],
            format!("token={UNKNOWN_TOKEN}&client_id=svc&client_secret={SECRET}").into_bytes(),
        )
        .await;
    common::assert_error(resp, 401, "invalid_client").await;
}
