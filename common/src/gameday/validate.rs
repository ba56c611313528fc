//! Everything about a game-day spec that can be checked without a kernel
//! or a controller. Every problem is reported (not only the first), each
//! naming its field path: `steps[2].after[0]: unknown step "warmup"`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use super::schedule::{parse_cron, parse_time_zone};
use super::{Action, Detect, Expect, GameDaySpec, LoadSpec, Pick, Safety, SpecError, Step, dag};
use crate::api::FindingKind;

/// The controller's bounds on specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest `safety.max_duration` accepted.
    pub max_run_duration: Duration,
    /// Longest fault step (the controller's `faults.max_duration`).
    pub max_fault_duration: Duration,
    /// Most steps in one spec.
    pub max_steps: usize,
    /// Longest `safety.lease` (the controller's `faults.lease`: a game day
    /// may shorten its faults' lease, never lengthen it).
    pub max_lease: Duration,
}

impl Default for Limits {
    /// A day per run, the controller's default fault cap (1h), 200 steps.
    fn default() -> Self {
        Limits {
            max_run_duration: Duration::from_secs(24 * 3600),
            max_fault_duration: Duration::from_secs(3600),
            max_steps: 200,
            max_lease: LEASE_MAX,
        }
    }
}

/// The controller's lease bounds (`faults.lease`).
const LEASE_MIN: Duration = Duration::from_secs(3);
const LEASE_MAX: Duration = Duration::from_secs(600);
const MAX_HISTORY: u32 = 1000;
const MAX_STARTING_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

fn d(v: Duration) -> String {
    humantime::format_duration(v).to_string()
}

fn known_kinds() -> String {
    FindingKind::ALL.map(FindingKind::as_str).join(", ")
}

/// 1 to 63 ASCII letters, digits, `-`, `_` (and `.` where `dots`).
fn is_name(s: &str, dots: bool) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'))
}

struct Errors(Vec<SpecError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError::new(path, message));
    }

    /// A duration that must be > 0 and at most `cap` (named by `cap_name`).
    fn duration(&mut self, path: &str, v: Duration, caps: &[(Duration, &str)]) {
        if v.is_zero() {
            self.push(path, "must be > 0");
            return;
        }
        for (cap, name) in caps {
            if v > *cap {
                self.push(path, format!("{} is above the cap of {} ({name})", d(v), d(*cap)));
                return;
            }
        }
    }

    fn kinds(&mut self, path: &str, names: &[String]) -> Vec<FindingKind> {
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match FindingKind::from_name(n) {
                Some(k) => out.push(k),
                None => self.push(
                    format!("{path}[{i}]"),
                    format!("unknown finding kind {n:?} (known: {})", known_kinds()),
                ),
            }
        }
        out
    }

    fn promql(&mut self, path: &str, expr: &str) {
        if expr.trim().is_empty() {
            self.push(path, "empty PromQL expression");
        }
    }
}

impl GameDaySpec {
    /// Every problem of the spec, or `Ok`.
    pub fn validate(&self, limits: &Limits) -> Result<(), Vec<SpecError>> {
        let mut e = Errors(Vec::new());
        if !is_name(&self.name, true) {
            e.push(
                "name",
                format!("{:?} must be 1 to 63 letters, digits, '-', '_' or '.'", self.name),
            );
        }
        if self.hypothesis.trim().is_empty() {
            e.push(
                "hypothesis",
                "empty: say what the game day should show (kept in every run and report)",
            );
        }
        self.check_safety(&mut e, limits);
        self.check_targets(&mut e);
        self.check_preflight(&mut e);
        self.check_steps(&mut e, limits);
        self.check_abort(&mut e);
        self.check_schedule(&mut e);
        if e.0.is_empty() { Ok(()) } else { Err(e.0) }
    }

