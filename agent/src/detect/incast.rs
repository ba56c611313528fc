//! The `incast` detector: many senders bursting into one endpoint at once,
//! coinciding with losses.
//!
//! Pure: no I/O, no clock. Every sampling interval the agent feeds, per
//! receiving endpoint, what the eBPF fan-in counter saw since the previous
//! sample ([`EndpointSample`]) plus host-wide loss evidence ([`HostLoss`]).
//!
//! - A **burst**: the distinct senders delivering data to the endpoint
//!   within the window W reached N (counted in the kernel, see
//!   common/src/tcp.rs). A burst alone is healthy fan-in.
//! - An **episode**: a burst that coincides with losses, i.e. within
//!   `correlate` after the burst there were stalled flows (senders whose
//!   data stopped mid-write and resumed after an RTO-like gap, counted at the
//!   receiver for senders that were part of the burst), retransmission
//!   timeouts of this host's sockets, or drops on the receiving path.
//!   At most one episode per endpoint per sample.
//! - **Severity** by episodes per minute over `rate_window`: Warning from
//!   `warning_per_minute`, Critical from `critical_per_minute`.
//! - Fires on the first episode that brings the rate to `warning_per_minute`
//!   (an incast episode is already a user-visible stall of ~RTO_min);
//!   resolves after `resolve_after` without episodes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use graydar_common::api::Severity;
use serde::{Deserialize, Serialize};

/// `[incast]` in the agent config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncastConfig {
    /// Load the incast probes at all.
    pub enabled: bool,
    /// Sampling period of the signal.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// N: distinct senders within `window` that make a burst.
    pub senders: u32,
    /// W: the fan-in window (the long bucket width; the short one is 1 ms).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// A flow that stops mid-write and resumes after a gap in
    /// [stall_min, stall_max] stalled (RTO_min is 200 ms by default; lower
    /// it here when routes use a smaller `rto_min`).
    #[serde(with = "humantime_serde")]
    pub stall_min: Duration,
    #[serde(with = "humantime_serde")]
    pub stall_max: Duration,
    /// How long after a burst loss evidence still makes it an episode.
    #[serde(with = "humantime_serde")]
    pub correlate: Duration,
    /// Episodes per minute are counted over this window.
    #[serde(with = "humantime_serde")]
    pub rate_window: Duration,
    pub warning_per_minute: f64,
    pub critical_per_minute: f64,
    /// Time without episodes after which the finding resolves.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
    /// Listening ports with their own metric label (the busiest ones); the
    /// rest are labelled `other`, the client side `ephemeral`.
    pub max_ports: usize,
    /// Interfaces the tc classifier is never attached to.
    pub exclude_interfaces: Vec<String>,
}

impl Default for IncastConfig {
    fn default() -> Self {
        IncastConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            senders: 16,
            window: Duration::from_millis(10),
            stall_min: Duration::from_millis(150),
            stall_max: Duration::from_secs(3),
            correlate: Duration::from_secs(2),
            rate_window: Duration::from_secs(60),
            warning_per_minute: 1.0,
            critical_per_minute: 6.0,
            resolve_after: Duration::from_secs(120),
            max_ports: 16,
            exclude_interfaces: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid [incast] configuration: {0}")]
pub struct IncastConfigError(pub String);

impl IncastConfig {
    pub fn validate(&self) -> Result<(), IncastConfigError> {
        let err = |m: String| Err(IncastConfigError(m));
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(60) {
            return err(format!("incast.interval = {:?} must be in [100ms, 60s]", self.interval));
        }
        if self.senders < 2 {
            return err(format!("incast.senders = {} must be at least 2", self.senders));
        }
        if self.window < Duration::from_millis(1) || self.window > Duration::from_secs(1) {
            return err(format!("incast.window = {:?} must be in [1ms, 1s]", self.window));
        }
        if self.stall_min.is_zero() || self.stall_min >= self.stall_max {
            return err(format!(
                "incast.stall_min ({:?}) must be > 0 and below incast.stall_max ({:?})",
                self.stall_min, self.stall_max
            ));
        }
        if self.correlate < self.interval {
            return err(format!(
                "incast.correlate ({:?}) must be at least incast.interval ({:?})",
                self.correlate, self.interval
            ));
        }
        if self.rate_window < self.interval {
            return err("incast.rate_window must be at least incast.interval".to_owned());
        }
        for (name, v) in [
            ("warning_per_minute", self.warning_per_minute),
            ("critical_per_minute", self.critical_per_minute),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return err(format!("incast.{name} = {v} must be > 0"));
            }
        }
        if self.warning_per_minute > self.critical_per_minute {
            return err("incast.warning_per_minute must not exceed incast.critical_per_minute".to_owned());
        }
        if self.resolve_after < self.interval {
            return err("incast.resolve_after must be at least incast.interval".to_owned());
        }
        Ok(())
    }
}

/// What the fan-in counter saw for one endpoint during one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EndpointSample {
    /// Highest distinct senders within W and within 1 ms.
    pub peak_senders: u32,
    pub peak_senders_short: u32,
    /// Bursts (fan-in reached N within W) during the sample.
    pub bursts: u64,
    /// Receiver-side stalls of senders that were part of a burst, and all stalls.
    pub burst_stalls: u64,
    /// Segments that arrived out of order (holes: lost upstream, and
    /// retransmissions) within `stall_max` after a burst.
    pub burst_losses: u64,
    pub stalls: u64,
    /// Mean gap of those stalls, seconds (0 without stalls).
    pub mean_stall: f64,
}

