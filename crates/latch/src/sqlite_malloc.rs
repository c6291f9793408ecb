//! SQLite's own allocations on mimalloc, like the rest of the process.
//!
//! SQLite is C and calls glibc's `malloc` unless told otherwise. Its biggest customer is the
//! page cache of each read connection, which SQLite empties whenever another connection has
//! committed since the reader's last read: under writes, several times a millisecond. glibc
//! handed each emptied cache (about 2 MB) back to the kernel and faulted it in again page by
//! page; perf put that at 8% of the server's CPU during revocation. mimalloc keeps freed
//! pages for reuse.

use std::ffi::{c_int, c_void};
use std::ptr;

use libmimalloc_sys as mi;
use rusqlite::ffi;

unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    // SQLite never asks for zero or negative sizes; refuse them rather than trust it.
    match usize::try_from(n) {
        Ok(n) if n > 0 => mi::mi_malloc(n),
        _ => ptr::null_mut(),
    }
}

unsafe extern "C" fn free(p: *mut c_void) {
    mi::mi_free(p);
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    match usize::try_from(n) {
        Ok(n) if n > 0 => mi::mi_realloc(p, n),
        _ => ptr::null_mut(),
    }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    c_int::try_from(mi::mi_usable_size(p)).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn roundup(n: c_int) -> c_int {
    match usize::try_from(n) {
        Ok(u) => c_int::try_from(mi::mi_good_size(u)).unwrap_or(n),
        Err(_) => n,
    }
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

/// Points SQLite's allocator at mimalloc. Must run before SQLite is first used in the
/// process; returns false (and changes nothing) if it already was.
pub fn install() -> bool {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a `sqlite3_mem_methods`, which SQLite
    // copies before returning. The functions are thread-safe, return memory aligned for any
    // type (mimalloc aligns to 16), and `size` is only given pointers `malloc` or `realloc`
    // returned. Before SQLite's initialisation nothing else can be configuring it; after it,
    // the call fails with SQLITE_MISUSE and changes nothing.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        )
    };
    rc == ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    // The only test in this binary's unit tests, so nothing else touches SQLite first.
    #[test]
    fn sqlite_allocates_from_mimalloc_once_installed() {
        assert!(install());
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
             INSERT INTO t SELECT randomblob(300) FROM n;",
        )
        .unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 10_000);
        // SAFETY: a live allocation from SQLite, freed by SQLite.
        unsafe {
            let p = ffi::sqlite3_malloc(100);
            assert!(!p.is_null());
            assert!(
                mi::mi_is_in_heap_region(p),
                "SQLite allocated outside mimalloc"
            );
            ffi::sqlite3_free(p);
        }
        assert!(
            !install(),
            "SQLite is in use: the allocator can no longer change"
        );
    }
}
