//! `disk_hung`: a canary write + fdatasync that does not return.

use std::time::Duration;

use graydar_common::api::Severity;

use crate::detect::transition::Transition;
use crate::probes::disk::canary::CanaryStatus;

/// The disk_hung decision for one canary (pure; the watchdog calls it every
/// 100 ms): hung while a call has been in flight for `stall_limit` or more;
/// once hung, it stays hung until a call that started after the stall
/// completes within the limit (the stuck call returning is not enough: the
/// next one must be healthy too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HungTracker {
    hung: bool,
    calls_at_stall: u64,
}

impl HungTracker {
    pub fn is_hung(&self) -> bool {
        self.hung
    }

    /// `Fired(Critical)` when the canary becomes hung, `Resolved` when it
    /// recovers.
    pub fn update(&mut self, s: &CanaryStatus, stall_limit: Duration) -> Option<Transition> {
        let stalled = s.in_flight.is_some_and(|d| d >= stall_limit);
        if stalled {
            if !self.hung {
                self.hung = true;
                self.calls_at_stall = s.calls;
                return Some(Transition::Fired(Severity::Critical));
            }
            return None;
        }
        // The stuck call finished when `calls` moved past it; a healthy call
        // after that completes the recovery.
        if self.hung
            && s.calls >= self.calls_at_stall + 2
            && s.last_duration < stall_limit
            && s.in_flight.is_none_or(|d| d < stall_limit)
        {
            self.hung = false;
            return Some(Transition::Resolved);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(in_flight_ms: Option<u64>, calls: u64, last_ms: u64) -> CanaryStatus {
        CanaryStatus {
            in_flight: in_flight_ms.map(Duration::from_millis),
            since_last_finished: None,
            last_duration: Duration::from_millis(last_ms),
            calls,
            errors: 0,
        }
    }

    #[test]
    fn hung_at_the_stall_limit_and_recovered_after_a_healthy_call() {
        let limit = Duration::from_secs(5);
        let mut t = HungTracker::default();
        assert_eq!(t.update(&status(Some(4_900), 10, 1), limit), None);
        assert_eq!(
            t.update(&status(Some(5_000), 10, 1), limit),
            Some(Transition::Fired(Severity::Critical))
        );
        assert_eq!(t.update(&status(Some(60_000), 10, 1), limit), None);
        // the stuck call returned (60 s): not yet recovered
        assert_eq!(t.update(&status(None, 11, 60_000), limit), None);
        assert!(t.is_hung());
        // next call healthy
        assert_eq!(t.update(&status(None, 12, 2), limit), Some(Transition::Resolved));
        assert!(!t.is_hung());
    }
}
