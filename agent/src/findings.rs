//! This host's findings: firing ones and recently resolved ones.
//!
//! Detectors report transitions; the store keeps one [`Finding`] per
//! (kind, subject) with a stable id, so the same failure seen again updates
//! the same finding instead of creating a new one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use graydar_common::api::{
    Evidence, Finding, FindingKind, FindingState, FindingTransition, Severity, Timestamp, TransitionKind, finding_id,
};

use crate::detect::Transition;
use crate::metrics::Metrics;

pub struct FindingStore {
    host: String,
    /// Label sets of graydar_finding_firing currently exported.
    exported: std::collections::HashSet<(FindingKind, String, Severity)>,
    retention: Duration,
    findings: HashMap<(FindingKind, String), Entry>,
    /// Transitions not yet delivered to the controller (see [`TransitionLog`]).
    log: TransitionLog,
}

/// Bounded, ordered log of finding transitions for the controller reporter.
/// Disabled (capacity 0) unless a controller is configured. When full, the
/// oldest transition is dropped and counted: the newer ones carry the
/// finding's latest state.
#[derive(Default)]
struct TransitionLog {
    capacity: usize,
    next_seq: u64,
    entries: VecDeque<(u64, FindingTransition)>,
    dropped: u64,
}

struct Entry {
    finding: Finding,
    resolved_at: Option<SystemTime>,
}

/// What a detector says about one subject at one evaluation.
#[derive(Debug)]
pub struct Report {
    pub kind: FindingKind,
    pub subject: String,
    pub severity: Severity,
    pub summary: String,
    pub evidence: BTreeMap<String, Evidence>,
}

impl FindingStore {
    pub fn new(host: impl Into<String>, retention: Duration) -> Self {
        FindingStore {
            host: host.into(),
            exported: Default::default(),
            retention,
            findings: HashMap::new(),
            log: TransitionLog::default(),
        }
    }

    /// Starts logging transitions for the reporter, keeping at most `capacity`.
    pub fn enable_transition_log(&mut self, capacity: usize) {
        self.log.capacity = capacity.max(1);
    }

    fn log_transition(&mut self, transition: TransitionKind, at: Timestamp, finding: Finding) {
        let log = &mut self.log;
        if log.capacity == 0 {
            return;
        }
        while log.entries.len() >= log.capacity {
            log.entries.pop_front();
            log.dropped += 1;
        }
        log.next_seq += 1;
        log.entries.push_back((
            log.next_seq,
            FindingTransition {
                transition,
                at,
                finding,
            },
        ));
    }

    /// Up to `max` undelivered transitions, oldest first, with their sequence numbers.
    pub fn pending_transitions(&self, max: usize) -> Vec<(u64, FindingTransition)> {
        self.log.entries.iter().take(max).cloned().collect()
    }

    /// Forgets the transitions up to and including `seq` (delivered).
    pub fn ack_transitions(&mut self, seq: u64) {
        while self.log.entries.front().is_some_and(|(s, _)| *s <= seq) {
            self.log.entries.pop_front();
        }
    }

    /// Transitions dropped so far because the log was full.
    pub fn transitions_dropped(&self) -> u64 {
        self.log.dropped
    }