    fn check_safety(&self, e: &mut Errors, limits: &Limits) {
        let Safety {
            max_targets,
            max_share,
            max_duration,
            lease,
        } = &self.safety;
        e.duration(
            "safety.max_duration",
            *max_duration,
            &[(limits.max_run_duration, "the controller's longest run")],
        );
        if *max_targets == Some(0) {
            e.push("safety.max_targets", "must be at least 1");
        }
        if let Some(s) = max_share
            && !(s.is_finite() && *s > 0.0 && *s <= 1.0)
        {
            e.push("safety.max_share", format!("must be in (0, 1], got {s}"));
        }
        let lease_max = limits.max_lease.clamp(LEASE_MIN, LEASE_MAX);
        if let Some(l) = lease
            && (*l < LEASE_MIN || *l > lease_max)
        {
            e.push(
                "safety.lease",
                format!(
                    "must be between {} and {} (the controller's faults.lease), got {}",
                    d(LEASE_MIN),
                    d(lease_max),
                    d(*l)
                ),
            );
        }
    }

    fn check_targets(&self, e: &mut Errors) {
        if self.targets.is_empty() {
            e.push("targets", "empty: a game day needs at least one target group");
        }
        for (name, g) in &self.targets {
            let p = format!("targets.{name}");
            if !is_name(name, false) {
                e.push(&p, "a group name must be 1 to 63 letters, digits, '-' or '_'");
            }
            match (g.agents.is_empty(), g.selector.is_empty()) {
                (true, true) => e.push(&p, "empty group: give agents: [hostnames] or selector: {label: value}"),
                (false, false) => e.push(&p, "give agents or selector, not both"),
                _ => {}
            }
            let mut seen = BTreeSet::new();
            for (i, a) in g.agents.iter().enumerate() {
                if a.is_empty() || a.len() > 253 || a.contains(|c: char| c.is_whitespace() || c == '/') {
                    e.push(format!("{p}.agents[{i}]"), format!("{a:?} is not a hostname"));
                } else if !seen.insert(a) {
                    e.push(format!("{p}.agents[{i}]"), format!("{a:?} is listed twice"));
                }
            }
            for k in g.selector.keys() {
                if k.trim().is_empty() {
                    e.push(format!("{p}.selector"), "empty label name");
                }
            }
            match g.pick {
                Pick::All => {}
                Pick::Count(0) => e.push(format!("{p}.pick.count"), "must be at least 1"),
                Pick::Count(n) => {
                    if !g.agents.is_empty() && n as usize > g.agents.len() {
                        e.push(
                            format!("{p}.pick.count"),
                            format!("{n} but the group lists only {} agents", g.agents.len()),
                        );
                    }
                }
                Pick::Percent(v) => {
                    if !(v.is_finite() && v > 0.0 && v <= 100.0) {
                        e.push(format!("{p}.pick.percent"), format!("must be in (0, 100], got {v}"));
                    }
                }
            }
            if let Some(max) = self.safety.max_targets
                && max > 0
            {
                let picked = match g.pick {
                    Pick::All => g.agents.len(),
                    Pick::Count(n) => n as usize,
                    Pick::Percent(v) if v.is_finite() && v > 0.0 => {
                        (g.agents.len() as f64 * v.min(100.0) / 100.0).ceil() as usize
                    }
                    Pick::Percent(_) => 0,
                };
                if picked > max as usize {
                    e.push(&p, format!("picks {picked} agents, above safety.max_targets ({max})"));
                }
            }
        }
    }

    fn check_preflight(&self, e: &mut Errors) {
        e.kinds("preflight.no_firing.kinds", &self.preflight.no_firing.kinds);
        for (i, c) in self.preflight.promql.iter().enumerate() {
            e.promql(&format!("preflight.promql[{i}].expr"), &c.expr);
            if !c.value.is_finite() {
                e.push(
                    format!("preflight.promql[{i}].value"),
                    format!("must be a finite number, got {}", c.value),
                );
            }
        }
    }

    fn check_abort(&self, e: &mut Errors) {
        e.kinds("abort.findings.kinds", &self.abort.findings.kinds);
        for (i, a) in self.abort.promql.iter().enumerate() {
            e.promql(&format!("abort.promql[{i}].expr"), &a.expr);
            if let Some(f) = a.for_
                && f > self.safety.max_duration
            {
                e.push(
                    format!("abort.promql[{i}].for"),
                    format!(
                        "{} is longer than safety.max_duration ({}): it could never fire",
                        d(f),
                        d(self.safety.max_duration)
                    ),
                );
            }
        }
    }

