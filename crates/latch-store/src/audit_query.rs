//! The audit trail's query, shared by both back-ends (its retention purge is in
//! [`crate::cleanup_sql`]). Each back-end renders the placeholders in its own syntax.

/// The audit trail's index by subject is keyed by block first, a block being the records
/// whose ids share all but their last `AUDIT_BLOCK_BITS` bits (SQLite schema version 10,
/// `sqlite/schema_v10.sql`; PostgreSQL schema version 8, `postgres/schema_v8.sql`): new
/// records land in the current block's few hundred leaves, wherever their subjects sort,
/// instead of one random leaf of the whole trail's index each.
/// A block of 65,536 records holds some 650 leaves; a query by subject probes each block once
/// (1,526 probes per 100 million records kept).
pub(crate) const AUDIT_BLOCK_BITS: u32 = 16;

/// The block of the audit record `id` in the index by subject.
pub(crate) fn audit_block(id: i64) -> i64 {
    id >> AUDIT_BLOCK_BITS
}

/// Where a query of the trail starts: the id to start after (ids start at 1, so an `after`
/// below 0 selects what 0 does) and the first block that can hold a later record.
pub(crate) fn audit_query_start(after: Option<i64>) -> (i64, i64) {
    let after = after.unwrap_or(0).max(0);
    (after, audit_block(after.saturating_add(1)))
}

/// The id of a tenant's first audit record (parameter 1) past the cursor (parameter 2), one
/// probe of `audit_by_tenant`: where a page asked for with `since` starts counting its span
/// (`AuditQuery::read_to`).
pub(crate) fn audit_first_after_sql(param: impl Fn(usize) -> String) -> String {
    format!(
        "SELECT min(id) FROM audit WHERE tenant_id = {} AND id > {}",
        param(1),
        param(2)
    )
}

/// An audit record's columns, in the order both back-ends decode them.
pub(crate) const AUDIT_COLUMNS: &str =
    "id, tenant_id, at, actor, route, reason, grant_id, subject, grants, tokens, address";

/// Which of a tenant's audit events a query selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuditSelect {
    /// Every subject's.
    All,
    /// One subject's within one block (parameter 6), through the index keyed by block.
    SubjectInBlock,
}

/// Selects a tenant's audit events in id order. Parameters: 1 the tenant, 2 the subject (NULL
/// for every subject), 3 the earliest time (or NULL), 4 the id to start after, 5 the limit,
/// for [`AuditSelect::SubjectInBlock`] 6 the block, and if `settled` 7 the last id every
/// record up to which has settled (committed or rolled back: PostgreSQL's
/// `postgres::reads::settled_audit_id`); `param(n)` renders parameter `n`.
///
/// The subject condition is spelled out only when a subject is asked for. The one-statement
/// form `(p2 IS NULL OR subject = p2)` keeps the planner from using the index by subject,
/// since it must also serve a NULL, so a subject's events were found by reading the tenant's
/// whole trail.
pub(crate) fn audit_events_sql(
    select: AuditSelect,
    settled: bool,
    param: impl Fn(usize) -> String,
) -> String {
    let subject = match select {
        AuditSelect::All => format!("{} IS NULL", param(2)),
        // Spelled as the index's expression, which is how both back-ends match the two.
        AuditSelect::SubjectInBlock => format!(
            "(id >> {AUDIT_BLOCK_BITS}) = {} AND subject = {}",
            param(6),
            param(2)
        ),
    };
    let settled = if settled {
        format!(" AND id <= {}", param(7))
    } else {
        String::new()
    };
    format!(
        "SELECT {AUDIT_COLUMNS} FROM audit \
         WHERE tenant_id = {} AND {subject} AND ({since} IS NULL OR at >= {since}) \
           AND id > {}{settled} \
         ORDER BY id LIMIT {}",
        param(1),
        param(4),
        param(5),
        since = param(3),
    )
}
