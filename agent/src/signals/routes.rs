//! The route churn signal end to end: subscribes to rtnetlink route, link and
//! neighbour events (agent/src/probes/routes.rs), counts them in
//! `graydar_route_changes_total`, feeds every counted route change to the
//! `route_flap` detector per prefix (agent/src/detect/routes.rs) and
//! keeps the findings in the [`FindingStore`].
//!
//! What is counted (documented in docs/src/configuration/agent.md, `[routes]`): routes of every table
//! but `routes.ignore_tables` (default: `local`, rewritten by the kernel on
//! every address change), outside `routes.ignore_prefixes` (default: IPv6
//! link-local and multicast), whatever their protocol: a connected
//! (`proto kernel`) route that churns is an interface address or link that
//! churns, which is worth a finding too; one address change is one or two
//! changes and fires nothing. Cache clones (PMTU exceptions) are no routes.
//! Link and neighbour events are counted in the metric and named in the
//! evidence of a flapping prefix whose next hops they concern; they raise no
//! finding of their own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use graydar_common::api::{Evidence, FindingKind, Timestamp};

use super::{Context, Signal, Update};
use crate::detect::routes::{PrefixState, RouteFlapDetector, RoutesConfig, Transition};
use crate::findings::Report;
use crate::metrics::Metrics;
use crate::probes::routes::{
    self, ChurnEvent, LinkStates, NextHop, PROBE, Prefix, RT_TABLE_MAIN, RouteChurnProbe, RouteEvent, table_name,
};

/// Link and neighbour events kept for the evidence.
const CONTEXT_EVENTS: usize = 256;
/// Related link / neighbour events named in one finding.
const CONTEXT_IN_EVIDENCE: usize = 5;
/// How often quiet prefixes are checked for resolution.
const TICK: Duration = Duration::from_secs(1);

/// A prefix in one routing table: the subject of a route_flap finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub prefix: Prefix,
    pub table: u32,
}

impl fmt::Display for RouteKey {
    /// `10.1.0.0/16` in the main table, `10.1.0.0/16 table 100` elsewhere.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.table == RT_TABLE_MAIN {
            write!(f, "{}", self.prefix)
        } else {
            write!(f, "{} table {}", self.prefix, table_name(self.table))
        }
    }
}

/// One counted route change, as kept for the evidence.
#[derive(Clone, Debug)]
pub struct Change {
    pub wall: SystemTime,
    /// e.g. `del via 10.76.0.2 dev rf0 proto boot`.
    pub text: String,
    pub next_hops: Vec<NextHop>,
}

/// A link or neighbour event, kept a while for the evidence.
#[derive(Clone, Debug)]
struct ContextEvent {
    at: Duration,
    wall: SystemTime,
    ifindex: u32,
    address: Option<IpAddr>,
    text: String,
}

/// RFC 3339 with milliseconds (changes of one flap are seconds apart, a
/// delete + add microseconds apart).
pub fn timestamp(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0);
    Timestamp::from_unix_ms(ms).to_string()
}

pub struct RouteSignal {
    cfg: RoutesConfig,
    metrics: Arc<Metrics>,
    /// The rtnetlink subscription; `None` when disabled, refused or closed.
    probe: Option<RouteChurnProbe>,
    det: RouteFlapDetector<RouteKey, Change>,
    links: LinkStates,
    ignore: Vec<Prefix>,
    context: VecDeque<ContextEvent>,
    started: Instant,
}

impl RouteSignal {
    pub fn new(cfg: RoutesConfig, metrics: Arc<Metrics>, probe: Option<RouteChurnProbe>) -> Self {
        // Validated with the configuration; an invalid entry cannot reach here.
        let ignore = cfg.ignore_prefixes.iter().filter_map(|p| p.parse().ok()).collect();
        RouteSignal {
            det: RouteFlapDetector::new(cfg.clone()),
            cfg,
            metrics,
            probe,
            links: LinkStates::default(),
            ignore,
            context: VecDeque::new(),
            started: Instant::now(),
        }
    }

