//! The `graydar` command line: agents and findings from the controller.
//!
//! Controller URL and token: flags > environment (`GRAYDAR_URL`,
//! `GRAYDAR_TOKEN`, `GRAYDAR_CA_CERT`) > config file (`--config`,
//! `GRAYDAR_CLI_CONFIG`, else `~/.config/graydar/cli.toml` when present).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use graydar_common::api::{AgentInfo, Finding, FindingDetail, FindingState};
use graydar_common::client::{Client, ClientConfig, FindingQuery};
use serde::Deserialize;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8477";

#[derive(Debug, Parser)]
#[command(name = "graydar", version, about = "Query the graydar controller")]
pub struct Cli {
    /// Controller URL [default: http://127.0.0.1:8477].
    #[arg(long, env = "GRAYDAR_URL", global = true)]
    pub url: Option<String>,
    /// Bearer token (viewer or operator).
    #[arg(long, env = "GRAYDAR_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate to trust for HTTPS (self-signed or private CA).
    #[arg(long, env = "GRAYDAR_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// TOML file with `url`, `token` or `token_file`, `ca_cert`.
    #[arg(long, env = "GRAYDAR_CLI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Registered agents with state and last-seen time.
    Agents,
    /// Findings of every agent (firing first).
    Findings {
        /// Only firing findings.
        #[arg(long)]
        firing: bool,
        /// Only this kind (e.g. kernel_drops).
        #[arg(long)]
        kind: Option<String>,
        /// Only this agent (hostname).
        #[arg(long)]
        agent: Option<String>,
        /// Only this severity (warning, critical).
        #[arg(long)]
        severity: Option<String>,
        /// Only findings whose latest transition is at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// The path matrix: loss, RTT, hops and state per ordered pair of agents.
    Paths,
    /// One finding with its history.
    Finding { id: String },
    /// Faults: apply (with --dry-run), list, get, revert, revert-all.
    Fault {
        #[command(subcommand)]
        cmd: crate::faults::cli::FaultCmd,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The client configuration from flags, environment and file.
pub fn client_config(cli: &Cli) -> Result<ClientConfig, String> {
    let path = cli.config.clone().or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".config/graydar/cli.toml");
        p.is_file().then_some(p)
    });
    let file: FileConfig = match &path {
        Some(p) => toml::from_str(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?,
        None => FileConfig::default(),
    };
    let token = match (&cli.token, file.token, file.token_file) {
        (Some(t), _, _) => Some(t.clone()),
        (None, Some(t), _) => Some(t),
        (None, None, Some(p)) => Some(read(&p)?.trim().to_owned()),
        (None, None, None) => None,
    };
    let ca_cert_pem = match cli.ca_cert.clone().or(file.ca_cert) {
        Some(p) => Some(std::fs::read(&p).map_err(|e| format!("reading {}: {e}", p.display()))?),
        None => None,
    };
    Ok(ClientConfig {
        url: cli.url.clone().or(file.url).unwrap_or_else(|| DEFAULT_URL.to_owned()),
        token,
        ca_cert_pem,
        timeout: Duration::from_secs(15),
    })
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn agents_table(agents: &[AgentInfo]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.hostname.clone(),
                a.state.to_string(),
                a.last_seen.clone(),
                a.firing_findings.to_string(),
                a.kernel_version.clone(),
                a.addresses.join(","),
            ]
        })
        .collect();
    table(
        &["HOSTNAME", "STATE", "LAST SEEN", "FIRING", "KERNEL", "ADDRESSES"],
        &rows,
    )
}

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
                f.since.clone(),
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
        ("since", f.since.clone()),
        ("resolved_at", f.resolved_at.clone().unwrap_or_else(|| "-".into())),
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
                h.at.clone(),
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

/// `graydar paths`: one row per ordered pair.
pub fn paths_table(pairs: &[graydar_common::paths::PathPair]) -> String {
    let opt_ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |s| format!("{:.2}ms", s * 1e3));
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|p| {
            vec![
                p.src.clone(),
                p.dst.clone(),
                p.state.clone(),
                p.loss_ratio
                    .map_or_else(|| "-".to_owned(), |l| format!("{:.2}%", l * 100.0)),
                format!("{}/{}", p.lost, p.delivered + p.lost),
                opt_ms(p.rtt_p50_seconds),
                opt_ms(p.rtt_p99_seconds),
                p.hops.map_or_else(|| "-".to_owned(), |h| h.to_string()),
                opt_ms(p.owd_variation_seconds),
                if p.firing.is_empty() {
                    "-".to_owned()
                } else {
                    p.firing.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "SRC", "DST", "STATE", "LOSS", "LOST", "RTT P50", "RTT P99", "HOPS", "OWD VAR", "FIRING",
        ],
        &rows,
    )
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Runs the command; the text to print on success, the error message otherwise.
pub fn run(cli: &Cli) -> Result<String, String> {
    let client = Client::new(client_config(cli)?).map_err(|e| e.to_string())?;
    let e = |e: graydar_common::client::ClientError| e.to_string();
    Ok(match &cli.cmd {
        Cmd::Agents => {
            let l = client.agents().map_err(e)?;
            match cli.output {
                Output::Json => json(&l),
                Output::Table => agents_table(&l.agents),
            }
        }
        Cmd::Findings {
            firing,
            kind,
            agent,
            severity,
            since,
        } => {
            let q = FindingQuery {
                kind: kind.clone(),
                severity: severity.clone(),
                state: firing.then(|| "firing".to_owned()),
                agent: agent.clone(),
                since: since.clone(),
                limit: None,
            };
            let l = client.findings(&q).map_err(e)?;
            match cli.output {
                Output::Json => json(&l),
                Output::Table => findings_table(&l.findings),
            }
        }
        Cmd::Paths => {
            let m = client.paths().map_err(e)?;
            match cli.output {
                Output::Json => json(&m),
                Output::Table => paths_table(&m.pairs),
            }
        }
        Cmd::Finding { id } => {
            let d = client.finding(id).map_err(e)?;
            match cli.output {
                Output::Json => json(&d),
                Output::Table => finding_text(&d),
            }
        }
        Cmd::Fault { cmd } => crate::faults::cli::run(&client, cli.output, cmd)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xxxxx".into(), "y".into(), "z".into()],
                vec!["1".into(), "2".into(), "3".into()],
            ],
        );
        assert_eq!(
            t,
            "A      LONG HEADER  C\nxxxxx  y            z\n1      2            3\n"
        );
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "graydar",
            "findings",
            "--firing",
            "--kind",
            "kernel_drops",
            "-o",
            "json",
        ])
        .expect("parse");
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(cli.cmd, Cmd::Findings { firing: true, .. }));
        let cli = Cli::try_parse_from(["graydar", "--url", "http://x:1", "finding", "abc"]).expect("parse");
        assert_eq!(cli.url.as_deref(), Some("http://x:1"));
    }
}
