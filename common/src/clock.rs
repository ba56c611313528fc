//! How far an agent's clock is from the controller's, from request/response
//! exchanges (the NTP on-wire calculation, RFC 5905 section 8), so that a
//! time an agent measured (a finding's `since`) can be put on the
//! controller's clock with a stated uncertainty. Game-day verification
//! measures time to detect this way: the detecting agent's clock against the
//! applying agent's confirmed apply time.
//!
//! One exchange gives four times in milliseconds, each on its own clock: the
//! agent sent the request at `t1`, the controller received it at `t2` and
//! answered at `t3`, the agent received the answer at `t4`. Then
//! `offset = ((t2 - t1) + (t3 - t4)) / 2` (controller minus agent) and the
//! true offset lies within `offset ± delay / 2`, `delay = (t4 - t1) - (t3 - t2)`,
//! whatever the split of the delay between the two directions.

use std::collections::VecDeque;

/// One request/response exchange (milliseconds since the Unix epoch, `t1`
/// and `t4` on the agent's clock, `t2` and `t3` on the controller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub t1: i64,
    pub t2: i64,
    pub t3: i64,
    pub t4: i64,
}

/// Controller clock minus agent clock: the estimate and the half-width of
/// the interval the true offset is in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Offset {
    pub offset_ms: f64,
    pub uncertainty_ms: f64,
}

impl Offset {
    /// `agent_ms` (a time on the agent's clock) on the controller's clock.
    pub fn to_controller(&self, agent_ms: i64) -> f64 {
        agent_ms as f64 + self.offset_ms
    }

    fn interval(&self) -> (f64, f64) {
        (
            self.offset_ms - self.uncertainty_ms,
            self.offset_ms + self.uncertainty_ms,
        )
    }
}

impl Exchange {
    /// The offset this exchange shows; `None` when its times are impossible
    /// (a negative round trip, or the controller answering before it
    /// received): a clock stepped during the exchange.
    pub fn offset(&self) -> Option<Offset> {
        let held = self.t3.checked_sub(self.t2)?;
        let round_trip = self.t4.checked_sub(self.t1)?;
        let delay = round_trip.checked_sub(held)?;
        if held < 0 || delay < 0 {
            return None;
        }
        let sum = (self.t2 as f64 - self.t1 as f64) + (self.t3 as f64 - self.t4 as f64);
        Some(Offset {
            offset_ms: sum / 2.0,
            uncertainty_ms: delay as f64 / 2.0,
        })
    }
}

/// The offset of one agent from its recent exchanges.
///
/// Each exchange bounds the offset to an interval; over a window short
/// enough for the clocks' drift not to matter (minutes, at the few ppm of
/// an NTP-disciplined clock) the true offset is in all of them, so the
/// estimate is their intersection: tighter than any one exchange. When they
/// do not intersect (a clock was stepped, or drifted more than the window
/// allows) the exchanges older than the newest one that disagrees are
/// dropped and the estimate starts again from there.
#[derive(Clone, Debug)]
pub struct OffsetEstimator {
    window: VecDeque<Offset>,
    capacity: usize,
}

