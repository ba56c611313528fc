//! `disk_slow`: a device whose latency *at comparable load* is far above its
//! own recent baseline or its peers', while it reports no errors.
//!
//! Pure: no I/O, no clock. Inspired by Perseus (FAST '23, fail-slow detection
//! at Alibaba): raw latency is not a signal (a busy disk is slower than an
//! idle one), latency *for a given throughput* is. Per device the detector
//! keeps a baseline: for each load bin (throughput in powers of two from
//! 4 KiB/s) an average of the per-I/O latency (diskstats "await") seen while
//! the device was healthy. Each evaluation compares the current await with:
//!
//! - its own baseline in the same bin, else in the nearest *higher* bin (a
//!   busier disk is expected to be slower, so this understates the ratio:
//!   conservative);
//! - the median of the baselines of its peers (same kind: `nvme`, `sd`, `vd`,
//!   `loop`, `dm`, ..., and same rotational flag) at the same or higher load.
//!
//! Bad: `iops >= min_iops`, `await >= min_latency`, no block errors in the
//! interval (slow *with* errors is a loud failure, not a gray one), and either
//! ratio `>= ratio`. Fires after bad evaluations spanned `fire_after`,
//! resolves after `resolve_after` without one. Critical at twice the ratio.
//! A baseline bin is used once it has `baseline_samples` healthy samples; bad
//! evaluations never feed the baseline (a slow disk does not teach itself
//! that slow is normal).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub use graydar_common::api::Severity;
use serde::{Deserialize, Serialize};

use crate::detect::transition::{Evaluation, TimedHysteresis, TimedRule};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowConfig {
    /// Current / expected latency that makes an evaluation bad.
    pub ratio: f64,
    /// Below this many I/Os per second a device is not judged.
    pub min_iops: f64,
    /// Below this await a device is not judged (µs-scale noise).
    #[serde(with = "humantime_serde")]
    pub min_latency: Duration,
    /// Healthy samples a load bin needs before it is a baseline.
    pub baseline_samples: u64,
    #[serde(with = "humantime_serde")]
    pub fire_after: Duration,
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
}

impl Default for SlowConfig {
    fn default() -> Self {
        SlowConfig {
            ratio: 5.0,
            min_iops: 5.0,
            min_latency: Duration::from_millis(1),
            baseline_samples: 10,
            fire_after: Duration::from_secs(10),
            resolve_after: Duration::from_secs(30),
        }
    }
}

/// An invalid [`SlowConfig`]; the message names the offending `disk.slow.*` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SlowConfigError(pub String);

impl SlowConfig {
    pub fn validate(&self) -> Result<(), SlowConfigError> {
        if !(self.ratio.is_finite() && self.ratio > 1.0) {
            return Err(SlowConfigError(format!("disk.slow.ratio = {} must be > 1", self.ratio)));
        }
        if !(self.min_iops.is_finite() && self.min_iops >= 0.0) {
            return Err(SlowConfigError(format!(
                "disk.slow.min_iops = {} must be >= 0",
                self.min_iops
            )));
        }
        if self.baseline_samples == 0 {
            return Err(SlowConfigError("disk.slow.baseline_samples must be at least 1".into()));
        }
        Ok(())
    }
}

/// One device over one sampling interval.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSample {
    /// Peer group, e.g. `nvme/ssd`, `sd/hdd`, `loop/ssd`.
    pub kind: String,
    pub iops: f64,
    pub bytes_per_second: f64,
    /// Mean time per completed I/O over the interval (diskstats await).
    pub latency: Duration,
    /// Block-layer errors completed in the interval.
    pub errors: u64,
}

/// The peer group of a device: name family and rotational flag.
pub fn device_kind(name: &str, rotational: bool) -> String {
    // Disks named by letters (sda, sdab, vdb, xvda, hdc): the prefix is the
    // driver. Others end in a number (nvme0n1, loop3, dm-0, md127, zram0).
    let family = ["nvme", "mmcblk", "xvd", "sd", "vd", "hd"]
        .iter()
        .find(|p| name.starts_with(**p))
        .map(|p| (*p).to_owned())
        .unwrap_or_else(|| name.chars().take_while(|c| c.is_ascii_alphabetic()).collect());
    let family = if family.is_empty() { name.to_owned() } else { family };
    format!("{family}/{}", if rotational { "hdd" } else { "ssd" })
}

/// Load bin of a throughput: log2 of bytes/s over 4 KiB/s.
pub fn load_bin(bytes_per_second: f64) -> u32 {
    if !(bytes_per_second.is_finite() && bytes_per_second > 4096.0) {
        return 0;
    }
    ((bytes_per_second / 4096.0).log2().floor() as u32).min(40)
}

#[derive(Clone, Copy, Debug, Default)]
struct Baseline {
    mean_s: f64,
    n: u64,
}

#[derive(Debug, Default)]
struct DevState {
    bins: BTreeMap<u32, Baseline>,
    kind: String,
    hysteresis: TimedHysteresis,
}

