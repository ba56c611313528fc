//! Lease time for faults: the monotonic clock the engine decides expiry by,
//! and the back-off of reverts that keep failing.
//!
//! Leases run on `CLOCK_BOOTTIME` (monotonic, counting suspend), never on the
//! wall clock: a clock stepped backwards (NTP, an operator, a VM restored
//! from a snapshot) must not extend a fault, and a wall clock before 1970 must
//! not make one eternal. The journal still records the wall-clock expiry, for
//! people reading it; nothing decides by it (start-up recovery reverts every
//! fault the journal lists, whatever its lease said).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic clock: time since an arbitrary fixed point.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// `CLOCK_BOOTTIME`: monotonic, and it keeps counting while the host is
/// suspended, so a lease also ends during a suspend.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> Duration {
        // CLOCK_BOOTTIME exists on every kernel graydar runs on (2.6.39+);
        // if the call could fail, CLOCK_MONOTONIC is the same clock minus
        // suspend time, still never stepped.
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .or_else(|_| nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC))
            .map(Duration::from)
            .unwrap_or_default()
    }
}

/// A clock that moves only when told to: for tests of lease expiry.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// When a lease of `lease` taken at `now` ends. At least one second, as the
/// controller's leases are whole seconds.
pub fn expiry(now: Duration, lease: Duration) -> Duration {
    now.saturating_add(lease.max(Duration::from_secs(1)))
}

/// A revert that failed and is retried: after 1 s, then 2, 4, ... up to a
/// minute between tries, forever (a fault left in the kernel is never given
/// up on; each failure is logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub next: Duration,
    pub last_error: String,
}

impl Retry {
    pub const MAX_DELAY: Duration = Duration::from_secs(60);

    pub fn first(now: Duration, error: String) -> Retry {
        Retry {
            attempts: 1,
            next: now.saturating_add(Duration::from_secs(1)),
            last_error: error,
        }
    }

    /// Another failure at `now`.
    pub fn failed_again(&mut self, now: Duration, error: String) {
        self.attempts = self.attempts.saturating_add(1);
        let delay = Duration::from_secs(1u64 << self.attempts.saturating_sub(1).min(6)).min(Self::MAX_DELAY);
        self.next = now.saturating_add(delay);
        self.last_error = error;
    }

    pub fn due(&self, now: Duration) -> bool {
        self.next <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_by_the_monotonic_clock_only() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(1000));
        let ends = expiry(clock.now(), Duration::from_secs(30));
        clock.advance(Duration::from_secs(29));
        assert!(clock.now() < ends, "29 s into a 30 s lease");
        clock.advance(Duration::from_secs(1));
        assert!(clock.now() >= ends, "30 s: over");
        assert_eq!(
            expiry(Duration::ZERO, Duration::ZERO),
            Duration::from_secs(1),
            "at least 1 s"
        );
        assert_eq!(
            expiry(Duration::MAX, Duration::from_secs(5)),
            Duration::MAX,
            "no overflow"
        );
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = BootClock.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = BootClock.now();
        assert!(b >= a + Duration::from_millis(5), "{a:?} then {b:?}");
        assert!(a > Duration::ZERO);
    }

    #[test]
    fn failed_reverts_back_off_to_a_minute() {
        let t = Duration::from_secs(100);
        let mut r = Retry::first(t, "EBUSY".into());
        assert!(!r.due(t) && r.due(t + Duration::from_secs(1)));
        let mut delays = Vec::new();
        for _ in 0..9 {
            r.failed_again(t, "EBUSY".into());
            delays.push((r.next - t).as_secs());
        }
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(r.attempts, 10);
    }
}
