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

/// Raises the soft limit on open files to the hard limit, where it is lower, and returns the
/// soft limit in force afterwards (`None` when it cannot be read).
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
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the struct it is given. Raising the soft limit up to
        // the hard one needs no privilege; on failure the old limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

/// The connections a soft limit of `fd_limit` descriptors leaves room for beside
/// [`RESERVE`], at most `ceiling` (and at least one).
pub fn connections_within(fd_limit: u64, ceiling: usize) -> usize {
    let room = usize::try_from(fd_limit.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
    room.clamp(1, ceiling.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_the_reserve_and_stay_under_the_ceiling() {
        assert_eq!(connections_within(1_024, 10_000), 768);
        assert_eq!(connections_within(524_288, 10_000), 10_000);
        assert_eq!(connections_within(100, 10_000), 1);
        assert_eq!(connections_within(u64::MAX, 5), 5);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_to_hard().expect("the limit is readable");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise_to_hard`.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, soft);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
