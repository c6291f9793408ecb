//! The process's file-descriptor limit, and how many client connections it leaves room for.
//!
//! Every client connection holds a descriptor, and so does every database file, WAL, reader
//! connection and PostgreSQL socket. A server at its limit fails to accept, but also to open
//! what its storage needs, and answers `503` to everyone. So the server raises its soft limit
//! to the hard one (as Go's runtime does; a service manager's default soft limit is often
//! 1,024 against a hard one of 524,288) and serves at most as many connections as leave a
//! reserve for storage.

/// Descriptors kept for everything but client connections: storage (a SQLite reader per
/// task, WAL and shared-memory files, the writer and the checkpointer; or PostgreSQL's pool),
/// the listener, logs.
pub const RESERVE: u64 = 256;

/// Raises the soft limit on open files towards the hard limit, where it is lower, and
/// returns the soft limit in force afterwards (`None` when it cannot be read, or off Unix).
#[cfg(unix)]
// `rlim_t` is `u64` on Linux but `i64` on some other Unixes: the conversions are not useless
// everywhere.
#[allow(clippy::useless_conversion)]
pub fn raise_to_hard() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes the limit into the struct it is given, which lives on this
    // stack frame for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        // Some systems (macOS) refuse an unlimited soft limit on open files even when the
        // hard one is: then a bounded one, as high as is common there.
        for target in [limit.rlim_max, limit.rlim_max.min(10_240)] {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: `setrlimit` only reads the struct it is given. Raising the soft limit
            // up to the hard one needs no privilege; on failure the old limit stays.
            if target > limit.rlim_cur
                && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0
            {
                limit.rlim_cur = target;
                break;
            }
        }
    }
    u64::try_from(limit.rlim_cur).ok()
}

/// Off Unix there is no such limit to read.
#[cfg(not(unix))]
pub fn raise_to_hard() -> Option<u64> {
    None
}

/// The connections a soft limit of `fd_limit` descriptors leaves room for: all but
/// [`RESERVE`], or half of them when the limit is too small for that (a small limit is
/// shared with storage rather than left to a handful of connections), at least one.
pub fn connections_within(fd_limit: u64) -> usize {
    let room = if fd_limit > 2 * RESERVE {
        fd_limit - RESERVE
    } else {
        fd_limit / 2
    };
    usize::try_from(room).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_the_reserve_or_half_of_a_small_limit() {
        assert_eq!(connections_within(1_024), 768);
        assert_eq!(connections_within(524_288), 524_032);
        assert_eq!(connections_within(256), 128);
        assert_eq!(connections_within(1), 1);
    }

    #[cfg(unix)]
    #[test]
    #[allow(clippy::useless_conversion)] // as in `raise_to_hard`
    fn the_soft_limit_is_raised() {
        let before = {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as in `raise_to_hard`.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                0
            );
            limit
        };
        let soft = raise_to_hard().expect("the limit is readable");
        assert!(soft >= u64::try_from(before.rlim_cur).unwrap());
        assert!(soft <= u64::try_from(before.rlim_max).unwrap_or(u64::MAX));
        if cfg!(target_os = "linux") {
            assert_eq!(
                Some(soft),
                u64::try_from(before.rlim_max).ok(),
                "Linux allows the hard limit"
            );
        }
    }
}
