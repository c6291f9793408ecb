//! Client secrets: argon2id hashing and a verification cache.
//!
//! argon2id costs tens of milliseconds by design. Running it on every request would cap
//! latch at a few hundred requests per second, so a successful verification is remembered as
//! a keyed SHA-256 MAC over (tenant, client, stored hash, presented secret), with a key that
//! lives only in this process's memory. A later request with the same secret costs one
//! SHA-256 and a constant-time compare. Because the stored hash is part of the MAC, rotating a
//! secret or re-creating a client invalidates the entry by construction, even when the change
//! was made by another process; [`SecretVerifier::forget`] drops it eagerly as well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::client::{Client, SecretHash};
use crate::id::{ClientId, TenantId};

/// Hashes a client secret with argon2id and a random salt.
pub fn hash_secret(secret: &str) -> SecretHash {
    let salt = SaltString::generate(&mut OsRng);
    let phc = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2id with default parameters and a fresh salt cannot fail")
        .to_string();
    SecretHash::parse(&phc).expect("argon2 produced a valid PHC string")
}

/// A new random client secret: 256 bits, unpadded base64url.
pub fn generate_secret() -> String {
    crate::token::random_b64::<32>()
}

/// Lets the caller bound the argon2 verifications it starts: each answers whether a guessed
/// secret is right, so a rate limit that counted only finished failures would let a burst
/// of concurrent guesses all through before the first was counted. Asked before every
/// verification the cache cannot answer (never for a cached secret, so the hot path pays
/// nothing), with a fingerprint of the presented secret that is equal for equal secrets of
/// one client: concurrent requests presenting one secret (a client's connections after a
/// restart) are one guess.
pub trait Admission: Send + Sync {
    /// `Ok` to verify, or `Err` to refuse the attempt for now.
    fn admit(&self, fingerprint: &[u8; 32]) -> Result<(), Throttled>;
}

/// An attempt refused by its [`Admission`]: retry after this many seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled(pub u32);

/// Admits every verification (commands, tests).
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(&self, _: &[u8; 32]) -> Result<(), Throttled> {
        Ok(())
    }
}

/// Entries kept at most; past this the cache starts over (a rare, cheap event).
const MAX_ENTRIES: usize = 100_000;

/// Verifies client secrets, caching successes. Failures are never cached.
pub struct SecretVerifier {
    key: [u8; 32],
    verified: Mutex<HashMap<[u8; 32], [u8; 32]>>,
    /// One verification in progress per presented secret, keyed by its MAC: concurrent
    /// requests that present the same secret (64 connections of one client after a restart,
    /// or a burst of one wrong guess) wait for one argon2 run and take its verdict, instead
    /// of each running argon2.
    in_flight: Flights,
    /// argon2 runs so far (for tests and diagnostics).
    slow_runs: std::sync::atomic::AtomicU64,
    /// Bounds concurrent argon2 runs to the core count, so a flood of bad secrets queues
    /// instead of starving every other request of CPU.
    slots: Arc<Semaphore>,
}

type Flights = Mutex<HashMap<[u8; 32], Arc<Verdict>>>;

/// The verdict of a flight's argon2 run, once it has one; its lock is held for the run. A
/// run whose request was dropped leaves none, and the next waiter runs argon2 itself.
type Verdict = tokio::sync::Mutex<Option<bool>>;

/// A request's part in the verification of one presented secret. Leaving it, by finishing
/// or by being dropped (a request whose client hung up is cancelled at any `.await`), ends
/// the flight's entry, so no entry outlives its requests: entries are keyed by presented
/// secrets, and a flood of cancelled wrong guesses must not grow the map.
struct Flight<'a> {
    flights: &'a Flights,
    mac: [u8; 32],
    verdict: Arc<Verdict>,
}

impl<'a> Flight<'a> {
    /// Joins the flight of `mac`, starting it if none is under way.
    fn join(flights: &'a Flights, mac: [u8; 32]) -> Self {
        let verdict = flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(mac)
            .or_default()
            .clone();
        Self {
            flights,
            mac,
            verdict,
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        // Whoever still waits on this flight holds its verdict; whoever comes later starts
        // from the cache, or a new flight. (A waiter that leaves early ends the entry too:
        // at worst a later request runs argon2 once more.)
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.mac)
            .is_some_and(|f| Arc::ptr_eq(f, &self.verdict))
        {
            flights.remove(&self.mac);
        }
    }
}

