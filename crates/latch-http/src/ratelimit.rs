//! Failed client authentication is rate-limited, per client id and per source address, so a
//! secret cannot be brute-forced and argon2 cannot be used to burn the server's CPU; wrong
//! admin tokens count per source address too, in a budget of their own, so that neither
//! kind of failure can lock the other out (behind a load balancer every request comes from
//! one address).
//!
//! Fixed windows: each key counts failures in the current window; once a key reaches its
//! limit, authentication attempts on it answer `429` with `Retry-After` until the window ends.
//! A secret being verified (an argon2 run, queued or running) counts as a failure until its
//! verdict, so a burst of concurrent guesses is bounded as a sequence is
//! ([`AuthLimiter::reserve`]). Successes are never limited or counted, and a secret the
//! verification cache knows is never reserved for. Time comes from the domain clock, so tests move it.
//!
//! Memory and the work under the limiter's lock are bounded: at most [`MAX_KEYS`] counters are
//! kept, and windows are dropped oldest first without a scan, when they end or to make room.
//!
//! Trade-off: a per-client limit lets someone who knows a client id delay that client's
//! authentication for up to one window; that is the price of stopping online guessing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use latch_core::clock::UnixTime;
use latch_core::id::{TenantId, MAX_ID_LEN};

/// Limits for failed authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failures allowed per client id per window.
    pub per_client: u32,
    /// Failures allowed per source address per window.
    pub per_address: u32,
    /// Window length in seconds.
    pub window: u32,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            per_client: 10,
            per_address: 50,
            window: 60,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(TenantId, String),
    /// A source: an IPv4 address, or an IPv6 /64 ([`source`]).
    Address(IpAddr),
    /// Wrong admin tokens from a source.
    AdminAddress(IpAddr),
}

/// The source an address counts as: an IPv4 address (also when written as an IPv4-mapped
/// IPv6 one, or as one a NAT64 translator embedded in its well-known prefix), or the /64
/// network of an IPv6 address. One IPv6 host is usually given a whole /64 (a cloud VM, a
/// home), so counted address by address, it could try 50 wrong secrets from each of its
/// 2^64 addresses; but behind NAT64 every IPv4 client shares the translator's /64, one of
/// them could lock all the others out.
fn source(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| nat64_embedded(v6)) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// The IPv4 address a NAT64 translator embedded in `v6` with the well-known prefix
/// `64:ff9b::/96` (RFC 6052 §2.1). (A network-specific prefix is the operator's own and
/// counts as an IPv6 /64.)
fn nat64_embedded(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    const WELL_KNOWN: u128 = 0x0064_ff9b_0000_0000_0000_0000_0000_0000;
    let bits = v6.to_bits();
    (bits & !u128::from(u32::MAX) == WELL_KNOWN).then(|| std::net::Ipv4Addr::from_bits(bits as u32))
}

/// Who an attempt authenticates as.
#[derive(Clone, Copy)]
enum Attempt<'a> {
    /// A client's credentials, with the id whose secret they try (`None`: a public client's).
    Client(&'a TenantId, Option<&'a str>),
    Admin,
}

#[derive(Clone, Copy)]
struct Window {
    start: UnixTime,
    failures: u32,
}

/// Counters kept at most. When every one of them is in a live window, a new key's first
/// failure drops the oldest window: the map, and the work under its lock, stay bounded
/// however many sources fail at once, at the price that whoever makes this many keys fail
/// within a window can reset the oldest counter: a window's worth of guesses bought with
/// failures from 100,000 sources (a client id holds a counter only once a secret was
/// verified against its client's, `oauth2::Attempt::finish`).
const MAX_KEYS: usize = 100_000;

/// The failure counters, in the order their windows started.
struct Windows {
    by_key: HashMap<Key, Window>,
    /// Each window started, as its end and key, oldest first. Windows all last as long and
    /// time never goes back here ([`Windows::now`]), so this is also the order they end in:
    /// the ended ones, and when the map is full the oldest, are dropped from the front, never
    /// found by a scan. An entry whose key has since started a new window is skipped when
    /// reached.
    order: VecDeque<(UnixTime, Key)>,
    /// The latest time seen.
    latest: UnixTime,
    /// Verifications in progress ([`AuthLimiter::reserve`]): per key, the fingerprints of
    /// the secrets being verified, each with the number of requests presenting it. Bounded
    /// by the requests in flight.
    pending: HashMap<Key, HashMap<[u8; 32], u32>>,
    /// Counters kept at most ([`MAX_KEYS`]; smaller in tests).
    capacity: usize,
}

