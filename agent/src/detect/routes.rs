//! The `route_flap` detector: a prefix whose routes keep changing.
//!
//! Pure: no I/O, no clock. The agent feeds every route change of a prefix
//! (an RTM_NEWROUTE or RTM_DELROUTE, see agent/src/probes/routes.rs)
//! with its monotonic time, and calls [`RouteFlapDetector::tick`] every
//! second or so for the quiet-time resolution.
//!
//! - **Fires** when a prefix changed more than `threshold` times within
//!   `window` (a sliding window over the changes' times). Severity Warning;
//!   Critical once more than `critical_threshold` changes fall in one window
//!   during the episode (the severity does not step back down while firing:
//!   a flap that slows down is still the same incident).
//! - **Resolves** after `resolve_after` without any change of the prefix
//!   (hysteresis: a flap pauses for the length of its hold-down, so the
//!   quiet time must be longer than its longest pause).
//!
//! The defaults (window 2 min, more than 4 changes, resolve after 2 min
//! quiet) are chosen against two cases:
//! - the reference chapter's BGP flap, withdraw for 5 s then re-announce for
//!   30 s, repeated: 2 changes per 35 s cycle (3 when the daemon deletes and
//!   adds), so the 5th change comes at t = 70 s (or earlier) and the finding
//!   fires there; a 2 min window holds 6 to 8 changes of the cycle, so it
//!   stays firing, and becomes Critical (more than 7) at t = 110 s;
//! - a planned change: a replace is 1 change, a delete + add is 2, and the
//!   change plus its rollback within the window is 4: none fires.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use graydar_common::api::Severity;
use serde::{Deserialize, Serialize};

/// `[routes]` in the agent config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutesConfig {
    /// Subscribe to route, link and neighbour events at all.
    pub enabled: bool,
    /// The sliding window changes are counted over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fires when a prefix changed MORE than this many times within `window`.
    pub threshold: u32,
    /// Critical when more than this many changes fall within one window.
    pub critical_threshold: u32,
    /// Resolves after this long without a change of the prefix.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
    /// Routing tables whose routes are not counted. Default: the `local`
    /// table (255), which the kernel rewrites on every address change
    /// (local, broadcast and anycast routes), not a forwarding decision.
    pub ignore_tables: Vec<u32>,
    /// Prefixes not counted, with everything inside them. Default: IPv6
    /// link-local (fe80::/10: one per interface, re-created on every link
    /// up) and multicast (ff00::/8).
    pub ignore_prefixes: Vec<String>,
    /// At most this many prefixes are tracked at once (a full BGP table
    /// reset touches hundreds of thousands); the ones changed longest ago and
    /// not firing are forgotten first.
    pub max_prefixes: usize,
    /// Changes listed in a finding's evidence (the newest).
    pub evidence_changes: usize,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            enabled: true,
            window: Duration::from_secs(120),
            threshold: 4,
            critical_threshold: 7,
            resolve_after: Duration::from_secs(120),
            ignore_tables: vec![255],
            ignore_prefixes: vec!["fe80::/10".to_owned(), "ff00::/8".to_owned()],
            max_prefixes: 10_000,
            evidence_changes: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid [routes] configuration: {0}")]
pub struct RoutesConfigError(pub String);

impl RoutesConfig {
    pub fn validate(&self) -> Result<(), RoutesConfigError> {
        let err = |m: String| Err(RoutesConfigError(m));
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(24 * 3600) {
            return err(format!("routes.window = {:?} must be in [1s, 24h]", self.window));
        }
        if self.threshold < 1 {
            return err("routes.threshold must be at least 1 (fires on more than `threshold` changes)".to_owned());
        }
        if self.critical_threshold < self.threshold {
            return err(format!(
                "routes.critical_threshold ({}) must be at least routes.threshold ({})",
                self.critical_threshold, self.threshold
            ));
        }
        if self.resolve_after < Duration::from_secs(1) {
            return err(format!(
                "routes.resolve_after = {:?} must be at least 1s",
                self.resolve_after
            ));
        }
        for p in &self.ignore_prefixes {
            if p.parse::<crate::probes::routes::Prefix>().is_err() {
                return err(format!("routes.ignore_prefixes: {p:?} is not a prefix like fe80::/10"));
            }
        }
        if self.max_prefixes == 0 {
            return err("routes.max_prefixes must be at least 1".to_owned());
        }
        Ok(())
    }
}

