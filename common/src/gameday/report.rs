//! A run's report as Markdown (`graydar gameday report RUN`): hypothesis,
//! targets, verdicts, the detection matrix (expectation × host: detected,
//! time to detect, time to clear), unexpected findings, steps and timeline.

use std::fmt::Write as _;

use super::run::{ClearState, DetectionState, RunInfo, Verdict};

fn secs(ms: f64) -> String {
    format!("{:.1} s", ms / 1000.0)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown report of `run`.
pub fn markdown(run: &RunInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Game day `{}`, run `{}`\n", run.gameday, run.id);
    let outcome = run.outcome.map_or(run.state.as_str(), |o| o.as_str());
    let _ = writeln!(
        s,
        "- **Outcome:** {outcome}{}",
        run.reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
    );
    if let Some(v) = &run.verdicts {
        let word = |v: Verdict| if v == Verdict::Pass { "pass" } else { "FAIL" };
        let _ = writeln!(s, "- **Detection verdict:** {}", word(v.detection));
        let _ = writeln!(s, "- **Safety verdict:** {}", word(v.safety));
    }
    let _ = writeln!(s, "- **Trigger:** {}, seed {}", run.trigger, run.seed);
    let _ = writeln!(
        s,
        "- **Started:** {}; **ended:** {}",
        run.started_at.map_or("-".to_owned(), |t| t.to_string()),
        run.ended_at.map_or("-".to_owned(), |t| t.to_string())
    );
    let _ = writeln!(s, "\n## Hypothesis\n\n{}\n", run.spec.hypothesis.trim());
    s.push_str("## Targets\n\n| group | agents |\n|---|---|\n");
    for (g, hosts) in &run.targets {
        let _ = writeln!(
            s,
            "| {} | {} |",
            cell(g),
            if hosts.is_empty() {
                "(none)".to_owned()
            } else {
                hosts.join(", ")
            }
        );
    }
    s.push_str("\n## Detection matrix\n\n");
    if run.detections.is_empty() {
        s.push_str("No expectations.\n");
    } else {
        s.push_str(
            "| step | expected | host | result | time to detect | deadline | upper bound | cleared | finding |\n",
        );
        s.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for d in &run.detections {
            let result = match d.state {
                DetectionState::Detected => "detected",
                DetectionState::Late => "LATE",
                DetectionState::Missed => "MISSED",
                DetectionState::NotRun => "not run",
                DetectionState::CutShort => "cut short",
                DetectionState::Pending => "pending",
            };
            let ttd = d.time_to_detect_ms.map_or("-".to_owned(), |t| match d.uncertainty_ms {
                Some(u) => format!("{} ± {:.0} ms", secs(t), u),
                None => secs(t),
            });
            let clear = match (d.clear, d.time_to_clear_ms) {
                (Some(ClearState::Cleared), Some(t)) => format!("yes, {}", secs(t)),
                (Some(ClearState::NotCleared), Some(t)) => format!("LATE, {}", secs(t)),
                (Some(ClearState::NotCleared), None) => "NO".to_owned(),
                (Some(ClearState::Pending), _) => "pending".to_owned(),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&d.step),
                cell(&d.kinds.join(" or ")),
                cell(&d.host),
                result,
                ttd,
                secs(d.within_ms as f64),
                d.upper_bound_ms.map_or("-".to_owned(), |u| secs(u as f64)),
                clear,
                d.finding_id.as_deref().unwrap_or("-")
            );
        }
    }
    s.push_str("\n## Unexpected findings\n\n");
    if run.unexpected.is_empty() {
        s.push_str("None.\n");
    } else {
        s.push_str("| host | kind | subject | severity | fired at | summary |\n|---|---|---|---|---|---|\n");
        for u in &run.unexpected {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&u.host),
                u.kind.as_str(),
                cell(&u.subject),
                u.severity.as_str(),
                u.fired_at,
                cell(&u.summary)
            );
        }
    }
    s.push_str("\n## Preflight\n\n");
    for c in &run.preflight {
        let _ = writeln!(
            s,
            "- {} **{}**: {}",
            if c.ok { "ok" } else { "FAILED" },
            c.check,
            c.detail
        );
    }
    s.push_str("\n## Steps\n\n| step | action | state | agents | started | ended | reverted | note |\n|---|---|---|---|---|---|---|---|\n");
    for st in &run.steps {
        let t = |t: Option<crate::timestamp::Timestamp>| t.map_or("-".to_owned(), |t| t.to_string());
        let _ = writeln!(
            s,
            "| {} | {} | {:?} | {} | {} | {} | {} | {} |",
            cell(&st.id),
            st.action,
            st.state,
            st.agents.join(", "),
            t(st.started_at),
            t(st.ended_at),
            t(st.reverted_at),
            cell(st.reason.as_deref().unwrap_or(""))
        );
    }
    if !run.clocks.is_empty() {
        s.push_str("\n## Agent clocks (controller minus agent)\n\n");
        for (h, c) in &run.clocks {
            let _ = writeln!(s, "- {h}: {:+.1} ms ± {:.1} ms", c.offset_ms, c.uncertainty_ms);
        }
    }
    s.push_str("\n## Timeline\n\n");
    for e in &run.timeline {
        let mut who = Vec::new();
        if let Some(st) = &e.step {
            who.push(format!("step {st}"));
        }
        if let Some(h) = &e.host {
            who.push(h.clone());
        }
        let who = if who.is_empty() {
            String::new()
        } else {
            format!(" [{}]", who.join(", "))
        };
        let _ = writeln!(s, "- {}{who}: {}", e.at, e.message);
    }
    s
}
