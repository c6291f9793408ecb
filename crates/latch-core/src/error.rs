//! The domain's errors. The HTTP layer maps each variant to a status and an RFC 6749 §5.2
//! error code in exactly one place.

use std::borrow::Cow;

/// A failure of the storage layer. Every variant means "not done": the caller must not
/// report success, and OAuth endpoints answer `503 temporarily_unavailable`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, read or written (I/O error, disk full, locked too
    /// long, connection lost). The operation did not take effect.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness constraint was violated (e.g. a client id that already exists).
    #[error("already exists")]
    Conflict,
}

/// Every way a domain operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or violates a protocol rule (`invalid_request`).
    #[error("{0}")]
    InvalidRequest(Cow<'static, str>),
    /// Client authentication failed (`invalid_client`).
    #[error("client authentication failed")]
    InvalidClient,
    /// No client of the tenant has the presented id (or it is no client id at all):
    /// `invalid_client` too, the answer the same as for a wrong secret. Told apart so that
    /// the presented id is not logged: it may be what a client sent in its place by mistake,
    /// its secret or a token.
    #[error("client authentication failed")]
    UnknownClient,
    /// The grant (refresh token) is invalid, expired, revoked or was issued to another
    /// client (`invalid_grant`).
    #[error("{0}")]
    InvalidGrant(Cow<'static, str>),
    /// The client may not use this grant type (`unauthorized_client`).
    #[error("{0}")]
    UnauthorizedClient(Cow<'static, str>),
    /// The grant type is unknown (`unsupported_grant_type`).
    #[error("{0}")]
    UnsupportedGrantType(Cow<'static, str>),
    /// The requested scope is invalid or exceeds what is allowed (`invalid_scope`).
    #[error("{0}")]
    InvalidScope(Cow<'static, str>),
    /// An administered resource does not exist.
    #[error("{0}")]
    NotFound(Cow<'static, str>),
    /// The change conflicts with an administered resource's state: it exists already, or
    /// the configuration file manages it.
    #[error("{0}")]
    Conflict(Cow<'static, str>),
    /// Client authentication refused for now by the caller's rate limit
    /// ([`crate::secret::Admission`]): retry after this many seconds.
    #[error("too many client authentications; retry in {0} seconds")]
    Throttled(u32),
    /// Storage failed; nothing was done (`temporarily_unavailable`).
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl Error {
    /// Shorthand for [`Error::InvalidRequest`].
    pub fn invalid_request(msg: impl Into<Cow<'static, str>>) -> Self {
        Error::InvalidRequest(msg.into())
    }
}