pub use crate::detect::transition::Transition;
use crate::detect::transition::{Evaluation, TimedHysteresis, TimedRule};

/// What the detector knows about one prefix.
#[derive(Clone, Debug)]
pub struct PrefixState<D> {
    /// Times of the changes within the window (oldest first).
    times: VecDeque<Duration>,
    /// The newest changes with their details (at most `evidence_changes`).
    recent: VecDeque<(Duration, D)>,
    /// Changes since the finding fired (0 when not firing).
    since_fired: u64,
    /// Most changes seen in one window during the current episode.
    peak: usize,
    last: Duration,
    hysteresis: TimedHysteresis,
}

impl<D> PrefixState<D> {
    /// Changes within the window ending at the last change or tick.
    pub fn changes_in_window(&self) -> usize {
        self.times.len()
    }

    /// The newest changes, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &(Duration, D)> {
        self.recent.iter().rev()
    }

    pub fn firing(&self) -> Option<Severity> {
        self.hysteresis.firing()
    }

    /// Most changes in one window during the current episode.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Changes since the finding fired.
    pub fn since_fired(&self) -> u64 {
        self.since_fired
    }

    /// Monotonic time of the last change.
    pub fn last_change(&self) -> Duration {
        self.last
    }
}

/// Per-key sliding-window change counter with hysteresis; `K` is the
/// prefix (with its table), `D` the details kept for the evidence.
#[derive(Clone, Debug)]
pub struct RouteFlapDetector<K: Ord + Clone, D: Clone> {
    cfg: RoutesConfig,
    keys: BTreeMap<K, PrefixState<D>>,
}

