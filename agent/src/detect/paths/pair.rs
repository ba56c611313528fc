//! The pair detector: one per peer, four finding kinds, with hysteresis.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use graydar_common::api::{Evidence, FindingKind, Severity};

use super::config::PathsConfig;
use super::window::{PairStats, Tick, quantile, ratio};
use crate::detect::transition::{CountRule, Hysteresis, Transition};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    Fire,
    Firing,
    Resolve,
}

/// One evaluation of one kind through the shared count-based hysteresis
/// (the pair detectors have no severity levels in it: a kind fires at the
/// severity its verdict names).
fn step(h: &mut Hysteresis, rule: CountRule, bad: bool) -> Step {
    match h.step(rule, bad, Severity::Warning) {
        Some(Transition::Fired(_)) => Step::Fire,
        Some(Transition::Resolved) => Step::Resolve,
        Some(Transition::SeverityChanged(_)) | None if h.firing().is_some() => Step::Firing,
        Some(Transition::SeverityChanged(_)) | None => Step::Idle,
    }
}

/// What the detector says about one kind for one pair at one evaluation:
/// its [`Transition`], or `None` while it keeps firing (every evaluation of a
/// firing kind restates it with fresh severity, summary and evidence).
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub kind: FindingKind,
    pub transition: Option<Transition>,
    pub severity: Severity,
    pub summary: String,
    pub evidence: BTreeMap<String, Evidence>,
}

impl Verdict {
    fn firing(
        kind: FindingKind,
        step: Step,
        severity: Severity,
        summary: String,
        evidence: BTreeMap<String, Evidence>,
    ) -> Verdict {
        Verdict {
            kind,
            transition: (step == Step::Fire).then_some(Transition::Fired(severity)),
            severity,
            summary,
            evidence,
        }
    }

    fn resolved(kind: FindingKind) -> Verdict {
        Verdict {
            kind,
            transition: Some(Transition::Resolved),
            severity: Severity::Warning,
            summary: String::new(),
            evidence: BTreeMap::new(),
        }
    }

