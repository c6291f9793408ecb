//! The audit trail: every revocation is recorded in the same transaction that performs it,
//! and emitted as one structured log event (target `latch::audit`). No token value is ever
//! part of either.

use std::net::IpAddr;

use crate::clock::UnixTime;
use crate::id::{GrantId, Subject, TenantId};

/// Why something was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A client asked (RFC 7009 or a compatibility profile).
    ClientRequest,
    /// A refresh token was used twice outside the grace period (RFC 9700 §4.14.2).
    ReuseDetected,
    /// An operator revoked a grant through the admin API.
    Admin,
    /// Every grant of a subject, by the admin API or a logout-everywhere profile.
    LogoutEverywhere,
    /// The client was removed.
    ClientRemoved,
    /// The tenant was removed.
    TenantRemoved,
}

impl Reason {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ClientRequest => "client_request",
            Reason::ReuseDetected => "reuse_detected",
            Reason::Admin => "admin",
            Reason::LogoutEverywhere => "logout_everywhere",
            Reason::ClientRemoved => "client_removed",
            Reason::TenantRemoved => "tenant_removed",
        }
    }

    /// Whether a revocation for this reason is recorded even when nothing was alive to die:
    /// removing a client or a tenant is an operator's act worth its record whatever it
    /// revoked. Every other revocation is recorded only when it killed something, so that a
    /// client revoking the same token twice leaves one record.
    pub const fn always_recorded(self) -> bool {
        matches!(self, Reason::ClientRemoved | Reason::TenantRemoved)
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "client_request" => Reason::ClientRequest,
            "reuse_detected" => Reason::ReuseDetected,
            "admin" => Reason::Admin,
            "logout_everywhere" => Reason::LogoutEverywhere,
            "client_removed" => Reason::ClientRemoved,
            "tenant_removed" => Reason::TenantRemoved,
            _ => return None,
        })
    }
}

/// Where a request came from: the route (or profile) and the source address. The HTTP layer
/// fills it in; the domain records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The route or profile, e.g. `oauth2/revoke`, `sentinel`, `admin`.
    pub route: &'static str,
    /// The peer address, when known.
    pub address: Option<IpAddr>,
}

impl Origin {
    /// An origin with no address (CLI, background work).
    pub const fn internal(route: &'static str) -> Self {
        Self {
            route,
            address: None,
        }
    }
}

/// Who asked and why: handed to storage with a revocation, which adds what died.
#[derive(Clone, Debug)]
pub struct AuditContext {
    /// The tenant.
    pub tenant: TenantId,
    /// The client id that asked, or `admin`.
    pub actor: String,
    /// The route or profile.
    pub route: &'static str,
    /// Why.
    pub reason: Reason,
    /// The source address.
    pub address: Option<IpAddr>,
    /// When.
    pub at: UnixTime,
    /// The grant concerned, when the revocation is about one grant (or one of its tokens).
    pub grant_id: Option<GrantId>,
    /// The subject concerned, when the revocation is about one subject.
    pub subject: Option<Subject>,
}

impl AuditContext {
    /// The context of a revocation asked by `actor` through `route` at `at`, about no grant
    /// or subject yet ([`about`](Self::about) names them).
    pub fn new(
        tenant: TenantId,
        actor: impl Into<String>,
        route: &'static str,
        reason: Reason,
        address: Option<IpAddr>,
        at: UnixTime,
    ) -> Self {
        Self {
            tenant,
            actor: actor.into(),
            route,
            reason,
            address,
            at,
            grant_id: None,
            subject: None,
        }
    }

    /// Names the grant and subject the revocation is about (the domain has read them).
    pub fn about(mut self, grant_id: Option<&GrantId>, subject: Option<&Subject>) -> Self {
        self.grant_id = grant_id.cloned();
        self.subject = subject.cloned();
        self
    }

    /// The audit record of this revocation, once storage has written it as row `id`.
    pub fn event(&self, id: i64, killed: Killed) -> AuditEvent {
        AuditEvent {
            id,
            tenant: self.tenant.clone(),
            at: self.at,
            actor: self.actor.clone(),
            route: self.route.to_owned(),
            reason: self.reason,
            grant_id: self.grant_id.clone(),
            subject: self.subject.clone(),
            grants: killed.grants,
            tokens: killed.tokens,
            address: self.address.map(|a| a.to_string()),
        }
    }
}