impl Windows {
    /// `now`, or the latest time seen if the clock went back since by less than a window:
    /// windows keep the order they started in, and none ends early. A clock that went back
    /// by more (one that ran ahead, corrected) stamped the windows with a time it has left
    /// for good: they are dropped, rather than held, and the limiter's time frozen, until
    /// the clock catches up.
    fn now(&mut self, now: UnixTime, window: i64) -> UnixTime {
        if now.saturating_add(window) < self.latest {
            self.by_key.clear();
            self.order.clear();
            self.latest = now;
        }
        self.latest = self.latest.max(now);
        self.latest
    }

    /// Seconds `key` must wait, its live window's failures and `others` verifications in
    /// progress counted against `limit` (`None`: it may try now). Held back by
    /// verifications alone, a second: they end within about that.
    fn wait(&self, key: &Key, limit: u32, others: u32, now: UnixTime, window: i64) -> Option<u32> {
        let failed = self.by_key.get(key).filter(|w| now < w.start + window);
        let failures = failed.map_or(0, |w| w.failures);
        (failures.saturating_add(others) >= limit).then(|| match failed {
            Some(w) if failures >= limit => (w.start + window - now) as u32,
            _ => 1,
        })
    }

    /// Drops the windows that have ended by `now`, so that a server whose clients stopped
    /// failing a window ago holds no counters and a success costs no lookup.
    fn expire(&mut self, now: UnixTime, window: i64) {
        while self.order.front().is_some_and(|(end, _)| *end <= now) {
            self.drop_oldest(window);
        }
    }

    /// Drops the window at the front of the order, if its key has not started another;
    /// `false` when there is none.
    fn drop_oldest(&mut self, window: i64) -> bool {
        let Some((end, key)) = self.order.pop_front() else {
            return false;
        };
        if self
            .by_key
            .get(&key)
            .is_some_and(|w| w.start + window == end)
        {
            self.by_key.remove(&key);
        }
        true
    }

    /// Counts a failure against `key`, starting a window when it has none live.
    fn count(&mut self, key: Key, now: UnixTime, window: i64) {
        if let Some(w) = self.by_key.get_mut(&key) {
            if now < w.start + window {
                w.failures = w.failures.saturating_add(1);
                return;
            }
        }
        while self.by_key.len() >= self.capacity && !self.by_key.contains_key(&key) {
            if !self.drop_oldest(window) {
                break;
            }
        }
        self.order.push_back((now + window, key.clone()));
        self.by_key.insert(
            key,
            Window {
                start: now,
                failures: 1,
            },
        );
    }
}

/// The failure counters.
pub struct AuthLimiter {
    limits: AuthLimits,
    windows: Mutex<Windows>,
}

impl AuthLimiter {
    /// A limiter with the given limits.
    pub fn new(limits: AuthLimits) -> Self {
        Self::with_capacity(limits, MAX_KEYS)
    }

    fn with_capacity(limits: AuthLimits, capacity: usize) -> Self {
        Self {
            limits,
            windows: Mutex::new(Windows {
                by_key: HashMap::new(),
                order: VecDeque::new(),
                latest: UnixTime::MIN,
                pending: HashMap::new(),
                capacity,
            }),
        }
    }

    /// The counters `attempt` from `address` counts against.
    fn keyed(
        &self,
        attempt: Attempt<'_>,
        address: Option<IpAddr>,
    ) -> impl Iterator<Item = (Key, u32)> {
        let (client, address) = match attempt {
            // A client id longer than any client's can have is not kept as a key: it names
            // no secret to guess, and the form allows ids of up to 64 KiB, each of which
            // would be held for a window (the address's counter still applies).
            Attempt::Client(tenant, id) => (
                id.filter(|id| id.len() <= MAX_ID_LEN).map(|id| {
                    (
                        Key::Client(tenant.clone(), id.to_owned()),
                        self.limits.per_client,
                    )
                }),
                address.map(|a| Key::Address(source(a))),
            ),
            Attempt::Admin => (None, address.map(|a| Key::AdminAddress(source(a)))),
        };
        let address = address.map(|key| (key, self.limits.per_address));
        client.into_iter().chain(address)
    }

