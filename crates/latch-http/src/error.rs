//! The one place where failures become HTTP responses: status, RFC 6749 §5.2 error code,
//! JSON body, and headers.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use latch_core::Error;
use serde::Serialize;

use crate::log_budget::LogBudget;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    description: Cow<'static, str>,
    /// `WWW-Authenticate` value for 401s.
    challenge: Option<&'static str>,
    /// `Retry-After` seconds.
    retry_after: Option<u32>,
}

/// The body shape of an error. RFC 6749 §5.2 uses snake_case; a compatibility profile may
/// need another spelling of the same two fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"error": ..., "error_description": ...}`.
    #[default]
    Rfc6749,
    /// `{"error": ..., "errorDescription": ...}`.
    CamelCase,
}

#[derive(Serialize)]
struct Rfc6749Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

#[derive(Serialize)]
struct CamelCaseBody<'a> {
    error: &'a str,
    #[serde(rename = "errorDescription")]
    error_description: &'a str,
}

/// Whether `c` may appear in an `error_description`: RFC 6749 §5.2 allows only
/// `%x20-21 / %x23-5B / %x5D-7E` (printable ASCII but `"` and `\`).
fn allowed_in_description(c: char) -> bool {
    matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
}

/// Puts a description in RFC 6749 §5.2's character set, for every error of every route:
/// messages may quote what a client sent (a parameter's name, say), which can be anything.
/// A description already in the set, as nearly all are, is kept as it is.
fn rfc6749_description(description: Cow<'static, str>) -> Cow<'static, str> {
    if description.chars().all(allowed_in_description) {
        return description;
    }
    let mut out = String::with_capacity(description.len());
    for c in description.chars() {
        match c {
            c if allowed_in_description(c) => out.push(c),
            '"' => out.push('\''),
            '\\' => out.push('/'),
            '\u{a7}' => out.push_str("section "),
            _ => out.push('?'),
        }
    }
    out.into()
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            description: rfc6749_description(description.into()),
            challenge: None,
            retry_after: None,
        }
    }

    /// `400 invalid_request`.
    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// `401 invalid_client`; with a Basic challenge when the client tried Basic
    /// (RFC 6749 §5.2).
    pub fn invalid_client(basic_attempted: bool) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        if basic_attempted {
            e.challenge = Some("Basic realm=\"latch\", charset=\"UTF-8\"");
        }
        e
    }

    /// `413` for an oversized body.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("the request body exceeds {limit} bytes"),
        )
    }

    /// `408` for a request body not received within `timeout`.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            format!(
                "the request body was not received within {} s",
                timeout.as_secs()
            ),
        )
    }

    /// `405` for a method the route does not serve.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "method not allowed",
        )
    }

    /// `404`.
    pub fn not_found(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", description)
    }

    /// `401` for the admin API. The challenge names the error only for a bearer token that
    /// was presented and is wrong: a request without one gets none (RFC 6750 §3, §3.1).
    pub fn admin_unauthorized(token_presented: bool) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "a valid admin bearer token is required",
        );
        e.challenge = Some(if token_presented {
            "Bearer realm=\"latch-admin\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"latch-admin\""
        });
        e
    }

    /// `429` after too many failed authentications; retry after `secs`.
    pub fn too_many_requests(secs: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("too many failed client authentications; retry in {secs} seconds"),
        );
        e.retry_after = Some(secs.max(1));
        e
    }

    /// `500`, for a handler that panicked (a bug; the server keeps serving).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error",
        )
    }

    /// Adds the Basic challenge to an `invalid_client` error when Basic was attempted.
    pub fn with_basic_challenge(mut self, basic_attempted: bool) -> Self {
        if basic_attempted && self.code == "invalid_client" {
            self.challenge = Some("Basic realm=\"latch\", charset=\"UTF-8\"");
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Renders the error in the given body style.
    pub fn into_response_styled(self, style: ErrorStyle) -> Response {
        let body = match style {
            ErrorStyle::Rfc6749 => serde_json::to_vec(&Rfc6749Body {
                error: self.code,
                error_description: &self.description,
            }),
            ErrorStyle::CamelCase => serde_json::to_vec(&CamelCaseBody {
                error: self.code,
                error_description: &self.description,
            }),
        }
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(challenge) = self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_styled(ErrorStyle::Rfc6749)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let description = e.to_string();
        match e {
            Error::InvalidRequest(_) => Self::invalid_request(description),
            Error::InvalidClient | Error::UnknownClient => Self::invalid_client(false),
            Error::InvalidGrant(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
            }
            Error::UnauthorizedClient(_) => {
                Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", description)
            }
            Error::UnsupportedGrantType(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                description,
            ),
            Error::InvalidScope(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
            }
            Error::NotFound(_) => Self::not_found(description),
            Error::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", description),
            Error::Throttled(wait) => Self::too_many_requests(wait),
            Error::Storage(e) => {
                // RFC 7009 §2.2.1: 503 tells the client to retry. Nothing is reported done,
                // and nothing is promised undone either: a write whose connection was lost
                // after its COMMIT was sent may have landed (a retried refresh exchange is
                // then a reuse).
                static BUDGET: LogBudget = LogBudget::new();
                if let Some(left_out) = BUDGET.admit() {
                    tracing::error!(error = %e, left_out, "storage failure");
                }
                let mut err = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "storage is unavailable; retry later",
                );
                err.retry_after = Some(1);
                err
            }
        }
    }
}
