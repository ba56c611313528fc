//! `graydar findings` and `graydar finding ID`.

use graydar_common::api::{Finding, FindingDetail, FindingState};
use graydar_common::client::{Client, FindingQuery};

use super::CliError;
use super::output::{Output, show, table};

fn state_str(s: FindingState) -> &'static str {
    match s {
        FindingState::Firing => "firing",
        FindingState::Resolved => "resolved",
    }
}

pub fn findings_table(findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            vec![
                f.id.clone(),
                f.host.clone(),
                f.kind.to_string(),
                f.subject.clone(),
                f.severity.to_string(),
                state_str(f.state).to_owned(),
                f.since.to_string(),
                f.summary.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "AGENT", "KIND", "SUBJECT", "SEVERITY", "STATE", "SINCE", "SUMMARY",
        ],
        &rows,
    )
}

pub fn finding_text(d: &FindingDetail) -> String {
    let f = &d.finding;
    let mut out = String::new();
    for (k, v) in [
        ("id", f.id.clone()),
        ("agent", f.host.clone()),
        ("kind", f.kind.to_string()),
        ("subject", f.subject.clone()),
        ("severity", f.severity.to_string()),
        ("state", state_str(f.state).to_owned()),
        ("since", f.since.to_string()),
        (
            "resolved_at",
            f.resolved_at.map_or_else(|| "-".into(), |t| t.to_string()),
        ),
        ("summary", f.summary.clone()),
        ("runbook", format!("runbooks/{}.md", f.runbook)),
    ] {
        out.push_str(&format!("{k:<12} {v}\n"));
    }
    out.push_str("\nevidence:\n");
    for (k, v) in &f.evidence {
        let v = serde_json::to_string(v).unwrap_or_default();
        out.push_str(&format!("  {k:<24} {v}\n"));
    }
    out.push_str("\nhistory:\n");
    let rows: Vec<Vec<String>> = d
        .history
        .iter()
        .map(|h| {
            vec![
                h.at.to_string(),
                h.transition.to_string(),
                h.severity.to_string(),
                h.summary.clone(),
            ]
        })
        .collect();
    for l in table(&["AT", "TRANSITION", "SEVERITY", "SUMMARY"], &rows).lines() {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

pub fn list(client: &Client, output: Output, q: &FindingQuery) -> Result<String, CliError> {
    let l = client.findings(q)?;
    Ok(show(output, &l, |l| findings_table(&l.findings)))
}

/// What a finding looks like to `--watch`: a line is printed when this changes.
fn watch_key(f: &Finding) -> (FindingState, String, String) {
    (f.state, f.severity.to_string(), f.summary.clone())
}

/// The findings of `now` that are new or changed since `before` (by id),
/// updating `before`.
pub fn changed<'a>(
    before: &mut std::collections::BTreeMap<String, (FindingState, String, String)>,
    now: &'a [Finding],
) -> Vec<&'a Finding> {
    let mut out = Vec::new();
    for f in now {
        let key = watch_key(f);
        if before.get(&f.id) != Some(&key) {
            before.insert(f.id.clone(), key);
            out.push(f);
        }
    }
    out
}

/// `graydar findings --watch`: the list, then every finding that appears or
/// changes (fires, changes severity or summary, resolves) as one more row
/// (a JSON or YAML document per change with -o json/yaml), polling every
/// `every`, until interrupted.
pub fn watch(
    client: &Client,
    output: Output,
    q: &FindingQuery,
    every: std::time::Duration,
) -> Result<String, CliError> {
    use std::io::Write as _;
    let mut seen = std::collections::BTreeMap::new();
    let mut first = true;
    loop {
        match client.findings(q) {
            Ok(l) => {
                let rows = changed(&mut seen, &l.findings);
                let mut out = std::io::stdout().lock();
                let text = match output {
                    Output::Table if first => findings_table(&l.findings),
                    Output::Table => {
                        // Rows only: the header was printed with the list.
                        let owned: Vec<Finding> = rows.iter().map(|f| (*f).clone()).collect();
                        findings_table(&owned)
                            .lines()
                            .skip(1)
                            .map(|l| format!("{l}\n"))
                            .collect()
                    }
                    Output::Json => rows.iter().map(super::output::json).collect(),
                    Output::Yaml => rows
                        .iter()
                        .map(|f| format!("---\n{}", super::output::yaml(f)))
                        .collect(),
                };
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                first = false;
            }
            // A controller restarting: keep watching.
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(every);
    }
}

pub fn get(client: &Client, output: Output, id: &str) -> Result<String, CliError> {
    let d = client.finding(id)?;
    Ok(show(output, &d, finding_text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use graydar_common::api::{FindingKind, Severity, Timestamp};

    fn finding(id: &str, state: FindingState, severity: Severity) -> Finding {
        Finding {
            id: id.into(),
            host: "h1".into(),
            kind: FindingKind::KernelDrops,
            subject: "eth0".into(),
            severity,
            state,
            since: Timestamp::from_unix_ms(0),
            last_seen: Timestamp::from_unix_ms(0),
            resolved_at: None,
            summary: "drops".into(),
            evidence: Default::default(),
            runbook: "drops".into(),
        }
    }

    #[test]
    fn watch_shows_what_appeared_or_changed_once() {
        let mut seen = std::collections::BTreeMap::new();
        let a = finding("a", FindingState::Firing, Severity::Warning);
        let b = finding("b", FindingState::Firing, Severity::Warning);
        let ids = |v: Vec<&Finding>| v.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(changed(&mut seen, std::slice::from_ref(&a))), ["a"]);
        assert!(changed(&mut seen, std::slice::from_ref(&a)).is_empty(), "nothing new");
        assert_eq!(ids(changed(&mut seen, &[a.clone(), b.clone()])), ["b"]);
        let worse = finding("a", FindingState::Firing, Severity::Critical);
        assert_eq!(ids(changed(&mut seen, &[worse.clone(), b.clone()])), ["a"]);
        let gone = finding("b", FindingState::Resolved, Severity::Warning);
        assert_eq!(ids(changed(&mut seen, &[worse, gone])), ["b"]);
    }
}