/// Host-wide loss evidence during one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostLoss {
    /// Retransmission timeouts of this namespace's sockets (eBPF, kind timeout).
    pub timeouts: u64,
    /// Drops on the receiving path (device rx drops, TCP receive-side drops).
    pub receive_drops: u64,
}

pub use super::transition::Transition;
use super::transition::{Evaluation, TimedHysteresis, TimedRule};

/// The numbers of the last episode, for the finding's evidence.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Episode {
    pub senders: u32,
    pub senders_short: u32,
    pub stalled_flows: u64,
    pub stalls: u64,
    pub lost_segments: u64,
    pub mean_stall: f64,
    pub timeouts: u64,
    pub receive_drops: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// An episode was recognised in this sample.
    pub episode: Option<Episode>,
    /// A burst began in this sample (whether or not it became an episode).
    pub burst: bool,
    pub episodes_per_minute: f64,
    pub transition: Option<Transition>,
    pub firing: Option<Severity>,
    /// The last episode (evidence while firing).
    pub last: Option<Episode>,
}

#[derive(Clone, Debug, Default)]
struct Pending {
    at: Duration,
    senders: u32,
    senders_short: u32,
}

#[derive(Clone, Debug, Default)]
struct KeyState {
    pending: Option<Pending>,
    episodes: VecDeque<Duration>,
    last: Option<Episode>,
    last_at: Option<Duration>,
    hysteresis: TimedHysteresis,
}

#[derive(Clone, Debug)]
pub struct IncastDetector<K: Ord + Clone> {
    cfg: IncastConfig,
    keys: BTreeMap<K, KeyState>,
}

impl<K: Ord + Clone> IncastDetector<K> {
    pub fn new(cfg: IncastConfig) -> Self {
        IncastDetector {
            cfg,
            keys: BTreeMap::new(),
        }
    }

    pub fn keys(&self) -> Vec<K> {
        self.keys.keys().cloned().collect()
    }

    pub fn firing(&self, key: &K) -> Option<Severity> {
        self.keys.get(key).and_then(|s| s.hysteresis.firing())
    }

