//! The audit trail's query, shared by both back-ends (its retention purge is in
//! [`crate::cleanup_sql`]). Each back-end renders the placeholders in its own syntax.

/// Selects a tenant's audit events in id order. Parameters: 1 the tenant, 2 the subject (NULL
/// for every subject), 3 the earliest time (or NULL), 4 the id to start after, 5 the limit;
/// `param(n)` renders parameter `n`.
///
/// The subject condition is spelled out only when a subject is asked for (`by_subject`). The
/// one-statement form `(p2 IS NULL OR subject = p2)` keeps the planner from using the
/// `(tenant_id, subject, id)` index, since it must also serve a NULL, so a subject's events were
/// found by reading the tenant's whole trail.
pub(crate) fn audit_events_sql(by_subject: bool, param: impl Fn(usize) -> String) -> String {
    let subject = if by_subject {
        format!("subject = {}", param(2))
    } else {
        format!("{} IS NULL", param(2))
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
