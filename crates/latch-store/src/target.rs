//! What a revocation writes to, shared by both back-ends: one token row, or the grants whose
//! columns equal the given values. Each back-end renders the condition with its own
//! placeholder syntax.

use latch_core::grant::Revocation;
use latch_core::token::TokenHash;

/// The rows a revocation kills.
pub(crate) enum Target<'a> {
    /// One token.
    Token(&'a TokenHash),
    /// The live grants whose columns equal these values.
    Grants(Vec<(&'static str, &'a str)>),
}

impl<'a> Target<'a> {
    pub(crate) fn of(revocation: &'a Revocation) -> Self {
        match revocation {
            Revocation::Token(hash) => Target::Token(hash),
            Revocation::Grant(id) => Target::Grants(vec![("id", id.as_str())]),
            Revocation::Subject { tenant, subject } => Target::Grants(vec![
                ("tenant_id", tenant.as_str()),
                ("subject", subject.as_str()),
            ]),
            Revocation::Client { tenant, client_id } => Target::Grants(vec![
                ("tenant_id", tenant.as_str()),
                ("client_id", client_id.as_str()),
            ]),
            Revocation::Tenant(tenant) => Target::Grants(vec![("tenant_id", tenant.as_str())]),
        }
    }
}

/// `g.col1 = P2 AND g.col2 = P3 …` for grant columns, with placeholders from `placeholder`
/// starting at 2 (the first parameter is always the time of the revocation).
pub(crate) fn grant_condition(
    columns: &[(&'static str, &str)],
    placeholder: impl Fn(usize) -> String,
) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(i, (column, _))| format!("g.{column} = {}", placeholder(i + 2)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Revokes the unrevoked grants matching the condition, expired or not (a clock that lags
/// this one may still take an expired one as live); `now` is the placeholder of parameter 1.
/// Each back-end counts as killed only those live by `now`.
pub(crate) fn revoke_grants_sql(now: &str, condition: &str) -> String {
    format!("UPDATE grants AS g SET revoked_at = {now} WHERE g.revoked_at IS NULL AND {condition}")
}
