//! The clean-up's SQL, shared by both back-ends: expired rows and old audit records, deleted
//! in bounded batches. Each back-end renders the placeholders in its own syntax.

use latch_core::store::{Purged, Sweep};
use latch_core::token::TokenHash;

/// A table an expiry sweep reads ([`Sweep`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Swept {
    /// `tokens`, keyed by `hash` (a BLOB).
    Tokens,
    /// `grants`, keyed by `id` (TEXT).
    Grants,
}

impl Swept {
    /// The table a sweep position is in.
    pub(crate) fn of(from: &Sweep) -> Self {
        match from {
            Sweep::Tokens(_) => Swept::Tokens,
            Sweep::Grants(_) => Swept::Grants,
        }
    }

    fn table_and_key(self) -> (&'static str, &'static str) {
        match self {
            Swept::Tokens => ("tokens", "hash"),
            Swept::Grants => ("grants", "id"),
        }
    }
}

/// The key a sweep batch starts after, as its SQL parameter: the empty BLOB or string, which
/// sorts before every key, for the start of a table.
pub(crate) enum SweepKey<'a> {
    /// A token key.
    Token(&'a [u8]),
    /// A grant id.
    Grant(&'a str),
}

impl<'a> SweepKey<'a> {
    /// Where the batch `from` starts.
    pub(crate) fn after(from: &'a Sweep) -> Self {
        match from {
            Sweep::Tokens(key) => SweepKey::Token(key.as_ref().map_or(&[], |k| k.as_bytes())),
            Sweep::Grants(id) => SweepKey::Grant(id.as_ref().map_or("", |g| g.as_str())),
        }
    }
}

/// The key of the (parameter 2 + 1)-th row past key parameter 1, in key order: the last row
/// of a sweep batch of that many rows. No row when fewer are left; the batch then runs to
/// the end of the table.
pub(crate) fn sweep_end_sql(table: Swept, param: impl Fn(usize) -> String) -> String {
    let (table, key) = table.table_and_key();
    format!(
        "SELECT {key} FROM {table} WHERE {key} > {} ORDER BY {key} LIMIT 1 OFFSET {}",
        param(1),
        param(2),
    )
}

/// Deletes the rows past key parameter 1 that expired at or before parameter 2: up to and
/// including key parameter 3 when `bounded`, to the end of the table otherwise. A range of
/// the primary key, read in order: no index on the expiry time is needed.
///
/// With `skip_locked` (PostgreSQL, where other nodes write), a row another transaction holds
/// locked (another node's removal or revocation) is left for the next run rather than
/// waited for: a sweep waiting on it would hold the rows it had already deleted locked
/// meanwhile, and every write of the node that touches them (a subject's log-out revokes
/// its expired grants too) would wait with it.
pub(crate) fn sweep_delete_sql(
    table: Swept,
    bounded: bool,
    skip_locked: bool,
    param: impl Fn(usize) -> String,
) -> String {
    let (table, key) = table.table_and_key();
    let upper = if bounded {
        format!(" AND {key} <= {}", param(3))
    } else {
        String::new()
    };
    let expired = format!("{key} > {}{upper} AND expires_at <= {}", param(1), param(2));
    if skip_locked {
        format!(
            "DELETE FROM {table} WHERE {key} IN \
             (SELECT {key} FROM {table} WHERE {expired} FOR UPDATE SKIP LOCKED)"
        )
    } else {
        format!("DELETE FROM {table} WHERE {expired}")
    }
}

/// The position after a token batch whose last row has the key read back as `end`. Every
/// key was written from a [`TokenHash`], so it reads back as one; should one not, the batch
/// runs to the end of the table instead, which deletes the same expired rows (only in a
/// larger transaction) and moves on to the grants.
pub(crate) fn token_sweep_end(end: Option<TokenHash>) -> Option<Sweep> {
    if end.is_none() {
        tracing::error!("a token key of neither stored length; sweeping to the end of tokens");
    }
    end.map(|key| Sweep::Tokens(Some(key)))
}

/// What a sweep batch of `from`'s table that deleted `deleted` rows purged.
pub(crate) fn swept(from: &Sweep, deleted: u64) -> Purged {
    match Swept::of(from) {
        Swept::Tokens => Purged {
            tokens: deleted,
            ..Purged::default()
        },
        Swept::Grants => Purged {
            grants: deleted,
            ..Purged::default()
        },
    }
}

/// Where the sweep goes after the batch `from`: on past `end`, the position of the batch's
/// last row; or, once the batch ran to the end of its table (`end` is `None`), to the start
/// of the next table, or nowhere after the last.
pub(crate) fn next_sweep(from: &Sweep, end: Option<Sweep>) -> Option<Sweep> {
    match (from, end) {
        (_, Some(end)) => Some(end),
        (Sweep::Tokens(_), None) => Some(Sweep::Grants(None)),
        (Sweep::Grants(_), None) => None,
    }
}

/// How many of the oldest records a batch of the audit purge reads, per record it may
/// delete: ids grow with time, but a record written by a clock that ran ahead (or before it
/// was stepped back) is younger than those after it, and must not hold them back.
pub(crate) const AUDIT_PURGE_HEAD: u32 = 4;

/// Deletes at most parameter 2 audit records written before parameter 1, among the oldest
/// parameter 3 records (`AUDIT_PURGE_HEAD` times parameter 2). Ids grow with time, so the
/// oldest are the ones to go, and a batch reads only that many rows of the primary key
/// however long the trail is. Reading only as many as it may delete, a batch that met one
/// younger record deleted one fewer than a full batch, which ended the purge: a trail
/// behind such a record was purged a batch less one per run, less than a busy server writes.
pub(crate) fn purge_audit_sql(param: impl Fn(usize) -> String) -> String {
    format!(
        "DELETE FROM audit WHERE id IN (SELECT id FROM \
           (SELECT id, at FROM audit ORDER BY id LIMIT {}) AS head \
         WHERE at < {} ORDER BY id LIMIT {})",
        param(3),
        param(1),
        param(2),
    )
}
