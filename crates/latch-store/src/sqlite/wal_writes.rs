//! A thin VFS over SQLite's default one that gathers the writer's WAL writes into one
//! `pwrite` per commit.
//!
//! SQLite appends a commit's pages to the WAL with two `pwrite` calls per page (the 24-byte
//! frame header, then the page), then fsyncs the WAL. A group commit of 35 revocations
//! dirties about 70 pages: 140 system calls, each paying the kernel's per-write cost
//! (measured here: 4.5 µs per frame as two writes, 1.1 µs as part of one large write, and
//! the fsync after one large write was a quarter quicker). This VFS keeps a WAL file's
//! consecutive writes in memory and hands them to the real file as one write (in pieces of
//! at most 124 KiB, the most the default VFS takes at once) when SQLite next syncs, reads,
//! sizes, truncates or closes it, or when the buffer is full.
//!
//! # Why this keeps every guarantee
//!
//! * Nothing SQLite considers durable is ever only in the buffer: every `xSync` flushes
//!   first, and a commit is durable only after its sync.
//! * No other connection can read a buffered frame. In WAL mode SQLite publishes a commit's
//!   frames to other connections (the WAL index) only after the commit's `xSync` returns,
//!   **provided the connection syncs at commit**, i.e. `synchronous=FULL` (or `EXTRA`).
//!   Only the writer connection, which runs with `FULL` (`configure_writer`), is opened
//!   through this VFS; with `synchronous=NORMAL` it would be unsafe.
//! * The connection itself never reads stale bytes: a read that overlaps the buffer
//!   flushes it first.
//! * A failed flush fails every later write and sync of the file, so the transaction it
//!   belonged to cannot commit, whichever call triggered it (a read that overlaps the buffer
//!   included, whose error SQLite may take as the statement's alone): no `200` is sent for a
//!   frame that never reached the file.
//! * What a transaction that ended without committing left gathered is dropped as soon as
//!   it ends and again before the writer's next transaction begins ([`discard`], which the
//!   committer calls), never written: stock SQLite would have written those frames before
//!   the rollback, at offsets past the last commit, which a later commit overwrites,
//!   possibly another process's (a CLI command writing beside the server). Written
//!   afterwards, by the writer's next sync or by the checkpoint SQLite runs when it closes
//!   the last connection (which syncs the WAL first), they would overwrite it.
//!
//! Files other than WALs are opened by the default VFS itself, untouched.

// The I/O methods keep the names SQLite documents them by (`xWrite`, `xSync`, ...).
#![allow(non_snake_case)]

use std::ffi::{c_int, c_void, CStr};
use std::mem::{align_of, size_of};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections pass to open through this VFS.
pub(super) const VFS_NAME: &str = "latch-wal";
const VFS_NAME_C: &CStr = c"latch-wal";

/// The largest run of writes gathered before it is written out: more than a full group
/// commit's frames (at most 256 writes of a few pages each rarely exceed it), small enough
/// to keep for the life of the writer.
const CAPACITY: usize = 1 << 20;

/// Consecutive writes to one file, not yet handed to it.
#[derive(Default)]
struct Pending {
    /// File offset of `bytes[0]`.
    start: i64,
    bytes: Vec<u8>,
    /// A flush failed since the last [`Pending::discard`]: writes SQLite counts as made were
    /// lost, so every later write and flush fails too.
    failed: bool,
}

impl Pending {
    fn end(&self) -> i64 {
        self.start + self.bytes.len() as i64
    }

    /// Whether `len` bytes at `offset` overlap what is gathered.
    fn overlaps(&self, offset: i64, len: usize) -> bool {
        !self.bytes.is_empty() && offset < self.end() && offset + len as i64 > self.start
    }

    /// Takes a write if it starts a run, extends the run, or lies inside it; false if the
    /// run must be written out first (or the write is too large to gather at all).
    fn absorb(&mut self, data: &[u8], offset: i64) -> bool {
        if self.bytes.is_empty() {
            if data.len() > CAPACITY {
                return false;
            }
            self.start = offset;
            self.bytes.extend_from_slice(data);
            return true;
        }
        if offset == self.end() && self.bytes.len() + data.len() <= CAPACITY {
            self.bytes.extend_from_slice(data);
            return true;
        }
        if offset >= self.start && offset + data.len() as i64 <= self.end() {
            let at = (offset - self.start) as usize;
            self.bytes[at..at + data.len()].copy_from_slice(data);
            return true;
        }
        false
    }