    /// `Some(seconds to wait)` when the client id or the address has used up its failures.
    pub fn blocked(
        &self,
        tenant: &TenantId,
        client_id: Option<&str>,
        address: Option<IpAddr>,
        now: UnixTime,
    ) -> Option<u32> {
        self.blocked_keys(Attempt::Client(tenant, client_id), address, now)
    }

    /// Reserves a place for verifying the secret `fingerprint` names, which counts against
    /// the limits as a failure would until [`AuthLimiter::release`]: concurrent guesses are
    /// bounded as sequential ones are, where counting failures only once verified let every
    /// guess of a burst through. Requests presenting a secret already being verified share
    /// its place. `Err(seconds to wait)` when the failures and the other secrets being
    /// verified have reached a limit.
    pub fn reserve(
        &self,
        tenant: &TenantId,
        client_id: Option<&str>,
        address: Option<IpAddr>,
        fingerprint: &[u8; 32],
        now: UnixTime,
    ) -> Result<(), u32> {
        let window = i64::from(self.limits.window);
        let attempt = Attempt::Client(tenant, client_id);
        let mut windows = self.lock();
        let now = windows.now(now, window);
        windows.expire(now, window);
        let wait = self
            .keyed(attempt, address)
            .filter_map(|(key, limit)| {
                let others = windows
                    .pending
                    .get(&key)
                    .map_or(0, |p| p.len() - usize::from(p.contains_key(fingerprint)));
                let others = u32::try_from(others).unwrap_or(u32::MAX);
                windows.wait(&key, limit, others, now, window)
            })
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (key, _) in self.keyed(attempt, address) {
            *windows
                .pending
                .entry(key)
                .or_default()
                .entry(*fingerprint)
                .or_default() += 1;
        }
        Ok(())
    }

    /// Gives back a place [`AuthLimiter::reserve`] took.
    pub fn release(
        &self,
        tenant: &TenantId,
        client_id: Option<&str>,
        address: Option<IpAddr>,
        fingerprint: &[u8; 32],
    ) {
        let mut windows = self.lock();
        for (key, _) in self.keyed(Attempt::Client(tenant, client_id), address) {
            let Some(pending) = windows.pending.get_mut(&key) else {
                continue;
            };
            if let Some(count) = pending.get_mut(fingerprint) {
                *count -= 1;
                if *count == 0 {
                    pending.remove(fingerprint);
                }
            }
            if pending.is_empty() {
                windows.pending.remove(&key);
            }
        }
    }

    /// Counts a failed authentication.
    pub fn failed(
        &self,
        tenant: &TenantId,
        client_id: Option<&str>,
        address: Option<IpAddr>,
        now: UnixTime,
    ) {
        self.failed_keys(Attempt::Client(tenant, client_id), address, now);
    }

    /// `Some(seconds to wait)` when the address has used up its wrong admin tokens (the
    /// per-address limit, counted apart from client failures): the admin token names no
    /// client, and must not be guessed online either.
    pub fn blocked_admin(&self, address: IpAddr, now: UnixTime) -> Option<u32> {
        self.blocked_keys(Attempt::Admin, Some(address), now)
    }

    /// Counts a wrong admin token against its address.
    pub fn failed_admin(&self, address: IpAddr, now: UnixTime) {
        self.failed_keys(Attempt::Admin, Some(address), now);
    }

    fn blocked_keys(
        &self,
        attempt: Attempt<'_>,
        address: Option<IpAddr>,
        now: UnixTime,
    ) -> Option<u32> {
        let window = i64::from(self.limits.window);
        let mut windows = self.lock();
        let now = windows.now(now, window);
        windows.expire(now, window);
        if windows.by_key.is_empty() {
            return None;
        }
        self.keyed(attempt, address)
            .filter_map(|(key, limit)| {
                // Only a live window blocks here; verifications in progress are `reserve`'s.
                windows
                    .by_key
                    .get(&key)
                    .filter(|w| now < w.start + window)?;
                windows.wait(&key, limit, 0, now, window)
            })
            .max()
    }

