//! What one evaluation sees of a pair ([`Tick`]) and the pair's statistics.

use std::time::Duration;

use super::outbound::OutOutcome;
use crate::probes::paths::mesh::RxOutcome;

/// What one evaluation interval brought for one peer.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    pub at: Duration,
    pub out: OutOutcome,
    pub inb: RxOutcome,
    /// RTTs of replies (seconds).
    pub rtts: Vec<f64>,
    /// Raw one-way delays (seconds, clock offset included) me → peer / peer → me.
    pub fwd_owd: Vec<f64>,
    pub rev_owd: Vec<f64>,
    /// Latest hop counts me → peer (peer's report) and peer → me.
    pub fwd_hops: Option<u8>,
    pub rev_hops: Option<u8>,
    /// Set by the detector: part of a one-way blackout (these losses belong
    /// to asymmetric_connectivity, not to one_way_loss).
    pub blackout: bool,
}

/// Window statistics of one pair (for metrics, the controller and findings).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairStats {
    pub out_delivered: u64,
    pub out_lost: u64,
    pub out_unknown: u64,
    pub in_delivered: u64,
    pub in_lost: u64,
    pub rtt_p50: Option<f64>,
    pub rtt_p99: Option<f64>,
    pub fwd_hops: Option<u8>,
    pub rev_hops: Option<u8>,
    /// Median one-way delay of the latency window minus its baseline (s).
    pub fwd_owd_variation: Option<f64>,
    pub rev_owd_variation: Option<f64>,
}

impl PairStats {
    pub fn out_loss(&self) -> Option<f64> {
        ratio(self.out_lost, self.out_delivered)
    }
    pub fn in_loss(&self) -> Option<f64> {
        ratio(self.in_lost, self.in_delivered)
    }
}

pub(super) fn ratio(lost: u64, delivered: u64) -> Option<f64> {
    let total = lost + delivered;
    (total > 0).then(|| lost as f64 / total as f64)
}

/// q-quantile (nearest rank) of unsorted samples.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}
