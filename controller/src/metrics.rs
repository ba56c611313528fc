//! Every metric the controller exports (`graydar_controller_*`).

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub agents: IntGaugeVec,
    pub transitions_ingested: IntCounterVec,
    pub heartbeats: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Faults by status (running, dry_run, ended, failed).
    pub faults: IntGaugeVec,
    /// (fault, agent) assignments of faults not ended, by the agent's state.
    pub fault_assignments: IntGaugeVec,
    /// 1 while the safety lever is engaged.
    pub safety_lever: IntGauge,
    /// 1 per (game day, step, host) with something in effect (set at scrape).
    pub gameday_step_active: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let agents = IntGaugeVec::new(
            Opts::new(
                "graydar_controller_agents",
                "Registered agents by state (healthy, stale, lost).",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let transitions_ingested = IntCounterVec::new(
            Opts::new(
                "graydar_controller_transitions_ingested_total",
                "Finding transitions received from agents: accepted (new) or duplicate (re-delivered).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let heartbeats = IntCounterVec::new(
            Opts::new("graydar_controller_heartbeats_total", "Agent heartbeats by result."),
            &["result"],
        )
        .expect("static metric definition");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "graydar_controller_http_request_duration_seconds",
                "HTTP request latency by route template, method and status.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route", "method", "status"],
        )
        .expect("static metric definition");
        let faults = IntGaugeVec::new(
            Opts::new(
                "graydar_controller_faults",
                "Faults known to the controller by status (running, dry_run, ended, failed: ended because every target agent failed it).",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let fault_assignments = IntGaugeVec::new(
            Opts::new(
                "graydar_controller_fault_assignments",
                "Agents of faults not ended, by the state the agent reported (pending, active, reverted, failed, described).",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let safety_lever = IntGauge::new(
            "graydar_controller_safety_lever_engaged",
            "1 while the safety lever is engaged (every fault reverted, new faults refused), else 0.",
        )
        .expect("static metric definition");
        let gameday_step_active = IntGaugeVec::new(
            Opts::new(
                "graydar_controller_gameday_step_active",
                "1 while a game-day step has its fault (or wait or gate) in effect, per game day, step and host \
                 (host empty for waits and gates): Grafana annotations.",
            ),
            &["gameday", "step", "host"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(agents.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(gameday_step_active.clone()),
            Box::new(safety_lever.clone()),
            Box::new(transitions_ingested.clone()),
            Box::new(heartbeats.clone()),
            Box::new(request_duration.clone()),
            Box::new(faults.clone()),
            Box::new(fault_assignments.clone()),
        ] {
            r.register(c).expect("metric registered once");
        }
        Metrics {
            registry: r,
            agents,
            transitions_ingested,
            heartbeats,
            request_duration,
            faults,
            fault_assignments,
            safety_lever,
            gameday_step_active,
        }
    }

    /// A controller built around `services`: these metrics and the ones the
    /// services keep themselves (game days' time to detect and run counts).
    pub fn for_services(services: &crate::services::Services) -> Metrics {
        let m = Metrics::new();
        for c in services.gamedays.collectors() {
            m.registry.register(c).expect("metric registered once");
        }
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
