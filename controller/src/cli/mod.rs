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
        /// Keep watching: the list, then each finding that appears or
        /// changes, until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
        /// How often --watch asks the controller.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s", requires = "watch")]
        interval: std::time::Duration,
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
    /// Shell completions on stdout, from these very definitions:
    /// `graydar completion bash > /usr/share/bash-completion/completions/graydar`
    /// (zsh: a file `_graydar` in a directory of $fpath; fish:
    /// ~/.config/fish/completions/graydar.fish).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Writes the man pages (graydar.1, graydar-fault.1,
    /// graydar-fault-apply.1, ...) into DIR.
    Man { dir: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    #[error("{}: not a fault spec: {message}", path.display())]
    SpecFile { path: PathBuf, message: String },
    #[error(
        "give the fault: -f FILE (YAML or JSON), --interface IF with netem flags, --dm-device DEV with \
         --read-delay/--write-delay/--flush-delay or --error-writes, --blackhole, --route-flap or \
         --route-detour PREFIX"
    )]
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
    /// A fault that failed on every agent it targets (exit status 3).
    #[error("fault {id} failed on every agent: {}", reasons.join("; "))]
    FaultFailed { id: String, reasons: Vec<String> },
    /// An error of a fault command, worded as the API words it.
    #[error("{}", faults::api_message(.0))]
    Fault(#[source] ClientError),
}

/// Runs the command; the text to print on success.
pub fn run(cli: &Cli) -> Result<String, CliError> {
    // Offline commands first: no controller, no token, no config file.
    match &cli.cmd {
        Cmd::Gameday {
            cmd: gameday::GameDayCmd::Validate { file },
        } => return gameday::validate_file(cli.output, file),
        Cmd::Completion { shell } => return Ok(completion(*shell)),
        Cmd::Man { dir } => return man_pages(dir),
        _ => {}
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
            watch,
            interval,
        } => {
            let q = FindingQuery {
                kind: kind.clone(),
                severity: severity.clone(),
                state: firing.then(|| "firing".to_owned()),
                agent: agent.clone(),
                since: *since,
                limit: None,
            };
            if *watch {
                return findings::watch(&client, cli.output, &q, *interval);
            }
            findings::list(&client, cli.output, &q)
        }
        Cmd::Paths => paths::run(&client, cli.output),
        Cmd::Finding { id } => findings::get(&client, cli.output, id),
        Cmd::Fault { cmd } => faults::run(&client, cli.output, cmd),
        Cmd::SafetyLever { cmd } => {
            faults::lever(&client, cli.output, cmd.as_ref().unwrap_or(&faults::LeverCmd::Status))
        }
        Cmd::Gameday { cmd } => gameday::online(&client, cli.output, cmd),
        Cmd::Completion { .. } | Cmd::Man { .. } => Ok(String::new()),
    }
}

/// The exit status of an error: 3 when a run or a fault did not pass, 1
/// otherwise (2 is clap's, for a usage error).
pub fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::NotPassed { .. } | CliError::FaultFailed { .. } => 3,
        _ => 1,
    }
}

/// `graydar completion SHELL`: the script clap_complete makes of [`Cli`].
pub fn completion(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory as _;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "graydar", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// `graydar man DIR`: one page per command and subcommand (clap_mangen).
pub fn man_pages(dir: &std::path::Path) -> Result<String, CliError> {
    use clap::CommandFactory as _;
    let io = |source| CliError::Write {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(io)?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("graydar") && n.ends_with(".1"))
        .collect();
    pages.sort();
    Ok(format!(
        "{} man pages in {}: {}\n",
        pages.len(),
        dir.display(),
        pages.join(" ")
    ))
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
        let cli = Cli::try_parse_from(["graydar", "findings", "-w", "--interval", "5s", "-o", "yaml"]).expect("parse");
        assert_eq!(cli.output, Output::Yaml);
        assert!(matches!(cli.cmd, Cmd::Findings { watch: true, interval, .. } if interval.as_secs() == 5));
        assert!(
            Cli::try_parse_from(["graydar", "findings", "--interval", "5s"]).is_err(),
            "--interval needs --watch"
        );
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let not_passed = CliError::NotPassed {
            run: "run-1".into(),
            outcome: "detection_gap".into(),
            reason: None,
        };
        let failed = CliError::FaultFailed {
            id: "flt-1".into(),
            reasons: vec!["a1: no such interface".into()],
        };
        assert_eq!(
            (
                exit_code(&not_passed),
                exit_code(&failed),
                exit_code(&CliError::NoFault)
            ),
            (3, 3, 1)
        );
        assert!(failed.to_string().contains("a1: no such interface"), "{failed}");
        let usage = Cli::try_parse_from(["graydar", "--no-such-flag"]).expect_err("usage error");
        assert_eq!(usage.exit_code(), 2);
    }

    #[test]
    fn completions_and_man_pages_are_generated_from_the_definitions() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = completion(shell);
            for word in ["graydar", "gameday", "revert-all", "dm-device", "filename"] {
                assert!(script.contains(word), "{shell}: no {word:?} in its completions");
            }
        }
        let cli = Cli::try_parse_from(["graydar", "completion", "zsh"]).expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Completion {
                shell: clap_complete::Shell::Zsh
            }
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let said = man_pages(dir.path()).expect("man pages");
        for page in [
            "graydar.1",
            "graydar-fault.1",
            "graydar-fault-apply.1",
            "graydar-gameday-run.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}; {said}"));
            assert!(
                text.starts_with(".ie") || text.contains(".TH"),
                "{page} is roff: {text:.200}"
            );
            assert!(text.len() > 300, "{page} is not empty");
        }
        let apply = std::fs::read_to_string(dir.path().join("graydar-fault-apply.1")).expect("read");
        assert!(
            apply.contains("dm\\-device") && apply.contains("read\\-delay"),
            "{apply}"
        );
    }
}
