//! Latency histograms on the kernel's bucket grid, as the fsync and block
//! I/O probes read them (summed over CPUs).

use std::time::Duration;

use graydar_common::disk::{HIST_BOUNDS_NS, HIST_OVERFLOW, HIST_SLOTS, HIST_USED_BOUNDS, Hist};

/// A latency histogram on the kernel's bucket grid ([`HIST_BOUNDS_NS`]),
/// summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    pub slots: [u64; HIST_SLOTS],
    pub sum_ns: u64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist {
            slots: [0; HIST_SLOTS],
            sum_ns: 0,
        }
    }
}

impl LatencyHist {
    /// Sums per-CPU copies of a kernel histogram.
    pub fn sum_of<'a>(per_cpu: impl IntoIterator<Item = &'a Hist>) -> LatencyHist {
        let mut out = LatencyHist::default();
        for h in per_cpu {
            for (o, v) in out.slots.iter_mut().zip(h.slots.iter()) {
                *o = o.saturating_add(*v);
            }
            out.sum_ns = out.sum_ns.saturating_add(h.sum_ns);
        }
        out
    }

    /// A histogram of the given latencies (tests, the canary).
    pub fn of(latencies: &[Duration]) -> LatencyHist {
        let mut h = LatencyHist::default();
        for l in latencies {
            h.observe(*l);
        }
        h
    }

    pub fn observe(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let slot = graydar_common::disk::hist_slot(ns);
        self.slots[slot] = self.slots[slot].saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn merge(&mut self, other: &LatencyHist) {
        for (o, v) in self.slots.iter_mut().zip(other.slots.iter()) {
            *o = o.saturating_add(*v);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// `self - older`, or `None` when any count went backwards (the map was
    /// re-created: a reset, not a negative spike).
    pub fn delta_since(&self, older: &LatencyHist) -> Option<LatencyHist> {
        let mut out = LatencyHist::default();
        for i in 0..HIST_SLOTS {
            out.slots[i] = self.slots[i].checked_sub(older.slots[i])?;
        }
        out.sum_ns = self.sum_ns.checked_sub(older.sum_ns)?;
        Some(out)
    }

    pub fn count(&self) -> u64 {
        self.slots.iter().copied().fold(0u64, u64::saturating_add)
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The `q` quantile (0 < q <= 1), linearly interpolated inside its slot;
    /// `None` when empty. Latencies above the last bound read as 10 s.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil().max(1.0);
        let mut below = 0u64;
        for (i, c) in self.slots.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            if (below + c) as f64 >= rank {
                let lo = if i == 0 { 0 } else { HIST_BOUNDS_NS[i - 1] };
                if i >= HIST_OVERFLOW {
                    return Some(Duration::from_nanos(lo));
                }
                let hi = HIST_BOUNDS_NS[i];
                let frac = (rank - below as f64) / *c as f64;
                return Some(Duration::from_nanos(lo + ((hi - lo) as f64 * frac) as u64));
            }
            below += c;
        }
        Some(Duration::from_nanos(HIST_BOUNDS_NS[HIST_USED_BOUNDS - 1]))
    }

    /// Cumulative counts at each of `bounds_ns` (Prometheus `le` buckets).
    /// Exact when every bound is on the grid, as the exported ones are; a
    /// bound between grid points counts the slot that straddles it as above.
    pub fn cumulative(&self, bounds_ns: &[u64]) -> Vec<u64> {
        bounds_ns
            .iter()
            .map(|b| {
                self.slots[..HIST_USED_BOUNDS]
                    .iter()
                    .zip(HIST_BOUNDS_NS.iter())
                    .filter(|(_, ub)| *ub <= b)
                    .map(|(c, _)| *c)
                    .fold(0u64, u64::saturating_add)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn merge_and_percentiles() {
        let fast: Vec<Duration> = (0..99).map(|_| MS).collect();
        let mut h = LatencyHist::of(&fast);
        assert_eq!(h.count(), 99);
        assert_eq!(
            h.quantile(0.99),
            Some(MS),
            "all in the (750 µs, 1 ms] slot: its upper end"
        );
        let slow = LatencyHist::of(&[Duration::from_millis(200)]);
        h.merge(&slow);
        assert_eq!(h.count(), 100);
        // rank 99 of 100 is still a fast one; the max is the slow one.
        assert!(h.quantile(0.99).is_some_and(|p| p <= MS));
        assert!(
            h.quantile(1.0)
                .is_some_and(|p| p > Duration::from_millis(150) && p <= Duration::from_millis(200))
        );
        h.merge(&slow);
        assert!(h.quantile(0.99).is_some_and(|p| p > Duration::from_millis(150)));
        assert_eq!(h.sum_ns, 99 * 1_000_000 + 400_000_000);
        // p50 interpolates inside the slot.
        let spread = LatencyHist::of(&[Duration::from_micros(800), Duration::from_micros(900)]);
        let p50 = spread.quantile(0.5).expect("p50");
        assert!(p50 > Duration::from_micros(750) && p50 <= MS, "{p50:?}");
        assert_eq!(LatencyHist::default().quantile(0.99), None);
        // above 10 s
        assert_eq!(
            LatencyHist::of(&[Duration::from_secs(30)]).quantile(0.5),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn threshold_decisions_are_exact_at_grid_points() {
        // 1 % of observations at exactly 50 ms: p99 is 50 ms, not above.
        let mut v: Vec<Duration> = (0..99).map(|_| MS).collect();
        v.push(Duration::from_millis(50));
        let h = LatencyHist::of(&v);
        assert!(h.quantile(1.0).is_some_and(|p| p <= Duration::from_millis(50)));
        let p99 = h.quantile(0.99).expect("p99");
        assert!(p99 < Duration::from_millis(50), "{p99:?}");
        // 2 % above 50 ms: p99 above it.
        v.push(Duration::from_micros(50_001));
        v.push(Duration::from_micros(50_001));
        assert!(
            LatencyHist::of(&v)
                .quantile(0.99)
                .is_some_and(|p| p > Duration::from_millis(50))
        );
    }

    #[test]
    fn delta_and_cumulative_buckets() {
        let a = LatencyHist::of(&[MS, MS, Duration::from_millis(60)]);
        let mut b = a.clone();
        b.merge(&LatencyHist::of(&[Duration::from_millis(3)]));
        let d = b.delta_since(&a).expect("delta");
        assert_eq!(d.count(), 1);
        assert!(a.delta_since(&b).is_none(), "backwards is a reset");
        let cum = b.cumulative(&[1_000_000, 5_000_000, 50_000_000, 100_000_000, 10_000_000_000]);
        assert_eq!(cum, vec![2, 3, 3, 4, 4]);
    }
}