impl<K: Ord + Clone, D: Clone> RouteFlapDetector<K, D> {
    pub fn new(cfg: RoutesConfig) -> Self {
        RouteFlapDetector {
            cfg,
            keys: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RoutesConfig {
        &self.cfg
    }

    pub fn state(&self, key: &K) -> Option<&PrefixState<D>> {
        self.keys.get(key)
    }

    /// Prefixes whose finding is firing.
    pub fn firing_count(&self) -> usize {
        self.keys.values().filter(|s| s.hysteresis.firing().is_some()).count()
    }

    /// Prefixes tracked (changed within the window, or firing).
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    fn prune(times: &mut VecDeque<Duration>, now: Duration, window: Duration) {
        while times.front().is_some_and(|t| now.saturating_sub(*t) >= window) {
            times.pop_front();
        }
    }

    fn severity(cfg: &RoutesConfig, changes: usize) -> Severity {
        if changes > cfg.critical_threshold as usize {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }

    /// One change of `key` at monotonic `now`; the transition it causes.
    pub fn observe(&mut self, key: &K, now: Duration, detail: D) -> Option<Transition> {
        if !self.keys.contains_key(key) {
            self.make_room();
        }
        let cfg = self.cfg.clone();
        let st = self.keys.entry(key.clone()).or_insert_with(|| PrefixState {
            times: VecDeque::new(),
            recent: VecDeque::new(),
            since_fired: 0,
            peak: 0,
            last: now,
            hysteresis: TimedHysteresis::default(),
        });
        st.times.push_back(now);
        Self::prune(&mut st.times, now, cfg.window);
        st.recent.push_back((now, detail));
        while st.recent.len() > cfg.evidence_changes.max(1) {
            st.recent.pop_front();
        }
        st.last = now;
        let n = st.times.len();
        let firing = st.hysteresis.firing();
        if firing.is_some() {
            st.since_fired += 1;
        }
        let sev = Self::severity(&cfg, n);
        let eval = match firing {
            None if n > cfg.threshold as usize => Evaluation::Bad(sev),
            // Below the threshold: a change all the same (resolving waits for quiet).
            None => Evaluation::Active,
            // The severity does not step back down while firing.
            Some(Severity::Critical) => Evaluation::Bad(Severity::Critical),
            Some(_) => Evaluation::Bad(sev),
        };
        let transition = st.hysteresis.step(Self::rule(&cfg), now, eval);
        if matches!(transition, Some(Transition::Fired(_))) {
            st.since_fired = n as u64;
            st.peak = n;
        } else if firing.is_some() {
            st.peak = st.peak.max(n);
        }
        transition
    }

    fn rule(cfg: &RoutesConfig) -> TimedRule {
        TimedRule {
            fire_after: Duration::ZERO,
            resolve_after: cfg.resolve_after,
        }
    }

    /// Advances the clock: firing prefixes quiet for `resolve_after`
    /// resolve; prefixes without changes in the window are forgotten.
    pub fn tick(&mut self, now: Duration) -> Vec<(K, Transition)> {
        let cfg = &self.cfg;
        let mut out = Vec::new();
        for (k, st) in self.keys.iter_mut() {
            Self::prune(&mut st.times, now, cfg.window);
            if let Some(t @ Transition::Resolved) = st.hysteresis.step(Self::rule(cfg), now, Evaluation::NoData) {
                st.since_fired = 0;
                st.peak = 0;
                out.push((k.clone(), t));
            }
        }
        self.keys
            .retain(|_, st| st.hysteresis.firing().is_some() || !st.times.is_empty());
        out
    }

    /// Keeps the table below `max_prefixes`: forgets the quiet (not firing)
    /// prefix changed longest ago.
    fn make_room(&mut self) {
        while self.keys.len() >= self.cfg.max_prefixes {
            let victim = self
                .keys
                .iter()
                .filter(|(_, s)| s.hysteresis.firing().is_none())
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    self.keys.remove(&k);
                }
                None => return, // all firing: grow rather than lose a finding
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    type Det = RouteFlapDetector<&'static str, &'static str>;

    /// Runs `changes` (seconds, detail) through a detector with a tick every
    /// second up to `until`; returns the transitions with their times.
    fn run(cfg: RoutesConfig, changes: &[(f64, &'static str)], until: u64) -> Vec<(f64, Transition)> {
        let mut d = Det::new(cfg);
        let mut out = Vec::new();
        let mut i = 0;
        for ms in 0..=until * 1000 {
            let now = Duration::from_millis(ms);
            while i < changes.len() && Duration::from_secs_f64(changes[i].0) <= now {
                if let Some(t) = d.observe(&"10.0.0.0/8", now, changes[i].1) {
                    out.push((now.as_secs_f64(), t));
                }
                i += 1;
            }
            if ms % 1000 == 0 {
                for (_, t) in d.tick(now) {
                    out.push((now.as_secs_f64(), t));
                }
            }
        }
        out
    }

    /// The reference chapter's flap: `route 10.0.0.0/8 unreachable`, 5 s,
    /// `route 10.0.0.0/8 via 192.168.1.1`, 30 s, repeated `cycles` times.
    /// bird replaces the route, so each step is one RTM_NEWROUTE.
    fn chapter_flap(cycles: u64) -> Vec<(f64, &'static str)> {
        let mut v = Vec::new();
        for c in 0..cycles {
            let t = (c * 35) as f64;
            v.push((t, "unreachable"));
            v.push((t + 5.0, "via 192.168.1.1"));
        }
        v
    }

    #[test]
    fn the_defaults_catch_the_chapters_bgp_flap() {
        let cfg = RoutesConfig::default();
        // 10 cycles (350 s), then quiet.
        let t = run(cfg, &chapter_flap(10), 700);
        assert_eq!(
            t[0],
            (70.0, Transition::Fired(Severity::Warning)),
            "fires on the 5th change (t = 70 s): {t:?}"
        );
        assert_eq!(t[1], (110.0, Transition::SeverityChanged(Severity::Critical)), "{t:?}");
        // Stays firing through every 30 s re-announced pause; resolves
        // 120 s after the last change (t = 320 s).
        assert_eq!(t[2], (440.0, Transition::Resolved), "{t:?}");
        assert_eq!(t.len(), 3, "{t:?}");
    }

    #[test]
    fn the_defaults_catch_the_flap_when_the_daemon_deletes_and_adds() {
        // Withdraw as a delete; re-announce as an add: same 2 changes per
        // cycle. A daemon that deletes and re-adds on announce makes 3.
        let mut v = Vec::new();
        for c in 0..4u64 {
            let t = (c * 35) as f64;
            v.push((t, "del"));
            v.push((t + 5.0, "del"));
            v.push((t + 5.001, "add via 192.168.1.1"));
        }
        let t = run(RoutesConfig::default(), &v, 200);
        assert_eq!(t[0].1, Transition::Fired(Severity::Warning));
        assert!(t[0].0 <= 40.0, "{t:?}");
    }

    #[test]
    fn a_single_planned_change_does_not_fire() {
        for planned in [
            vec![(10.0, "replace")],
            vec![(10.0, "del"), (10.002, "add via 10.0.0.2")],
            // the change and its rollback a minute later
            vec![
                (10.0, "del"),
                (10.002, "add via 10.0.0.2"),
                (70.0, "del"),
                (70.002, "add via 10.0.0.1"),
            ],
        ] {
            let t = run(RoutesConfig::default(), &planned, 400);
            assert!(t.is_empty(), "{planned:?}: {t:?}");
        }
    }

    #[test]
    fn slow_changes_spread_beyond_the_window_do_not_fire() {
        // A change every 40 s: at most 3 within 2 min.
        let v: Vec<(f64, &str)> = (0..20).map(|i| (f64::from(i) * 40.0, "add")).collect();
        assert!(run(RoutesConfig::default(), &v, 900).is_empty());
    }

    #[test]
    fn evidence_keeps_the_newest_changes_and_counts() {
        let mut d = Det::new(RoutesConfig {
            evidence_changes: 3,
            ..RoutesConfig::default()
        });
        for (i, detail) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            d.observe(&"p", S(i as u64), detail);
        }
        let st = d.state(&"p").expect("tracked");
        assert_eq!(st.changes_in_window(), 5);
        assert_eq!(st.firing(), Some(Severity::Warning));
        let recent: Vec<&str> = st.recent().map(|(_, d)| *d).collect();
        assert_eq!(recent, ["e", "d", "c"]);
        assert_eq!(st.since_fired(), 5);
        assert_eq!(d.firing_count(), 1);
    }

    #[test]
    fn prefixes_are_independent_and_quiet_ones_forgotten() {
        let mut d = Det::new(RoutesConfig::default());
        for i in 0..4 {
            d.observe(&"a", S(i), "x");
            d.observe(&"b", S(i), "x");
        }
        assert!(d.observe(&"a", S(5), "x").is_some());
        assert_eq!(d.state(&"b").map(PrefixState::firing), Some(None));
        assert!(d.tick(S(200)).iter().all(|(k, _)| *k == "a"));
        assert_eq!(d.tracked(), 0, "nothing in the window, nothing firing");
    }

    #[test]
    fn the_table_is_bounded_without_losing_firing_prefixes() {
        let mut d: RouteFlapDetector<u32, ()> = RouteFlapDetector::new(RoutesConfig {
            max_prefixes: 3,
            threshold: 1,
            critical_threshold: 1,
            ..RoutesConfig::default()
        });
        d.observe(&0, S(0), ());
        d.observe(&0, S(0), ()); // firing
        for k in 1..10 {
            d.observe(&k, S(u64::from(k)), ());
        }
        assert!(d.tracked() <= 3);
        assert!(d.state(&0).is_some_and(|s| s.firing().is_some()));
        assert!(d.state(&9).is_some(), "the newest is kept");
    }

    #[test]
    fn config_is_validated() {
        assert!(RoutesConfig::default().validate().is_ok());
        let bad = RoutesConfig {
            threshold: 5,
            critical_threshold: 4,
            ..RoutesConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = RoutesConfig {
            ignore_prefixes: vec!["fe80::".to_owned()],
            ..RoutesConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("invalid")
                .to_string()
                .contains("ignore_prefixes")
        );
    }
}