pub use crate::detect::transition::Transition;

#[derive(Clone, Debug, PartialEq)]
pub struct SlowObservation {
    pub load_bin: u32,
    pub baseline: Option<Duration>,
    pub peers: Option<Duration>,
    pub peer_count: usize,
    pub ratio_baseline: Option<f64>,
    pub ratio_peers: Option<f64>,
    pub bad: bool,
    pub transition: Option<Transition>,
    pub firing: Option<Severity>,
}

pub struct SlowDetector {
    cfg: SlowConfig,
    devices: HashMap<String, DevState>,
}

impl SlowDetector {
    pub fn new(cfg: SlowConfig) -> Self {
        SlowDetector {
            cfg,
            devices: HashMap::new(),
        }
    }

    /// Expected latency of `st` at load bin `bin`: the mature baseline of
    /// that bin or the nearest higher one.
    fn expected(cfg: &SlowConfig, st: &DevState, bin: u32) -> Option<f64> {
        st.bins
            .range(bin..)
            .find(|(_, b)| b.n >= cfg.baseline_samples)
            .map(|(_, b)| b.mean_s)
    }

    /// Evaluates every device sampled this interval; devices not in
    /// `samples` are forgotten.
    pub fn evaluate(
        &mut self,
        now: Duration,
        samples: &BTreeMap<String, DeviceSample>,
    ) -> BTreeMap<String, SlowObservation> {
        let cfg = self.cfg.clone();
        self.devices.retain(|k, _| samples.contains_key(k));
        for (name, s) in samples {
            self.devices.entry(name.clone()).or_default().kind = s.kind.clone();
        }
        let mut out = BTreeMap::new();
        for (name, s) in samples {
            let bin = load_bin(s.bytes_per_second);
            let Some(st) = self.devices.get(name) else { continue };
            let own = Self::expected(&cfg, st, bin);
            let mut peer_vals: Vec<f64> = self
                .devices
                .iter()
                .filter(|(n, p)| *n != name && p.kind == s.kind)
                .filter_map(|(_, p)| Self::expected(&cfg, p, bin))
                .collect();
            peer_vals.sort_by(|a, b| a.total_cmp(b));
            let peers = if peer_vals.is_empty() {
                None
            } else {
                let m = peer_vals.len();
                Some(if m % 2 == 1 {
                    peer_vals[m / 2]
                } else {
                    (peer_vals[m / 2 - 1] + peer_vals[m / 2]) / 2.0
                })
            };
            let cur = s.latency.as_secs_f64();
            let ratio = |e: Option<f64>| e.filter(|v| *v > 0.0).map(|v| cur / v);
            let (rb, rp) = (ratio(own), ratio(peers));
            let judged = s.iops >= cfg.min_iops && s.latency >= cfg.min_latency && s.errors == 0;
            let worst = rb.unwrap_or(0.0).max(rp.unwrap_or(0.0));
            let bad = judged && worst >= cfg.ratio;
            let Some(st) = self.devices.get_mut(name) else { continue };
            let mut obs = SlowObservation {
                load_bin: bin,
                baseline: own.map(Duration::from_secs_f64),
                peers: peers.map(Duration::from_secs_f64),
                peer_count: peer_vals.len(),
                ratio_baseline: rb,
                ratio_peers: rp,
                bad,
                transition: None,
                firing: st.hysteresis.firing(),
            };
            let rule = TimedRule {
                fire_after: cfg.fire_after,
                resolve_after: cfg.resolve_after,
            };
            if bad {
                let sev = if worst >= 2.0 * cfg.ratio {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                obs.transition = st.hysteresis.step(rule, now, Evaluation::Bad(sev));
            } else {
                if s.iops >= cfg.min_iops && s.errors == 0 && cur > 0.0 {
                    // Healthy: learn. Cumulative mean for the first samples,
                    // then an exponential average over ~60 samples.
                    let b = st.bins.entry(bin).or_default();
                    b.n += 1;
                    let w = 1.0 / (b.n.min(60) as f64);
                    b.mean_s += (cur - b.mean_s) * w;
                }
                obs.transition = st.hysteresis.step(rule, now, Evaluation::Good);
            }
            obs.firing = st.hysteresis.firing();
            out.insert(name.clone(), obs);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: &str, iops: f64, bps: f64, lat_ms: f64, errors: u64) -> DeviceSample {
        DeviceSample {
            kind: kind.into(),
            iops,
            bytes_per_second: bps,
            latency: Duration::from_secs_f64(lat_ms / 1000.0),
            errors,
        }
    }

    #[test]
    fn kinds_group_peers() {
        assert_eq!(device_kind("nvme0n1", false), "nvme/ssd");
        assert_eq!(device_kind("sda", true), "sd/hdd");
        assert_eq!(device_kind("sdab", true), "sd/hdd");
        assert_eq!(device_kind("vdb", false), "vd/ssd");
        assert_eq!(device_kind("loop3", false), "loop/ssd");
        assert_eq!(device_kind("dm-0", false), "dm/ssd");
        assert_eq!(device_kind("md127", false), "md/ssd");
        assert_eq!(device_kind("xvda", false), "xvd/ssd");
    }

    #[test]
    fn load_bins_are_log2_of_throughput() {
        assert_eq!(load_bin(0.0), 0);
        assert_eq!(load_bin(8192.0), 1);
        assert_eq!(load_bin(4096.0 * 1024.0), 10);
        assert_eq!(load_bin(f64::NAN), 0);
    }

    /// Own baseline: 2 ms at 4 MiB/s for 30 s, then 15 ms at the same load.
    #[test]
    fn slow_against_own_baseline_at_the_same_load_fires_and_resolves() {
        let mut d = SlowDetector::new(SlowConfig::default());
        let mut transitions = Vec::new();
        for t in 0..120u64 {
            let lat = if (30..60).contains(&t) { 15.0 } else { 2.0 };
            let s = BTreeMap::from([("sdb".to_owned(), sample("sd/hdd", 500.0, 4e6, lat, 0))]);
            let o = &d.evaluate(Duration::from_secs(t), &s)["sdb"];
            if let Some(tr) = o.transition {
                transitions.push((t, tr, o.clone()));
            }
        }
        assert_eq!(transitions.len(), 2, "{transitions:?}");
        assert_eq!(transitions[0].0, 40, "fires after 10 s of bad evaluations");
        assert_eq!(transitions[0].1, Transition::Fired(Severity::Warning));
        assert!(transitions[0].2.ratio_baseline.is_some_and(|r| r > 7.0));
        assert_eq!(transitions[1].1, Transition::Resolved);
        assert_eq!(transitions[1].0, 89);
    }

    /// Higher load, proportionally higher latency: not slow.
    #[test]
    fn higher_latency_at_higher_load_is_not_slow() {
        let mut d = SlowDetector::new(SlowConfig::default());
        for t in 0..30u64 {
            let s = BTreeMap::from([("sdb".to_owned(), sample("sd/hdd", 100.0, 1e6, 1.0, 0))]);
            d.evaluate(Duration::from_secs(t), &s);
        }
        for t in 30..90u64 {
            // 100x the throughput, 8x the latency: a busy disk, not a sick one.
            let s = BTreeMap::from([("sdb".to_owned(), sample("sd/hdd", 5000.0, 1e8, 8.0, 0))]);
            let o = &d.evaluate(Duration::from_secs(t), &s)["sdb"];
            assert!(!o.bad, "t={t}: {o:?}");
        }
    }

    #[test]
    fn slow_against_peers_and_quiet_with_errors() {
        let mut d = SlowDetector::new(SlowConfig::default());
        let mut fired = None;
        for t in 0..60u64 {
            let mut s = BTreeMap::new();
            for peer in ["nvme0n1", "nvme1n1", "nvme2n1"] {
                s.insert(peer.to_owned(), sample("nvme/ssd", 1000.0, 4e6, 0.2 * 10.0, 0));
            }
            // slow from the start: no own baseline, peers show it.
            s.insert("nvme3n1".to_owned(), sample("nvme/ssd", 1000.0, 4e6, 20.0, 0));
            let o = d.evaluate(Duration::from_secs(t), &s);
            if let Some(Transition::Fired(sev)) = o["nvme3n1"].transition {
                fired = Some((t, sev, o["nvme3n1"].clone()));
            }
            for peer in ["nvme0n1", "nvme1n1", "nvme2n1"] {
                assert!(o[peer].firing.is_none());
            }
        }
        let (t, sev, o) = fired.expect("peers comparison must fire");
        assert!(t <= 25, "{t}");
        assert_eq!(sev, Severity::Critical, "10x the peers");
        assert_eq!(o.peer_count, 3);

        // the same with errors: not gray, not judged
        let mut d = SlowDetector::new(SlowConfig::default());
        for t in 0..60u64 {
            let mut s = BTreeMap::new();
            s.insert("nvme0n1".to_owned(), sample("nvme/ssd", 1000.0, 4e6, 2.0, 0));
            s.insert("nvme3n1".to_owned(), sample("nvme/ssd", 1000.0, 4e6, 20.0, 3));
            let o = d.evaluate(Duration::from_secs(t), &s);
            assert!(!o["nvme3n1"].bad);
        }
    }

    #[test]
    fn idle_devices_are_not_judged() {
        let mut d = SlowDetector::new(SlowConfig::default());
        for t in 0..60u64 {
            let lat = if t < 30 { 1.0 } else { 50.0 };
            let s = BTreeMap::from([("sdb".to_owned(), sample("sd/hdd", 1.0, 4096.0, lat, 0))]);
            assert!(!d.evaluate(Duration::from_secs(t), &s)["sdb"].bad);
        }
    }
}
