//! The audit trail's query, shared by both back-ends (its retention purge is in
//! [`crate::cleanup_sql`]). Each back-end renders the placeholders in its own syntax.

/// SQLite's index of the audit trail by subject is keyed by block first, a block being the
/// records whose ids share all but their last `AUDIT_BLOCK_BITS` bits (schema version 10,
/// `sqlite/schema_v10.sql`): new records land in the current block's few hundred leaves,
/// wherever their subjects sort, instead of one random leaf of the whole trail's index each.
/// A block of 65,536 records holds some 650 leaves; a query by subject probes each block once
/// (1,526 probes per 100 million records kept).
pub(crate) const AUDIT_BLOCK_BITS: u32 = 16;

/// The block of the audit record `id` in SQLite's index by subject.
pub(crate) fn audit_block(id: i64) -> i64 {
    id >> AUDIT_BLOCK_BITS
}

/// Which of a tenant's audit events a query selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuditSelect {
    /// Every subject's.
    All,
    /// One subject's, through an index keyed by subject (PostgreSQL).
    Subject,
    /// One subject's within one block (parameter 6), through SQLite's index keyed by block.
    SubjectInBlock,
}

/// Selects a tenant's audit events in id order. Parameters: 1 the tenant, 2 the subject (NULL
/// for every subject), 3 the earliest time (or NULL), 4 the id to start after, 5 the limit,
/// and for [`AuditSelect::SubjectInBlock`] 6 the block; `param(n)` renders parameter `n`.
///
/// The subject condition is spelled out only when a subject is asked for. The one-statement
/// form `(p2 IS NULL OR subject = p2)` keeps the planner from using the index by subject,
/// since it must also serve a NULL, so a subject's events were found by reading the tenant's
/// whole trail.
pub(crate) fn audit_events_sql(select: AuditSelect, param: impl Fn(usize) -> String) -> String {
    let subject = match select {
        AuditSelect::All => format!("{} IS NULL", param(2)),
        AuditSelect::Subject => format!("subject = {}", param(2)),
        // Spelled as the index's expression, which is how SQLite matches the two.
        AuditSelect::SubjectInBlock => format!(
            "id >> {AUDIT_BLOCK_BITS} = {} AND subject = {}",
            param(6),
            param(2)
        ),
    };
    format!(
        "SELECT id, tenant_id, at, actor, route, reason, grant_id, subject, grants, tokens, \
                address FROM audit \
         WHERE tenant_id = {} AND {subject} AND ({since} IS NULL OR at >= {since}) \
           AND id > {} \
         ORDER BY id LIMIT {}",
        param(1),
        param(4),
        param(5),
        since = param(3),
    )
}
