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

pub fn get(client: &Client, output: Output, id: &str) -> Result<String, CliError> {
    let d = client.finding(id)?;
    Ok(show(output, &d, finding_text))
}
