//! `fsync_latency`: fsync/fdatasync p99 per device over a time window.
//!
//! Pure: no I/O, no clock. Every sampling interval the agent hands the
//! detector the cumulative fsync histogram of each device (both ops merged)
//! and the age of the oldest fsync still in flight on it, with a monotonic
//! `now`. Per device the detector keeps the per-interval histogram deltas of
//! the last `window` (30 s) and computes:
//!
//! - `window_p99`: p99 of every fsync that completed in the window (the figure
//!   the chapter's runbook thresholds are about: warning 50 ms, critical 100 ms);
//! - `recent`: p99 of the fsyncs that completed in the last interval, or the
//!   age of the oldest fsync still in flight if that is larger (a stuck fsync
//!   has not completed, so it is in no histogram yet).
//!
//! An evaluation is *bad* when both reach `warning`: the window says "the p99
//! is high", the last interval says "and it still is". It fires once bad
//! evaluations have spanned `fire_after` (1.5 s; the span from the first to
//! the latest bad evaluation, so a 1 s spike, whose bad evaluations span less
//! than 1 s + one interval, stays quiet while a 100 ms slowdown fires within
//! about two seconds); intervals without any fsync neither extend nor break a
//! streak unless the last bad one is older than `fire_after`. Severity is
//! Critical when both figures reach `critical`. It resolves after
//! `resolve_after` without a bad evaluation. Because `recent` must also be
//! high, the 30 s window does not keep a finding alive for 30 s after the
//! disk recovered.
//!
//! Caveat (count-weighted p99): a process that did thousands of fast fsyncs
//! per second before the disk turned slow dilutes the window: the p99 rises
//! only once slow fsyncs are more than 1 % of the window's. The in-flight age
//! and the canary cover that case.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

pub use graydar_common::api::Severity;
use serde::{Deserialize, Serialize};

use crate::detect::transition::{Evaluation, TimedHysteresis, TimedRule};
pub use crate::probes::disk::latency_hist::LatencyHist;

/// `[disk]` thresholds of the fsync detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsyncConfig {
    /// Window of the p99.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub warning: Duration,
    #[serde(with = "humantime_serde")]
    pub critical: Duration,
    /// Bad evaluations must span this long to fire.
    #[serde(with = "humantime_serde")]
    pub fire_after: Duration,
    /// Resolve after this long without a bad evaluation.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
}

impl Default for FsyncConfig {
    fn default() -> Self {
        FsyncConfig {
            window: Duration::from_secs(30),
            warning: Duration::from_millis(50),
            critical: Duration::from_millis(100),
            fire_after: Duration::from_millis(1500),
            resolve_after: Duration::from_secs(10),
        }
    }
}

/// An invalid [`FsyncConfig`]; the message names the offending `disk.fsync.*` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FsyncConfigError(pub String);

impl FsyncConfig {
    pub fn validate(&self) -> Result<(), FsyncConfigError> {
        if self.window.is_zero() {
            return Err(FsyncConfigError("disk.fsync.window must be longer than 0s".into()));
        }
        if self.warning.is_zero() || self.warning > self.critical {
            return Err(FsyncConfigError(format!(
                "disk.fsync.warning ({:?}) must be > 0 and not exceed disk.fsync.critical ({:?})",
                self.warning, self.critical
            )));
        }
        if self.resolve_after.is_zero() {
            return Err(FsyncConfigError(
                "disk.fsync.resolve_after must be longer than 0s".into(),
            ));
        }
        Ok(())
    }
}

pub use crate::detect::transition::Transition;

/// What one observation computed, transition or not.
#[derive(Clone, Debug, PartialEq)]
pub struct FsyncObservation {
    pub window_count: u64,
    pub window_p50: Option<Duration>,
    pub window_p99: Option<Duration>,
    /// p99 of the last interval, or the oldest in-flight age if larger.
    pub recent: Option<Duration>,
    pub bad: bool,
    pub transition: Option<Transition>,
    pub firing: Option<Severity>,
}

