//! The one retry schedule of the controller channel's users.

use std::time::Duration;

/// Exponential backoff with "equal jitter": the n-th consecutive failure
/// waits between half and all of `min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The next delay; `unit` is a random number in [0, 1).
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        let cap = exp.min(self.max);
        self.failures = self.failures.saturating_add(1);
        cap / 2 + cap.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(b.next_with(0.0), Duration::from_millis(250));
        assert_eq!(b.next_with(0.999_999).as_millis(), 999);
        assert_eq!(b.next_with(0.5), Duration::from_millis(1500));
        for _ in 0..20 {
            b.next_with(0.5);
        }
        assert_eq!(b.next_with(0.0), Duration::from_secs(30));
        assert!(b.next_with(1.0) <= Duration::from_secs(60));
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_millis(250));
        // Random jitter stays within [cap/2, cap].
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for n in 0..8u32 {
            let cap = (Duration::from_secs(1) * (1 << n)).min(Duration::from_secs(60));
            let d = b.next_delay();
            assert!(d >= cap / 2 && d <= cap, "{n}: {d:?}");
        }
    }
}