    /// Hands the run to `write` (data, offset) and empties it, whatever the outcome; a
    /// failure is kept until [`Pending::discard`].
    fn flush(&mut self, write: impl FnOnce(&[u8], i64) -> c_int) -> c_int {
        if self.failed {
            return ffi::SQLITE_IOERR_WRITE;
        }
        if self.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let rc = write(&self.bytes, self.start);
        self.bytes.clear();
        self.failed = rc != ffi::SQLITE_OK;
        rc
    }

    /// Drops the run unwritten, and any failure of an earlier flush.
    fn discard(&mut self) {
        self.bytes.clear();
        self.failed = false;
    }

    /// A write as SQLite issued it: gathered when possible, otherwise after writing out
    /// the run (and, for a write larger than the buffer, straight through).
    fn write(
        &mut self,
        data: &[u8],
        offset: i64,
        mut write: impl FnMut(&[u8], i64) -> c_int,
    ) -> c_int {
        if self.failed {
            return ffi::SQLITE_IOERR_WRITE;
        }
        if self.absorb(data, offset) {
            return ffi::SQLITE_OK;
        }
        let rc = self.flush(&mut write);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if self.absorb(data, offset) {
            ffi::SQLITE_OK
        } else {
            let rc = write(data, offset);
            self.failed = rc != ffi::SQLITE_OK;
            rc
        }
    }
}

/// A WAL file opened through this VFS: SQLite's handle, then the default VFS's own file
/// object in the same allocation (at [`REAL_OFFSET`]).
#[repr(C)]
struct GatheringFile {
    base: ffi::sqlite3_file,
    pending: *mut Pending,
    real: *mut ffi::sqlite3_file,
    /// The file's count of completed syncs ([`tests::syncs_of`]).
    #[cfg(test)]
    syncs: *const std::sync::atomic::AtomicU64,
}

const REAL_OFFSET: usize = size_of::<GatheringFile>().next_multiple_of(align_of::<u64>());

/// The default VFS this one wraps.
static REAL_VFS: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Registers the VFS (once per process). Connections opened with [`VFS_NAME`] use it.
pub(super) fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find initialises SQLite if needed and returns a VFS that
            // lives as long as the process (the default one is never unregistered).
            let real = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
            if real.is_null() {
                return Err("SQLite has no default VFS".into());
            }
            REAL_VFS.store(real, Ordering::Release);
            // SAFETY: `real` is a valid VFS (above). The copy keeps the default VFS's
            // methods and its `pAppData`, which those methods read through the VFS pointer
            // they are given; only opening differs.
            let mut vfs: ffi::sqlite3_vfs = unsafe { ptr::read(real) };
            let real_size = usize::try_from(vfs.szOsFile).map_err(|_| "bad szOsFile")?;
            vfs.szOsFile = c_int::try_from(REAL_OFFSET + real_size).map_err(|_| "szOsFile")?;
            vfs.zName = VFS_NAME_C.as_ptr();
            vfs.pNext = ptr::null_mut();
            vfs.xOpen = Some(open);
            let vfs = Box::leak(Box::new(vfs));
            // SAFETY: `vfs` is valid for the rest of the process (leaked).
            match unsafe { ffi::sqlite3_vfs_register(vfs, 0) } {
                ffi::SQLITE_OK => Ok(()),
                rc => Err(format!("cannot register the WAL-gathering VFS: code {rc}")),
            }
        })
        .clone()
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = REAL_VFS.load(Ordering::Acquire);
    let Some(real_open) = (*real_vfs).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // The allocation is at least the default VFS's size: its file object fills it.
        return real_open(real_vfs, name, file, flags, out_flags);
    }
    let real = file
        .cast::<u8>()
        .add(REAL_OFFSET)
        .cast::<ffi::sqlite3_file>();
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // SQLite calls no method (not even xClose) on a file whose pMethods is null.
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<GatheringFile>(),
        GatheringFile {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            pending: Box::into_raw(Box::default()),
            real,
            #[cfg(test)]
            syncs: tests::sync_counter(name),
        },
    );
    rc
}