    /// Whether the detector counts this route.
    pub fn counted(&self, r: &RouteEvent) -> bool {
        !self.cfg.ignore_tables.contains(&r.table) && !self.ignore.iter().any(|p| p.contains(&r.prefix))
    }

    fn hop_text(&self, h: &NextHop) -> String {
        let mut s = String::new();
        if let Some(g) = h.gateway {
            s.push_str(&format!("via {g}"));
        }
        if let Some(i) = h.oif {
            if !s.is_empty() {
                s.push(' ');
            }
            match self.links.name(i) {
                Some(n) => s.push_str(&format!("dev {n}")),
                None => s.push_str(&format!("dev #{i}")),
            }
        }
        s
    }

    fn describe(&self, r: &RouteEvent) -> String {
        let mut parts = vec![r.action.as_str().to_owned()];
        if r.kind != "unicast" {
            parts.push(r.kind.to_owned());
        }
        let hops: Vec<String> = r.next_hops.iter().map(|h| self.hop_text(h)).collect();
        if !hops.is_empty() {
            parts.push(hops.join(" + "));
        }
        parts.push(format!("proto {}", r.protocol));
        if let Some(m) = r.metric {
            parts.push(format!("metric {m}"));
        }
        parts.join(" ")
    }

    fn push_context(&mut self, e: ContextEvent) {
        if self.context.len() >= CONTEXT_EVENTS {
            self.context.pop_front();
        }
        self.context.push_back(e);
    }

