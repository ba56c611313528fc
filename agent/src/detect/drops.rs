//! Drop-ratio detector shared by `nic_drops`, `qdisc_drops` and `kernel_drops`.
//!
//! Pure: no I/O, no clock. The agent samples cumulative counters every interval
//! and calls [`DropDetector::observe`] with a monotonic `now`.
//!
//! Per key (subject) the detector keeps a time-stamped ring of counter deltas
//! covering `long_window`. A delta belongs to a window when it *ended* inside it;
//! ratios are `drops / (packets + drops)` summed over the window and rates are
//! per second of the time those deltas actually cover (so startup, with less
//! history than the window, is neither diluted nor inflated).
//!
//! Each observe() that yields a delta is one *evaluation*. It is *bad* when
//! `short_ratio >= warning_ratio` and `drop_rate >= min_drop_rate` (the absolute
//! floor that keeps 5 drops out of 15 packets quiet). The key fires when at least
//! `fire_windows` of the last `of_windows` evaluations were bad, and resolves after
//! `resolve_windows` consecutive evaluations that were not bad. Severity is
//! Critical when both the short and the long ratio reach `critical_ratio`
//! (sustained), else Warning; it is re-assessed on bad evaluations only, so a
//! recovering finding keeps its severity until it resolves.
//!
//! Note: because the short ratio averages over `short_window`, loss that starts
//! after clean traffic must first lift the window average over `warning_ratio`
//! (2 % loss with a 1 % threshold: half the short window) before evaluations turn
//! bad. From a cold start, or with loss well above the threshold, it fires on the
//! `fire_windows`-th evaluation.
//!
//! Resets: a change of `generation` (e.g. a new ifindex for the same name) or any
//! counter going backwards (driver reset, 32-bit wrap) re-baselines the key. That
//! observation yields no delta and is no evaluation: no spike, no transition.
//! A generation change also forgets the delta ring (it described another device);
//! a plain counter reset keeps it (those rates were true for the time they cover).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use graydar_common::api::Severity;
use serde::{Deserialize, Serialize};

use super::transition::{CountRule, Hysteresis};

/// Thresholds and windows of the detector (`[drops]` in the agent config,
/// without `interval`, which belongs to the sampler).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropConfig {
    /// `dropped / (packets + dropped)` over the short window that makes an
    /// evaluation bad.
    pub warning_ratio: f64,
    /// Ratio that, reached on both windows, makes the finding Critical.
    pub critical_ratio: f64,
    /// Drops per second over the short window below which nothing is bad.
    pub min_drop_rate: f64,
    #[serde(with = "humantime_serde")]
    pub short_window: Duration,
    #[serde(with = "humantime_serde")]
    pub long_window: Duration,
    /// k bad evaluations ...
    pub fire_windows: usize,
    /// ... out of the last n, to fire.
    pub of_windows: usize,
    /// Consecutive evaluations that are not bad, to resolve.
    pub resolve_windows: usize,
}

impl Default for DropConfig {
    fn default() -> Self {
        DropConfig {
            warning_ratio: 0.01,
            critical_ratio: 0.05,
            min_drop_rate: 10.0,
            short_window: Duration::from_secs(10),
            long_window: Duration::from_secs(60),
            fire_windows: 3,
            of_windows: 5,
            resolve_windows: 10,
        }
    }
}

/// An invalid [`DropConfig`]; the message names the offending `drops.*` fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid [drops] configuration: {0}")]
pub struct DropConfigError(pub String);

