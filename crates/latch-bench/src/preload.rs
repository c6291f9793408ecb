//! Preloading a database directly (not over HTTP): N grants, each with one access and one
//! refresh token, for subjects with ten grants each. Tokens are derived from their index, so
//! the load generator re-creates them instead of storing them.
//!
//! Speed: the secondary indexes are dropped during the load and rebuilt at the end (SQLite
//! builds an index by sorting, far faster than N random B-tree inserts); grants go in in key
//! order, tokens sorted by hash (their primary key), so every B-tree grows at its right edge
//! and each transaction writes only new pages.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use latch_core::secret::hash_secret;
use latch_core::token::TokenHash;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The benchmark's confidential client.
pub const CLIENT: &str = "bench-client";
/// Its secret.
pub const SECRET: &str = "bench-secret";
/// The client that introspects.
pub const INTROSPECTOR: &str = "bench-introspector";
/// Its secret.
pub const INTROSPECTOR_SECRET: &str = "bench-introspector-secret";
/// Grants per subject (the log-out-everywhere workload kills this many at once).
pub const GRANTS_PER_SUBJECT: u64 = 10;
/// The smallest database the layout below can split.
pub const MIN_TOKENS: u64 = 40;

/// Rows per transaction while preloading.
const BATCH: usize = 50_000;

/// The `i`th preloaded token of a kind (`"at"` or `"rt"`): the prefix and 43 base64url
/// characters, `latch_at_` + base64url(SHA-256("bench-at-" + i)).
pub fn token(kind: &str, i: u64) -> String {
    let digest = Sha256::digest(format!("bench-{kind}-{i}").as_bytes());
    let prefix = if kind == "at" {
        "latch_at_"
    } else {
        "latch_rt_"
    };
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(digest))
}

/// The subject of the `i`th grant: `user{i / 10}`.
pub fn subject(i: u64) -> String {
    format!("user{}", i / GRANTS_PER_SUBJECT)
}

/// The id of the `i`th grant (zero-padded, so ids sort in the order they are inserted).
pub(crate) fn grant_id(i: u64) -> String {
    format!("g_bench{i:010}")
}

/// Which preloaded grants each workload uses, so that no workload sees another's leftovers:
/// introspection only ever sees tokens nothing revokes, and every consumed token is consumed
/// once, also across runs on a kept database (see [`State`]).
///
/// - grants `[0, N/4)`: introspection (random, never revoked);
/// - grants `[N/4, N/2)`: revocation takes their access tokens, rotation their refresh tokens
///   (neither touches the other: rotation leaves the old access token alone, and revoking an
///   access token revokes only that token for `bench-client`);
/// - grants `[N/2, N)`, whole subjects of ten: log out everywhere.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub tokens: u64,
}

impl Layout {
    pub fn introspect(&self) -> Range<u64> {
        0..self.tokens / 4
    }

    /// Grants whose access tokens are revoked and whose refresh tokens are rotated.
    pub fn consumable(&self) -> Range<u64> {
        self.tokens / 4..self.tokens / 2
    }

    /// Subjects (not grants) logged out everywhere.
    pub fn logout_subjects(&self) -> Range<u64> {
        (self.tokens / 2).div_ceil(GRANTS_PER_SUBJECT)..self.tokens / GRANTS_PER_SUBJECT
    }
}

/// What a preloaded database holds and what earlier runs on it consumed, kept next to it
/// (`<db>.state.json`) so that `--keep-db` runs never reuse a consumed token. A consuming
/// run's whole supply is recorded as consumed before it starts, and what it left unused is
/// given back after it ends: a run cut short leaves nothing a later run would take for live.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Preloaded grants (N).
    pub tokens: u64,
    /// Access tokens of the consumable range already revoked.
    pub revoked: u64,
    /// Refresh tokens of the consumable range already rotated.
    pub refreshed: u64,
    /// Subjects already logged out.
    pub logged_out: u64,
    /// Whether the counts above are positions in [`crate::load::Supply`]'s scattered order.
    /// States written before it (absent: false) counted items taken in key order, which
    /// the scattered order would take again.
    #[serde(default)]
    pub scattered: bool,
    /// Audit records preloaded (`--audit-records`), the history of a server that has been
    /// revoking for a while; absent in states written before the flag: none.
    #[serde(default)]
    pub audit_records: u64,
    /// How long the preload took.
    pub preload_seconds: f64,
    /// When it was made (UTC).
    pub preloaded_at: String,
}

