//! # latch-store: where latch keeps its state
//!
//! Implements the `latch-core` storage traits. [`open`] picks the back-end from a database URL.
//!
//! - [`sqlite`]: embedded SQLite (the default). One writer thread does group commit
//!   (`sqlite/committer.rs`); reads run inline on a pool of WAL reader connections. One file
//!   per trait: `tenants.rs`, `clients.rs`, `tokens.rs`, `revocations.rs`.

pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use latch_core::store::Storage;
use latch_core::StoreError;

pub use sqlite::SqliteStore;

/// A parsed `--database-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite::memory:`: a fresh, private in-memory database.
    SqliteMemory,
    /// `sqlite://PATH`, `sqlite:PATH` or a bare path: a database file.
    SqliteFile(PathBuf),
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
            return Ok(Self::SqliteFile(PathBuf::from(path)));
        }
        if url.contains("://") {
            return Err(format!(
                "unsupported database URL scheme in {:?}: use sqlite://PATH or sqlite::memory:",
                url.split("://").next().unwrap_or_default()
            ));
        }
        Ok(Self::SqliteFile(PathBuf::from(url)))
    }
}

/// Opens the database a URL names, applying migrations.
pub fn open(url: &DatabaseUrl) -> Result<Arc<dyn Storage>, StoreError> {
    Ok(match url {
        DatabaseUrl::SqliteMemory => Arc::new(SqliteStore::open_memory()?),
        DatabaseUrl::SqliteFile(path) => Arc::new(SqliteStore::open_file(path)?),
    })
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
    }
}
