//! Preloading a PostgreSQL database directly, with exactly the rows [`crate::preload`] writes
//! to SQLite (same clients, grants, subjects and tokens), so both back-ends are measured on
//! the same data.
//!
//! The database named in the URL is dropped and re-created, then opened once through
//! latch's own `PgStore` (so the schema is exactly latch's migrations). Rows go in as
//! `INSERT … SELECT FROM unnest(…)` of 20,000-row arrays (tokens sorted by hash, their
//! primary key), secondary indexes dropped during
//! the load and rebuilt at the end, then `VACUUM (FREEZE, ANALYZE)` and a `CHECKPOINT`.

use std::time::Instant;

use anyhow::Context;
use latch_core::secret::hash_secret;
use tokio_postgres::{Client, Config, NoTls};

use crate::preload::{
    bar, grant_id, phase, subject, AuditRecord, State, AUDIT_COLUMNS, CLIENT, MIN_TOKENS,
};

/// Rows per statement.
const BATCH: u64 = 20_000;

/// Connects to `url` (or, with `database`, to another database of the same server).
pub async fn connect(url: &str, database: Option<&str>) -> anyhow::Result<Client> {
    let mut config: Config = url
        .parse()
        .with_context(|| format!("not a PostgreSQL URL: {}", redacted(url)))?;
    if let Some(db) = database {
        config.dbname(db);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redacted(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match url.split_once("://").and_then(|(s, rest)| {
        let (auth, host) = rest.split_once('@')?;
        let user = auth.split(':').next().unwrap_or("");
        Some(format!("{s}://{user}@{host}"))
    }) {
        Some(r) => r,
        None => url.to_owned(),
    }
}

/// The database a URL names.
pub fn database_name(url: &str) -> anyhow::Result<String> {
    let config: Config = url
        .parse()
        .with_context(|| format!("not a PostgreSQL URL: {}", redacted(url)))?;
    config.get_dbname().map(str::to_owned).context(
        "the PostgreSQL URL names no database (e.g. postgres://root@127.0.0.1:5432/latch_bench)",
    )
}

/// The benchmark's own table in the preloaded database, next to latch's: what the preload
/// holds and what runs consumed (see [`State`]).
const STATE_TABLE: &str = "latch_bench_state";

/// The state kept in the database, if it was preloaded by this benchmark (`None` when the
/// database or the table does not exist). Any other failure is an error: taken for "not
/// preloaded", a passing one (too many connections) would have the preload drop the
/// database `--keep-db` asked to keep.
pub async fn load_state(url: &str) -> anyhow::Result<Option<State>> {
    let c = match connect(url, None).await {
        Ok(c) => c,
        Err(e)
            if e.downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code)
                == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    match c
        .query_opt(&format!("SELECT state FROM {STATE_TABLE}"), &[])
        .await
    {
        Ok(Some(row)) => Ok(Some(serde_json::from_str(row.get(0))?)),
        Ok(None) => Ok(None),
        // No such table: not a benchmark database.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records the state in the database.
pub async fn save_state(url: &str, state: &State) -> anyhow::Result<()> {
    let mut c = connect(url, None).await?;
    // One transaction: a state is replaced, never lost halfway.
    let tx = c.transaction().await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {STATE_TABLE} (state TEXT NOT NULL); DELETE FROM {STATE_TABLE}"
    ))
    .await?;
    tx.execute(
        &format!("INSERT INTO {STATE_TABLE} (state) VALUES ($1)"),
        &[&serde_json::to_string(state)?],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The database's size on disk, in bytes.
pub async fn database_bytes(url: &str) -> anyhow::Result<u64> {
    let c = connect(url, None).await?;
    let n: i64 = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    Ok(n.max(0) as u64)
}

/// The server, as a report names it: its version and the settings that most shape its share
/// of a request (PostgreSQL runs on latch's core), e.g. `PostgreSQL 15.14 (shared_buffers
/// 128MB, fsync on, synchronous_commit on)`. The benchmark leaves them as the server has
/// them, but refuses a server whose commits are not durable ([`describe`]). Read on the
/// maintenance database (the settings are the server's), so it can be asked before the
/// preload creates the benchmark's.
pub async fn describe_server(url: &str) -> anyhow::Result<String> {
    let c = connect(url, Some("postgres")).await?;
    let row = c
        .query_one(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'), \
             current_setting('fsync'), current_setting('synchronous_commit')",
            &[],
        )
        .await?;
    describe(row.get(0), row.get(1), row.get(2), row.get(3))
}

/// [`describe_server`]'s text from the settings it read; an error for `fsync = off`, under
/// which no commit is durable: the revocation target asks for durable ones, and latch's
/// `synchronous_commit` override cannot make up for it.
fn describe(version: &str, buffers: &str, fsync: &str, sync: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        fsync == "on",
        "PostgreSQL runs with fsync = {fsync}: its commits are not durable, and the benchmark \
         measures durable writes; set fsync = on"
    );
    // "15.14 (Debian 15.14-0+deb12u1)": the number is enough.
    let version = version.split_whitespace().next().unwrap_or_default();
    Ok(format!(
        "PostgreSQL {version} (shared_buffers {buffers}, fsync {fsync}, synchronous_commit {sync})"
    ))
}

/// (Re-)creates the database `url` names and fills it with `n` grants.
pub async fn preload(url: &str, n: u64, audit: u64) -> anyhow::Result<State> {
    anyhow::ensure!(n >= MIN_TOKENS, "--tokens must be at least {MIN_TOKENS}");
    let started = Instant::now();
    let mut clock = Instant::now();
    let name = database_name(url)?;
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "use a plain database name (letters, digits, _) for the benchmark, not {name:?}"
    );
    anyhow::ensure!(
        !["postgres", "template0", "template1"].contains(&name.as_str()),
        "the benchmark drops and re-creates its database; give it its own, not {name:?}"
    );
    {
        let admin = connect(url, Some("postgres")).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
    }
    // Opening through latch applies its migrations, so the schema is exactly latch's.
    drop(
        latch_store::open(&latch_store::DatabaseUrl::Postgres(url.to_owned()))
            .await
            .map_err(|e| anyhow::anyhow!("latch cannot open {}: {e}", redacted(url)))?,
    );
    let db = connect(url, None).await?;
    // Only for the preload: the benchmark measures latch, not how fast its data got there.
    db.batch_execute("SET synchronous_commit = off; SET maintenance_work_mem = '1GB'")
        .await?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let far = now + 10 * 365 * 24 * 3600;
    for (id, secret) in [
        (CLIENT, crate::preload::SECRET),
        (
            crate::preload::INTROSPECTOR,
            crate::preload::INTROSPECTOR_SECRET,
        ),
    ] {
        db.execute(
            "INSERT INTO clients (tenant_id, client_id, secret_hash, auth_method, \
               grant_types, scope, redirect_uris, access_token_ttl, refresh_token_ttl, \
               rotation_grace, access_token_revocation, created_at) \
             VALUES ('default', $1, $2, 'client_secret_basic', \
               'client_credentials refresh_token', 'read', '', 3600, 31536000, 0, 'token', $3)",
            &[&id, &hash_secret(secret).as_str(), &now],
        )
        .await?;
    }

    // Secondary indexes (not primary keys): dropped now, rebuilt from their definitions.
    let indexes: Vec<(String, String)> = db
        .query(
            "SELECT i.relname::text, pg_get_indexdef(i.oid) FROM pg_index x \
             JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
             WHERE t.relname IN ('grants', 'tokens', 'audit') AND NOT x.indisprimary \
               AND t.relnamespace = 'public'::regnamespace",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, _) in &indexes {
        db.batch_execute(&format!("DROP INDEX \"{name}\"")).await?;
    }

    let progress = bar(n, "grants");
    let insert_grants = db
        .prepare(
            "INSERT INTO grants (id, tenant_id, client_id, subject, scope, created_at, expires_at) \
             SELECT id, 'default', $2, s, 'read', $3, $4 FROM unnest($1::text[], $5::text[]) AS u(id, s)",
        )
        .await?;
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let ids: Vec<String> = (i..end).map(grant_id).collect();
        let subjects: Vec<String> = (i..end).map(subject).collect();
        db.execute(&insert_grants, &[&ids, &CLIENT, &now, &far, &subjects])
            .await?;
        progress.set_position(end);
        i = end;
    }
    progress.finish_and_clear();
    phase("grants", &mut clock);

    let rows = crate::preload::sorted_tokens(n);
    phase("token hashes, sorted", &mut clock);
    let progress = bar(2 * n, "tokens");
    let insert_tokens = db
        .prepare(
            // An access token carries its grant's owner (schema version 5), as latch writes it.
            "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at, \
               tenant_id, client_id, subject) \
             SELECT h, g, k, 'read', $4, $5, CASE WHEN k = 0 THEN 'default' END, \
               CASE WHEN k = 0 THEN $6 END, CASE WHEN k = 0 THEN s END \
             FROM unnest($1::bytea[], $2::text[], $3::int2[], $7::text[]) AS u(h, g, k, s)",
        )
        .await?;
    for (b, chunk) in rows.chunks(BATCH as usize).enumerate() {
        let hashes: Vec<&[u8]> = chunk.iter().map(|(h, _)| h.as_bytes()).collect();
        let grants: Vec<String> = chunk.iter().map(|(_, code)| grant_id(code / 2)).collect();
        let kinds: Vec<i16> = chunk.iter().map(|(_, code)| (code % 2) as i16).collect();
        let subjects: Vec<String> = chunk.iter().map(|(_, code)| subject(code / 2)).collect();
        db.execute(
            &insert_tokens,
            &[&hashes, &grants, &kinds, &now, &far, &CLIENT, &subjects],
        )
        .await?;
        progress.set_position(((b + 1) * BATCH as usize).min(rows.len()) as u64);
    }
    progress.finish_and_clear();
    drop(rows);
    phase("tokens", &mut clock);

    if audit > 0 {
        let progress = bar(audit, "audit");
        let insert_audit = db
            .prepare(&format!(
                "INSERT INTO audit (tenant_id, actor, route, reason, at, grant_id, subject, \
                   grants, tokens, address) \
                 SELECT {AUDIT_COLUMNS}, a, g, s, 0, 1, '127.0.0.1' \
                 FROM unnest($1::int8[], $2::text[], $3::text[]) WITH ORDINALITY AS u(a, g, s, o) \
                 ORDER BY o"
            ))
            .await?;
        let mut i = 0;
        while i < audit {
            let end = (i + BATCH).min(audit);
            let records: Vec<AuditRecord> = (i..end)
                .map(|k| AuditRecord::new(k, audit, n, now))
                .collect();
            let at: Vec<i64> = records.iter().map(|r| r.at).collect();
            let grants: Vec<&str> = records.iter().map(|r| r.grant_id.as_str()).collect();
            let subjects: Vec<&str> = records.iter().map(|r| r.subject.as_str()).collect();
            db.execute(&insert_audit, &[&at, &grants, &subjects])
                .await?;
            progress.set_position(end);
            i = end;
        }
        progress.finish_and_clear();
        phase("audit records", &mut clock);
    }

    for (name, sql) in &indexes {
        eprintln!("preload: building index {name}");
        db.batch_execute(sql)
            .await
            .with_context(|| format!("rebuilding index {name}"))?;
    }
    phase("indexes", &mut clock);

    // A freshly loaded table is not yet a steady-state one: the first read of each row sets
    // its hint bits (dirtying the page), autovacuum would visit 3M new rows at a moment of
    // its choosing, and the load's dirty pages wait for a checkpoint. Doing all of that now
    // keeps it out of the measured runs, as the SQLite preload's final fsync does.
    db.batch_execute("VACUUM (FREEZE, ANALYZE)").await?;
    phase("VACUUM (FREEZE, ANALYZE)", &mut clock);
    if let Err(e) = db.batch_execute("CHECKPOINT").await {
        // CHECKPOINT needs a superuser or pg_checkpoint; without it the runs still work.
        eprintln!("preload: no CHECKPOINT ({e}); PostgreSQL writes the load back during the runs");
    }
    phase("CHECKPOINT", &mut clock);

    Ok(State {
        tokens: n,
        audit_records: audit,
        scattered: true,
        preload_seconds: started.elapsed().as_secs_f64(),
        preloaded_at: crate::sys::utc_now(),
        ..State::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local PostgreSQL server of the test suite (trust auth).
    const SERVER: &str = "postgres://root@127.0.0.1:5432";

    #[tokio::test]
    async fn the_report_names_the_server_with_its_version_and_main_settings() {
        let described = describe_server(&format!("{SERVER}/postgres"))
            .await
            .unwrap();
        let c = connect(&format!("{SERVER}/postgres"), None).await.unwrap();
        let major: String = c
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .unwrap()
            .get(0);
        // "150014" is 15.14.
        let major = &major[..major.len() - 4];
        assert!(
            described.starts_with(&format!("PostgreSQL {major}.")),
            "{described}"
        );
        assert!(described.contains("(shared_buffers "), "{described}");
        assert!(
            described.contains(", fsync on, synchronous_commit "),
            "{described}"
        );
    }

    /// A server whose commits are not durable is refused, not measured as if they were.
    #[test]
    fn a_server_without_fsync_is_refused() {
        let refused = describe("15.14 (Debian)", "128MB", "off", "on").unwrap_err();
        assert!(refused.to_string().contains("fsync = off"), "{refused}");
        assert_eq!(
            describe("15.14 (Debian)", "128MB", "on", "on").unwrap(),
            "PostgreSQL 15.14 (shared_buffers 128MB, fsync on, synchronous_commit on)"
        );
    }

    /// A database that cannot be reached for another reason than its absence is an error,
    /// not "nothing preloaded" (the preload would then drop it).
    #[tokio::test]
    async fn only_a_missing_database_reads_as_not_preloaded() {
        let missing = format!("{SERVER}/latch_bench_no_such_database");
        assert!(load_state(&missing).await.unwrap().is_none());
        let unreachable = "postgres://root@127.0.0.1:1/latch_bench";
        assert!(load_state(unreachable).await.is_err());
    }

    #[tokio::test]
    async fn latch_reads_the_preloaded_postgres_database_as_its_own() {
        let name = format!("latch_bench_test_{}", std::process::id());
        let url = format!("{SERVER}/{name}");
        // The checks run as a task of their own so that a failing one still lets the
        // database be dropped below, before its panic is passed on.
        let checks = tokio::spawn(checks(url.clone()));
        let outcome = checks.await;
        connect(&url, Some("postgres"))
            .await
            .unwrap()
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        if let Err(failed) = outcome {
            std::panic::resume_unwind(failed.into_panic());
        }
    }

    async fn checks(url: String) {
        let state = preload(&url, 100, 300).await.unwrap();
        assert_eq!(state.tokens, 100);
        {
            let store = latch_store::open(&latch_store::DatabaseUrl::Postgres(url.clone()))
                .await
                .unwrap();
            crate::preload::assert_latch_reads(store.as_ref(), 100, 300).await;

            // Vacuumed before any measurement: no run meets autovacuum's first visit.
            let db = connect(&url, None).await.unwrap();
            for table in ["grants", "tokens"] {
                let vacuumed: bool = db
                    .query_one(
                        "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables \
                         WHERE relname = $1",
                        &[&table],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(vacuumed, "{table} was not vacuumed");
            }

            // The warm-up before the first run reads at least every table and index.
            let size: i64 = db
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .unwrap()
                .get(0);
            let relations: i64 = db
                .query_one(
                    "SELECT sum(pg_relation_size(oid))::int8 FROM pg_class \
                     WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            let read = crate::warm::postgres(&url).await.unwrap();
            assert_eq!(read, relations as u64);
            assert!(read > 0 && read <= size as u64, "{read} of {size} bytes");
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("postgres://root:secret@127.0.0.1:5432/latch_bench"),
            "postgres://root@127.0.0.1:5432/latch_bench"
        );
        assert_eq!(
            database_name("postgres://root@127.0.0.1:5432/latch_bench").unwrap(),
            "latch_bench"
        );
    }
}
