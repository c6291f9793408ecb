//! Reading the database into the kernel's page cache before the first run.
//!
//! These VMs page out file cache that nothing has touched for a while (a DAMON `pageout`
//! scheme for pages idle a minute or more, in `/sys/kernel/mm/damon/admin`). A database
//! kept (`--keep-db`) and reused ten or thirty minutes later is then partly on disk only,
//! and the first runs measure the disk: at N = 1M, introspection on such a database made
//! 1,928 requests a second (p99 734 ms), the run after it 14,832, a warm one about 40,000;
//! on PostgreSQL 4,879 against about 25,000. So the benchmark first reads every page of the
//! database once, as a server in steady state would have them cached. A freshly preloaded
//! database is already cached (read in 0.1 s at 1M), and within one benchmark the runs keep
//! it so.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Reads a SQLite database and its WAL, if any, once through; returns the bytes read.
pub fn sqlite(db: &Path) -> std::io::Result<u64> {
    let wal = crate::preload::beside(db, "-wal");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for path in [db, wal.as_path()] {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == wal => continue,
            Err(e) => return Err(e),
        };
        loop {
            match file.read(&mut buf)? {
                0 => break,
                n => total += n as u64,
            }
        }
    }
    Ok(total)
}

/// Reads every table and index of the database `url` names into the kernel's page cache
/// with `pg_prewarm` (PostgreSQL's contrib module, installed here in that database);
/// returns the bytes read.
pub async fn postgres(url: &str) -> anyhow::Result<u64> {
    let db = crate::preload_pg::connect(url, None).await?;
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        .await?;
    let blocks: i64 = db
        .query_one(
            "SELECT coalesce(sum(pg_prewarm(c.oid, 'read')), 0)::int8 FROM pg_class c \
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')",
            &[],
        )
        .await?
        .get(0);
    let block_size: String = db.query_one("SHOW block_size", &[]).await?.get(0);
    Ok(blocks.max(0) as u64 * block_size.parse::<u64>().unwrap_or(8192))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_database_and_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, vec![1u8; 3 << 20]).unwrap();
        assert_eq!(sqlite(&db).unwrap(), 3 << 20);
        std::fs::write(dir.path().join("x.db-wal"), vec![2u8; 5000]).unwrap();
        assert_eq!(sqlite(&db).unwrap(), (3 << 20) + 5000);
        assert!(sqlite(&dir.path().join("missing.db")).is_err());
    }
}
