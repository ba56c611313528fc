//! The `graydar` command line: a client of the controller API. It uses only
//! `graydar_common`'s client and wire types, never the server's modules.
//!
//! One file per command group (`agents`, `findings`, `paths`, `faults`,
//! `gameday`),
//! output helpers in `output`, where the controller and token come from in
//! `config`.

pub mod agents;
pub mod config;
pub mod faults;
pub mod findings;
pub mod gameday;
pub mod output;
pub mod paths;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use graydar_common::api::Timestamp;
use graydar_common::client::{Client, ClientError, FindingQuery};

pub use config::{DEFAULT_URL, client_config};
pub use output::{Output, table};

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

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Registered agents with state and last-seen time; `reset-credential`.
    Agents {
        #[command(subcommand)]
        cmd: Option<agents::AgentsCmd>,
    },
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
        since: Option<Timestamp>,
    },
    /// The path matrix: loss, RTT, hops and state per ordered pair of agents.
    Paths,
    /// One finding with its history.
    Finding { id: String },
    /// Faults: apply (with --dry-run), list, get, revert, revert-all.
    Fault {
        #[command(subcommand)]
        cmd: faults::FaultCmd,
    },
    /// The safety lever: status (default), engage (reverts every fault and
    /// refuses new ones), release.
    SafetyLever {
        #[command(subcommand)]
        cmd: Option<faults::LeverCmd>,
    },
    /// Game days: `validate -f FILE` checks a spec offline (no controller
    /// needed); `apply -f FILE`, `list`, `get NAME` on the controller.
    Gameday {
        #[command(subcommand)]
        cmd: gameday::GameDayCmd,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{}: not a fault spec: {source}", path.display())]
    SpecFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("give the fault: --spec-file FILE, --interface IF with netem flags, or --blackhole PREFIX")]
    NoFault,
    #[error("--duration is required (e.g. --duration 60s), except with --dry-run")]
    NoDuration,
    #[error("{}: not a game-day spec: {source}", path.display())]
    GameDaySpec {
        path: PathBuf,
        #[source]
        source: graydar_common::gameday::ParseError,
    },
    #[error("{}: {} error{}:\n  {}", path.display(), errors.len(), if errors.len() == 1 { "" } else { "s" }, errors.join("\n  "))]
    GameDayInvalid { path: PathBuf, errors: Vec<String> },
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A game-day run that ended other than `passed` (exit status 3).
    #[error("run {run} did not pass: {outcome}{}", reason.as_ref().map_or(String::new(), |r| format!(" ({r})")))]
    NotPassed {
        run: String,
        outcome: String,
        reason: Option<String>,
    },
    /// An error of a fault command, worded as the API words it.
    #[error("{}", faults::api_message(.0))]
    Fault(#[source] ClientError),
}

/// Runs the command; the text to print on success.
pub fn run(cli: &Cli) -> Result<String, CliError> {
    // Offline commands first: no controller, no token, no config file.
    if let Cmd::Gameday {
        cmd: gameday::GameDayCmd::Validate { file },
    } = &cli.cmd
    {
        return gameday::validate_file(cli.output, file);
    }
    let client = Client::new(client_config(cli)?)?;
    match &cli.cmd {
        Cmd::Agents { cmd: None } => agents::run(&client, cli.output),
        Cmd::Agents { cmd: Some(cmd) } => agents::command(&client, cmd),
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
                since: *since,
                limit: None,
            };
            findings::list(&client, cli.output, &q)
        }
        Cmd::Paths => paths::run(&client, cli.output),
        Cmd::Finding { id } => findings::get(&client, cli.output, id),
        Cmd::Fault { cmd } => faults::run(&client, cli.output, cmd),
        Cmd::SafetyLever { cmd } => {
            faults::lever(&client, cli.output, cmd.as_ref().unwrap_or(&faults::LeverCmd::Status))
        }
        Cmd::Gameday { cmd } => gameday::online(&client, cli.output, cmd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
