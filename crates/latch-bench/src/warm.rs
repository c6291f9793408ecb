//! Reading the database into the kernel's page cache before the first run.
//!
//! These VMs page out file cache that nothing has touched for a while (a DAMON `pageout`
//! scheme for pages idle a minute or more, in `/sys/kernel/mm/damon/admin`). A database
//! kept (`--keep-db`) and reused ten or thirty minutes later is then partly on disk only,
//! and the first runs measure the disk: at N = 1M, introspection on such a database made
//! 1,928 requests a second (p99 734 ms), the run after it 14,832, a warm one about 40,000;
//! on PostgreSQL 4,879 against about 25,000. So the benchmark first reads every page of the
//! database once, as a server in steady state would have them cached. A freshly preloaded
//! database is already cached (read in 0.1 s at 1M).
//!
//! Within one benchmark, reading once is not enough at N = 10M: a run touches one to three
//! random pages of a 5.6 GB database per request, so pages go a minute untouched, are paged
//! out while the runs go on, and the writer reads some back from the disk in the middle of
//! its batch (2026-12-02: up to 40 MB/s read during a 10M run; the rates moved within the
//! VM's noise). [`Locked`] holds a SQLite database's pages in memory for the whole
//! benchmark (`mlock` on a mapping of the file, in the benchmark's process, so latch's own
//! memory is not touched), as a server whose memory holds its database would have them.
//! PostgreSQL's 1M database is re-read well within the minute by every run and is only read
//! ahead.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
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

/// A file's pages locked in memory until dropped: a read-only shared mapping of the whole
/// file, `mlock`ed. Pages the file gains afterwards are not covered (they are new, hence
/// recently written and cached).
pub struct Locked {
    addr: *mut libc::c_void,
    len: usize,
}

impl Locked {
    /// Maps and locks `path`, reading any page not yet in memory. Fails when the file is
    /// empty, when it is more than half the memory available (locked pages cannot be
    /// reclaimed, so locking more could starve the servers under test), or when the lock is
    /// refused (an unprivileged user's `RLIMIT_MEMLOCK`).
    pub fn file(path: &Path) -> std::io::Result<Self> {
        Self::file_within(path, available_memory()?)
    }

    /// [`Self::file`] against a given reading of the memory available, so that the check
    /// and whoever tests it see the same figure (`MemAvailable` moves with the page cache).
    fn file_within(path: &Path, available: u64) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        if len > available / 2 {
            return Err(std::io::Error::other(format!(
                "{} MB is more than half the {} MB of memory available",
                len / 1_000_000,
                available / 1_000_000
            )));
        }
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("file too large"))?;
        // SAFETY: a fresh read-only mapping of an open file; the kernel picks the address. The
        // mapping outlives the descriptor by design (closing does not unmap).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let locked = Self { addr, len };
        // SAFETY: `addr..addr + len` is the mapping just made. Nothing ever reads through it:
        // it only keeps the pages resident.
        if unsafe { libc::mlock(addr, len) } != 0 {
            return Err(std::io::Error::last_os_error()); // `locked` unmaps on the way out
        }
        Ok(locked)
    }

    /// Bytes locked.
    pub fn len(&self) -> usize {
        self.len
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_memory() -> std::io::Result<u64> {
    crate::sys::proc_kib("/proc/meminfo", "MemAvailable:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::other("no MemAvailable in /proc/meminfo"))
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping this value made, once; unmapping also unlocks it.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
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

    #[test]
    fn locks_a_file_whole_and_refuses_an_empty_or_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        std::fs::write(&db, vec![1u8; 64 << 10]).unwrap();
        let before = locked_kb();
        let locked = Locked::file(&db).unwrap();
        assert_eq!(locked.len(), 64 << 10);
        assert!(locked_kb() >= before + 64, "the pages are locked");
        drop(locked);
        assert_eq!(locked_kb(), before, "and unlocked when dropped");
        std::fs::write(&db, b"").unwrap();
        assert!(Locked::file(&db).is_err());
        assert!(Locked::file(&dir.path().join("missing.db")).is_err());
    }

    #[test]
    fn refuses_a_file_larger_than_half_the_available_memory() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.db");
        // Sparse: no disk or memory is used until a page is read, and none is.
        let file = File::create(&big).unwrap();
        // One reading for the file's size and the check: `MemAvailable` moves with the page
        // cache between two readings (a run once locked a file 1 MiB over the first).
        let available = available_memory().unwrap();
        file.set_len(available / 2 + (1 << 20)).unwrap();
        let before = locked_kb();
        let err = Locked::file_within(&big, available).err().expect("refused");
        assert!(err.to_string().contains("more than half"), "{err}");
        assert_eq!(locked_kb(), before);
        // And through `file`'s own reading, by a margin no page cache moves.
        file.set_len(available.saturating_mul(2)).unwrap();
        let err = Locked::file(&big).err().expect("refused");
        assert!(err.to_string().contains("more than half"), "{err}");
        assert_eq!(locked_kb(), before);
    }

    /// This process's locked memory (`VmLck`), in kB.
    fn locked_kb() -> u64 {
        crate::sys::proc_kib("/proc/self/status", "VmLck:").unwrap()
    }
}
