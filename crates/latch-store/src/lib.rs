//! # latch-store: where latch keeps its state
//!
//! Implements the `latch-core` storage traits. [`open`] picks the back-end from a database URL.
//!
//! - [`postgres`]: PostgreSQL, for several latch nodes on one database. Reads on a pool;
//!   writes through a per-node committer task (`postgres/committer.rs`) doing group commit.
//! - [`sqlite`]: embedded SQLite (the default). One writer thread does group commit
//!   (`sqlite/committer.rs`), checkpoints run on another (`sqlite/checkpointer.rs`), and the
//!   writer's WAL writes are gathered per commit (`sqlite/wal_writes.rs`); reads run on a
//!   pool of WAL reader connections, the hot path's concurrent ones in one shared read
//!   transaction (`sqlite/read_batches.rs`). One file per trait: `tenants.rs`, `clients.rs`,
//!   `tokens.rs`, `revocations.rs`.

mod audit_query;
mod cleanup_sql;
mod client_sql;
pub mod postgres;
pub mod sqlite;
mod target;

use std::path::PathBuf;
use std::sync::Arc;

use latch_core::store::Storage;
use latch_core::StoreError;

pub use postgres::PgStore;
pub use sqlite::{Migrations, SqliteStore};

/// A parsed `--database-url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite::memory:`: a fresh, private in-memory database.
    SqliteMemory,
    /// `sqlite://PATH`, `sqlite:PATH` or a bare path: a database file.
    SqliteFile(PathBuf),
    /// `postgres://…` or `postgresql://…`: a PostgreSQL database (libpq URL syntax).
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses a database URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(Self::SqliteMemory);
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite URL has no path".into());
            }
            return Self::sqlite_file(path);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if url.contains("://") {
            return Err(format!(
                "unsupported database URL scheme in {:?}: use sqlite://PATH, sqlite::memory: or postgres://…",
                url.split("://").next().unwrap_or_default()
            ));
        }
        if let Some(scheme) = mistyped_scheme(url) {
            // Only the scheme: the rest may hold a password.
            return Err(format!(
                "the database URL starts with {scheme:?} and a colon but no \"://\": a URL \
                 mistyped, not a file's path (use postgres://…, sqlite://PATH, or ./{scheme}:… \
                 for a file so named)"
            ));
        }
        Self::sqlite_file(url)
    }

    /// A database file's path, refused if SQLite would read it as a URI (`file:…`), whose
    /// options (`nolock`, `immutable`, `psow`, `vfs`…) would undo what latch relies on.
    fn sqlite_file(path: &str) -> Result<Self, String> {
        if sqlite::is_uri(std::path::Path::new(path)) {
            return Err(format!(
                "{path:?} would be read by SQLite as a URI, whose options latch does not take: \
                 give the file's plain path (./{path} for a file so named)"
            ));
        }
        Ok(Self::SqliteFile(PathBuf::from(path)))
    }
}

/// The scheme a bare value starts with (`postgres:/u:pw@h/db`, a slash short of a URL), if it
/// starts with one: such a value is a URL mistyped far more often than a file's path, and
/// read as one it would have a node serve from a new, empty SQLite file of its own (the
/// other nodes never seeing its revocations), the URL's password in the file's path and
/// in the logs. `file:` is left to [`DatabaseUrl::sqlite_file`], which says why it is
/// refused; a one-letter "scheme" is a drive letter.
fn mistyped_scheme(value: &str) -> Option<&str> {
    let (scheme, _) = value.split_once(':')?;
    let mut chars = scheme.chars();
    let is_scheme = scheme.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (is_scheme && !scheme.eq_ignore_ascii_case("file")).then_some(scheme)
}

/// Opens the database a URL names, applying migrations. Must run within a tokio runtime.
pub async fn open(url: &DatabaseUrl) -> Result<Arc<dyn Storage>, StoreError> {
    open_migrating(url, Migrations::Apply).await
}

/// [`open`], migrating a SQLite file as `migrations` says. PostgreSQL always applies its
/// pending migrations: a command does there what any node starting does, and each
/// migration records whether the older nodes still running stay correct beside it.
pub async fn open_migrating(
    url: &DatabaseUrl,
    migrations: Migrations,
) -> Result<Arc<dyn Storage>, StoreError> {
    Ok(match url {
        DatabaseUrl::SqliteMemory => Arc::new(SqliteStore::open_memory()?),
        DatabaseUrl::SqliteFile(path) => Arc::new(SqliteStore::open_file_migrating(
            path,
            sqlite::WalPolicy::default(),
            migrations,
        )?),
        DatabaseUrl::Postgres(url) => Arc::new(PgStore::connect(url).await?),
    })
}

