//! Matching findings to a run's expectations and abort rules. Pure: the
//! controller's runner feeds it the findings it reads and the groups it
//! resolved; unit-tested here.

use std::collections::BTreeMap;

use super::{AbortFindings, Detect, GameDaySpec, HostScope, Tolerate};
use crate::api::Finding;

/// A run's groups, resolved: group name → hostnames.
pub type Groups = BTreeMap<String, Vec<String>>;

fn in_group(groups: &Groups, group: &str, host: &str) -> bool {
    groups.get(group).is_some_and(|g| g.iter().any(|h| h == host))
}

/// The peer a pair finding is about: its subject is `peer NAME` (the
/// mesh's peer name, which is the peer agent's hostname).
pub fn peer_of(subject: &str) -> &str {
    subject.strip_prefix("peer ").unwrap_or(subject)
}

/// Whether `f` is what `d` expects of `host`: of one of its kinds, on
/// `host` (a host of `d.on`), its subject a peer of `d.peer` when given
/// and matching `d.subject`'s glob when given.
pub fn detect_matches(d: &Detect, groups: &Groups, host: &str, f: &Finding) -> bool {
    f.host == host
        && in_group(groups, &d.on, host)
        && d.kind.names().iter().any(|k| k == f.kind.as_str())
        && d.peer.as_ref().is_none_or(|p| in_group(groups, p, peer_of(&f.subject)))
        && d.subject
            .as_ref()
            .is_none_or(|g| glob::Pattern::new(g).is_ok_and(|p| p.matches(&f.subject)))
}

/// Whether `f` is expected by any of `steps`' expectations (on any host
/// of the expectation's group).
pub fn expected_by<'a>(
    spec: &GameDaySpec,
    steps: impl IntoIterator<Item = &'a str>,
    groups: &Groups,
    f: &Finding,
) -> bool {
    steps.into_iter().any(|id| {
        spec.steps
            .iter()
            .filter(|s| s.id == id)
            .filter_map(|s| s.expect.as_ref())
            .any(|e| {
                e.detect.iter().any(|d| detect_matches(d, groups, &f.host, f))
                    || e.tolerate.iter().any(|t| tolerate_matches(t, groups, f))
            })
    })
}

/// Whether `f` is a finding `t` tolerates: of one of its kinds, on a host
/// of `t.on`, its subject matching `t.subject`'s glob when given.
pub fn tolerate_matches(t: &Tolerate, groups: &Groups, f: &Finding) -> bool {
    in_group(groups, &t.on, &f.host)
        && t.kind.names().iter().any(|k| k == f.kind.as_str())
        && t.subject
            .as_ref()
            .is_none_or(|g| glob::Pattern::new(g).is_ok_and(|p| p.matches(&f.subject)))
}

/// Whether `f` trips the abort rule `a` (before asking whether an active
/// step expects it): of one of its kinds (any when empty), at least its
/// severity, on a host in scope (`targets`: the run's resolved agents).
pub fn abort_matches(a: &AbortFindings, groups: &Groups, f: &Finding) -> bool {
    (a.kinds.is_empty() || a.kinds.iter().any(|k| k == f.kind.as_str()))
        && f.severity >= a.min_severity
        && match a.hosts {
            HostScope::Any => true,
            HostScope::Targets => groups.values().flatten().any(|h| *h == f.host),
        }
}

/// Every host of the run's groups, once.
pub fn target_hosts(groups: &Groups) -> Vec<String> {
    let mut v: Vec<String> = groups.values().flatten().cloned().collect();
    v.sort();
    v.dedup();
    v
}