/// The `k`th of `records` preloaded audit records, over `n` grants: what a client's
/// revocation of one access token leaves, about a grant picked at random (so each record
/// lands on its own subject, as revocations from many users do), one a second up to `now`.
pub(crate) struct AuditRecord {
    pub at: i64,
    pub grant_id: String,
    pub subject: String,
}

/// Every preloaded audit record is one client revocation, with these columns.
pub(crate) const AUDIT_COLUMNS: &str = "'default', 'bench-client', 'oauth2/revoke', \
     'client_request'";

impl AuditRecord {
    pub fn new(k: u64, records: u64, n: u64, now: i64) -> Self {
        // SplitMix64's finaliser: a fixed scatter of k over the grants.
        let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let grant = (z ^ (z >> 31)) % n;
        Self {
            at: now - (records - k) as i64,
            grant_id: grant_id(grant),
            subject: subject(grant),
        }
    }
}

/// A file beside the database: its path with `suffix` appended (`-wal`, `.state.json`).
pub fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

impl State {
    pub fn path(db: &Path) -> PathBuf {
        beside(db, ".state.json")
    }

    pub fn load(db: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(Self::path(db)) {
            Ok(s) => Ok(Some(serde_json::from_str(&s)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the state file whole (a new file renamed over the old one), so that a run
    /// cut short never leaves half a state behind.
    pub fn save(&self, db: &Path) -> anyhow::Result<()> {
        let path = Self::path(db);
        let new = beside(&path, ".new");
        std::fs::write(&new, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&new, &path)?;
        Ok(())
    }

    /// Whether earlier runs consumed items in key order (a state from before the scattered
    /// order), so that a run in the scattered order could reuse them.
    pub fn consumed_in_key_order(&self) -> bool {
        !self.scattered && self.revoked + self.refreshed + self.logged_out > 0
    }

    pub fn layout(&self) -> Layout {
        Layout {
            tokens: self.tokens,
        }
    }
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let template = format!(
        "preload {what:<8} {{bar:40}} {{human_pos}}/{{human_len}} ({{per_sec}}, eta {{eta}})"
    );
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Switches the fresh database (WAL, as latch left it) to no journal for the load. latch's
/// writer thread may still be closing its connection, hence the retries.
fn leave_wal(db: &Connection) -> anyhow::Result<()> {
    for _ in 0..100 {
        let mode = db.query_row("PRAGMA journal_mode = DELETE", [], |r| {
            r.get::<_, String>(0)
        });
        if mode.is_ok_and(|m| m.eq_ignore_ascii_case("delete")) {
            let off: String = db.query_row("PRAGMA journal_mode = OFF", [], |r| r.get(0))?;
            anyhow::ensure!(off.eq_ignore_ascii_case("off"), "journal_mode is {off}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("cannot leave WAL mode: the database is still in use")
}

/// Reports a finished preload phase (also when stderr is not a terminal and the progress
/// bars stay hidden).
pub(crate) fn phase(what: &str, clock: &mut Instant) {
    eprintln!("preload: {what} in {:.1} s", clock.elapsed().as_secs_f64());
    *clock = Instant::now();
}

/// Every preloaded token as (its hash, `2 * grant + kind`), sorted by hash: inserted in this
/// order, the tokens' primary key grows at its right edge.
pub(crate) fn sorted_tokens(n: u64) -> Vec<(TokenHash, u64)> {
    let progress = bar(n, "hashes");
    let mut rows: Vec<(TokenHash, u64)> = Vec::with_capacity(2 * n as usize);
    for k in 0..n {
        for (kind, code) in [("at", 0), ("rt", 1)] {
            rows.push((TokenHash::of(&token(kind, k)), 2 * k + code));
        }
        if k % 65_536 == 0 {
            progress.set_position(k);
        }
    }
    progress.finish_and_clear();
    rows.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    rows
}

/// Creates the database at `path` (latch's own migrations) and fills it with `n` grants and
/// `audit` audit records. Removes whatever was there.
pub fn preload(path: &Path, n: u64, audit: u64) -> anyhow::Result<State> {
    anyhow::ensure!(n >= MIN_TOKENS, "--tokens must be at least {MIN_TOKENS}");
    let started = Instant::now();
    let mut clock = Instant::now();
    for suffix in ["", "-wal", "-shm", "-journal", ".state.json"] {
        match std::fs::remove_file(beside(path, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    // Opening through latch applies its migrations, so the schema is exactly latch's.
    drop(latch_store::SqliteStore::open_file(path)?);
    let mut db = Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(5))?;
    leave_wal(&db)?;
    // Only for the preload: the benchmark measures latch, not how fast its data got there.
    db.pragma_update(None, "synchronous", "OFF")?;
    db.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    db.pragma_update(None, "cache_size", -1_048_576)?; // 1 GiB, for the index builds
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let far = now + 10 * 365 * 24 * 3600;

    let tx = db.transaction()?;
    for (id, secret) in [(CLIENT, SECRET), (INTROSPECTOR, INTROSPECTOR_SECRET)] {
        tx.execute(
            "INSERT OR REPLACE INTO clients (tenant_id, client_id, secret_hash, auth_method, \
               grant_types, scope, redirect_uris, access_token_ttl, refresh_token_ttl, \
               rotation_grace, access_token_revocation, created_at) \
             VALUES ('default', ?1, ?2, 'client_secret_basic', \
               'client_credentials refresh_token', 'read', '', 3600, 31536000, 0, 'token', ?3)",
            params![id, hash_secret(secret).as_str(), now],
        )?;
    }
    // Secondary indexes: dropped now, rebuilt from latch's own definitions at the end.
    let indexes: Vec<(String, String)> = tx
        .prepare(
            "SELECT name, sql FROM sqlite_master \
             WHERE type = 'index' AND tbl_name IN ('grants', 'tokens', 'audit') \
               AND sql IS NOT NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (name, _) in &indexes {
        tx.execute_batch(&format!("DROP INDEX \"{name}\""))?;
    }
    tx.commit()?;

    // 1. Grants, in key order.
    let progress = bar(n, "grants");
    let mut i = 0;
    while i < n {
        let end = (i + BATCH as u64).min(n);
        let tx = db.transaction()?;
        {
            let mut grant = tx.prepare(
                "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, \
                   expires_at) \
                 VALUES (?1, 'default', ?2, ?3, 'read', ?4, ?5)",
            )?;
            for k in i..end {
                grant.execute(params![grant_id(k), CLIENT, subject(k), now, far])?;
            }
        }
        tx.commit()?;
        progress.set_position(end);
        i = end;
    }
    progress.finish_and_clear();
    phase("grants", &mut clock);

    // 2. Token hashes, sorted: the primary key then grows at its right edge.
    let rows = sorted_tokens(n);
    phase("token hashes, sorted", &mut clock);

    // 3. Tokens.
    let progress = bar(2 * n, "tokens");
    for (b, chunk) in rows.chunks(BATCH).enumerate() {
        let tx = db.transaction()?;
        {
            // An access token carries its grant's owner, as latch writes it (schema
            // version 6); a refresh token does not.
            let mut token_row = tx.prepare(
                "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at, \
                                     tenant_id, client_id, subject) \
                 VALUES (?1, ?2, ?3, 'read', ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (hash, code) in chunk {
                let access = code % 2 == 0;
                token_row.execute(params![
                    hash.as_bytes(),
                    grant_id(code / 2),
                    code % 2,
                    now,
                    far,
                    access.then_some("default"),
                    access.then_some(CLIENT),
                    access.then(|| subject(code / 2)),
                ])?;
            }
        }
        tx.commit()?;
        progress.set_position(((b + 1) * BATCH).min(rows.len()) as u64);
    }
    progress.finish_and_clear();
    drop(rows);
    phase("tokens", &mut clock);

    // 4. The audit trail, in id order.
    if audit > 0 {
        let progress = bar(audit, "audit");
        let mut i = 0;
        while i < audit {
            let end = (i + BATCH as u64).min(audit);
            let tx = db.transaction()?;
            {
                let mut record = tx.prepare(&format!(
                    "INSERT INTO audit (tenant_id, actor, route, reason, at, grant_id, subject, \
                       grants, tokens, address) \
                     VALUES ({AUDIT_COLUMNS}, ?1, ?2, ?3, 0, 1, '127.0.0.1')"
                ))?;
                for k in i..end {
                    let r = AuditRecord::new(k, audit, n, now);
                    record.execute(params![r.at, r.grant_id, r.subject])?;
                }
            }
            tx.commit()?;
            progress.set_position(end);
            i = end;
        }
        progress.finish_and_clear();
        phase("audit records", &mut clock);
    }

    // 5. The secondary indexes, each built by one sort.
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(200));
    for (name, sql) in &indexes {
        spinner.set_message(format!("preload building index {name}"));
        db.execute_batch(sql)
            .with_context(|| format!("rebuilding index {name}"))?;
    }
    spinner.finish_and_clear();
    phase("indexes", &mut clock);

    db.pragma_update(None, "locking_mode", "NORMAL")?;
    let mode: String = db.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    drop(db);
    // Everything on disk before the measurements start: otherwise the kernel writes the
    // preload back during the first workloads (measured: the ceiling ran 30% slower).
    std::fs::File::open(path)?.sync_all()?;
    phase("flush to disk", &mut clock);

    let state = State {
        tokens: n,
        audit_records: audit,
        scattered: true,
        preload_seconds: started.elapsed().as_secs_f64(),
        preloaded_at: crate::sys::utc_now(),
        ..State::default()
    };
    state.save(path)?;
    Ok(state)
}

/// Checks that latch reads a preloaded database as its own: every token of a few sampled
/// grants is found live under the key latch derives from the token string, in the right
/// grant, for the right client and subject, both clients' secrets verify, and the `audit`
/// preloaded audit records read as latch's own, whole and by subject. Shared by both
/// preloads' tests.
#[cfg(test)]
pub(crate) async fn assert_latch_reads(store: &dyn latch_core::store::Storage, n: u64, audit: u64) {
    use latch_core::audit::{AuditQuery, Reason};
    use latch_core::id::{ClientId, Subject, TenantId};
    use latch_core::secret::{AdmitAll, SecretVerifier};
    use latch_core::token::TokenKind;

    let tenant = TenantId::default_tenant();
    for i in [0, n / 2, n - 1] {
        for (kind, expected) in [("at", TokenKind::Access), ("rt", TokenKind::Refresh)] {
            let t = token(kind, i);
            let record = store
                .token(&TokenHash::of(&t))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("grant {i}'s {kind} token is not found"));
            assert_eq!(record.kind, expected);
            assert_eq!(record.grant_id.as_str(), grant_id(i));
            assert_eq!(record.tenant, tenant);
            assert_eq!(record.client_id.as_str(), CLIENT);
            assert_eq!(record.subject.as_str(), subject(i));
            assert_eq!(record.revoked_at, None);
            assert_eq!(record.grant_revoked_at, None);
            assert!(record.expires_at > record.issued_at + 365 * 24 * 3600);
        }
    }
    // A token the preload never wrote is not there.
    assert!(store
        .token(&TokenHash::of(&token("at", n)))
        .await
        .unwrap()
        .is_none());
    let verifier = SecretVerifier::new();
    for (id, secret) in [(CLIENT, SECRET), (INTROSPECTOR, INTROSPECTOR_SECRET)] {
        let client = store
            .client(&tenant, &ClientId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("client {id} is not found"));
        assert!(
            verifier.verify(&client, secret, &AdmitAll).await.unwrap(),
            "{id}'s secret"
        );
        assert!(!verifier
            .verify(&client, "not-the-secret", &AdmitAll)
            .await
            .unwrap());
    }
    let everything = AuditQuery {
        subject: None,
        since: None,
        after: None,
        limit: u32::try_from(audit + 1).unwrap(),
    };
    let trail = store
        .audit_events(&tenant, &everything)
        .await
        .unwrap()
        .events;
    assert_eq!(trail.len() as u64, audit);
    if let Some(last) = audit.checked_sub(1) {
        let now = trail.last().unwrap().at + 1;
        let expected = AuditRecord::new(last, audit, n, now);
        let about = AuditQuery {
            subject: Some(Subject::parse(&expected.subject).unwrap()),
            ..everything
        };
        let events = store.audit_events(&tenant, &about).await.unwrap().events;
        let event = events.last().expect("the last record, by its subject");
        assert_eq!(event.id, trail.last().unwrap().id);
        assert_eq!(
            event.grant_id.as_ref().map(|g| g.as_str()),
            Some(expected.grant_id.as_str())
        );
        assert_eq!(
            (event.actor.as_str(), event.route.as_str(), event.reason),
            (CLIENT, "oauth2/revoke", Reason::ClientRequest)
        );
        assert_eq!((event.grants, event.tokens, event.at), (0, 1, expected.at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_consumed_in_key_order_is_told_apart() {
        // A state file from before the scattered order has no `scattered` field.
        let old: State = serde_json::from_str(
            r#"{"tokens":1000,"revoked":250,"refreshed":0,"logged_out":0,
                "preload_seconds":1.0,"preloaded_at":"2026-12-03T10:00:00Z"}"#,
        )
        .unwrap();
        assert!(old.consumed_in_key_order());
        let unused = State {
            revoked: 0,
            ..old.clone()
        };
        assert!(
            !unused.consumed_in_key_order(),
            "nothing consumed, nothing to reuse"
        );
        let new = State {
            scattered: true,
            ..old
        };
        assert!(!new.consumed_in_key_order());
    }

    #[test]
    fn a_saved_state_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bench.db");
        let state = State {
            tokens: 1000,
            scattered: true,
            revoked: 3,
            ..State::default()
        };
        state.save(&db).unwrap();
        State {
            revoked: 250,
            ..state
        }
        .save(&db)
        .unwrap();
        let read = State::load(&db).unwrap().unwrap();
        assert_eq!((read.revoked, read.scattered), (250, true));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["bench.db.state.json"], "no temporary file left");
    }

    #[tokio::test]
    async fn latch_reads_the_preloaded_sqlite_database_as_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.db");
        let state = preload(&path, 100, 300).unwrap();
        assert_eq!((state.tokens, state.audit_records), (100, 300));
        // Access tokens carry their grant's owner as latch writes them, so that latch reads
        // them without their grant, as it would its own.
        let db = Connection::open(&path).unwrap();
        let owners: Vec<(i64, i64)> = db
            .prepare(
                "SELECT kind, count(*) FROM tokens \
                 WHERE (tenant_id, client_id) IS ('default', ?1) AND subject IS NOT NULL \
                 GROUP BY kind",
            )
            .unwrap()
            .query_map([CLIENT], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(owners, [(0, 100)]);
        let trail: (i64, i64, i64) = db
            .query_row(
                "SELECT count(*), count(DISTINCT subject), max(at) - min(at) FROM audit",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((trail.0, trail.2), (300, 299));
        assert!(
            trail.1 > 5,
            "records scattered over the subjects: {trail:?}"
        );
        drop(db);
        let store = latch_store::open(&latch_store::DatabaseUrl::SqliteFile(path))
            .await
            .unwrap();
        assert_latch_reads(store.as_ref(), 100, 300).await;
    }

    #[test]
    fn tokens_have_latchs_shape() {
        for kind in ["at", "rt"] {
            let t = token(kind, 7);
            assert_eq!(t.len(), 52);
            assert!(
                latch_core::token::PresentedToken::parse(&t).is_some(),
                "{t}"
            );
            assert_ne!(t, token(kind, 8));
        }
    }

    #[test]
    fn the_layout_splits_the_grants_without_overlap() {
        for tokens in [MIN_TOKENS, 41, 1_000, 1_000_005, 10_000_000] {
            let l = Layout { tokens };
            let (i, c, s) = (l.introspect(), l.consumable(), l.logout_subjects());
            assert!(!i.is_empty() && !c.is_empty() && !s.is_empty(), "{tokens}");
            assert!(i.end <= c.start && c.end <= s.start * GRANTS_PER_SUBJECT);
            assert!(s.end * GRANTS_PER_SUBJECT <= tokens);
        }
    }
}