impl DropConfig {
    /// Checks the invariants the detector relies on.
    pub fn validate(&self) -> Result<(), DropConfigError> {
        let err = |m: String| Err(DropConfigError(m));
        for (name, v) in [
            ("warning_ratio", self.warning_ratio),
            ("critical_ratio", self.critical_ratio),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return err(format!("drops.{name} = {v} must be in (0, 1]"));
            }
        }
        if self.warning_ratio > self.critical_ratio {
            return err(format!(
                "drops.warning_ratio ({}) must not exceed drops.critical_ratio ({})",
                self.warning_ratio, self.critical_ratio
            ));
        }
        if !(self.min_drop_rate.is_finite() && self.min_drop_rate >= 0.0) {
            return err(format!(
                "drops.min_drop_rate = {} must be a finite number >= 0",
                self.min_drop_rate
            ));
        }
        if self.short_window.is_zero() {
            return err("drops.short_window must be longer than 0s".to_owned());
        }
        if self.short_window > self.long_window {
            return err(format!(
                "drops.short_window ({:?}) must not exceed drops.long_window ({:?})",
                self.short_window, self.long_window
            ));
        }
        if self.of_windows == 0 || self.fire_windows == 0 {
            return err("drops.fire_windows and drops.of_windows must be at least 1".to_owned());
        }
        if self.fire_windows > self.of_windows {
            return err(format!(
                "drops.fire_windows ({}) must not exceed drops.of_windows ({})",
                self.fire_windows, self.of_windows
            ));
        }
        if self.resolve_windows == 0 {
            return err("drops.resolve_windows must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Cumulative counters of one subject at one sampling instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSample {
    /// Packets that went through (not counting drops).
    pub packets: u64,
    pub drops: u64,
    /// Identity of the counter source (e.g. ifindex); a change is a reset.
    pub generation: u64,
}

pub use super::transition::Transition;

/// Result of one observation. Ratios and rates are always filled in (from the
/// deltas in the windows, 0 without any), transition or not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub short_ratio: f64,
    pub long_ratio: f64,
    /// Drops per second over the short window.
    pub drop_rate: f64,
    /// Packets per second over the short window.
    pub packet_rate: f64,
    pub transition: Option<Transition>,
    /// Whether this observation was an evaluation (false on the first sample,
    /// on a reset and when `now` did not advance).
    pub evaluated: bool,
    /// Whether this evaluation was bad.
    pub bad: bool,
    /// Severity while firing (after this observation), `None` when not firing.
    pub firing: Option<Severity>,
}

#[derive(Clone, Copy, Debug)]
struct Delta {
    start: Duration,
    end: Duration,
    packets: u64,
    drops: u64,
}

#[derive(Clone, Debug, Default)]
struct KeyState {
    baseline: Option<(Duration, CounterSample)>,
    deltas: VecDeque<Delta>,
    hysteresis: Hysteresis,
}

#[derive(Clone, Copy, Debug, Default)]
struct WindowSums {
    packets: u64,
    drops: u64,
    covered: Duration,
}

impl WindowSums {
    fn ratio(&self) -> f64 {
        let total = self.packets.saturating_add(self.drops);
        if total == 0 {
            0.0
        } else {
            self.drops as f64 / total as f64
        }
    }