/// Whether any expectation of the spec matches `f` (an expected finding is
/// never "unexpected", whichever step expected it).
pub fn expected_anywhere(spec: &GameDaySpec, groups: &Groups, f: &Finding) -> bool {
    expected_by(spec, spec.steps.iter().map(|s| s.id.as_str()), groups, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FindingKind, FindingState, Severity};
    use crate::gameday::Kinds;
    use crate::timestamp::Timestamp;
    use std::time::Duration;

    fn finding(host: &str, kind: FindingKind, subject: &str, severity: Severity) -> Finding {
        Finding {
            id: "f".into(),
            host: host.into(),
            kind,
            subject: subject.into(),
            severity,
            state: FindingState::Firing,
            since: Timestamp::from_unix_ms(1),
            last_seen: Timestamp::from_unix_ms(1),
            resolved_at: None,
            summary: String::new(),
            evidence: BTreeMap::new(),
            runbook: String::new(),
        }
    }

    fn groups() -> Groups {
        BTreeMap::from([
            ("a".to_owned(), vec!["h1".to_owned()]),
            ("b".to_owned(), vec!["h2".to_owned(), "h3".to_owned()]),
        ])
    }

    fn detect(kind: Kinds, on: &str, peer: Option<&str>, subject: Option<&str>) -> Detect {
        Detect {
            kind,
            on: on.into(),
            peer: peer.map(Into::into),
            subject: subject.map(Into::into),
            within: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_detection_needs_the_kind_the_host_of_the_group_the_peer_and_the_subject() {
        let g = groups();
        let d = detect(Kinds::One("asymmetric_connectivity".into()), "a", Some("b"), None);
        let f = finding("h1", FindingKind::AsymmetricConnectivity, "peer h2", Severity::Critical);
        assert!(detect_matches(&d, &g, "h1", &f));
        // Another host of no group, another kind, a peer outside the group.
        assert!(!detect_matches(&d, &g, "h2", &f));
        let other_kind = finding("h1", FindingKind::OneWayLoss, "peer h2", Severity::Critical);
        assert!(!detect_matches(&d, &g, "h1", &other_kind));
        let other_peer = finding("h1", FindingKind::AsymmetricConnectivity, "peer h9", Severity::Critical);
        assert!(!detect_matches(&d, &g, "h1", &other_peer));
        // A list of kinds: any counts; a glob on the subject.
        let d = detect(
            Kinds::Many(vec!["nic_drops".into(), "kernel_drops".into()]),
            "b",
            None,
            Some("eth*"),
        );
        assert!(detect_matches(
            &d,
            &g,
            "h3",
            &finding("h3", FindingKind::KernelDrops, "eth0", Severity::Warning)
        ));
        assert!(!detect_matches(
            &d,
            &g,
            "h3",
            &finding("h3", FindingKind::KernelDrops, "lo", Severity::Warning)
        ));
        // The finding must be the host's own.
        assert!(!detect_matches(
            &d,
            &g,
            "h2",
            &finding("h3", FindingKind::KernelDrops, "eth0", Severity::Warning)
        ));
    }

    #[test]
    fn abort_rules_filter_by_kind_severity_and_host_scope() {
        let g = groups();
        let mut a = AbortFindings::default();
        let warn = finding("h9", FindingKind::NicDrops, "eth0", Severity::Warning);
        let crit = finding("h9", FindingKind::NicDrops, "eth0", Severity::Critical);
        assert!(!abort_matches(&a, &g, &warn), "default: critical only");
        assert!(abort_matches(&a, &g, &crit), "default: any host");
        a.hosts = HostScope::Targets;
        assert!(!abort_matches(&a, &g, &crit), "h9 is no target");
        assert!(abort_matches(
            &a,
            &g,
            &finding("h2", FindingKind::NicDrops, "eth0", Severity::Critical)
        ));
        a.kinds = vec!["fsync_latency".into()];
        assert!(!abort_matches(
            &a,
            &g,
            &finding("h2", FindingKind::NicDrops, "eth0", Severity::Critical)
        ));
        a.min_severity = Severity::Warning;
        a.kinds.clear();
        assert!(abort_matches(
            &a,
            &g,
            &finding("h2", FindingKind::NicDrops, "eth0", Severity::Warning)
        ));
    }

    /// A tolerated finding is expected (never unexpected, never an
    /// abort) on the hosts of its group and subjects of its glob only.
    #[test]
    fn tolerated_findings_count_as_expected_on_their_group_only() {
        let spec = GameDaySpec::from_yaml(
            r#"
name: t
hypothesis: h
targets:
  a: {agents: [h1]}
  b: {agents: [h2, h3]}
safety: {max_duration: 5m}
steps:
  - id: loss
    fault:
      target: a
      spec: {kind: netem, interface: eth0, netem: {delay_ms: 5}}
      duration: 1m
    expect:
      detect: [{kind: one_way_loss, on: a, within: 30s}]
      tolerate: [{kind: [qdisc_drops, kernel_drops], on: a, subject: "eth*"}]
"#,
        )
        .expect("spec");
        let g = groups();
        let q = |host: &str, subject: &str| finding(host, FindingKind::QdiscDrops, subject, Severity::Critical);
        assert!(expected_anywhere(&spec, &g, &q("h1", "eth0")));
        assert!(!expected_anywhere(&spec, &g, &q("h2", "eth0")), "not on b");
        assert!(!expected_anywhere(&spec, &g, &q("h1", "lo")), "not that subject");
        assert!(!expected_anywhere(
            &spec,
            &g,
            &finding("h1", FindingKind::NicDrops, "eth0", Severity::Critical)
        ));
    }

    #[test]
    fn target_hosts_are_each_host_once() {
        let mut g = groups();
        g.insert("c".into(), vec!["h1".into(), "h3".into()]);
        assert_eq!(target_hosts(&g), ["h1", "h2", "h3"]);
    }
}