impl std::fmt::Display for DatabaseUrl {
    /// The URL without any password, for logs and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::SqliteMemory => f.write_str("sqlite::memory:"),
            DatabaseUrl::SqliteFile(p) => write!(f, "sqlite://{}", p.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// Debug output is the Display form: the URL must not leak a password into a log either.
impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Splits a `postgres://` URL into what precedes its query and the query, as libpq and
/// tokio-postgres read it: the user info runs to the first `@`, so a `?` in a password is
/// the password's, not the start of the query (splitting at the first `?` showed that
/// password in the logs, and missed the `sslmode` after it).
pub(crate) fn split_postgres_query(url: &str) -> (&str, Option<&str>) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let host = url[start..].find('@').map_or(start, |i| start + i + 1);
    match url[host..].find('?') {
        Some(i) => (&url[..host + i], Some(&url[host + i + 1..])),
        None => (url, None),
    }
}

/// A URL parameter's key as tokio-postgres reads it: percent-decoded.
pub(crate) fn decoded(key: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(key).decode_utf8_lossy()
}

/// `postgres://user:secret@host/db?password=secret&x=y` → `postgres://user:***@host/db?password=***&x=y`:
/// libpq URLs take a password in the user info or as a query parameter.
fn redact_password(url: &str) -> String {
    let Some((scheme, _)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (base, query) = split_postgres_query(url);
    let location = &base[scheme.len() + 3..];
    let mut redacted = match location.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => format!("{scheme}://{location}"),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if decoded(key).eq_ignore_ascii_case("password") => {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&params.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_database_urls() {
        assert_eq!(
            DatabaseUrl::parse("sqlite::memory:"),
            Ok(DatabaseUrl::SqliteMemory)
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/latch.db"),
            Ok(DatabaseUrl::SqliteFile("data/latch.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db?mode=rwc"),
            Ok(DatabaseUrl::SqliteFile("/tmp/x.db".into()))
        );
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        // A URL a slash or two short is no file's path, and its password is not repeated.
        for typo in [
            "postgres:/u:S3cret@h/db",
            "postgresql:u:S3cret@h/db",
            "Postgres:/u:S3cret@h/db",
            "sqlite-x:data/latch.db",
        ] {
            let refused = DatabaseUrl::parse(typo).unwrap_err();
            assert!(
                refused.contains("mistyped") && !refused.contains("S3cret"),
                "{refused}"
            );
        }
        for path in [
            "data/latch.db",
            "./postgres:x.db",
            "/srv/a:b/latch.db",
            "c:latch.db",
        ] {
            assert_eq!(
                DatabaseUrl::parse(path),
                Ok(DatabaseUrl::SqliteFile(path.into()))
            );
        }
        for uri in [
            "file:/data/latch.db?psow=0",
            "sqlite:file:x.db",
            "sqlite://file:x.db?nolock=1",
        ] {
            assert!(DatabaseUrl::parse(uri).is_err(), "{uri}");
        }
        assert_eq!(
            DatabaseUrl::parse("./file:x.db"),
            Ok(DatabaseUrl::SqliteFile("./file:x.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u:pw@h/db"),
            Ok(DatabaseUrl::Postgres("postgres://u:pw@h/db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u:pw@h/db")
                .unwrap()
                .to_string(),
            "postgres://u:***@h/db"
        );
    }

    #[test]
    fn a_password_never_shows_in_a_database_urls_display_or_debug_form() {
        for (url, shown) in [
            ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:p@w@h:5432/db",
                "postgresql://u:***@h:5432/db",
            ),
            (
                "postgres://u@h/db?sslmode=disable&Password=pw&application_name=x",
                "postgres://u@h/db?sslmode=disable&Password=***&application_name=x",
            ),
            (
                "postgres://u:pw@h/db?password=pw",
                "postgres://u:***@h/db?password=***",
            ),
            ("postgres://h/db", "postgres://h/db"),
            // libpq's reading: the user info runs to the first `@`, so a `?` before it is
            // the password's.
            (
                "postgres://u:pw?x@h/db?sslmode=require",
                "postgres://u:***@h/db?sslmode=require",
            ),
            // A key is percent-decoded, as tokio-postgres decodes it.
            (
                "postgres://u@h/db?pass%77ord=pw",
                "postgres://u@h/db?pass%77ord=***",
            ),
        ] {
            let parsed = DatabaseUrl::parse(url).unwrap();
            assert_eq!(parsed.to_string(), shown);
            let debug = format!("{parsed:?}");
            assert!(debug.contains(shown) && !debug.contains("pw"), "{debug}");
        }
    }
}