/// A recorded revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increasing id, for paging.
    pub id: i64,
    /// The tenant.
    pub tenant: TenantId,
    /// When.
    pub at: UnixTime,
    /// The client id that asked, or `admin`.
    pub actor: String,
    /// The route or profile.
    pub route: String,
    /// Why.
    pub reason: Reason,
    /// The grant, when one grant (or one of its tokens) was revoked.
    pub grant_id: Option<GrantId>,
    /// The subject, when the revocation concerned one.
    pub subject: Option<Subject>,
    /// Grants revoked.
    pub grants: u64,
    /// Live tokens that died (a grant's live tokens all count).
    pub tokens: u64,
    /// The source address.
    pub address: Option<String>,
}

/// What one revocation killed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Killed {
    /// Grants revoked.
    pub grants: u64,
    /// Live tokens that died.
    pub tokens: u64,
}

impl Killed {
    /// True when nothing was alive to kill.
    pub fn is_nothing(&self) -> bool {
        self.grants == 0 && self.tokens == 0
    }
}

/// Emits the structured log event for a recorded revocation.
pub(crate) fn log(event: &AuditEvent) {
    tracing::info!(
        target: "latch::audit",
        audit_id = event.id,
        tenant = %event.tenant,
        actor = %event.actor.escape_debug(),
        route = %event.route,
        reason = event.reason.as_str(),
        grant_id = event.grant_id.as_ref().map(|g| g.as_str()),
        subject = event.subject.as_ref().map(|s| s.claim()),
        grants = event.grants,
        tokens = event.tokens,
        address = event.address.as_deref(),
        "revoked"
    );
}

/// What a revocation killed, from its audit record (nothing when there is none).
pub fn killed(event: &Option<AuditEvent>) -> Killed {
    event.as_ref().map_or(Killed::default(), |e| Killed {
        grants: e.grants,
        tokens: e.tokens,
    })
}

/// A page of the audit trail.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only events about this subject.
    pub subject: Option<Subject>,
    /// Only events at or after this time.
    pub since: Option<UnixTime>,
    /// Only events after this id (the previous page's `next_after`).
    pub after: Option<i64>,
    /// At most this many events.
    pub limit: u32,
}

/// The most ids a page asked for with `since` reads, from the tenant's first record past its
/// cursor ([`AuditQuery::read_to`]).
/// The trail has no index by time (its records are kept in id order, their times nearly in
/// step), so a page asking for the recent events of a long trail would otherwise read the
/// whole trail before the first of them, holding a reader (PostgreSQL: until the query
/// deadline, every time). A page that reaches the bound stops there, however few events it
/// found, and the next resumes from it.
pub const AUDIT_SINCE_SPAN: i64 = 100_000;

impl AuditQuery {
    /// The last id this page reads, of a trail whose last id is `last` and whose first record
    /// of the tenant past the cursor is `first` (asked for only with `since`): the trail's
    /// end, or with `since` at most [`AUDIT_SINCE_SPAN`] ids from that first record. Counted
    /// from the cursor, a tenant whose records are sparse among other tenants' (ids are one
    /// sequence), or past a purged stretch, would be read through empty page after page.
    pub fn read_to(&self, first: Option<i64>, last: i64) -> i64 {
        match (self.since, first) {
            (Some(_), Some(first)) => {
                last.min(first.saturating_sub(1).saturating_add(AUDIT_SINCE_SPAN))
            }
            _ => last,
        }
    }
}

/// A page of the audit trail, and where the next one starts.
#[derive(Clone, Debug, Default)]
pub struct AuditPage {
    /// Its events, oldest first.
    pub events: Vec<AuditEvent>,
    /// The next page's `after`: the last event's id when the page is full; the last id read
    /// when the page stopped short of the trail's end ([`AUDIT_SINCE_SPAN`]); `None` once it
    /// reached the end.
    pub next_after: Option<i64>,
}

impl AuditPage {
    /// The page of `events` that `query` found reading up to id `read_to`, of a trail whose
    /// last id is `last`.
    pub fn new(events: Vec<AuditEvent>, query: &AuditQuery, read_to: i64, last: i64) -> Self {
        let next_after = if events.len() >= query.limit as usize {
            events.last().map(|e| e.id)
        } else {
            (read_to < last).then_some(read_to)
        };
        Self { events, next_after }
    }
}