/// Drops what the writer connection's WAL handle has gathered and not written, and the
/// failure of an earlier flush. The committer calls it after each batch that did not commit
/// and before each write transaction begins (the open path after a failed migration):
/// anything still gathered then belongs to a transaction that ended without committing
/// (every commit's sync writes its frames out), and must not be written over frames another
/// connection may have committed since. A connection without a WAL opened through this VFS
/// (an in-memory database, a WAL not yet opened) has nothing to drop.
pub(super) fn discard(conn: &rusqlite::Connection) {
    let mut wal: *mut ffi::sqlite3_file = ptr::null_mut();
    // SAFETY: the handle is the open connection's; SQLITE_FCNTL_JOURNAL_POINTER stores the
    // main database's WAL (or rollback journal) file object in `wal`, and calls no VFS method.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&raw mut wal).cast(),
        )
    };
    // SAFETY: a non-null file object of the connection stays valid while it is borrowed;
    // only one this VFS opened (its methods are ours) is read as a `GatheringFile`.
    unsafe {
        if rc == ffi::SQLITE_OK && !wal.is_null() && ptr::eq((*wal).pMethods, &METHODS) {
            parts(wal).0.discard();
        }
    }
}

/// The gathered writes and the real file behind a handle this VFS opened.
///
/// # Safety
/// `file` must be a WAL handle opened by [`open`] and not yet closed.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut Pending, *mut ffi::sqlite3_file) {
    let file = file.cast::<GatheringFile>();
    (&mut *(*file).pending, (*file).real)
}

/// The most the default (unix) VFS writes in one call: it masks a write's length to 17
/// bits (`seekAndWriteFd`), so a larger write comes out short and is reported as a full
/// disk. Rounded down to whole 4 KiB pages.
const MAX_REAL_WRITE: usize = 0x1_f000;

/// Writes `data` at `offset` to the real file, in pieces it accepts.
unsafe fn write_real(real: *mut ffi::sqlite3_file, data: &[u8], offset: i64) -> c_int {
    let Some(write) = (*(*real).pMethods).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut at = offset;
    for piece in data.chunks(MAX_REAL_WRITE) {
        let len = piece.len() as c_int; // at most MAX_REAL_WRITE
        let rc = write(real, piece.as_ptr().cast(), len, at);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        at += i64::from(len);
    }
    ffi::SQLITE_OK
}

/// Writes out what is gathered; SQLITE_OK if there was nothing.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let (pending, real) = parts(file);
    pending.flush(|data, offset| write_real(real, data, offset))
}

/// The real file's method `$m`, called with the real file, after the gathered writes are
/// flushed (`flush`) or as is (`pass`); `$missing` if the real file lacks it.
macro_rules! delegate {
    (flush $m:ident($($a:ident: $t:ty),*) -> $missing:expr) => {
        unsafe extern "C" fn $m(file: *mut ffi::sqlite3_file $(, $a: $t)*) -> c_int {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let real = parts(file).1;
            match (*(*real).pMethods).$m {
                Some(m) => m(real $(, $a)*),
                None => $missing,
            }
        }
    };
    (pass $m:ident($($a:ident: $t:ty),*) -> $missing:expr) => {
        unsafe extern "C" fn $m(file: *mut ffi::sqlite3_file $(, $a: $t)*) -> c_int {
            let real = parts(file).1;
            match (*(*real).pMethods).$m {
                Some(m) => m(real $(, $a)*),
                None => $missing,
            }
        }
    };
}

delegate!(flush xTruncate(size: ffi::sqlite3_int64) -> ffi::SQLITE_IOERR_TRUNCATE);