#[derive(Debug, Default)]
struct KeyState {
    last: Option<LatencyHist>,
    ring: VecDeque<(Duration, LatencyHist)>,
    hysteresis: TimedHysteresis,
}

pub struct FsyncDetector<K> {
    cfg: FsyncConfig,
    keys: HashMap<K, KeyState>,
}

impl<K: Hash + Eq + Clone> FsyncDetector<K> {
    pub fn new(cfg: FsyncConfig) -> Self {
        FsyncDetector {
            cfg,
            keys: HashMap::new(),
        }
    }

    /// Forgets keys for which `keep` is false (devices that went away).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.keys.retain(|k, _| keep(k));
    }

    pub fn is_firing(&self, key: &K) -> Option<Severity> {
        self.keys.get(key).and_then(|s| s.hysteresis.firing())
    }

    /// One sample: the cumulative histogram of `key` and the age of its
    /// oldest in-flight fsync.
    pub fn observe(
        &mut self,
        key: &K,
        now: Duration,
        cumulative: &LatencyHist,
        oldest_inflight: Option<Duration>,
    ) -> FsyncObservation {
        let cfg = self.cfg.clone();
        let st = self.keys.entry(key.clone()).or_default();
        let delta = match &st.last {
            Some(prev) => cumulative.delta_since(prev),
            None => None,
        };
        let first = st.last.is_none();
        st.last = Some(cumulative.clone());
        if let Some(d) = &delta {
            st.ring.push_back((now, d.clone()));
        } else if !first {
            // Reset (map re-created): earlier deltas described other counters.
            st.ring.clear();
        }
        while st
            .ring
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= cfg.window)
        {
            st.ring.pop_front();
        }
        let mut window = LatencyHist::default();
        for (_, h) in &st.ring {
            window.merge(h);
        }
        let window_p99 = window.quantile(0.99);
        let last_p99 = delta.as_ref().and_then(|d| d.quantile(0.99));
        let inflight = oldest_inflight.filter(|d| !d.is_zero());
        let recent = match (last_p99, inflight) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let level = match (window_p99, inflight) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut obs = FsyncObservation {
            window_count: window.count(),
            window_p50: window.quantile(0.5),
            window_p99,
            recent,
            bad: false,
            transition: None,
            firing: st.hysteresis.firing(),
        };
        if first && delta.is_none() && inflight.is_none() {
            return obs;
        }
        let eval = match (recent, level) {
            (Some(r), Some(l)) if r >= cfg.warning && l >= cfg.warning => {
                obs.bad = true;
                Evaluation::Bad(if r >= cfg.critical && l >= cfg.critical {
                    Severity::Critical
                } else {
                    Severity::Warning
                })
            }
            // Data, and it is fine: the streak is broken.
            (Some(_), _) => Evaluation::Good,
            // No fsync completed and none in flight: neither extends nor
            // breaks a streak, unless the last bad one is too old.
            (None, _) => Evaluation::NoData,
        };
        let rule = TimedRule {
            fire_after: cfg.fire_after,
            resolve_after: cfg.resolve_after,
        };
        obs.transition = st.hysteresis.step(rule, now, eval);
        obs.firing = st.hysteresis.firing();
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `per_second` fsyncs of latency `lat(t)` each second from 0 to
    /// `until` seconds and returns the transitions with their times.
    fn run(
        det: &mut FsyncDetector<&'static str>,
        until: u64,
        step: Duration,
        per_step: u64,
        lat: impl Fn(Duration) -> Duration,
    ) -> Vec<(Duration, Transition, FsyncObservation)> {
        let mut cum = LatencyHist::default();
        let mut out = Vec::new();
        let mut now = Duration::ZERO;
        while now <= Duration::from_secs(until) {
            for _ in 0..per_step {
                cum.observe(lat(now));
            }
            let o = det.observe(&"vdb", now, &cum, None);
            if let Some(t) = o.transition {
                out.push((now, t, o));
            }
            now += step;
        }
        out
    }

    #[test]
    fn fires_on_a_sustained_100ms_p99_and_resolves_after_recovery() {
        let mut det = FsyncDetector::new(FsyncConfig::default());
        let t = run(&mut det, 70, Duration::from_millis(500), 5, |now| {
            if now > Duration::from_secs(20) && now <= Duration::from_secs(40) {
                Duration::from_millis(120)
            } else {
                Duration::from_millis(2)
            }
        });
        assert_eq!(t.len(), 2, "{t:?}");
        let (fired_at, tr, obs) = &t[0];
        assert_eq!(*tr, Transition::Fired(Severity::Critical));
        assert!(
            *fired_at <= Duration::from_millis(23_000),
            "fired at {fired_at:?}, more than 2.5 s after the slowdown"
        );
        assert!(obs.window_p99.is_some_and(|p| p >= Duration::from_millis(100)));
        let (resolved_at, tr, _) = &t[1];
        assert_eq!(*tr, Transition::Resolved);
        assert!(
            *resolved_at > Duration::from_secs(40) && *resolved_at <= Duration::from_secs(52),
            "resolved at {resolved_at:?}"
        );
    }

    #[test]
    fn warning_between_50_and_100ms() {
        let mut det = FsyncDetector::new(FsyncConfig::default());
        let t = run(&mut det, 30, Duration::from_secs(1), 10, |now| {
            if now > Duration::from_secs(5) {
                Duration::from_millis(70)
            } else {
                MS
            }
        });
        assert_eq!(
            t.first().map(|x| x.1),
            Some(Transition::Fired(Severity::Warning)),
            "{t:?}"
        );
    }

    #[test]
    fn stays_quiet_on_a_one_second_spike() {
        for step_ms in [250u64, 500, 1000] {
            for offset_ms in [0u64, 100, 400, 700] {
                let mut det = FsyncDetector::new(FsyncConfig::default());
                let start = Duration::from_millis(20_000 + offset_ms);
                let t = run(&mut det, 60, Duration::from_millis(step_ms), 5, |now| {
                    if now > start && now <= start + Duration::from_secs(1) {
                        Duration::from_millis(500)
                    } else {
                        Duration::from_millis(2)
                    }
                });
                assert!(t.is_empty(), "step {step_ms} ms, offset {offset_ms} ms: {t:?}");
            }
        }
    }

    #[test]
    fn a_stuck_fsync_counts_through_its_in_flight_age() {
        let mut det = FsyncDetector::new(FsyncConfig::default());
        let cum = LatencyHist::of(&[MS]);
        let mut fired = None;
        for i in 0..10u64 {
            let now = Duration::from_millis(500 * i);
            let age = Duration::from_millis(500 * i);
            let o = det.observe(&"vdb", now, &cum, Some(age));
            if let Some(Transition::Fired(s)) = o.transition {
                fired = Some((now, s));
                break;
            }
        }
        let (at, sev) = fired.expect("a stuck fsync must fire");
        assert_eq!(sev, Severity::Critical);
        assert!(at <= Duration::from_millis(2000), "{at:?}");
    }

    #[test]
    fn sparse_slow_fsyncs_still_fire() {
        // One 300 ms fsync every 2 s: intervals without data do not break the streak.
        let mut det = FsyncDetector::new(FsyncConfig::default());
        let mut cum = LatencyHist::default();
        let mut fired = false;
        for i in 0..20u64 {
            if i % 2 == 0 {
                cum.observe(Duration::from_millis(300));
            }
            let o = det.observe(&"vdb", Duration::from_secs(i), &cum, None);
            fired |= matches!(o.transition, Some(Transition::Fired(_)));
        }
        assert!(fired);
    }

    #[test]
    fn config_validation() {
        assert!(FsyncConfig::default().validate().is_ok());
        let c = FsyncConfig {
            warning: Duration::from_millis(200),
            ..FsyncConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
