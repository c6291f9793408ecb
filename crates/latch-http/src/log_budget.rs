//! A bound on how many lines an event that clients or an outage can repeat at request rate
//! writes to the log: a failed client authentication (an attacker holding many addresses
//! passes the per-address limit; the admin token's too), a storage failure, a failed
//! readiness check (every request during an outage) and a dead writer's liveness check. Past [`LogBudget::PER_SECOND`] lines of one kind in a second,
//! the rest of that second's are left out, and the next line logged says how many were.
//! Counters (`/metrics`) still count every response.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The lines of one kind of event logged in the current second.
pub(crate) struct LogBudget(Mutex<Spent>);

#[derive(Default)]
struct Spent {
    /// The second (since the process's first use of a budget) being counted.
    second: u64,
    /// Lines logged in it.
    logged: u32,
    /// Events left out since the last line logged.
    left_out: u64,
}

impl LogBudget {
    /// Lines of one kind logged per second at most.
    pub(crate) const PER_SECOND: u32 = 10;

    pub(crate) const fn new() -> Self {
        Self(Mutex::new(Spent {
            second: 0,
            logged: 0,
            left_out: 0,
        }))
    }

    /// `Some(left_out)` when this event is to be logged, with the number of events of its
    /// kind left out since the last line; `None` when it is to be left out.
    pub(crate) fn admit(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        self.admit_at(START.get_or_init(Instant::now).elapsed().as_secs())
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        let mut spent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if second != spent.second {
            spent.second = second;
            spent.logged = 0;
        }
        if spent.logged >= Self::PER_SECOND {
            spent.left_out += 1;
            return None;
        }
        spent.logged += 1;
        Some(std::mem::take(&mut spent.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::LogBudget;

    /// A burst logs its first lines and leaves the rest out; the next second's first line
    /// says how many were.
    #[test]
    fn a_burst_is_logged_up_to_the_budget_and_the_rest_is_counted() {
        let budget = LogBudget::new();
        let burst: Vec<_> = (0..15).map(|_| budget.admit_at(7)).collect();
        assert_eq!(&burst[..10], &[Some(0); 10]);
        assert_eq!(&burst[10..], &[None; 5]);
        assert_eq!(budget.admit_at(8), Some(5));
        assert_eq!(budget.admit_at(8), Some(0));
        // A quiet stretch changes nothing: the budget is per second.
        assert_eq!(budget.admit_at(60), Some(0));
    }
}