    /// Transitions waiting for delivery.
    pub fn transitions_buffered(&self) -> usize {
        self.log.entries.len()
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Applies what a detector decided about `report`'s subject: a fired or
    /// changed finding takes the transition's severity and the report's
    /// summary and evidence; a resolved one resolves; without a transition a
    /// firing finding takes the report's evidence (its summary and severity
    /// stay), and a subject that is not firing is left alone.
    pub fn apply(&mut self, transition: Option<Transition>, report: Report, now: SystemTime) {
        match transition {
            Some(Transition::Fired(severity) | Transition::SeverityChanged(severity)) => {
                self.firing(Report { severity, ..report }, now)
            }
            Some(Transition::Resolved) => self.resolve(report.kind, &report.subject, now),
            None => self.refresh(report.kind, &report.subject, report.evidence, now),
        }
    }

    /// The finding starts (or keeps) firing, with fresh severity and evidence.
    /// Signals whose detector restates a firing finding at every evaluation
    /// (fresh summary and severity, not only evidence) call this directly.
    pub fn firing(&mut self, r: Report, now: SystemTime) {
        let ts = Timestamp::from(now);
        let key = (r.kind, r.subject.clone());
        match self.findings.get_mut(&key) {
            Some(e) if e.finding.state == FindingState::Firing => {
                let changed = e.finding.severity != r.severity;
                e.finding.severity = r.severity;
                e.finding.summary = r.summary;
                e.finding.evidence = r.evidence;
                e.finding.last_seen = ts;
                if changed {
                    let f = e.finding.clone();
                    self.log_transition(TransitionKind::SeverityChanged, ts, f);
                }
            }
            _ => {
                tracing::warn!(kind = %r.kind, subject = %r.subject, severity = %r.severity, "finding firing: {}", r.summary);
                let finding = Finding {
                    id: finding_id(&self.host, r.kind, &r.subject),
                    host: self.host.clone(),
                    kind: r.kind,
                    subject: r.subject,
                    severity: r.severity,
                    state: FindingState::Firing,
                    since: ts,
                    last_seen: ts,
                    resolved_at: None,
                    summary: r.summary,
                    evidence: r.evidence,
                    runbook: r.kind.runbook(),
                };
                self.log_transition(TransitionKind::Fired, finding.since, finding.clone());
                self.findings.insert(
                    key,
                    Entry {
                        finding,
                        resolved_at: None,
                    },
                );
            }
        }
    }

    /// Refreshes a firing finding's evidence without changing its state.
    pub fn refresh(&mut self, kind: FindingKind, subject: &str, evidence: BTreeMap<String, Evidence>, now: SystemTime) {
        if let Some(e) = self.findings.get_mut(&(kind, subject.to_owned()))
            && e.finding.state == FindingState::Firing
        {
            e.finding.evidence = evidence;
            e.finding.last_seen = Timestamp::from(now);
        }
    }

    pub fn resolve(&mut self, kind: FindingKind, subject: &str, now: SystemTime) {
        if let Some(e) = self.findings.get_mut(&(kind, subject.to_owned()))
            && e.finding.state == FindingState::Firing
        {
            tracing::info!(kind = %kind, subject, "finding resolved");
            let ts = Timestamp::from(now);
            e.finding.state = FindingState::Resolved;
            e.finding.last_seen = ts;
            e.finding.resolved_at = Some(ts);
            e.resolved_at = Some(now);
            let f = e.finding.clone();
            self.log_transition(TransitionKind::Resolved, ts, f);
        }
    }

    pub fn is_firing(&self, kind: FindingKind, subject: &str) -> bool {
        self.findings
            .get(&(kind, subject.to_owned()))
            .is_some_and(|e| e.finding.state == FindingState::Firing)
    }

    /// Firing findings first, then resolved ones, newest first; resolved
    /// findings older than the retention are forgotten.
    pub fn list(&mut self, now: SystemTime) -> Vec<Finding> {
        let retention = self.retention;
        self.findings.retain(|_, e| match e.resolved_at {
            Some(t) => now.duration_since(t).map(|age| age <= retention).unwrap_or(true),
            None => true,
        });
        let mut out: Vec<Finding> = self.findings.values().map(|e| e.finding.clone()).collect();
        out.sort_by(|a, b| {
            (a.state != FindingState::Firing)
                .cmp(&(b.state != FindingState::Firing))
                .then_with(|| b.since.cmp(&a.since))
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// Sets graydar_findings_active for every kind and severity, and one
    /// graydar_finding_firing series per firing finding (removed once it
    /// resolves or changes severity).
    pub fn export(&mut self, m: &Metrics) {
        let firing: std::collections::HashSet<(FindingKind, String, Severity)> = self
            .findings
            .values()
            .filter(|e| e.finding.state == FindingState::Firing)
            .map(|e| (e.finding.kind, e.finding.subject.clone(), e.finding.severity))
            .collect();
        for (kind, subject, sev) in self.exported.difference(&firing) {
            let _ = m
                .finding_firing
                .remove_label_values(&[kind.as_str(), subject, sev.as_str()]);
        }
        for (kind, subject, sev) in &firing {
            m.finding_firing
                .with_label_values(&[kind.as_str(), subject, sev.as_str()])
                .set(1);
        }
        self.exported = firing;
        for kind in FindingKind::ALL {
            for sev in [Severity::Warning, Severity::Critical] {
                let n = self
                    .findings
                    .values()
                    .filter(|e| {
                        e.finding.kind == kind && e.finding.severity == sev && e.finding.state == FindingState::Firing
                    })
                    .count();
                m.findings_active
                    .with_label_values(&[kind.as_str(), sev.as_str()])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sev: Severity) -> Report {
        Report {
            kind: FindingKind::NicDrops,
            subject: "eth0/rx".into(),
            severity: sev,
            summary: "2.0% of packets dropped".into(),
            evidence: BTreeMap::from([("short_ratio".to_owned(), Evidence::Number(0.02))]),
        }
    }

    #[test]
    fn same_failure_keeps_its_id_and_since() {
        let mut s = FindingStore::new("node1", Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        s.firing(report(Severity::Warning), t0);
        s.firing(report(Severity::Critical), t0 + Duration::from_secs(5));
        let l = s.list(t0 + Duration::from_secs(5));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].severity, Severity::Critical);
        assert_eq!(l[0].since, Timestamp::from(t0));
        assert_eq!(l[0].since.to_string(), "1970-01-12T13:46:40Z");
        assert_eq!(l[0].id, finding_id("node1", FindingKind::NicDrops, "eth0/rx"));
        assert_eq!(l[0].runbook, "nic-drops");
    }

    #[test]
    fn apply_maps_each_transition_onto_the_finding() {
        let mut s = FindingStore::new("node1", Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        s.apply(None, report(Severity::Warning), t0);
        assert!(s.list(t0).is_empty(), "no transition, not firing: nothing");
        s.apply(
            Some(Transition::Fired(Severity::Critical)),
            report(Severity::Warning),
            t0,
        );
        assert_eq!(
            s.list(t0)[0].severity,
            Severity::Critical,
            "the transition's severity wins"
        );
        let mut quiet = report(Severity::Warning);
        quiet.summary = "new summary".into();
        quiet.evidence.insert("short_ratio".into(), Evidence::Number(0.5));
        s.apply(None, quiet, t0 + Duration::from_secs(1));
        let f = &s.list(t0)[0];
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.summary, "2.0% of packets dropped", "no transition keeps the summary");
        assert_eq!(f.evidence["short_ratio"], Evidence::Number(0.5));
        s.apply(
            Some(Transition::SeverityChanged(Severity::Warning)),
            report(Severity::Critical),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(s.list(t0)[0].severity, Severity::Warning);
        s.apply(
            Some(Transition::Resolved),
            report(Severity::Warning),
            t0 + Duration::from_secs(3),
        );
        assert_eq!(s.list(t0 + Duration::from_secs(3))[0].state, FindingState::Resolved);
    }

    #[test]
    fn resolved_findings_are_kept_for_the_retention_only() {
        let mut s = FindingStore::new("node1", Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        s.firing(report(Severity::Warning), t0);
        s.resolve(FindingKind::NicDrops, "eth0/rx", t0 + Duration::from_secs(10));
        let l = s.list(t0 + Duration::from_secs(30));
        assert_eq!(l[0].state, FindingState::Resolved);
        assert!(l[0].resolved_at.is_some());
        assert!(s.list(t0 + Duration::from_secs(100)).is_empty());
        // firing again after resolution starts a new episode with a new `since`
        s.firing(report(Severity::Warning), t0 + Duration::from_secs(200));
        assert_eq!(
            s.list(t0 + Duration::from_secs(200))[0].since,
            Timestamp::from(t0 + Duration::from_secs(200))
        );
    }

    #[test]
    fn transitions_are_logged_in_order_and_the_oldest_dropped_when_full() {
        let mut s = FindingStore::new("node1", Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        s.firing(report(Severity::Warning), t0);
        assert_eq!(s.transitions_buffered(), 0, "no log unless enabled");
        s.enable_transition_log(3);
        s.resolve(FindingKind::NicDrops, "eth0/rx", t0 + Duration::from_secs(1));
        s.firing(report(Severity::Warning), t0 + Duration::from_secs(2));
        s.firing(report(Severity::Warning), t0 + Duration::from_secs(3)); // refresh: no transition
        s.firing(report(Severity::Critical), t0 + Duration::from_secs(4));
        let p = s.pending_transitions(10);
        let kinds: Vec<TransitionKind> = p.iter().map(|(_, t)| t.transition).collect();
        assert_eq!(
            kinds,
            [
                TransitionKind::Resolved,
                TransitionKind::Fired,
                TransitionKind::SeverityChanged
            ]
        );
        assert_eq!(p[1].1.at, Timestamp::from(t0 + Duration::from_secs(2)));
        assert_eq!(p[2].1.finding.severity, Severity::Critical);
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0));
        // Full: the oldest goes and is counted.
        s.resolve(FindingKind::NicDrops, "eth0/rx", t0 + Duration::from_secs(5));
        assert_eq!(s.transitions_dropped(), 1);
        let p2 = s.pending_transitions(2);
        assert_eq!(p2[0].1.transition, TransitionKind::Fired);
        s.ack_transitions(p2[1].0);
        let rest = s.pending_transitions(10);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1.transition, TransitionKind::Resolved);
        s.ack_transitions(u64::MAX);
        assert_eq!(s.transitions_buffered(), 0);
    }

    #[test]
    fn export_counts_firing_by_kind_and_severity() {
        let m = Metrics::new();
        let mut s = FindingStore::new("n", Duration::from_secs(60));
        s.firing(report(Severity::Warning), SystemTime::now());
        s.export(&m);
        assert_eq!(m.findings_active.with_label_values(&["nic_drops", "warning"]).get(), 1);
        assert_eq!(
            m.findings_active.with_label_values(&["kernel_drops", "critical"]).get(),
            0
        );
        s.resolve(FindingKind::NicDrops, "eth0/rx", SystemTime::now());
        s.export(&m);
        assert_eq!(m.findings_active.with_label_values(&["nic_drops", "warning"]).get(), 0);
        assert!(
            !m.render().contains("graydar_finding_firing{"),
            "resolved findings leave no series"
        );
    }
}