/// Writes out what is gathered, then syncs the real file (`delegate!`'s `flush`, and in
/// tests counts each sync that succeeded).
unsafe extern "C" fn xSync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let rc = flush(file);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let real = parts(file).1;
    let rc = match (*(*real).pMethods).xSync {
        Some(m) => m(real, flags),
        None => ffi::SQLITE_IOERR_FSYNC,
    };
    #[cfg(test)]
    if rc == ffi::SQLITE_OK {
        (*(*file.cast::<GatheringFile>()).syncs).fetch_add(1, Ordering::SeqCst);
    }
    rc
}
delegate!(flush xFileSize(size: *mut ffi::sqlite3_int64) -> ffi::SQLITE_IOERR_FSTAT);
delegate!(flush xFileControl(op: c_int, arg: *mut c_void) -> ffi::SQLITE_NOTFOUND);
delegate!(flush xFetch(offset: ffi::sqlite3_int64, len: c_int, pp: *mut *mut c_void) -> {
    *pp = ptr::null_mut();
    ffi::SQLITE_OK
});
delegate!(pass xUnfetch(offset: ffi::sqlite3_int64, p: *mut c_void) -> ffi::SQLITE_OK);
delegate!(pass xLock(level: c_int) -> ffi::SQLITE_OK);
delegate!(pass xUnlock(level: c_int) -> ffi::SQLITE_OK);
delegate!(pass xCheckReservedLock(out: *mut c_int) -> ffi::SQLITE_OK);
delegate!(pass xSectorSize() -> 4096);
delegate!(pass xDeviceCharacteristics() -> 0);
delegate!(pass xShmMap(page: c_int, size: c_int, extend: c_int, pp: *mut *mut c_void) -> ffi::SQLITE_IOERR_SHMMAP);
delegate!(pass xShmLock(offset: c_int, n: c_int, flags: c_int) -> ffi::SQLITE_IOERR_SHMLOCK);
delegate!(pass xShmUnmap(delete: c_int) -> ffi::SQLITE_OK);

unsafe extern "C" fn xShmBarrier(file: *mut ffi::sqlite3_file) {
    let real = parts(file).1;
    if let Some(m) = (*(*real).pMethods).xShmBarrier {
        m(real);
    }
}

