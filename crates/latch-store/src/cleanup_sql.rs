//! The clean-up's SQL, shared by both back-ends: expired rows and old audit records, deleted
//! in bounded batches. Each back-end renders the placeholders in its own syntax.

/// A table whose expired rows the clean-up deletes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expiring {
    /// `tokens`, keyed by `hash`.
    Tokens,
    /// `grants`, keyed by `id`.
    Grants,
}

/// Deletes at most parameter 2 rows of `table` that expired at or before parameter 1;
/// `param(n)` renders parameter `n`.
pub(crate) fn purge_expired_sql(table: Expiring, param: impl Fn(usize) -> String) -> String {
    let (table, key) = match table {
        Expiring::Tokens => ("tokens", "hash"),
        Expiring::Grants => ("grants", "id"),
    };
    format!(
        "DELETE FROM {table} WHERE {key} IN \
         (SELECT {key} FROM {table} WHERE expires_at <= {} LIMIT {})",
        param(1),
        param(2),
    )
}

/// Deletes the audit records written before parameter 1 among the oldest (parameter 2)
/// records. Ids grow with time, so the oldest are the ones to go, and a batch reads only
/// that many rows of the primary key however long the trail is.
pub(crate) fn purge_audit_sql(param: impl Fn(usize) -> String) -> String {
    format!(
        "DELETE FROM audit WHERE at < {} AND id IN (SELECT id FROM audit ORDER BY id LIMIT {})",
        param(1),
        param(2),
    )
}