    fn check_schedule(&self, e: &mut Errors) {
        let Some(s) = &self.schedule else { return };
        let cron = parse_cron(&s.cron).map_err(|err| e.push("schedule.cron", err.to_string()));
        let tz = parse_time_zone(&s.time_zone).map_err(|err| e.push("schedule.time_zone", err.to_string()));
        // `0 0 30 2 *` parses and never runs. Searched from a fixed instant
        // (validation does not depend on the clock): a pattern that matches
        // nothing does so from any instant.
        if cron.is_ok() && tz.is_ok() && s.next_runs(jiff::Timestamp::UNIX_EPOCH, 1).is_err() {
            e.push("schedule.cron", format!("{:?} never runs", s.cron));
        }
        if let Some(v) = s.starting_deadline {
            e.duration(
                "schedule.starting_deadline",
                v,
                &[(MAX_STARTING_DEADLINE, "a week: a start that late is a different run")],
            );
        }
        if s.history_limit == 0 || s.history_limit > MAX_HISTORY {
            e.push(
                "schedule.history_limit",
                format!("must be between 1 and {MAX_HISTORY}, got {}", s.history_limit),
            );
        }
    }

    fn check_steps(&self, e: &mut Errors, limits: &Limits) {
        if self.steps.is_empty() {
            e.push("steps", "empty: a game day needs at least one step");
            return;
        }
        if self.steps.len() > limits.max_steps {
            e.push(
                "steps",
                format!("{} steps, at most {} allowed", self.steps.len(), limits.max_steps),
            );
        }
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            if !is_name(&s.id, false) {
                e.push(
                    format!("steps[{i}].id"),
                    format!("{:?} must be 1 to 63 letters, digits, '-' or '_'", s.id),
                );
            }
            if let Some(j) = first.get(s.id.as_str()) {
                e.push(
                    format!("steps[{i}].id"),
                    format!("duplicate step id {:?} (also steps[{j}])", s.id),
                );
            } else {
                first.insert(&s.id, i);
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for (j, a) in s.after.iter().enumerate() {
                let p = format!("steps[{i}].after[{j}]");
                if !first.contains_key(a.as_str()) {
                    e.push(p, format!("unknown step {a:?}"));
                } else if !seen.insert(a) {
                    e.push(p, format!("{a:?} is listed twice"));
                }
            }
            self.check_step(e, limits, i, s);
        }
        match dag::order(&self.steps) {
            Err(c) => e.push("steps", c.to_string()),
            Ok(order) => {
                self.check_longest_chain(e, &order, &first);
                self.check_overlapping_faults(e, &order, &first);
            }
        }
    }