unsafe extern "C" fn xRead(
    file: *mut ffi::sqlite3_file,
    out: *mut c_void,
    len: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let (pending, real) = parts(file);
    if pending.overlaps(offset, usize::try_from(len).unwrap_or(0)) {
        let rc = pending.flush(|data, at| write_real(real, data, at));
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    match (*(*real).pMethods).xRead {
        Some(m) => m(real, out, len, offset),
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn xWrite(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    len: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let len = match usize::try_from(len) {
        Ok(0) => return ffi::SQLITE_OK,
        Ok(len) if !data.is_null() => len,
        _ => return ffi::SQLITE_IOERR_WRITE,
    };
    let data = std::slice::from_raw_parts(data.cast::<u8>(), len);
    let (pending, real) = parts(file);
    pending.write(data, offset, |d, o| write_real(real, d, o))
}

unsafe extern "C" fn xClose(file: *mut ffi::sqlite3_file) -> c_int {
    // Anything still gathered belongs to a transaction that did not commit (a commit's sync
    // writes its frames out): dropped, as `discard` drops it.
    let (pending, real) = parts(file);
    pending.discard();
    let closed = match (*(*real).pMethods).xClose {
        Some(m) => m(real),
        None => ffi::SQLITE_OK,
    };
    let gathering = file.cast::<GatheringFile>();
    drop(Box::from_raw((*gathering).pending));
    (*gathering).pending = ptr::null_mut();
    (*file).pMethods = ptr::null();
    closed
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(xClose),
    xRead: Some(xRead),
    xWrite: Some(xWrite),
    xTruncate: Some(xTruncate),
    xSync: Some(xSync),
    xFileSize: Some(xFileSize),
    xLock: Some(xLock),
    xUnlock: Some(xUnlock),
    xCheckReservedLock: Some(xCheckReservedLock),
    xFileControl: Some(xFileControl),
    xSectorSize: Some(xSectorSize),
    xDeviceCharacteristics: Some(xDeviceCharacteristics),
    xShmMap: Some(xShmMap),
    xShmLock: Some(xShmLock),
    xShmBarrier: Some(xShmBarrier),
    xShmUnmap: Some(xShmUnmap),
    xFetch: Some(xFetch),
    xUnfetch: Some(xUnfetch),
};

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, LazyLock, Mutex};

    /// Completed syncs of each WAL file opened through this VFS in this process, by name.
    /// Kept for the life of the process, so that an open handle's pointer stays valid.
    static SYNCS: LazyLock<Mutex<HashMap<String, Arc<AtomicU64>>>> = LazyLock::new(Mutex::default);

    /// The counter of the WAL file `name` (a handle [`open`] opens).
    pub(super) unsafe fn sync_counter(name: ffi::sqlite3_filename) -> *const AtomicU64 {
        let name = match name.is_null() {
            true => String::new(),
            false => CStr::from_ptr(name).to_string_lossy().into_owned(),
        };
        let mut syncs = SYNCS.lock().unwrap_or_else(|e| e.into_inner());
        Arc::as_ptr(syncs.entry(name).or_default())
    }

    /// How many syncs of the WAL file `wal` (as SQLite names it: the database's full path
    /// and `-wal`) have returned so far, on handles this VFS opened.
    pub(in crate::sqlite) fn syncs_of(wal: &std::path::Path) -> u64 {
        let syncs = SYNCS.lock().unwrap_or_else(|e| e.into_inner());
        (syncs.get(wal.to_string_lossy().as_ref())).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// A file as a byte vector, written the way the real file would be.
    #[derive(Default)]
    struct Image(Vec<u8>);

    impl Image {
        fn write(&mut self, data: &[u8], offset: i64) -> c_int {
            let at = offset as usize;
            if self.0.len() < at + data.len() {
                self.0.resize(at + data.len(), 0);
            }
            self.0[at..at + data.len()].copy_from_slice(data);
            ffi::SQLITE_OK
        }
    }

    #[test]
    fn frames_of_one_commit_reach_the_file_as_one_write() {
        let mut pending = Pending::default();
        let mut writes = Vec::new();
        for frame in 0..70i64 {
            let at = 32 + frame * 4120;
            for (data, offset) in [(&[1u8; 24][..], at), (&[2u8; 4096][..], at + 24)] {
                let rc = pending.write(data, offset, |d, o| {
                    writes.push((o, d.len()));
                    ffi::SQLITE_OK
                });
                assert_eq!(rc, ffi::SQLITE_OK);
            }
        }
        assert!(writes.is_empty(), "nothing written before the sync");
        pending.flush(|d, o| {
            writes.push((o, d.len()));
            ffi::SQLITE_OK
        });
        assert_eq!(writes, vec![(32, 70 * 4120)]);
    }

    #[test]
    fn any_sequence_of_writes_leaves_the_same_bytes_as_writing_directly() {
        // Appends, rewrites inside the run, jumps backwards and forwards, writes larger
        // than the buffer, and flushes at random points, against a direct image.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..20 {
            let (mut direct, mut gathered) = (Image::default(), Image::default());
            let mut pending = Pending::default();
            let mut end = 0i64;
            for step in 0..300u32 {
                let len = match next(100) {
                    0 => CAPACITY + 1 + next(5000) as usize,
                    1..=30 => 24,
                    _ => 1 + next(8192) as usize,
                };
                let offset = match next(4) {
                    0 => next(end as u64 + 1) as i64,
                    1 => end + next(100) as i64,
                    _ => end,
                };
                let mut data = vec![step as u8; len];
                data[0] = !data[0];
                direct.write(&data, offset);
                let rc = pending.write(&data, offset, |d, o| gathered.write(d, o));
                assert_eq!(rc, ffi::SQLITE_OK);
                end = end.max(offset + len as i64);
                if next(20) == 0 {
                    pending.flush(|d, o| gathered.write(d, o));
                }
            }
            pending.flush(|d, o| gathered.write(d, o));
            assert!(direct.0 == gathered.0, "the gathered image differs");
        }
    }

    #[test]
    fn a_failed_flush_fails_every_later_write_and_flush_until_discarded() {
        let mut pending = Pending::default();
        assert_eq!(
            pending.write(&[1; 8], 0, |_, _| unreachable!()),
            ffi::SQLITE_OK
        );
        // As a read that overlaps the run would: its flush fails (the disk is full).
        assert_eq!(pending.flush(|_, _| ffi::SQLITE_FULL), ffi::SQLITE_FULL);
        // The frames SQLite counts as written are lost: nothing after may succeed, or the
        // transaction could commit without them.
        assert_eq!(
            pending.write(&[2; 8], 8, |_, _| unreachable!()),
            ffi::SQLITE_IOERR_WRITE
        );
        assert_eq!(
            pending.flush(|_, _| unreachable!()),
            ffi::SQLITE_IOERR_WRITE
        );
        // A write too large to gather, written straight through, fails the same way.
        let mut failing = Pending::default();
        let big = vec![3; CAPACITY + 1];
        assert_eq!(
            failing.write(&big, 0, |_, _| ffi::SQLITE_FULL),
            ffi::SQLITE_FULL
        );
        assert_eq!(
            failing.flush(|_, _| unreachable!()),
            ffi::SQLITE_IOERR_WRITE
        );
        // The next transaction starts afresh.
        pending.discard();
        failing.discard();
        assert_eq!(
            pending.write(&[4; 8], 0, |_, _| unreachable!()),
            ffi::SQLITE_OK
        );
        let mut written = Vec::new();
        assert_eq!(
            pending.flush(|d, o| {
                written.push((o, d.to_vec()));
                ffi::SQLITE_OK
            }),
            ffi::SQLITE_OK
        );
        assert_eq!(written, vec![(0, vec![4; 8])]);
        assert_eq!(failing.flush(|_, _| unreachable!()), ffi::SQLITE_OK);
    }

    #[test]
    fn frames_of_a_rolled_back_transaction_never_overwrite_another_connections_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let w = writer(&path);
        w.pragma_update(None, "cache_size", 10).unwrap();
        w.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL); \
             INSERT INTO t VALUES (0, randomblob(300));",
        )
        .unwrap();
        // A transaction big enough to spill frames to the WAL (gathered), then rolled back.
        w.execute_batch("BEGIN IMMEDIATE").unwrap();
        for k in 1..2_000i64 {
            w.execute("INSERT INTO t VALUES (?1, randomblob(300))", [k])
                .unwrap();
        }
        w.execute_batch("ROLLBACK").unwrap();
        // Another process (a CLI command) commits where those frames would have gone.
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("INSERT INTO t VALUES (-1, zeroblob(300)); INSERT INTO t VALUES (-2, zeroblob(300));")
            .unwrap();
        // The writer's next transaction, begun as the committer begins one.
        discard(&w);
        w.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1, randomblob(300)); COMMIT;")
            .unwrap();
        drop(w);
        drop(other);
        assert_eq!(
            intact_keys(&path),
            [-2, -1, 0, 1],
            "every commit, the other connection's included"
        );
    }

    /// The keys of table `t` in the database at `path`, opened afresh (its WAL replayed),
    /// once SQLite's integrity check has passed.
    pub(in crate::sqlite) fn intact_keys(path: &std::path::Path) -> Vec<i64> {
        let reopened = Connection::open(path).unwrap();
        let check: String = reopened
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let mut keys = reopened.prepare("SELECT k FROM t ORDER BY k").unwrap();
        let keys = keys.query_map([], |r| r.get(0)).unwrap();
        keys.collect::<Result<_, _>>().unwrap()
    }

    fn writer(path: &std::path::Path) -> Connection {
        register().unwrap();
        let conn =
            Connection::open_with_flags_and_vfs(path, OpenFlags::default(), VFS_NAME).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn
    }

    #[test]
    fn commits_are_visible_to_other_connections_and_survive_spills() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let w = writer(&path);
        // A cache of 10 pages: the big transaction below spills pages to the WAL before it
        // commits and reads them back, through the gathered run.
        w.pragma_update(None, "cache_size", 10).unwrap();
        w.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, r INTEGER NOT NULL, v BLOB NOT NULL)",
        )
        .unwrap();
        let other = Connection::open(&path).unwrap();
        for round in 0..5i64 {
            let tx = w.unchecked_transaction().unwrap();
            for k in 0..2_000i64 {
                tx.execute(
                    "INSERT OR REPLACE INTO t VALUES (?1, ?2, randomblob(300))",
                    (k, round),
                )
                .unwrap();
            }
            tx.commit().unwrap();
            // Committed means readable by a connection on the default VFS, with the
            // writer still open (nothing left gathered behind the commit).
            let seen: (i64, i64, i64) = other
                .query_row("SELECT count(*), min(r), max(r) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            assert_eq!(seen, (2_000, round, round));
        }
        drop(w);
        assert_eq!(intact_keys(&path), (0..2_000).collect::<Vec<i64>>());
    }
}