    /// Fired now or still firing.
    pub fn is_firing(&self) -> bool {
        self.transition != Some(Transition::Resolved)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub stats: PairStats,
    pub verdicts: Vec<Verdict>,
    /// The route looks asymmetric or changed: traceroute both ways.
    pub route_suspect: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct HopBaseline {
    base: Option<u8>,
    current: Option<u8>,
    since: Duration,
}

impl HopBaseline {
    fn observe(&mut self, v: Option<u8>, now: Duration, stable_after: Duration) {
        let Some(v) = v else { return };
        if self.current != Some(v) {
            self.current = Some(v);
            self.since = now;
        }
        if self.base.is_none() || now.saturating_sub(self.since) >= stable_after {
            self.base = Some(v);
        }
    }
}

/// One peer pair seen from this agent.
pub struct PairDetector {
    cfg: PathsConfig,
    ticks: VecDeque<Tick>,
    /// Per tick: median RTT, fwd and rev one-way delay (when known), for the baselines.
    baseline: VecDeque<BaselineSample>,
    fwd_base: HopBaseline,
    rev_base: HopBaseline,
    loss: Hysteresis,
    conn: Hysteresis,
    route: Hysteresis,
    latency: Hysteresis,
    in_blackout: bool,
}

/// Per tick: when, median RTT, fwd and rev one-way delay.
type BaselineSample = (Duration, Option<f64>, Option<f64>, Option<f64>);

/// Fewest per-tick RTT medians before the latency baseline counts.
const MIN_BASELINE_TICKS: usize = 30;
/// latency_asymmetry: evaluations (1 s each) whose samples must still show
/// the change, and which tell its direction. The latency window lags: right
/// after a change goes away its RTT median stays high for half a window while
/// its one-way medians (other samples) already disagree on the direction.
const RECENT_TICKS: usize = 3;

impl PairDetector {
    pub fn new(cfg: PathsConfig) -> Self {
        PairDetector {
            cfg,
            ticks: VecDeque::new(),
            baseline: VecDeque::new(),
            fwd_base: HopBaseline::default(),
            rev_base: HopBaseline::default(),
            loss: Hysteresis::default(),
            conn: Hysteresis::default(),
            route: Hysteresis::default(),
            latency: Hysteresis::default(),
            in_blackout: false,
        }
    }

    /// The last `min_lost` (or more) finalized outbound probes were all lost
    /// (whole ticks without a delivered probe).
    fn trailing_blackout(&self) -> bool {
        let mut lost = 0;
        for t in self.ticks.iter().rev() {
            if t.out.delivered > 0 {
                return false;
            }
            lost += t.out.lost;
            if lost >= self.cfg.min_lost {
                return true;
            }
        }
        false
    }

    /// Marks the ticks of a blackout, including the partial ones at its edges.
    fn mark_blackout(&mut self) {
        if self.trailing_blackout() {
            let mut edge_marked = false;
            for t in self.ticks.iter_mut().rev() {
                let whole = t.out.delivered == 0;
                if !whole && edge_marked {
                    break;
                }
                if !whole {
                    edge_marked = true;
                }
                if t.blackout && whole {
                    break;
                }
                t.blackout = true;
            }
            self.in_blackout = true;
        } else if self.in_blackout {
            if let Some(t) = self.ticks.back_mut() {
                t.blackout = true;
            }
            self.in_blackout = false;
        }
    }

    fn window<'a>(&'a self, now: Duration, w: Duration) -> impl Iterator<Item = &'a Tick> + 'a {
        self.ticks.iter().filter(move |t| now.saturating_sub(t.at) < w)
    }

    fn step(&mut self, kind: FindingKind, bad: bool) -> Step {
        let rule = CountRule {
            fire_windows: self.cfg.fire_windows,
            of_windows: self.cfg.of_windows,
            resolve_windows: self.cfg.resolve_windows,
        };
        let h = match kind {
            FindingKind::OneWayLoss => &mut self.loss,
            FindingKind::AsymmetricConnectivity => &mut self.conn,
            FindingKind::AsymmetricRoute => &mut self.route,
            _ => &mut self.latency,
        };
        step(h, rule, bad)
    }

    /// Resolves everything firing (the peer was removed).
    pub fn resolve_all(&mut self) -> Vec<FindingKind> {
        let mut out = Vec::new();
        for (kind, h) in [
            (FindingKind::OneWayLoss, &mut self.loss),
            (FindingKind::AsymmetricConnectivity, &mut self.conn),
            (FindingKind::AsymmetricRoute, &mut self.route),
            (FindingKind::LatencyAsymmetry, &mut self.latency),
        ] {
            if h.reset() {
                out.push(kind);
            }
        }
        out
    }

    /// One evaluation. `me` and `peer` are the two identities (hostnames),
    /// `peer` as the peer calls itself when known; they decide who owns a
    /// pair finding when the measurement does not.
    pub fn evaluate(&mut self, tick: Tick, me: &str, peer: &str, peer_id: Option<&str>) -> Evaluation {
        let now = tick.at;
        let keep = self
            .cfg
            .loss_window
            .max(self.cfg.latency_window)
            .max(self.cfg.connectivity_window);
        self.fwd_base.observe(tick.fwd_hops, now, self.cfg.route_stable_after);
        self.rev_base.observe(tick.rev_hops, now, self.cfg.route_stable_after);
        let tick_rtt = quantile(&tick.rtts, 0.5);
        let tick_fwd = quantile(&tick.fwd_owd, 0.5);
        let tick_rev = quantile(&tick.rev_owd, 0.5);
        self.ticks.push_back(tick);
        while self.ticks.front().is_some_and(|t| now.saturating_sub(t.at) >= keep) {
            self.ticks.pop_front();
        }
        self.mark_blackout();
        let i_am_smaller = peer_id.is_none_or(|p| me < p);
        let dir_out = format!("{me} -> {peer}");
        let dir_in = format!("{peer} -> {me}");

        // Loss window.
        let mut st = PairStats::default();
        let (mut l_out_del, mut l_out_lost) = (0u64, 0u64);
        for t in self.window(now, self.cfg.loss_window) {
            if !t.blackout {
                l_out_del += t.out.delivered;
                l_out_lost += t.out.lost;
            }
            st.out_delivered += t.out.delivered;
            st.out_lost += t.out.lost;
            st.out_unknown += t.out.unknown;
            st.in_delivered += t.inb.delivered;
            st.in_lost += t.inb.lost;
        }
        let (mut c_out_del, mut c_out_lost, mut c_in_del) = (0u64, 0u64, 0u64);
        for t in self.window(now, self.cfg.connectivity_window) {
            c_out_del += t.out.delivered;
            c_out_lost += t.out.lost;
            c_in_del += t.inb.delivered;
        }
        let (mut rtts, mut fwd, mut rev) = (Vec::new(), Vec::new(), Vec::new());
        for t in self.window(now, self.cfg.latency_window) {
            rtts.extend_from_slice(&t.rtts);
            fwd.extend_from_slice(&t.fwd_owd);
            rev.extend_from_slice(&t.rev_owd);
        }
        st.rtt_p50 = quantile(&rtts, 0.5);
        st.rtt_p99 = quantile(&rtts, 0.99);
        let (mut r_rtts, mut r_fwd, mut r_rev) = (Vec::new(), Vec::new(), Vec::new());
        for t in self.ticks.iter().rev().take(RECENT_TICKS) {
            r_rtts.extend_from_slice(&t.rtts);
            r_fwd.extend_from_slice(&t.fwd_owd);
            r_rev.extend_from_slice(&t.rev_owd);
        }
        let recent_rtt = quantile(&r_rtts, 0.5);
        st.fwd_hops = self.fwd_base.current;
        st.rev_hops = self.rev_base.current;
        let base_of = |sel: fn(&BaselineSample) -> Option<f64>, b: &VecDeque<BaselineSample>| {
            let v: Vec<f64> = b.iter().filter_map(sel).collect();
            if v.len() >= MIN_BASELINE_TICKS {
                quantile(&v, 0.5)
            } else {
                None
            }
        };
        let base_rtt = base_of(|x| x.1, &self.baseline);
        let base_fwd = base_of(|x| x.2, &self.baseline);
        let base_rev = base_of(|x| x.3, &self.baseline);
        let cur_fwd = quantile(&fwd, 0.5);
        let cur_rev = quantile(&rev, 0.5);
        st.fwd_owd_variation = cur_fwd.zip(base_fwd).map(|(c, b)| c - b);
        st.rev_owd_variation = cur_rev.zip(base_rev).map(|(c, b)| c - b);
        let recent_fwd_var = quantile(&r_fwd, 0.5).zip(base_fwd).map(|(c, b)| c - b);
        let recent_rev_var = quantile(&r_rev, 0.5).zip(base_rev).map(|(c, b)| c - b);

        let mut ev = Evaluation::default();
        let common = |st: &PairStats| -> BTreeMap<String, Evidence> {
            let mut e = BTreeMap::new();
            e.insert("peer".into(), Evidence::from(peer));
            e.insert("probes_delivered_fwd".into(), Evidence::from(st.out_delivered));
            e.insert("probes_lost_fwd".into(), Evidence::from(st.out_lost));
            e.insert("probes_delivered_rev".into(), Evidence::from(st.in_delivered));
            e.insert("probes_lost_rev".into(), Evidence::from(st.in_lost));
            if let Some(r) = st.out_loss() {
                e.insert("loss_ratio_fwd".into(), Evidence::from(r));
            }
            if let Some(r) = st.in_loss() {
                e.insert("loss_ratio_rev".into(), Evidence::from(r));
            }
            e
        };

        // asymmetric_connectivity: over the short window nothing of mine
        // arrives while the peer's probes do.
        let conn_bad = c_out_del == 0 && c_out_lost >= self.cfg.min_lost && c_in_del > 0;
        let conn_step = self.step(FindingKind::AsymmetricConnectivity, conn_bad);
        match conn_step {
            Step::Fire | Step::Firing => {
                let mut e = common(&st);
                e.insert("direction".into(), Evidence::from(dir_out.as_str()));
                e.insert("window_delivered_fwd".into(), Evidence::from(c_out_del));
                e.insert("window_lost_fwd".into(), Evidence::from(c_out_lost));
                e.insert("window_delivered_rev".into(), Evidence::from(c_in_del));
                e.insert(
                    "window_seconds".into(),
                    Evidence::from(self.cfg.connectivity_window.as_secs_f64()),
                );
                ev.verdicts.push(Verdict::firing(
                    FindingKind::AsymmetricConnectivity,
                    conn_step,
                    Severity::Critical,
                    format!(
                        "{dir_out} delivers nothing ({c_out_lost} probes lost in {:?}) while {dir_in} delivers",
                        self.cfg.connectivity_window
                    ),
                    e,
                ));
            }
            Step::Resolve => ev.verdicts.push(Verdict::resolved(FindingKind::AsymmetricConnectivity)),
            Step::Idle => {}
        }

        // one_way_loss: my direction loses, the reverse is clean, and it is
        // not a blackout (that is asymmetric_connectivity).
        let out_total = l_out_del + l_out_lost;
        let in_total = st.in_delivered + st.in_lost;
        let out_ratio = ratio(l_out_lost, l_out_del).unwrap_or(0.0);
        let clean_max = ((self.cfg.clean_ratio * in_total as f64).floor() as u64).max(1);
        let loss_bad = out_total >= self.cfg.min_probes
            && l_out_lost >= self.cfg.min_lost
            && out_ratio >= self.cfg.loss_threshold
            && in_total >= self.cfg.min_probes
            && st.in_lost <= clean_max
            && !self.in_blackout
            && self.conn.firing().is_none();
        let loss_step = self.step(FindingKind::OneWayLoss, loss_bad);
        match loss_step {
            Step::Fire | Step::Firing => {
                let mut e = common(&st);
                e.insert("direction".into(), Evidence::from(dir_out.as_str()));
                e.insert(
                    "window_seconds".into(),
                    Evidence::from(self.cfg.loss_window.as_secs_f64()),
                );
                let severity = if out_ratio >= self.cfg.critical_loss {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                ev.verdicts.push(Verdict::firing(
                    FindingKind::OneWayLoss,
                    loss_step,
                    severity,
                    format!(
                        "{dir_out} loses {:.1}% of probes ({} of {out_total}) while {dir_in} loses {} of {in_total}",
                        out_ratio * 100.0,
                        l_out_lost,
                        st.in_lost
                    ),
                    e,
                ));
            }
            Step::Resolve => ev.verdicts.push(Verdict::resolved(FindingKind::OneWayLoss)),
            Step::Idle => {}
        }

        // asymmetric_route: hop counts differ, or one changed from its baseline.
        let route = match (self.fwd_base.current, self.rev_base.current) {
            (Some(f), Some(r)) => {
                let fb = self.fwd_base.base.unwrap_or(f);
                let rb = self.rev_base.base.unwrap_or(r);
                let asym = f != r;
                let changed = f != fb || r != rb;
                let owner = if f > r {
                    true
                } else if f < r {
                    false
                } else if f != fb && r == rb {
                    true
                } else if r != rb && f == fb {
                    false
                } else {
                    i_am_smaller
                };
                Some((f, r, fb, rb, asym || changed, owner))
            }
            _ => None,
        };
        ev.route_suspect = route.is_some_and(|x| x.4);
        let route_bad = route.is_some_and(|x| x.4 && x.5);
        let route_step = self.step(FindingKind::AsymmetricRoute, route_bad);
        match (route_step, route) {
            (Step::Fire | Step::Firing, Some((f, r, fb, rb, _, _))) => {
                let mut e = BTreeMap::new();
                e.insert("peer".into(), Evidence::from(peer));
                e.insert("hops_fwd".into(), Evidence::from(u64::from(f)));
                e.insert("hops_rev".into(), Evidence::from(u64::from(r)));
                e.insert("baseline_hops_fwd".into(), Evidence::from(u64::from(fb)));
                e.insert("baseline_hops_rev".into(), Evidence::from(u64::from(rb)));
                e.insert("direction_fwd".into(), Evidence::from(dir_out.as_str()));
                let what = if f != r {
                    format!("{dir_out} takes {f} hops, {dir_in} takes {r}")
                } else {
                    format!("hop counts changed: {dir_out} {fb} -> {f}, {dir_in} {rb} -> {r}")
                };
                ev.verdicts.push(Verdict::firing(
                    FindingKind::AsymmetricRoute,
                    route_step,
                    Severity::Warning,
                    what,
                    e,
                ));
            }
            (Step::Resolve, _) => ev.verdicts.push(Verdict::resolved(FindingKind::AsymmetricRoute)),
            // Firing but the hop counts went unknown: hold (the hysteresis resolves it).
            _ => {}
        }

        // latency_asymmetry: RTT beyond factor x baseline and above the floor.
        let floor = self.cfg.rtt_floor.as_secs_f64();
        let lat = match (st.rtt_p50, base_rtt) {
            (Some(cur), Some(base)) if rtts.len() >= 5 => {
                let delta = cur - base;
                let over = |v: f64| v > self.cfg.rtt_factor * base && v - base > floor;
                // Over the window, and still now (not the tail of a change that is gone).
                let bad = over(cur) && recent_rtt.is_some_and(over);
                // One side carries >= 2/3 of the change and the other <= 1/3.
                let split = |delta: f64, f: Option<f64>, r: Option<f64>| match (f, r) {
                    (Some(f), Some(r)) if f >= 0.66 * delta && r <= 0.33 * delta => Some(true),
                    (Some(f), Some(r)) if r >= 0.66 * delta && f <= 0.33 * delta => Some(false),
                    _ => None,
                };
                // The recent samples (all taken during the change) first, the window else.
                let dir = recent_rtt
                    .and_then(|r| split(r - base, recent_fwd_var, recent_rev_var))
                    .or_else(|| split(delta, st.fwd_owd_variation, st.rev_owd_variation));
                let owner = dir.unwrap_or(i_am_smaller);
                Some((cur, base, delta, bad, dir, owner))
            }
            _ => None,
        };
        let lat_bad = lat.is_some_and(|x| x.3 && x.5);
        let lat_step = self.step(FindingKind::LatencyAsymmetry, lat_bad);
        match (lat_step, lat) {
            (Step::Fire | Step::Firing, Some((cur, base, delta, _, dir, _))) => {
                let mut e = BTreeMap::new();
                e.insert("peer".into(), Evidence::from(peer));
                e.insert("rtt_p50_seconds".into(), Evidence::from(cur));
                e.insert("rtt_baseline_seconds".into(), Evidence::from(base));
                if let Some(r) = recent_rtt {
                    e.insert("rtt_recent_p50_seconds".into(), Evidence::from(r));
                }
                if let Some(p99) = st.rtt_p99 {
                    e.insert("rtt_p99_seconds".into(), Evidence::from(p99));
                }
                if let Some(f) = st.fwd_owd_variation {
                    e.insert("owd_change_fwd_seconds".into(), Evidence::from(f));
                }
                if let Some(r) = st.rev_owd_variation {
                    e.insert("owd_change_rev_seconds".into(), Evidence::from(r));
                }
                let d = match dir {
                    Some(true) => dir_out.clone(),
                    Some(false) => dir_in.clone(),
                    None => "unknown".into(),
                };
                e.insert("direction".into(), Evidence::from(d.as_str()));
                ev.verdicts.push(Verdict::firing(
                    FindingKind::LatencyAsymmetry,
                    lat_step,
                    Severity::Warning,
                    format!(
                        "RTT to {peer} {:.1} ms, baseline {:.1} ms (+{:.1} ms); slower direction: {d}",
                        cur * 1e3,
                        base * 1e3,
                        delta * 1e3
                    ),
                    e,
                ));
            }
            (Step::Resolve, _) => ev.verdicts.push(Verdict::resolved(FindingKind::LatencyAsymmetry)),
            _ => {}
        }
        // The baseline learns only from normal times.
        if !lat.is_some_and(|x| x.3) && self.latency.firing().is_none() {
            self.baseline.push_back((now, tick_rtt, tick_fwd, tick_rev));
        }
        while self
            .baseline
            .front()
            .is_some_and(|b| now.saturating_sub(b.0) >= self.cfg.baseline_window)
        {
            self.baseline.pop_front();
        }
        ev.stats = st;
        ev
    }
}