    /// One decoded event at monotonic `now` (since the signal started).
    pub fn handle(&mut self, ev: ChurnEvent, now: Duration, wall: SystemTime) -> Vec<Update> {
        match ev {
            ChurnEvent::Overrun => {
                self.metrics.collector_errors.with_label_values(&[PROBE]).inc();
                tracing::warn!(
                    "route_churn: the netlink receive buffer overflowed, route/link/neighbour events were lost"
                );
                Vec::new()
            }
            ChurnEvent::Link(l) => {
                self.metrics.route_changes.with_label_values(&["link", "link"]).inc();
                tracing::debug!(interface = %l.name, from = %l.from, to = %l.to, "link state changed");
                self.push_context(ContextEvent {
                    at: now,
                    wall,
                    ifindex: l.ifindex,
                    address: None,
                    text: format!("link {} {} -> {}", l.name, l.from, l.to),
                });
                Vec::new()
            }
            ChurnEvent::Neigh(n) => {
                let family = if n.address.is_ipv4() { "ipv4" } else { "ipv6" };
                self.metrics.route_changes.with_label_values(&["neigh", family]).inc();
                let dev = self
                    .links
                    .name(n.ifindex)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("#{}", n.ifindex));
                self.push_context(ContextEvent {
                    at: now,
                    wall,
                    ifindex: n.ifindex,
                    address: Some(n.address),
                    text: format!("neighbour {} dev {dev} {}", n.address, n.state),
                });
                Vec::new()
            }
            ChurnEvent::Route(r) => self.route(r, now, wall).into_iter().collect(),
        }
    }

    fn route(&mut self, r: RouteEvent, now: Duration, wall: SystemTime) -> Option<Update> {
        if !self.counted(&r) {
            return None;
        }
        self.metrics
            .route_changes
            .with_label_values(&["route", r.prefix.family()])
            .inc();
        let key = RouteKey {
            prefix: r.prefix,
            table: r.table,
        };
        let change = Change {
            wall,
            text: self.describe(&r),
            next_hops: r.next_hops.clone(),
        };
        tracing::debug!(prefix = %key, change = %change.text, "route changed");
        let transition = self.det.observe(&key, now, change);
        let firing = self.det.state(&key).and_then(PrefixState::firing);
        if transition.is_none() && firing.is_none() {
            return None;
        }
        let st = self.det.state(&key)?;
        let subject = key.to_string();
        let evidence = self.evidence(&key, st, now);
        let summary = self.summary(&key, st);
        let report = Report {
            kind: FindingKind::RouteFlap,
            subject,
            severity: firing.unwrap_or(graydar_common::api::Severity::Warning),
            summary,
            evidence,
        };
        match (transition, firing) {
            (Some(t), _) => Some(Update::Apply(Some(t), report)),
            // Still firing: fresh counts and changes, same severity.
            (None, Some(_)) => Some(Update::Restate(report)),
            (None, None) => None,
        }
    }

    /// The number of flapping prefixes.
    fn export_gauge(&self, metrics: &Metrics) {
        metrics
            .route_flapping_prefixes
            .set(i64::try_from(self.det.firing_count()).unwrap_or(i64::MAX));
    }

    /// Advances the clock: resolves prefixes quiet for `resolve_after`.
    pub fn tick(&mut self, now: Duration) -> Vec<Update> {
        let resolved = self.det.tick(now);
        let window = self.cfg.window;
        while self.context.front().is_some_and(|e| now.saturating_sub(e.at) > window) {
            self.context.pop_front();
        }
        resolved
            .into_iter()
            .filter(|(_, t)| *t == Transition::Resolved)
            .map(|(key, _)| Update::Resolve(FindingKind::RouteFlap, key.to_string()))
            .collect()
    }

    fn summary(&self, key: &RouteKey, st: &PrefixState<Change>) -> String {
        let last = st
            .recent()
            .next()
            .map(|(_, c)| format!("; last: {} at {}", c.text, timestamp(c.wall)))
            .unwrap_or_default();
        format!(
            "route to {key} changed {} times within {} s (threshold: more than {}){last}",
            st.changes_in_window(),
            self.cfg.window.as_secs(),
            self.cfg.threshold
        )
    }

    fn evidence(&self, key: &RouteKey, st: &PrefixState<Change>, now: Duration) -> BTreeMap<String, Evidence> {
        let mut ev = BTreeMap::from([
            ("prefix".to_owned(), Evidence::Text(key.prefix.to_string())),
            ("table".to_owned(), Evidence::Text(table_name(key.table))),
            (
                "changes_in_window".to_owned(),
                Evidence::from(st.changes_in_window() as u64),
            ),
            ("peak_changes_in_window".to_owned(), Evidence::from(st.peak() as u64)),
            ("changes_since_fired".to_owned(), Evidence::from(st.since_fired())),
            (
                "window_seconds".to_owned(),
                Evidence::Number(self.cfg.window.as_secs_f64()),
            ),
            ("threshold".to_owned(), Evidence::from(u64::from(self.cfg.threshold))),
        ]);
        let mut hops: BTreeSet<String> = BTreeSet::new();
        let mut oifs: BTreeSet<u32> = BTreeSet::new();
        let mut gateways: BTreeSet<IpAddr> = BTreeSet::new();
        for (i, (_, c)) in st.recent().enumerate() {
            ev.insert(
                format!("change_{:02}", i + 1),
                Evidence::Text(format!("{} {}", timestamp(c.wall), c.text)),
            );
            for h in &c.next_hops {
                hops.insert(self.hop_text(h));
                oifs.extend(h.oif);
                gateways.extend(h.gateway);
            }
        }
        if !hops.is_empty() {
            ev.insert(
                "next_hops".to_owned(),
                Evidence::Text(hops.into_iter().collect::<Vec<_>>().join(", ")),
            );
        }
        let related: Vec<String> = self
            .context
            .iter()
            .rev()
            .filter(|e| now.saturating_sub(e.at) <= self.cfg.window)
            .filter(|e| oifs.contains(&e.ifindex) || e.address.is_some_and(|a| gateways.contains(&a)))
            .take(CONTEXT_IN_EVIDENCE)
            .map(|e| format!("{} {}", timestamp(e.wall), e.text))
            .collect();
        if !related.is_empty() {
            ev.insert("related_events".to_owned(), Evidence::Text(related.join("; ")));
        }
        ev
    }

    /// Subscribes to the route, link and neighbour groups unless `[routes]`
    /// disables it or the kernel refuses (logged). Call it before the agent
    /// reports ready: events from then on are buffered in the socket.
    pub fn start_probe(cfg: &RoutesConfig) -> Option<RouteChurnProbe> {
        if !cfg.enabled {
            return None;
        }
        match RouteChurnProbe::start() {
            Ok(p) => {
                tracing::info!("route_churn: subscribed to route, link and neighbour events");
                Some(p)
            }
            Err(e) => {
                tracing::warn!(error = %e, "route_churn disabled");
                None
            }
        }
    }
}