    /// Two fault steps that `after` does not order may run at once; on the
    /// same group with the same [`crate::faults::FaultKey`] (one netem tree
    /// per interface and direction, one dm table, one route) the second
    /// would be refused by the agent mid-run. Groups that only overlap in
    /// membership are seen when a run resolves them.
    fn check_overlapping_faults(&self, e: &mut Errors, order: &[usize], first: &HashMap<&str, usize>) {
        // before[i]: every step that finishes before i starts.
        let mut before: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); self.steps.len()];
        for &i in order {
            let mut b = BTreeSet::new();
            for a in &self.steps[i].after {
                if let Some(&j) = first.get(a.as_str()) {
                    b.insert(j);
                    b.extend(before[j].iter().copied());
                }
            }
            before[i] = b;
        }
        let faults: Vec<(usize, &super::FaultAction)> = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.action() {
                Some(Action::Fault(f)) => Some((i, f)),
                _ => None,
            })
            .collect();
        for (n, &(i, fi)) in faults.iter().enumerate() {
            for &(j, fj) in &faults[n + 1..] {
                if fi.target == fj.target
                    && fi.spec.key() == fj.spec.key()
                    && !before[i].contains(&j)
                    && !before[j].contains(&i)
                {
                    e.push(
                        format!("steps[{j}].fault"),
                        format!(
                            "may run at the same time as steps[{i}] ({:?}) on group {:?} and act on the same {} {:?}: \
                             order them with after",
                            self.steps[i].id,
                            fi.target,
                            fi.spec.kind(),
                            fi.spec.target()
                        ),
                    );
                }
            }
        }
    }

    fn check_step(&self, e: &mut Errors, limits: &Limits, i: usize, s: &Step) {
        let p = format!("steps[{i}]");
        let actions = s.actions();
        let action = match actions.as_slice() {
            [] => {
                e.push(&p, "no action: give one of fault, wait, gate or load");
                None
            }
            [a] => Some(*a),
            several => {
                let names: Vec<&str> = several.iter().map(Action::name).collect();
                e.push(&p, format!("give exactly one action, got {}", names.join(" and ")));
                None
            }
        };
        let run_cap = (self.safety.max_duration, "safety.max_duration");
        let fault_cap = (limits.max_fault_duration, "the controller's faults.max_duration");
        let group = |e: &mut Errors, path: String, name: &str| {
            if !self.targets.contains_key(name) {
                e.push(path, format!("unknown group {name:?} (groups: {})", self.group_names()));
            }
        };
        for a in &actions {
            match a {
                Action::Fault(f) => {
                    group(e, format!("{p}.fault.target"), &f.target);
                    if let Err(err) = f.spec.validate() {
                        e.push(format!("{p}.fault.spec"), err.0);
                    }
                    e.duration(&format!("{p}.fault.duration"), f.duration, &[run_cap, fault_cap]);
                }
                Action::Wait(w) => e.duration(&format!("{p}.wait.duration"), w.duration, &[run_cap]),
                Action::Gate(g) => {
                    if let Some(t) = g.timeout {
                        e.duration(&format!("{p}.gate.timeout"), t, &[run_cap]);
                    }
                }
                Action::Load(l) => {
                    group(e, format!("{p}.load.target"), &l.target);
                    if let Some(to) = l.spec.to() {
                        group(e, format!("{p}.load.spec.to"), to);
                    }
                    if let Err(msg) = l.spec.validate() {
                        e.push(format!("{p}.load.spec"), msg);
                    }
                    e.duration(&format!("{p}.load.duration"), l.duration, &[run_cap]);
                }
            }
        }
        if s.optional && !matches!(action, Some(Action::Fault(_))) {
            e.push(
                format!("{p}.optional"),
                format!(
                    "only a fault step can be optional, this is a {} step",
                    action.map_or("empty", |a| a.name())
                ),
            );
        }
        if let Some(x) = &s.expect {
            match action {
                Some(Action::Fault(f)) => self.check_expect(e, &format!("{p}.expect"), x, f.duration),
                // A load can be the failure itself (a burst is incast).
                Some(Action::Load(l)) => self.check_expect(e, &format!("{p}.expect"), x, l.duration),
                Some(other) => e.push(
                    format!("{p}.expect"),
                    format!(
                        "only a fault or a load step has expectations, this is a {} step",
                        other.name()
                    ),
                ),
                None => {}
            }
        }
    }

    fn check_expect(&self, e: &mut Errors, p: &str, x: &Expect, fault: Duration) {
        if x.detect.is_empty() && x.alerts.is_empty() {
            e.push(p, "empty: give detect or alerts (or leave expect out)");
        }
        // A deadline past the fault's revert could only be met by a
        // finding that outlives its cause: refused.
        let within_cap = (fault, "the fault's duration: it is reverted before");
        if fault.is_zero() {
            // Already refused (steps[i].fault.duration); every deadline
            // would repeat it.
            return;
        }
        for (j, det) in x.detect.iter().enumerate() {
            self.check_detect(e, &format!("{p}.detect[{j}]"), det, within_cap);
        }
        for (j, t) in x.tolerate.iter().enumerate() {
            // The same checks as a detection's kind, group and subject.
            let as_detect = Detect {
                kind: t.kind.clone(),
                on: t.on.clone(),
                peer: None,
                subject: t.subject.clone(),
                within: fault,
            };
            self.check_detect(e, &format!("{p}.tolerate[{j}]"), &as_detect, within_cap);
        }
        for (j, a) in x.alerts.iter().enumerate() {
            if a.alertname.trim().is_empty() {
                e.push(format!("{p}.alerts[{j}].alertname"), "empty");
            }
            e.duration(&format!("{p}.alerts[{j}].within"), a.within, &[within_cap]);
        }
        if let Some(c) = x.clear_within {
            if x.detect.is_empty() {
                e.push(format!("{p}.clear_within"), "nothing to clear: no detect");
            }
            e.duration(
                &format!("{p}.clear_within"),
                c,
                &[(self.safety.max_duration, "safety.max_duration")],
            );
        }
    }

    fn check_detect(&self, e: &mut Errors, p: &str, det: &Detect, within_cap: (Duration, &str)) {
        let names = det.kind.names();
        let kinds = if names.is_empty() {
            e.push(format!("{p}.kind"), "empty list: give at least one finding kind");
            Vec::new()
        } else if let super::Kinds::One(n) = &det.kind {
            match FindingKind::from_name(n) {
                Some(k) => vec![k],
                None => {
                    e.push(
                        format!("{p}.kind"),
                        format!("unknown finding kind {n:?} (known: {})", known_kinds()),
                    );
                    Vec::new()
                }
            }
        } else {
            e.kinds(&format!("{p}.kind"), names)
        };
        if !self.targets.contains_key(&det.on) {
            e.push(
                format!("{p}.on"),
                format!("unknown group {:?} (groups: {})", det.on, self.group_names()),
            );
        }
        if let Some(peer) = &det.peer {
            if !self.targets.contains_key(peer) {
                e.push(
                    format!("{p}.peer"),
                    format!("unknown group {peer:?} (groups: {})", self.group_names()),
                );
            }
            if let Some(k) = kinds.iter().find(|k| !k.is_path()) {
                e.push(
                    format!("{p}.peer"),
                    format!("{k} is not a pair finding (its subject is not a peer host)"),
                );
            }
        }
        if let Some(g) = &det.subject
            && let Err(err) = glob::Pattern::new(g)
        {
            e.push(format!("{p}.subject"), format!("{g:?} is not a glob: {err}"));
        }
        e.duration(&format!("{p}.within"), det.within, &[within_cap]);
    }

    /// The longest chain of known durations (gates count 0) must fit in
    /// `safety.max_duration`, or the run would always be cut short.
    fn check_longest_chain(&self, e: &mut Errors, order: &[usize], first: &HashMap<&str, usize>) {
        let mut end: BTreeMap<usize, (Duration, Option<usize>)> = BTreeMap::new();
        for &i in order {
            let s = &self.steps[i];
            let (start, prev) = s
                .after
                .iter()
                .filter_map(|a| first.get(a.as_str()))
                .filter_map(|j| end.get(j).map(|(t, _)| (*t, Some(*j))))
                .max_by_key(|(t, _)| *t)
                .unwrap_or((Duration::ZERO, None));
            let own = s.action().and_then(|a| a.duration()).unwrap_or(Duration::ZERO);
            end.insert(i, (start.saturating_add(own), prev));
        }
        let Some((&last, &(total, _))) = end.iter().max_by_key(|(_, (t, _))| *t) else {
            return;
        };
        if total > self.safety.max_duration {
            let mut chain = vec![self.steps[last].id.as_str()];
            let mut at = end.get(&last).and_then(|(_, p)| *p);
            while let Some(j) = at {
                chain.push(&self.steps[j].id);
                at = end.get(&j).and_then(|(_, p)| *p);
            }
            chain.reverse();
            e.push(
                "steps",
                format!(
                    "the longest chain ({}) takes {}, above safety.max_duration ({})",
                    chain.join(" -> "),
                    d(total),
                    d(self.safety.max_duration)
                ),
            );
        }
    }

    fn group_names(&self) -> String {
        let names: Vec<&str> = self.targets.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

impl LoadSpec {
    /// Everything about the load that can be checked without a host: the
    /// fault spec it becomes, with a documentation address (RFC 5737) for
    /// the group it is aimed at.
    pub fn validate(&self) -> Result<(), String> {
        self.fault_spec(&["192.0.2.1".to_owned()]).validate().map_err(|e| e.0)
    }
}