impl OffsetEstimator {
    /// Keeps at most `capacity` exchanges (at least one).
    pub fn new(capacity: usize) -> OffsetEstimator {
        OffsetEstimator {
            window: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds an exchange; `false` when its times are impossible (ignored).
    pub fn add(&mut self, e: Exchange) -> bool {
        let Some(o) = e.offset() else {
            return false;
        };
        if intersect(self.window.iter().chain(std::iter::once(&o))).is_none() {
            self.window.clear();
        }
        self.window.push_back(o);
        while self.window.len() > self.capacity {
            self.window.pop_front();
        }
        true
    }

    /// The estimate: the middle of the intersection of the window's
    /// intervals, with its half-width; `None` before the first exchange.
    pub fn estimate(&self) -> Option<Offset> {
        intersect(self.window.iter())
    }

    /// Exchanges in the window.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }
}

fn intersect<'a>(offsets: impl Iterator<Item = &'a Offset>) -> Option<Offset> {
    let mut range: Option<(f64, f64)> = None;
    for o in offsets {
        let (lo, hi) = o.interval();
        range = Some(match range {
            None => (lo, hi),
            Some((a, b)) => (a.max(lo), b.min(hi)),
        });
    }
    let (lo, hi) = range?;
    (lo <= hi).then(|| Offset {
        offset_ms: (lo + hi) / 2.0,
        uncertainty_ms: (hi - lo) / 2.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exchange with the agent `skew` ms behind the controller, `out` ms
    /// on the way there, `held` ms at the controller, `back` ms on the way back.
    fn exchange(at: i64, skew: i64, out: i64, held: i64, back: i64) -> Exchange {
        let t1 = at;
        let t2 = at + out + skew;
        let t3 = t2 + held;
        let t4 = t3 - skew + back;
        Exchange { t1, t2, t3, t4 }
    }

    #[test]
    fn a_symmetric_exchange_gives_the_offset_exactly() {
        let o = exchange(1_000, 250, 5, 2, 5).offset().expect("valid");
        assert_eq!(o.offset_ms, 250.0);
        assert_eq!(o.uncertainty_ms, 5.0, "half the 10 ms round trip");
    }

    #[test]
    fn an_asymmetric_exchange_is_off_by_at_most_its_uncertainty() {
        for (out, back) in [(1, 19), (19, 1), (0, 20), (20, 0)] {
            let o = exchange(1_000, -3_000, out, 4, back).offset().expect("valid");
            assert!(
                (o.offset_ms - -3_000.0).abs() <= o.uncertainty_ms,
                "{out}/{back}: {o:?}"
            );
            assert_eq!(o.uncertainty_ms, 10.0);
            assert_ne!(o.offset_ms, -3_000.0, "the asymmetry shows in the estimate");
        }
    }

    #[test]
    fn impossible_times_are_refused() {
        // The agent received the answer before it sent the request.
        let e = Exchange {
            t1: 100,
            t2: 150,
            t3: 151,
            t4: 90,
        };
        assert_eq!(e.offset(), None);
        // The controller answered before it received.
        let e = Exchange {
            t1: 100,
            t2: 150,
            t3: 140,
            t4: 200,
        };
        assert_eq!(e.offset(), None);
        let mut est = OffsetEstimator::new(8);
        assert!(!est.add(e));
        assert!(est.is_empty() && est.estimate().is_none());
    }

    #[test]
    fn exchanges_with_different_asymmetries_narrow_the_estimate() {
        let mut est = OffsetEstimator::new(8);
        // Slow on the way out, then slow on the way back: each alone is
        // 10 ms wide, together they pin the offset.
        est.add(exchange(0, 700, 18, 1, 2));
        let one = est.estimate().expect("one");
        est.add(exchange(1_000, 700, 2, 1, 18));
        let two = est.estimate().expect("two");
        assert!(two.uncertainty_ms < one.uncertainty_ms, "{one:?} then {two:?}");
        assert!((two.offset_ms - 700.0).abs() <= two.uncertainty_ms, "{two:?}");
        assert_eq!(two.offset_ms, 700.0);
        assert_eq!(est.len(), 2);
    }

    #[test]
    fn a_stepped_clock_restarts_the_estimate_from_the_new_offset() {
        let mut est = OffsetEstimator::new(8);
        for i in 0..5 {
            est.add(exchange(i * 1_000, 100, 3, 1, 3));
        }
        assert_eq!(est.len(), 5);
        // The agent's clock is stepped 2 s back: the controller is now 2.1 s ahead.
        est.add(exchange(10_000, 2_100, 3, 1, 3));
        let o = est.estimate().expect("estimate");
        assert_eq!(est.len(), 1, "older exchanges disagree and are dropped");
        assert_eq!(o.offset_ms, 2_100.0);
    }

    #[test]
    fn the_window_keeps_the_newest_exchanges() {
        let mut est = OffsetEstimator::new(3);
        for i in 0..10 {
            est.add(exchange(i * 1_000, -50, 2, 1, 2));
        }
        assert_eq!(est.len(), 3);
        let o = est.estimate().expect("estimate");
        assert_eq!(o.offset_ms, -50.0);
        assert_eq!(o.to_controller(10_000), 9_950.0);
    }

    #[test]
    fn huge_times_do_not_overflow() {
        let e = Exchange {
            t1: i64::MIN,
            t2: i64::MAX,
            t3: i64::MAX,
            t4: i64::MAX,
        };
        assert_eq!(e.offset(), None, "a round trip that does not fit is refused");
        let e = Exchange {
            t1: 0,
            t2: i64::MAX - 1,
            t3: i64::MAX,
            t4: 10,
        };
        let _ = e.offset();
    }
}