impl Signal for RouteSignal {
    const NAME: &'static str = "routes";

    /// Subscribes (see [`RouteSignal::start_probe`]); without a subscription
    /// it only keeps the clock.
    fn start(ctx: &mut Context) -> Option<Self> {
        let probe = RouteSignal::start_probe(&ctx.cfg.routes);
        Some(RouteSignal::new(ctx.cfg.routes.clone(), ctx.metrics.clone(), probe))
    }

    fn interval(&self) -> Duration {
        TICK
    }

    async fn begin(&mut self, _stop: tokio::sync::watch::Receiver<bool>) {
        if let Some(p) = &self.probe
            && let Err(e) = p.seed_links(&mut self.links).await
        {
            self.metrics.collector_errors.with_label_values(&[PROBE]).inc();
            tracing::warn!(error = %e, "route_churn: interface names unknown until they change");
        }
    }

    async fn sample(&mut self) -> Vec<Update> {
        self.tick(self.started.elapsed())
    }

    async fn next_event(&mut self) -> Vec<Update> {
        match next(&mut self.probe).await {
            Some(msg) => match routes::decode(&msg, &mut self.links) {
                Some(ev) => self.handle(ev, self.started.elapsed(), SystemTime::now()),
                None => Vec::new(),
            },
            None => {
                self.metrics.collector_errors.with_label_values(&[PROBE]).inc();
                tracing::warn!("route_churn: the netlink socket closed; route churn detection stopped");
                self.probe = None;
                Vec::new()
            }
        }
    }

    fn probes(&self) -> Vec<(&'static str, bool)> {
        // Disabled by configuration: no series (disabled, not down).
        if self.cfg.enabled {
            vec![(PROBE, self.probe.is_some())]
        } else {
            Vec::new()
        }
    }

    fn export(&self, metrics: &Metrics) {
        self.export_gauge(metrics);
    }
}

