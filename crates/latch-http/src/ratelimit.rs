//! Failed client authentication is rate-limited, per client id and per source address, so a
//! secret cannot be brute-forced and argon2 cannot be used to burn the server's CPU.
//!
//! Fixed windows: each key counts failures in the current window; once a key reaches its
//! limit, authentication attempts on it answer `429` with `Retry-After` until the window ends.
//! Successes are never limited or counted. Time comes from the domain clock, so tests move it.
//!
//! Trade-off: a per-client limit lets someone who knows a client id delay that client's
//! authentication for up to one window; that is the price of stopping online guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use latch_core::clock::UnixTime;
use latch_core::id::TenantId;

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
    Address(IpAddr),
}

#[derive(Clone, Copy)]
struct Window {
    start: UnixTime,
    failures: u32,
}

/// Keys kept at most; past this, finished windows are pruned.
const MAX_KEYS: usize = 100_000;

/// The failure counters.
pub struct AuthLimiter {
    limits: AuthLimits,
    windows: Mutex<HashMap<Key, Window>>,
}

impl AuthLimiter {
    /// A limiter with the given limits.
    pub fn new(limits: AuthLimits) -> Self {
        Self {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn keyed(
        &self,
        tenant: &TenantId,
        client_id: &str,
        address: Option<IpAddr>,
    ) -> Vec<(Key, u32)> {
        let mut keys = vec![(
            Key::Client(tenant.clone(), client_id.to_owned()),
            self.limits.per_client,
        )];
        if let Some(ip) = address {
            keys.push((Key::Address(ip), self.limits.per_address));
        }
        keys
    }

    /// `Some(seconds to wait)` when the client id or the address has used up its failures.
    pub fn blocked(
        &self,
        tenant: &TenantId,
        client_id: &str,
        address: Option<IpAddr>,
        now: UnixTime,
    ) -> Option<u32> {
        let windows = self.lock();
        self.keyed(tenant, client_id, address)
            .into_iter()
            .filter_map(|(key, limit)| {
                let w = windows.get(&key)?;
                let end = w.start + i64::from(self.limits.window);
                (now < end && w.failures >= limit).then(|| (end - now) as u32)
            })
            .max()
    }

    /// Counts a failed authentication.
    pub fn failed(
        &self,
        tenant: &TenantId,
        client_id: &str,
        address: Option<IpAddr>,
        now: UnixTime,
    ) {
        let window = i64::from(self.limits.window);
        let mut windows = self.lock();
        if windows.len() >= MAX_KEYS {
            windows.retain(|_, w| now < w.start + window);
        }
        for (key, _) in self.keyed(tenant, client_id, address) {
            let w = windows.entry(key).or_insert(Window {
                start: now,
                failures: 0,
            });
            if now >= w.start + window {
                *w = Window {
                    start: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engages_at_the_limit_and_releases_with_the_window() {
        let l = AuthLimiter::new(AuthLimits {
            per_client: 3,
            per_address: 100,
            window: 60,
        });
        let t = TenantId::default_tenant();
        for _ in 0..3 {
            assert_eq!(l.blocked(&t, "c", None, 1000), None);
            l.failed(&t, "c", None, 1000);
        }
        assert_eq!(l.blocked(&t, "c", None, 1010), Some(50));
        assert_eq!(l.blocked(&t, "other", None, 1010), None, "per client");
        assert_eq!(l.blocked(&t, "c", None, 1060), None, "released");
    }

    #[test]
    fn limits_per_address_across_client_ids() {
        let l = AuthLimiter::new(AuthLimits {
            per_client: 100,
            per_address: 2,
            window: 10,
        });
        let t = TenantId::default_tenant();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        l.failed(&t, "a", Some(ip), 0);
        l.failed(&t, "b", Some(ip), 0);
        assert_eq!(l.blocked(&t, "c", Some(ip), 1), Some(9));
        assert_eq!(
            l.blocked(&t, "c", Some("127.0.0.8".parse().unwrap()), 1),
            None
        );
    }
}