    fn failed_keys(&self, attempt: Attempt<'_>, address: Option<IpAddr>, now: UnixTime) {
        let window = i64::from(self.limits.window);
        let mut windows = self.lock();
        let now = windows.now(now, window);
        windows.expire(now, window);
        for (key, _) in self.keyed(attempt, address) {
            windows.count(key, now, window);
        }
    }

    /// Counters held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per_client` failures per client id and `per_address` per address in `window` s.
    fn limits(per_client: u32, per_address: u32, window: u32) -> AuthLimits {
        AuthLimits {
            per_client,
            per_address,
            window,
        }
    }

    /// A limiter of [`limits`].
    fn limiter(per_client: u32, per_address: u32, window: u32) -> AuthLimiter {
        AuthLimiter::new(limits(per_client, per_address, window))
    }

    #[test]
    fn engages_at_the_limit_and_releases_with_the_window() {
        let l = limiter(3, 100, 60);
        let t = TenantId::default_tenant();
        for _ in 0..3 {
            assert_eq!(l.blocked(&t, Some("c"), None, 1000), None);
            l.failed(&t, Some("c"), None, 1000);
        }
        assert_eq!(l.blocked(&t, Some("c"), None, 1010), Some(50));
        assert_eq!(l.blocked(&t, Some("other"), None, 1010), None, "per client");
        assert_eq!(l.blocked(&t, Some("c"), None, 1060), None, "released");
        assert_eq!(l.len(), 0, "an ended window is dropped");
    }

    #[test]
    fn a_client_id_longer_than_any_client_can_have_is_not_kept() {
        let l = limiter(1, 2, 60);
        let t = TenantId::default_tenant();
        let address = Some(IpAddr::from([192, 0, 2, 1]));
        let longest = "c".repeat(MAX_ID_LEN);
        let too_long = "c".repeat(MAX_ID_LEN + 1);
        l.failed(&t, Some(&too_long), address, 1000);
        assert_eq!(l.len(), 1, "the address's counter only");
        assert_eq!(l.blocked(&t, Some(&too_long), None, 1000), None);
        l.failed(&t, Some(&longest), None, 1000);
        assert_eq!(l.len(), 2, "an id of the longest length is kept");
        assert_eq!(l.blocked(&t, Some(&longest), None, 1000), Some(60));
        // The address still limits the long ids' attempts.
        l.failed(&t, Some(&too_long), address, 1000);
        assert_eq!(l.blocked(&t, Some(&too_long), address, 1000), Some(60));
    }

