//! Preloading a database directly (not over HTTP): N grants, each with one access and one
//! refresh token, for subjects with ten grants each. Tokens are derived from their index, so
//! the load generator re-creates them instead of storing them.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use latch_core::secret::hash_secret;
use latch_core::token::TokenHash;
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

/// The benchmark's confidential client.
pub const CLIENT: &str = "bench-client";
/// Its secret.
pub const SECRET: &str = "bench-secret";
/// The client that introspects.
pub const INTROSPECTOR: &str = "bench-introspector";
/// Grants per subject (the log-out-everywhere workload kills this many at once).
pub const GRANTS_PER_SUBJECT: u64 = 10;

/// Rows per transaction while preloading.
const BATCH: u64 = 50_000;

/// The `i`th preloaded token of a kind: the prefix and 43 base64url characters.
pub fn token(kind: &str, i: u64) -> String {
    let digest = Sha256::digest(format!("bench-{kind}-{i}").as_bytes());
    let prefix = if kind == "at" {
        "latch_at_"
    } else {
        "latch_rt_"
    };
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(digest))
}

/// The subject of the `i`th grant.
pub fn subject(i: u64) -> String {
    format!("user{}", i / GRANTS_PER_SUBJECT)
}

/// Creates the database (latch's own migrations) and fills it with `n` grants.
pub fn preload(path: &Path, n: u64) -> anyhow::Result<()> {
    // Opening through latch applies its migrations, so the schema is exactly latch's.
    drop(latch_store::SqliteStore::open_file(path)?);
    let mut db = Connection::open(path)?;
    // Only for the preload: the benchmark measures latch, not how fast its data got there.
    db.pragma_update(None, "synchronous", "OFF")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let far = now + 365 * 24 * 3600;
    let tx = db.transaction()?;
    for (id, secret) in [
        (CLIENT, Some(SECRET)),
        (INTROSPECTOR, Some("bench-introspector-secret")),
    ] {
        let hash = secret.map(|s| hash_secret(s).as_str().to_owned());
        tx.execute(
            "INSERT OR REPLACE INTO clients (tenant_id, client_id, secret_hash, auth_method, \
               grant_types, scope, redirect_uris, access_token_ttl, refresh_token_ttl, \
               rotation_grace, access_token_revocation, created_at) \
             VALUES ('default', ?1, ?2, 'client_secret_basic', \
               'client_credentials refresh_token', 'read', '', 3600, 2592000, 0, 'token', ?3)",
            params![id, hash, now],
        )?;
    }
    tx.commit()?;

    let bar = ProgressBar::new(n).with_style(
        ProgressStyle::with_template("preload {bar:40} {pos}/{len} grants ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let tx = db.transaction()?;
        {
            let mut grant = tx.prepare(
                "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
                 VALUES (?1, 'default', ?2, ?3, 'read', ?4, ?5)",
            )?;
            let mut token_row = tx.prepare(
                "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at) \
                 VALUES (?1, ?2, ?3, 'read', ?4, ?5)",
            )?;
            for k in i..end {
                let gid = format!("g_bench{k}");
                grant.execute(params![gid, CLIENT, subject(k), now, far])?;
                for (kind, code) in [("at", 0), ("rt", 1)] {
                    let hash = TokenHash::of(&token(kind, k));
                    token_row.execute(params![&hash.0[..], gid, code, now, far])?;
                }
            }
        }
        tx.commit()?;
        bar.set_position(end);
        i = end;
    }
    bar.finish();
    db.pragma_update(None, "synchronous", "FULL")?;
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_have_latchs_shape() {
        let t = super::token("at", 7);
        assert!(
            latch_core::token::PresentedToken::parse(&t).is_some(),
            "{t}"
        );
        assert_ne!(t, super::token("at", 8));
    }
}