impl Default for SecretVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl SecretVerifier {
    /// A verifier with a fresh random key and an empty cache.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            key,
            verified: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            slow_runs: std::sync::atomic::AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(cores)),
        }
    }

    fn slot_of(&self, tenant: &TenantId, client: &ClientId) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(b"slot\0");
        h.update(tenant.as_str());
        h.update(b"\0");
        h.update(client.as_str());
        h.finalize().into()
    }

    fn mac_of(&self, slot: &[u8; 32], stored: &SecretHash, presented: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(slot);
        h.update(stored.as_str());
        h.update(b"\0");
        h.update(presented.as_bytes());
        h.finalize().into()
    }

    /// True when `presented` is the client's secret. A client without a secret never
    /// verifies. A secret the cache does not know is verified only if `admission` admits
    /// it, before it waits for its turn.
    pub async fn verify(
        &self,
        client: &Client,
        presented: &str,
        admission: &dyn Admission,
    ) -> Result<bool, Throttled> {
        let Some(stored) = &client.secret else {
            return Ok(false);
        };
        let slot = self.slot_of(&client.tenant, &client.id);
        let mac = self.mac_of(&slot, stored, presented);
        if self.is_cached(&slot, &mac) {
            return Ok(true);
        }
        admission.admit(&mac)?;

        // Single flight per presented secret: wait for a verification of the same secret
        // already running and take its verdict, right or wrong (the MAC covers the stored
        // hash, so the verdict is exact); a new flight looks at the cache again.
        let flight = Flight::join(&self.in_flight, mac);
        let mut verdict = flight.verdict.lock().await;
        if let Some(ok) = *verdict {
            return Ok(ok);
        }
        if self.is_cached(&slot, &mac) {
            return Ok(true);
        }
        let ok = self.verify_slow(stored, presented).await;
        *verdict = Some(ok);
        if ok {
            let mut cache = self.lock();
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(slot, mac);
        }
        Ok(ok)
    }

    fn is_cached(&self, slot: &[u8; 32], mac: &[u8; 32]) -> bool {
        self.lock()
            .get(slot)
            .is_some_and(|known| bool::from(known.ct_eq(mac)))
    }

    /// Runs argon2 on the blocking pool, at most one per core at a time.
    async fn verify_slow(&self, stored: &SecretHash, presented: &str) -> bool {
        let run = self
            .slow_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(run, "verifying a client secret with argon2id (cache miss)");
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return false;
        };
        let phc = stored.as_str().to_owned();
        let secret = presented.to_owned();
        let ok: bool = tokio::task::spawn_blocking(move || {
            // The slot goes with the run, not with the request: a request dropped while
            // argon2 runs (its client hung up) cannot free the slot for another run while
            // this one still takes its core.
            let _slot = permit;
            PasswordHash::new(&phc)
                .map(|h| {
                    Argon2::default()
                        .verify_password(secret.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok
    }

    /// Hashes a new secret ([`hash_secret`]) on the blocking pool, in one of the argon2
    /// slots verifications use: a run takes tens of milliseconds of a core, which on an
    /// async worker would stall every request queued behind it.
    pub async fn hash(&self, secret: &str) -> SecretHash {
        let permit = self.slots.clone().acquire_owned().await;
        let owned = secret.to_owned();
        let hashing = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            hash_secret(&owned)
        });
        match hashing.await {
            Ok(hash) => hash,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled (the runtime is shutting down): hashed here after all.
            Err(_) => hash_secret(secret),
        }
    }

    /// Drops what is cached for a client (its secret was rotated or it was removed).
    pub fn forget(&self, tenant: &TenantId, client: &ClientId) {
        let slot = self.slot_of(tenant, client);
        self.lock().remove(&slot);
    }

    /// Drops everything cached (after a tenant's removal, whose clients may be many).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], [u8; 32]>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is safe to keep using.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::AuthMethod;

    fn client(secret: &str) -> Client {
        Client {
            id: ClientId::parse("c1").unwrap(),
            secret: Some(hash_secret(secret)),
            auth_method: AuthMethod::ClientSecretBasic,
            ..crate::client::sample_client()
        }
    }

    /// Hashing a new secret (admin API, CLI) leaves the async worker free: on a one-thread
    /// runtime, another task runs while the hash is computed.
    #[tokio::test(flavor = "current_thread")]
    async fn hashing_a_secret_runs_off_the_async_worker() {
        let verifier = SecretVerifier::new();
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let hash = verifier.hash("new-secret").await;
        assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 0);
        ticker.abort();
        assert!(verifier.verify_slow(&hash, "new-secret").await);
    }

    #[tokio::test]
    async fn verifies_right_secret_and_rejects_wrong_one_even_after_caching() {
        let v = SecretVerifier::new();
        let c = client("s3cret");
        assert!(v.verify(&c, "s3cret", &AdmitAll).await.unwrap());
        assert!(
            v.verify(&c, "s3cret", &AdmitAll).await.unwrap(),
            "cached path"
        );
        assert!(!v.verify(&c, "s3cret ", &AdmitAll).await.unwrap());
        assert!(!v.verify(&c, "", &AdmitAll).await.unwrap());
    }

    #[tokio::test]
    async fn a_rotated_secret_invalidates_the_cache_by_construction() {
        let v = SecretVerifier::new();
        let old = client("old");
        assert!(v.verify(&old, "old", &AdmitAll).await.unwrap());
        let mut rotated = old.clone();
        rotated.secret = Some(hash_secret("new"));
        assert!(!v.verify(&rotated, "old", &AdmitAll).await.unwrap());
        assert!(v.verify(&rotated, "new", &AdmitAll).await.unwrap());
    }

    #[tokio::test]
    async fn forget_drops_the_entry() {
        let v = SecretVerifier::new();
        let c = client("s");
        assert!(v.verify(&c, "s", &AdmitAll).await.unwrap());
        v.forget(&c.tenant, &c.id);
        assert!(v.lock().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_verifications_of_one_secret_run_argon2_once_and_leave_nothing_behind() {
        let v = Arc::new(SecretVerifier::new());
        let c = Arc::new(client("s"));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (v, c) = (v.clone(), c.clone());
                tokio::spawn(async move { v.verify(&c, "s", &AdmitAll).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(v.slow_runs.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(v.in_flight.lock().unwrap().is_empty());
        assert!(!v.verify(&c, "wrong", &AdmitAll).await.unwrap());
        assert!(v.in_flight.lock().unwrap().is_empty());
    }

    /// A burst of one wrong guess (every request admitted before the first failure is
    /// counted) costs one argon2 run, as a burst of the right secret does: each waiter takes
    /// the run's verdict.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_verifications_of_one_wrong_secret_run_argon2_once() {
        let v = Arc::new(SecretVerifier::new());
        let c = Arc::new(client("s"));
        // Every argon2 slot held until all 16 requests have joined the one flight.
        let all = v.slots.available_permits() as u32;
        let held = v.slots.clone().acquire_many_owned(all).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (v, c) = (v.clone(), c.clone());
                tokio::spawn(async move { v.verify(&c, "wrong", &AdmitAll).await.unwrap() })
            })
            .collect();
        until(|| {
            let flights = v.in_flight.lock().unwrap();
            flights.len() == 1 && flights.values().all(|f| Arc::strong_count(f) == 17)
        })
        .await;
        drop(held);
        for t in tasks {
            assert!(!t.await.unwrap());
        }
        assert_eq!(v.slow_runs.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(v.in_flight.lock().unwrap().is_empty());
    }

    /// Waits (without a timer) until `done` holds, yielding to the verification tasks; fails
    /// after 10 s rather than hang.
    async fn until(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "the condition never held"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_verification_leaves_no_flight_behind() {
        let v = Arc::new(SecretVerifier::new());
        let c = Arc::new(client("s"));
        // Every argon2 slot taken: the verification waits for one, inside its flight.
        let all = v.slots.available_permits() as u32;
        let held = v.slots.clone().acquire_many_owned(all).await.unwrap();
        let task = {
            let (v, c) = (v.clone(), c.clone());
            tokio::spawn(async move { v.verify(&c, "wrong guess", &AdmitAll).await.unwrap() })
        };
        until(|| v.in_flight.lock().unwrap().len() == 1).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(v.in_flight.lock().unwrap().is_empty());
        drop(held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_verification_keeps_its_argon2_slot_until_the_run_ends() {
        let v = Arc::new(SecretVerifier::new());
        let c = Arc::new(client("s"));
        let all = v.slots.available_permits();
        let task = {
            let (v, c) = (v.clone(), c.clone());
            tokio::spawn(async move { v.verify(&c, "wrong guess", &AdmitAll).await.unwrap() })
        };
        // The run has its slot (argon2 takes milliseconds; the checks below take less).
        until(|| v.slots.available_permits() == all - 1).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(
            v.slots.available_permits(),
            all - 1,
            "the slot was freed while its argon2 run still goes on"
        );
        // And it comes back once the run ends.
        drop(v.slots.acquire_many(all as u32).await.unwrap());
    }

    #[test]
    fn hashes_are_argon2id_and_salted() {
        let a = hash_secret("x");
        let b = hash_secret("x");
        assert!(a.as_str().starts_with("$argon2id$"));
        assert_ne!(a, b);
    }
}