async fn next(
    probe: &mut Option<RouteChurnProbe>,
) -> Option<rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>> {
    match probe {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use graydar_common::api::{FindingState, Severity};

    use std::sync::Mutex;

    use super::*;
    use crate::findings::FindingStore;
    use crate::probes::routes::{LinkEvent, NeighEvent, RouteAction};

    /// The signal and what the runner gives it: the store its updates go
    /// to (at the event's wall time) and the metrics it exports.
    struct Harness {
        s: RouteSignal,
        m: Arc<Metrics>,
        f: Arc<Mutex<FindingStore>>,
    }

    impl Harness {
        fn apply(&self, updates: Vec<Update>, wall: SystemTime) {
            let mut store = self.f.lock().expect("lock");
            crate::signals::runner::apply_to(&mut store, updates, wall);
            store.export(&self.m);
            self.s.export(&self.m);
        }

        fn handle(&mut self, ev: ChurnEvent, now: Duration, wall: SystemTime) {
            let u = self.s.handle(ev, now, wall);
            self.apply(u, wall);
        }

        fn tick(&mut self, now: Duration, wall: SystemTime) {
            let u = self.s.tick(now);
            self.apply(u, wall);
        }
    }

    fn signal(cfg: RoutesConfig) -> (Harness, Arc<Metrics>, Arc<Mutex<FindingStore>>) {
        let m = Arc::new(Metrics::new());
        let f = Arc::new(Mutex::new(FindingStore::new("n", Duration::from_secs(3600))));
        (
            Harness {
                s: RouteSignal::new(cfg, m.clone(), None),
                m: m.clone(),
                f: f.clone(),
            },
            m,
            f,
        )
    }

    fn ev(action: RouteAction, prefix: &str, table: u32) -> ChurnEvent {
        ChurnEvent::Route(RouteEvent {
            action,
            prefix: prefix.parse().expect("prefix"),
            table,
            protocol: "boot".to_owned(),
            kind: "unicast",
            next_hops: vec![NextHop {
                gateway: Some("10.76.0.2".parse().expect("ip")),
                oif: Some(7),
            }],
            metric: None,
        })
    }

    #[test]
    fn a_flapping_prefix_becomes_a_finding_with_evidence_and_resolves() {
        let (mut s, m, f) = signal(RoutesConfig::default());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        s.handle(
            ChurnEvent::Neigh(NeighEvent {
                ifindex: 7,
                address: "10.76.0.2".parse().expect("ip"),
                state: "failed",
            }),
            Duration::ZERO,
            t0,
        );
        s.handle(
            ChurnEvent::Link(LinkEvent {
                ifindex: 9,
                name: "other0".into(),
                from: "up".into(),
                to: "down".into(),
            }),
            Duration::ZERO,
            t0,
        );
        for i in 0..5u64 {
            let a = if i % 2 == 0 {
                RouteAction::Delete
            } else {
                RouteAction::Add
            };
            s.handle(
                ev(a, "10.77.0.0/16", 254),
                Duration::from_secs(i * 3),
                t0 + Duration::from_secs(i * 3),
            );
            // The local table and link-local prefixes are not counted.
            s.handle(ev(a, "10.77.0.1/32", 255), Duration::from_secs(i * 3), t0);
            s.handle(ev(a, "fe80::/64", 254), Duration::from_secs(i * 3), t0);
        }
        let list = f.lock().expect("lock").list(t0);
        assert_eq!(list.len(), 1, "{list:?}");
        let fi = &list[0];
        assert_eq!((fi.kind, fi.subject.as_str()), (FindingKind::RouteFlap, "10.77.0.0/16"));
        assert_eq!(fi.severity, Severity::Warning);
        assert_eq!(fi.runbook, "route-flap");
        assert_eq!(fi.evidence["changes_in_window"], Evidence::Number(5.0));
        assert_eq!(fi.evidence["next_hops"], Evidence::Text("via 10.76.0.2 dev #7".into()));
        let Evidence::Text(newest) = &fi.evidence["change_01"] else {
            panic!("text")
        };
        assert!(newest.ends_with("del via 10.76.0.2 dev #7 proto boot"), "{newest}");
        let Evidence::Text(rel) = &fi.evidence["related_events"] else {
            panic!("text")
        };
        assert!(
            rel.contains("neighbour 10.76.0.2 dev #7 failed") && !rel.contains("other0"),
            "{rel}"
        );
        let text = m.render();
        assert!(
            text.contains("graydar_route_changes_total{family=\"ipv4\",type=\"route\"} 5"),
            "{text}"
        );
        assert!(text.contains("graydar_route_changes_total{family=\"link\",type=\"link\"} 1"));
        assert!(text.contains("graydar_route_changes_total{family=\"ipv4\",type=\"neigh\"} 1"));
        assert!(text.contains("graydar_route_flapping_prefixes 1"));
        assert!(
            text.contains(
                "graydar_finding_firing{kind=\"route_flap\",severity=\"warning\",subject=\"10.77.0.0/16\"} 1"
            )
        );
        // Quiet for resolve_after: resolved.
        s.tick(Duration::from_secs(12 + 119), t0);
        assert_eq!(f.lock().expect("lock").list(t0)[0].state, FindingState::Firing);
        s.tick(Duration::from_secs(12 + 120), t0);
        assert_eq!(f.lock().expect("lock").list(t0)[0].state, FindingState::Resolved);
        assert!(m.render().contains("graydar_route_flapping_prefixes 0"));
    }

    #[test]
    fn subjects_name_the_table_unless_main() {
        let k = RouteKey {
            prefix: "10.1.0.0/16".parse().expect("prefix"),
            table: 100,
        };
        assert_eq!(k.to_string(), "10.1.0.0/16 table 100");
        let k = RouteKey { table: 254, ..k };
        assert_eq!(k.to_string(), "10.1.0.0/16");
        assert!(timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)).starts_with("1970-01-01T00:00:01.5"));
    }
}
