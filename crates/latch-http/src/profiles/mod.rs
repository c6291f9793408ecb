//! Compatibility profiles: the revocation APIs of the three documents in `shared/seeds/`,
//! served so that a client written for one of them works against latch unchanged.
//!
//! A profile only translates: it reads its own request shape, calls the one revocation path
//! (`oauth2::revoke::revoke`, which authenticates the client and runs the engine), picks the
//! [`latch_core::revoke::Effect`], and writes its own response shape. See
//! `docs/compatibility.md`.

pub(crate) mod api_v1_0;
pub(crate) mod id_v1;
pub(crate) mod sentinel;

/// Which profiles are served. All are on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profiles {
    /// `POST /sentinel/api/account/{accountid}/token/revoke` (seed 000): logs the token's
    /// user out of every application of the account.
    pub sentinel: bool,
    /// `POST /api/id/v1/auth/token/revoke` (seed 001): camelCase JSON errors.
    pub id_v1: bool,
    /// `POST /api/v1.0/oauth2/revoke` (seed 002): RFC 7009 with `token_type`.
    pub api_v1_0: bool,
}

impl Default for Profiles {
    fn default() -> Self {
        Self {
            sentinel: true,
            id_v1: true,
            api_v1_0: true,
        }
    }
}