    #[test]
    fn keeps_each_window_until_it_ends() {
        let l = limiter(1, 100, 10);
        let t = TenantId::default_tenant();
        l.failed(&t, Some("early"), None, 100);
        l.failed(&t, Some("late"), None, 105);
        assert_eq!(
            l.blocked(&t, Some("late"), None, 110),
            Some(5),
            "the early one ended"
        );
        assert_eq!(l.len(), 1);
        // A window restarted after the first end is kept until its own end.
        l.failed(&t, Some("early"), None, 111);
        assert_eq!(l.blocked(&t, Some("early"), None, 116), Some(5));
        assert_eq!(l.blocked(&t, Some("late"), None, 116), None);
        assert_eq!(l.len(), 1);
        assert_eq!(l.blocked(&t, Some("early"), None, 121), None);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_full_map_drops_its_oldest_window_for_a_new_key_and_holds_no_more() {
        let l = AuthLimiter::with_capacity(limits(2, 100, 60), 3);
        let t = TenantId::default_tenant();
        for (at, c) in ["a", "b", "c"].into_iter().enumerate() {
            l.failed(&t, Some(c), None, 1000 + at as i64);
        }
        // A known key's failure when full drops nothing.
        l.failed(&t, Some("b"), None, 1003);
        assert_eq!(l.blocked(&t, Some("b"), None, 1003), Some(58));
        assert_eq!(l.len(), 3);
        // A new key's drops the oldest window, a's, and only that one.
        l.failed(&t, Some("d"), None, 1004);
        l.failed(&t, Some("d"), None, 1004);
        assert_eq!(l.len(), 3);
        assert_eq!(l.blocked(&t, Some("d"), None, 1004), Some(60));
        assert_eq!(l.blocked(&t, Some("b"), None, 1004), Some(57));
        l.failed(&t, Some("a"), None, 1005);
        assert_eq!(
            l.blocked(&t, Some("a"), None, 1005),
            None,
            "a counts afresh, from one failure"
        );
        assert_eq!(l.len(), 3);
        assert_eq!(
            l.blocked(&t, Some("b"), None, 1005),
            None,
            "b's window, now the oldest, made room for a's"
        );
        let held = |c: &str| {
            l.lock()
                .by_key
                .contains_key(&Key::Client(t.clone(), c.to_owned()))
        };
        assert!(held("c") && held("d") && held("a"));
        // Windows restarting on one key, window after window, leave one entry each.
        for round in 0..100 {
            l.failed(&t, Some("e"), None, 2000 + 60 * round);
        }
        assert_eq!(l.len(), 1);
        assert_eq!(l.lock().order.len(), 1);
    }

    #[test]
    fn a_clock_that_goes_back_neither_reorders_nor_lengthens_windows() {
        let l = limiter(1, 100, 60);
        let t = TenantId::default_tenant();
        l.failed(&t, Some("a"), None, 1000);
        // Stepped back 30 s, less than a window: time stays at 1000 here, so a's window ends
        // when it would have, and b's starts no earlier than a's.
        assert_eq!(l.blocked(&t, Some("a"), None, 970), Some(60));
        l.failed(&t, Some("b"), None, 970);
        assert_eq!(l.blocked(&t, Some("b"), None, 1059), Some(1));
        let ends: Vec<_> = l.lock().order.iter().map(|(end, _)| *end).collect();
        assert_eq!(ends, [1060, 1060]);
        assert_eq!(l.blocked(&t, Some("b"), None, 1060), None);
        assert_eq!(l.len(), 0, "both ended on time");
        // A clock that ran ahead by an hour, then corrected: the windows it stamped are
        // dropped, not held for the hour, and time runs again from the corrected clock.
        l.failed(&t, Some("a"), None, 4600);
        assert_eq!(l.blocked(&t, Some("a"), None, 4600), Some(60));
        assert_eq!(l.blocked(&t, Some("a"), None, 1100), None);
        assert_eq!(l.len(), 0);
        l.failed(&t, Some("a"), None, 1100);
        assert_eq!(l.blocked(&t, Some("a"), None, 1130), Some(30));
    }

    /// A limiter of two failures per address in 10 s (and a hundred per client), a tenant and
    /// an address.
    fn two_failures_per_address() -> (AuthLimiter, TenantId, IpAddr) {
        let limiter = limiter(100, 2, 10);
        (
            limiter,
            TenantId::default_tenant(),
            "127.0.0.9".parse().unwrap(),
        )
    }

    #[test]
    fn limits_per_address_across_client_ids() {
        let (l, t, ip) = two_failures_per_address();
        l.failed(&t, Some("a"), Some(ip), 0);
        l.failed(&t, Some("b"), Some(ip), 0);
        assert_eq!(l.blocked(&t, Some("c"), Some(ip), 1), Some(9));
        assert_eq!(
            l.blocked(&t, Some("c"), Some("127.0.0.8".parse().unwrap()), 1),
            None
        );
    }

    #[test]
    fn secrets_being_verified_count_against_the_limits_and_one_secret_counts_once() {
        let l = limiter(3, 100, 60);
        let t = TenantId::default_tenant();
        let ip = Some(IpAddr::from([192, 0, 2, 1]));
        let reserve = |c: &str, fp: u8| l.reserve(&t, Some(c), ip, &[fp; 32], 0);
        // Three different secrets verifying at once use up the client's three.
        for fp in 1..=3 {
            assert_eq!(reserve("c", fp), Ok(()));
        }
        assert_eq!(reserve("c", 4), Err(1), "a fourth guess waits");
        assert_eq!(
            reserve("c", 2),
            Ok(()),
            "another request of a secret in progress joins it"
        );
        assert_eq!(reserve("d", 4), Ok(()), "other clients are unaffected");
        // One ends in a failure: counted before its place is given back, so the budget
        // stays used up.
        l.failed(&t, Some("c"), ip, 0);
        l.release(&t, Some("c"), ip, &[1; 32]);
        assert_eq!(reserve("c", 4), Err(1));
        // The other two end in successes; the shared one twice.
        for fp in [2, 2, 3] {
            l.release(&t, Some("c"), ip, &[fp; 32]);
        }
        assert_eq!(reserve("c", 4), Ok(()));
        l.release(&t, Some("c"), ip, &[4; 32]);
        l.release(&t, Some("d"), ip, &[4; 32]);
        assert!(l.lock().pending.is_empty(), "every place given back");
        // Failures alone at the limit: the wait is the window's.
        for _ in 0..3 {
            l.failed(&t, Some("e"), ip, 10);
        }
        assert_eq!(l.reserve(&t, Some("e"), ip, &[9; 32], 20), Err(50));
        // A public client's attempt reserves against its address only.
        assert_eq!(l.reserve(&t, None, ip, &[9; 32], 20), Ok(()));
        assert_eq!(l.lock().pending.len(), 1);
    }

    #[test]
    fn an_ipv6_network_of_64_bits_counts_as_one_source_and_a_mapped_ipv4_as_itself() {
        let (l, t, _) = two_failures_per_address();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        l.failed(&t, Some("a"), ip("2001:db8:0:1::1"), 0);
        l.failed(&t, Some("b"), ip("2001:db8:0:1:ffff:ffff:ffff:fffe"), 0);
        assert_eq!(l.blocked(&t, Some("c"), ip("2001:db8:0:1::ab"), 1), Some(9));
        assert_eq!(l.blocked(&t, Some("c"), ip("2001:db8:0:2::1"), 1), None);
        l.failed(&t, Some("a"), ip("::ffff:192.0.2.1"), 1);
        l.failed(&t, Some("b"), ip("192.0.2.1"), 1);
        assert_eq!(l.blocked(&t, Some("c"), ip("192.0.2.1"), 2), Some(9));
        assert_eq!(l.blocked(&t, Some("c"), ip("192.0.2.2"), 2), None);
        // Behind NAT64, each IPv4 client is itself, not the translator's /64: two of them
        // failing leave a third free, and one is counted with its own IPv4 address.
        l.failed(&t, Some("a"), ip("64:ff9b::c000:2a1"), 1);
        l.failed(&t, Some("b"), ip("64:ff9b::c000:2a2"), 1);
        assert_eq!(l.blocked(&t, Some("c"), ip("64:ff9b::c000:2a3"), 2), None);
        assert_eq!(
            l.blocked(&t, Some("c"), ip("64:ff9b::c000:201"), 2),
            Some(9)
        );
        l.failed_admin("2001:db8:0:3::1".parse().unwrap(), 2);
        l.failed_admin("2001:db8:0:3::2".parse().unwrap(), 2);
        assert_eq!(
            l.blocked_admin("2001:db8:0:3::3".parse().unwrap(), 3),
            Some(9)
        );
    }

    #[test]
    fn wrong_admin_tokens_and_wrong_client_secrets_spend_separate_budgets() {
        let (l, t, ip) = two_failures_per_address();
        l.failed_admin(ip, 0);
        l.failed_admin(ip, 0);
        assert_eq!(l.blocked_admin(ip, 1), Some(9));
        assert_eq!(
            l.blocked(&t, Some("a"), Some(ip), 1),
            None,
            "clients are not locked out"
        );
        l.failed(&t, Some("a"), Some(ip), 2);
        l.failed(&t, Some("b"), Some(ip), 2);
        assert_eq!(l.blocked(&t, Some("c"), Some(ip), 3), Some(9));
        assert_eq!(
            l.blocked_admin(ip, 3),
            Some(7),
            "nor do they add to the admin's"
        );
        assert_eq!(l.blocked_admin(ip, 10), None);
        assert_eq!(l.blocked(&t, Some("c"), Some(ip), 10), Some(2));
    }
}