    fn per_second(&self, n: u64) -> f64 {
        let secs = self.covered.as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    }
}

impl KeyState {
    fn sums(&self, now: Duration, window: Duration) -> WindowSums {
        let from = now.saturating_sub(window);
        let mut s = WindowSums::default();
        for d in self.deltas.iter().rev().take_while(|d| d.end > from) {
            s.packets = s.packets.saturating_add(d.packets);
            s.drops = s.drops.saturating_add(d.drops);
            s.covered += d.end.saturating_sub(d.start);
        }
        s
    }
}

/// The detector: one state machine per key.
#[derive(Clone, Debug)]
pub struct DropDetector<K: Ord + Clone> {
    cfg: DropConfig,
    keys: BTreeMap<K, KeyState>,
}

impl<K: Ord + Clone> DropDetector<K> {
    /// A detector with `cfg`, which the caller should have [`DropConfig::validate`]d.
    pub fn new(cfg: DropConfig) -> Self {
        DropDetector {
            cfg,
            keys: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &DropConfig {
        &self.cfg
    }

    /// Current severity of `key` if it is firing.
    pub fn firing(&self, key: &K) -> Option<Severity> {
        self.keys.get(key).and_then(|s| s.hysteresis.firing())
    }

    /// Number of keys with state.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Forgets the keys for which `keep` is false (vanished subjects).
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.keys.retain(|k, _| keep(k));
    }

    /// Feeds one sample of `key` taken at `now` (monotonic) and evaluates it.
    pub fn observe(&mut self, key: &K, now: Duration, sample: CounterSample) -> Observation {
        let cfg = &self.cfg;
        let st = self.keys.entry(key.clone()).or_default();

        let delta = match st.baseline {
            None => {
                st.baseline = Some((now, sample));
                None
            }
            Some((_, last)) if last.generation != sample.generation => {
                st.deltas.clear();
                st.baseline = Some((now, sample));
                None
            }
            Some((_, last)) if sample.packets < last.packets || sample.drops < last.drops => {
                st.baseline = Some((now, sample));
                None
            }
            // Time did not advance (duplicate sample): keep the older baseline.
            Some((at, _)) if now <= at => None,
            Some((at, last)) => {
                st.baseline = Some((now, sample));
                Some(Delta {
                    start: at,
                    end: now,
                    packets: sample.packets - last.packets,
                    drops: sample.drops - last.drops,
                })
            }
        };

        if let Some(d) = delta {
            st.deltas.push_back(d);
        }
        let from = now.saturating_sub(cfg.long_window);
        while st.deltas.front().is_some_and(|d| d.end <= from) {
            st.deltas.pop_front();
        }

        let short = st.sums(now, cfg.short_window);
        let long = st.sums(now, cfg.long_window);
        let short_ratio = short.ratio();
        let long_ratio = long.ratio();
        let drop_rate = short.per_second(short.drops);
        let packet_rate = short.per_second(short.packets);

        let mut obs = Observation {
            short_ratio,
            long_ratio,
            drop_rate,
            packet_rate,
            transition: None,
            evaluated: delta.is_some(),
            bad: false,
            firing: st.hysteresis.firing(),
        };
        if delta.is_none() {
            return obs;
        }

        let bad = short_ratio >= cfg.warning_ratio && drop_rate >= cfg.min_drop_rate;
        obs.bad = bad;
        let severity = if short_ratio >= cfg.critical_ratio && long_ratio >= cfg.critical_ratio {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let rule = CountRule {
            fire_windows: cfg.fire_windows,
            of_windows: cfg.of_windows,
            resolve_windows: cfg.resolve_windows,
        };
        obs.transition = st.hysteresis.step(rule, bad, severity);
        obs.firing = st.hysteresis.firing();
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "eth0/rx";

    /// Feeds 1 s samples of a constant traffic pattern and records observations.
    struct Sim {
        det: DropDetector<&'static str>,
        now: Duration,
        packets: u64,
        drops: u64,
        generation: u64,
    }

    impl Sim {
        fn new(cfg: DropConfig) -> Self {
            cfg.validate().expect("valid test config");
            let mut sim = Sim {
                det: DropDetector::new(cfg),
                now: Duration::ZERO,
                packets: 0,
                drops: 0,
                generation: 1,
            };
            let first = sim.sample();
            assert!(!first.evaluated && first.transition.is_none());
            sim
        }

        fn sample(&mut self) -> Observation {
            let s = CounterSample {
                packets: self.packets,
                drops: self.drops,
                generation: self.generation,
            };
            self.det.observe(&KEY, self.now, s)
        }

        /// One second of `offered` packets/s of which `loss` (fraction) is dropped.
        fn second(&mut self, offered: u64, loss: f64) -> Observation {
            let drops = (offered as f64 * loss).round() as u64;
            self.packets += offered - drops;
            self.drops += drops;
            self.now += Duration::from_secs(1);
            self.sample()
        }

        /// Runs `secs` seconds, returning (1-based second, transition) pairs.
        fn run(&mut self, secs: u64, offered: u64, loss: f64) -> Vec<(u64, Transition)> {
            (1..=secs)
                .filter_map(|i| self.second(offered, loss).transition.map(|t| (i, t)))
                .collect()
        }
    }

    #[test]
    fn fires_on_two_percent_drops_at_10k_pps_from_cold_start_within_fire_windows() {
        let cfg = DropConfig::default();
        let mut sim = Sim::new(cfg.clone());
        let t = sim.run(30, 10_000, 0.02);
        assert_eq!(t, [(cfg.fire_windows as u64, Transition::Fired(Severity::Warning))]);
    }

    #[test]
    fn fires_on_two_percent_drops_at_10k_pps_after_clean_traffic_within_its_windows() {
        let cfg = DropConfig::default();
        let mut sim = Sim::new(cfg.clone());
        assert!(sim.run(120, 10_000, 0.0).is_empty());
        let t = sim.run(30, 10_000, 0.02);
        // The 10 s short ratio crosses 1 % after 5 s of 2 % loss; the 3rd bad
        // evaluation then fires: 7 s after the loss starts, which is within
        // short_window + fire_windows evaluations.
        assert_eq!(t, [(7, Transition::Fired(Severity::Warning))]);
        let bound = cfg.short_window.as_secs() + cfg.fire_windows as u64;
        assert!(t[0].0 <= bound);
        let obs = sim.second(10_000, 0.02);
        assert!((obs.short_ratio - 0.02).abs() < 1e-9, "{obs:?}");
        assert!((obs.drop_rate - 200.0).abs() < 1e-9, "{obs:?}");
        assert!((obs.packet_rate - 9_800.0).abs() < 1e-9, "{obs:?}");
        assert_eq!(obs.firing, Some(Severity::Warning));
    }

    #[test]
    fn six_percent_sustained_escalates_to_critical() {
        let mut sim = Sim::new(DropConfig::default());
        assert!(sim.run(120, 10_000, 0.0).is_empty());
        let t = sim.run(120, 10_000, 0.06);
        // Bad from the 2nd second (short ratio 1.2 %), fires on the 4th; critical
        // once the 60 s long ratio reaches 5 %: 50 s of 6 % loss.
        assert_eq!(
            t,
            [
                (4, Transition::Fired(Severity::Warning)),
                (50, Transition::SeverityChanged(Severity::Critical)),
            ]
        );
        // From a cold start both windows see 6 % at once.
        let mut cold = Sim::new(DropConfig::default());
        assert_eq!(cold.run(10, 10_000, 0.06), [(3, Transition::Fired(Severity::Critical))]);
        // Loss easing to 2 % brings it back to Warning on a bad evaluation.
        let t = cold.run(20, 10_000, 0.02);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].1, Transition::SeverityChanged(Severity::Warning));
    }

    #[test]
    fn stays_quiet_on_5_drops_per_second_at_10_packets_per_second() {
        let mut sim = Sim::new(DropConfig::default());
        let mut last = None;
        for _ in 0..300 {
            sim.packets += 10;
            sim.drops += 5;
            sim.now += Duration::from_secs(1);
            let obs = sim.sample();
            assert!(obs.transition.is_none() && !obs.bad, "{obs:?}");
            last = Some(obs);
        }
        let obs = last.expect("observed");
        // The ratio is huge (5 of 15), the absolute floor keeps it quiet.
        assert!((obs.short_ratio - 1.0 / 3.0).abs() < 1e-9);
        assert!((obs.drop_rate - 5.0).abs() < 1e-9);
    }

    #[test]
    fn resolves_after_exactly_resolve_windows_quiet_evaluations() {
        let cfg = DropConfig::default();
        let mut sim = Sim::new(cfg.clone());
        let t = sim.run(20, 10_000, 0.03);
        assert_eq!(t, [(3, Transition::Fired(Severity::Warning))]);
        let mut quiet = 0;
        let mut resolved_at_quiet = None;
        for _ in 0..60 {
            let obs = sim.second(10_000, 0.0);
            quiet = if obs.bad { 0 } else { quiet + 1 };
            match obs.transition {
                Some(Transition::Resolved) => {
                    resolved_at_quiet = Some(quiet);
                    break;
                }
                None => {
                    assert!(quiet < cfg.resolve_windows, "not resolved after {quiet}");
                    assert_eq!(obs.firing, Some(Severity::Warning));
                }
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(resolved_at_quiet, Some(cfg.resolve_windows));
        assert_eq!(sim.det.firing(&KEY), None);
        // A new episode needs k fresh bad evaluations again (bad from the 4th
        // second, when the short ratio reaches 1.2 %).
        let t = sim.run(20, 10_000, 0.03);
        assert_eq!(t, [(6, Transition::Fired(Severity::Warning))]);
    }

    #[test]
    fn quiet_evaluation_in_between_restarts_the_resolve_count() {
        let cfg = DropConfig {
            short_window: Duration::from_secs(1),
            ..DropConfig::default()
        };
        let mut sim = Sim::new(cfg.clone());
        assert_eq!(sim.run(3, 10_000, 0.03).len(), 1);
        assert!(sim.run(cfg.resolve_windows as u64 - 1, 10_000, 0.0).is_empty());
        let blip = sim.second(10_000, 0.03);
        assert!(blip.bad && blip.transition.is_none(), "one bad blip: {blip:?}");
        let t = sim.run(cfg.resolve_windows as u64, 10_000, 0.0);
        assert_eq!(t, [(cfg.resolve_windows as u64, Transition::Resolved)]);
    }

    #[test]
    fn no_spike_and_no_transition_on_counter_reset() {
        let mut sim = Sim::new(DropConfig::default());
        assert!(sim.run(30, 10_000, 0.001).is_empty());
        let before = sim.second(10_000, 0.001);

        // Driver resets its counters to 0.
        sim.packets = 0;
        sim.drops = 0;
        sim.now += Duration::from_secs(1);
        let obs = sim.sample();
        assert!(!obs.evaluated && obs.transition.is_none());
        assert!(obs.short_ratio <= before.short_ratio + 1e-12, "{obs:?}");
        assert!(sim.run(30, 10_000, 0.001).is_empty());

        // The interface is recreated (new ifindex) and its counters are unrelated
        // and larger, with many old drops in them: no spike either.
        sim.generation = 2;
        sim.packets += 50_000_000;
        sim.drops += 9_000_000;
        sim.now += Duration::from_secs(1);
        let obs = sim.sample();
        assert!(!obs.evaluated && obs.transition.is_none(), "{obs:?}");
        assert_eq!((obs.short_ratio, obs.drop_rate), (0.0, 0.0), "ring forgotten");
        let after = sim.second(10_000, 0.001);
        assert!(after.evaluated && !after.bad && after.transition.is_none());
        assert!(after.short_ratio < 0.002, "{after:?}");
        assert!(sim.run(60, 10_000, 0.001).is_empty());
    }

    #[test]
    fn reset_while_firing_neither_resolves_nor_changes_severity() {
        let mut sim = Sim::new(DropConfig::default());
        assert_eq!(sim.run(5, 10_000, 0.1).len(), 1);
        sim.generation += 1;
        sim.packets = 0;
        sim.drops = 0;
        let obs = sim.sample();
        assert!(obs.transition.is_none());
        assert_eq!(obs.firing, Some(Severity::Critical));
    }

    #[test]
    fn flapping_signal_obeys_k_of_n() {
        // A 1 s short window makes each evaluation see only its own second.
        let base = DropConfig {
            short_window: Duration::from_secs(1),
            ..DropConfig::default()
        };
        let flap = |sim: &mut Sim, secs: u64| -> Vec<(u64, Transition)> {
            (1..=secs)
                .filter_map(|i| {
                    let loss = if i % 2 == 1 { 0.05 } else { 0.0 };
                    let obs = sim.second(10_000, loss);
                    assert_eq!(obs.bad, loss > 0.0, "second {i}: {obs:?}");
                    obs.transition.map(|t| (i, t))
                })
                .collect()
        };

        // 3 of 5: bad, quiet, bad, quiet, bad -> fires on the 5th evaluation and,
        // never seeing 10 quiet evaluations in a row, never resolves.
        let mut sim = Sim::new(base.clone());
        assert_eq!(flap(&mut sim, 120), [(5, Transition::Fired(Severity::Warning))]);

        // 4 of 5: at most 3 of any 5 alternating evaluations are bad: never fires.
        let mut sim = Sim::new(DropConfig {
            fire_windows: 4,
            ..base.clone()
        });
        assert!(flap(&mut sim, 120).is_empty());
    }

    #[test]
    fn never_fires_without_one_full_interval_of_history() {
        let cfg = DropConfig {
            fire_windows: 1,
            of_windows: 1,
            ..DropConfig::default()
        };
        let mut det = DropDetector::new(cfg);
        let huge = CounterSample {
            packets: 1_000,
            drops: 1_000_000,
            generation: 7,
        };
        let obs = det.observe(&"x", Duration::from_secs(100), huge);
        assert!(!obs.evaluated && obs.transition.is_none());
        assert_eq!(obs.short_ratio, 0.0);
        // Same instant again: still no interval.
        let obs = det.observe(&"x", Duration::from_secs(100), huge);
        assert!(!obs.evaluated && obs.transition.is_none());
        // One second later with real loss: fires.
        let next = CounterSample {
            packets: 2_000,
            drops: 1_001_000,
            generation: 7,
        };
        let obs = det.observe(&"x", Duration::from_secs(101), next);
        assert_eq!(obs.transition, Some(Transition::Fired(Severity::Critical)));
    }

    #[test]
    fn retain_forgets_vanished_keys() {
        let mut det = DropDetector::new(DropConfig::default());
        for k in ["a", "b", "c"] {
            det.observe(&k, Duration::ZERO, CounterSample::default());
        }
        det.retain(|k| *k != "b");
        assert_eq!(det.len(), 2);
        // A forgotten key starts from scratch: the first sample is a baseline.
        let obs = det.observe(&"b", Duration::from_secs(1), CounterSample::default());
        assert!(!obs.evaluated);
    }

    #[test]
    fn long_window_ring_is_bounded() {
        let mut sim = Sim::new(DropConfig::default());
        sim.run(1_000, 100, 0.0);
        let st = sim.det.keys.get(&KEY).expect("state");
        assert_eq!(st.deltas.len(), 60);
        assert!(st.hysteresis.history_len() <= 5);
    }

    #[test]
    fn default_config_matches_contract_and_is_valid() {
        let cfg = DropConfig::default();
        cfg.validate().expect("default is valid");
        let parsed: DropConfig = toml::from_str(
            r#"
            short_window = "10s"
            long_window = "1m"
            warning_ratio = 0.01
            critical_ratio = 0.05
            min_drop_rate = 10.0
            fire_windows = 3
            of_windows = 5
            resolve_windows = 10
            "#,
        )
        .expect("parse contract values");
        assert_eq!(parsed, cfg);
        let partial: DropConfig = toml::from_str("short_window = \"500ms\"").expect("partial");
        assert_eq!(partial.short_window, Duration::from_millis(500));
        assert_eq!(partial.long_window, cfg.long_window);
    }

    #[test]
    fn config_rejects_unknown_fields_and_bad_durations() {
        assert!(toml::from_str::<DropConfig>("warnig_ratio = 0.1").is_err());
        assert!(toml::from_str::<DropConfig>("short_window = \"10 parsecs\"").is_err());
        assert!(toml::from_str::<DropConfig>("short_window = 10").is_err());
    }

    #[test]
    fn validate_rejects_inconsistent_config() {
        let d = DropConfig::default;
        let bad = [
            DropConfig { fire_windows: 6, ..d() },
            DropConfig { fire_windows: 0, ..d() },
            DropConfig {
                resolve_windows: 0,
                ..d()
            },
            DropConfig {
                warning_ratio: 0.0,
                ..d()
            },
            DropConfig {
                critical_ratio: 1.5,
                ..d()
            },
            DropConfig {
                warning_ratio: f64::NAN,
                ..d()
            },
            DropConfig {
                warning_ratio: 0.2,
                critical_ratio: 0.1,
                ..d()
            },
            DropConfig {
                min_drop_rate: -1.0,
                ..d()
            },
            DropConfig {
                short_window: Duration::from_secs(120),
                ..d()
            },
            DropConfig {
                short_window: Duration::ZERO,
                ..d()
            },
        ];
        for cfg in bad {
            let e = cfg.validate().expect_err(&format!("{cfg:?} must be rejected"));
            assert!(e.to_string().contains("drops."), "{e}");
        }
        let e = DropConfig { fire_windows: 6, ..d() }.validate().expect_err("k > n");
        assert!(e.to_string().contains("fire_windows (6)"), "{e}");
    }
}