    /// Forgets keys that are neither firing nor waiting for evidence and
    /// for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.keys
            .retain(|k, s| keep(k) || s.hysteresis.firing().is_some() || s.pending.is_some() || !s.episodes.is_empty());
    }

    /// Feeds one sample of `key` at monotonic `now`.
    pub fn observe(&mut self, key: &K, now: Duration, ep: EndpointSample, host: HostLoss) -> Observation {
        let cfg = self.cfg.clone();
        let st = self.keys.entry(key.clone()).or_default();
        let burst = ep.bursts > 0;
        if burst {
            let p = st.pending.get_or_insert(Pending {
                at: now,
                ..Pending::default()
            });
            p.senders = p.senders.max(ep.peak_senders);
            p.senders_short = p.senders_short.max(ep.peak_senders_short);
        }
        if st
            .pending
            .as_ref()
            .is_some_and(|p| now.saturating_sub(p.at) > cfg.correlate)
        {
            st.pending = None; // a burst without losses: healthy fan-in
        }
        let loss = ep.burst_stalls > 0 || ep.burst_losses > 0 || host.timeouts > 0 || host.receive_drops > 0;
        let mut episode = None;
        if loss && let Some(p) = st.pending.take() {
            let e = Episode {
                senders: p.senders,
                senders_short: p.senders_short,
                stalled_flows: ep.burst_stalls,
                stalls: ep.stalls,
                lost_segments: ep.burst_losses,
                mean_stall: ep.mean_stall,
                timeouts: host.timeouts,
                receive_drops: host.receive_drops,
            };
            st.episodes.push_back(now);
            st.last = Some(e);
            st.last_at = Some(now);
            episode = Some(e);
        } else if !burst
            && (ep.burst_stalls > 0 || ep.burst_losses > 0)
            && let Some(last) = st.last.as_mut()
            && st.last_at.is_some_and(|t| now.saturating_sub(t) <= cfg.correlate)
        {
            // Stalls and losses of the last episode's flows a sample later.
            last.stalled_flows += ep.burst_stalls;
            last.stalls += ep.stalls;
            last.lost_segments += ep.burst_losses;
        }
        if let Some(from) = now.checked_sub(cfg.rate_window) {
            while st.episodes.front().is_some_and(|t| *t <= from) {
                st.episodes.pop_front();
            }
        }
        let minutes = cfg.rate_window.as_secs_f64() / 60.0;
        let rate = st.episodes.len() as f64 / minutes.max(1e-9);
        let sev = if rate >= cfg.critical_per_minute {
            Some(Severity::Critical)
        } else if rate >= cfg.warning_per_minute {
            Some(Severity::Warning)
        } else {
            None
        };
        // Fires on the episode that brings the rate to a threshold; resolves
        // `resolve_after` after the last episode.
        let rule = TimedRule {
            fire_after: Duration::ZERO,
            resolve_after: cfg.resolve_after,
        };
        let eval = match (episode.is_some(), sev) {
            (true, Some(s)) => Evaluation::Bad(s),
            (true, None) => Evaluation::Active,
            (false, _) => Evaluation::NoData,
        };
        let transition = st.hysteresis.step(rule, now, eval);
        Observation {
            episode,
            burst,
            episodes_per_minute: rate,
            transition,
            firing: st.hysteresis.firing(),
            last: st.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn burst(senders: u32) -> EndpointSample {
        EndpointSample {
            peak_senders: senders,
            peak_senders_short: senders / 2,
            bursts: 1,
            ..EndpointSample::default()
        }
    }

    fn stalls(n: u64) -> EndpointSample {
        EndpointSample {
            burst_stalls: n,
            stalls: n,
            mean_stall: 0.21,
            ..EndpointSample::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        IncastConfig::default().validate().expect("defaults");
        let bad = IncastConfig {
            senders: 1,
            ..IncastConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("senders = 1")
                .to_string()
                .contains("incast.senders")
        );
        let bad = IncastConfig {
            stall_min: Duration::from_secs(5),
            ..IncastConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn burst_with_stalls_in_the_same_sample_fires_an_episode() {
        let mut d = IncastDetector::new(IncastConfig::default());
        let mut ep = burst(32);
        ep.burst_stalls = 20;
        ep.stalls = 20;
        let o = d.observe(&"a", s(10.0), ep, HostLoss::default());
        assert_eq!(o.transition, Some(Transition::Fired(Severity::Warning)));
        let e = o.episode.expect("episode");
        assert_eq!(e.senders, 32);
        assert_eq!(e.stalled_flows, 20);
    }

    #[test]
    fn stalls_a_sample_later_still_belong_to_the_burst() {
        let mut d = IncastDetector::new(IncastConfig::default());
        let o = d.observe(&"a", s(10.0), burst(40), HostLoss::default());
        assert!(o.burst && o.episode.is_none() && o.transition.is_none());
        let o = d.observe(&"a", s(11.0), stalls(12), HostLoss::default());
        assert_eq!(o.transition, Some(Transition::Fired(Severity::Warning)));
        assert_eq!(o.episode.expect("episode").senders, 40);
    }

    #[test]
    fn bursts_without_losses_are_healthy_fan_in() {
        let mut d = IncastDetector::new(IncastConfig::default());
        for i in 0..10 {
            let o = d.observe(&"a", s(10.0 + f64::from(i)), burst(64), HostLoss::default());
            assert!(o.transition.is_none() && o.episode.is_none());
        }
        // Losses long after the last burst do not make it an episode.
        let o = d.observe(
            &"a",
            s(25.0),
            stalls(5),
            HostLoss {
                timeouts: 3,
                receive_drops: 9,
            },
        );
        assert!(o.transition.is_none() && o.episode.is_none());
    }

    #[test]
    fn losses_without_a_burst_are_not_incast() {
        let mut d = IncastDetector::new(IncastConfig::default());
        let ep = EndpointSample {
            peak_senders: 1,
            stalls: 30,
            burst_stalls: 0,
            ..EndpointSample::default()
        };
        for i in 0..10 {
            let o = d.observe(
                &"a",
                s(f64::from(i)),
                ep,
                HostLoss {
                    timeouts: 5,
                    receive_drops: 100,
                },
            );
            assert!(o.transition.is_none());
        }
    }

    #[test]
    fn host_timeouts_or_drops_confirm_a_burst() {
        let mut d = IncastDetector::new(IncastConfig::default());
        let o = d.observe(
            &"a",
            s(1.0),
            burst(20),
            HostLoss {
                timeouts: 2,
                receive_drops: 0,
            },
        );
        assert!(matches!(o.transition, Some(Transition::Fired(_))));
        let mut d = IncastDetector::new(IncastConfig::default());
        let o = d.observe(
            &"b",
            s(1.0),
            burst(20),
            HostLoss {
                timeouts: 0,
                receive_drops: 4,
            },
        );
        assert_eq!(o.episode.expect("episode").receive_drops, 4);
    }

    #[test]
    fn severity_follows_episodes_per_minute_and_resolves_when_quiet() {
        let cfg = IncastConfig::default();
        let mut d = IncastDetector::new(cfg.clone());
        let loss = HostLoss {
            timeouts: 1,
            receive_drops: 0,
        };
        let mut t = 100.0;
        let mut last = None;
        for _ in 0..6 {
            let o = d.observe(&"a", s(t), burst(30), loss);
            if o.transition.is_some() {
                last = o.transition;
            }
            t += 5.0;
        }
        assert_eq!(last, Some(Transition::SeverityChanged(Severity::Critical)));
        assert_eq!(d.firing(&"a"), Some(Severity::Critical));
        // Quiet until resolve_after has passed since the last episode.
        let last_ep = t - 5.0;
        let o = d.observe(&"a", s(last_ep + 60.0), EndpointSample::default(), HostLoss::default());
        assert!(o.transition.is_none(), "still firing 60 s after the last episode");
        let o = d.observe(
            &"a",
            s(last_ep + cfg.resolve_after.as_secs_f64()),
            EndpointSample::default(),
            HostLoss::default(),
        );
        assert_eq!(o.transition, Some(Transition::Resolved));
        assert_eq!(o.episodes_per_minute, 0.0);
    }

    #[test]
    fn segments_lost_upstream_confirm_a_burst() {
        let mut d = IncastDetector::new(IncastConfig::default());
        let mut ep = burst(40);
        ep.burst_losses = 300;
        let o = d.observe(&"a", s(3.0), ep, HostLoss::default());
        assert!(matches!(o.transition, Some(Transition::Fired(Severity::Warning))));
        assert_eq!(o.episode.expect("episode").lost_segments, 300);
        // More losses a sample later are added to the same episode.
        let late = EndpointSample {
            burst_losses: 20,
            ..EndpointSample::default()
        };
        let o = d.observe(&"a", s(4.0), late, HostLoss::default());
        assert!(o.episode.is_none());
        assert_eq!(o.last.expect("last episode").lost_segments, 320);
    }

    #[test]
    fn keys_are_independent() {
        let mut d = IncastDetector::new(IncastConfig::default());
        d.observe(&"a", s(1.0), burst(30), HostLoss::default());
        let o = d.observe(&"b", s(1.5), stalls(10), HostLoss::default());
        assert!(o.transition.is_none(), "stalls on b do not confirm a's burst");
    }
}
