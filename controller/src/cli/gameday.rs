//! `graydar gameday`: `validate -f FILE` reads a game-day spec (YAML or
//! JSON) and checks it offline, as the controller will (no controller
//! needed); `apply`, `list` and `get` manage the stored game days; `run`
//! (`--dry-run`, `--watch`), `runs`, `watch`, `abort`, `resume` and
//! `report` drive and read runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use graydar_common::client::Client;
use graydar_common::gameday::jiff::Timestamp;
use graydar_common::gameday::run::{AbortRun, Outcome, RunInfo, RunList, StartRun, StepState};
use graydar_common::gameday::{Action, GameDayInfo, GameDayList, GameDaySpec, Limits, LoadSpec, Pick, Step, report};
use graydar_common::url::encode_segment;

use super::CliError;
use super::output::{Output, json, show, table, yaml};

#[derive(Debug, Subcommand)]
pub enum GameDayCmd {
    /// Check a game-day spec offline: prints its groups and its steps in
    /// order, then "valid", or every error with its field (exit status 1).
    Validate {
        /// The spec, YAML or JSON (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Store a game day on the controller (operator token): created, or
    /// replaced when one of its name exists. Checked offline first.
    Apply {
        /// The spec, YAML or JSON (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// The game days stored on the controller.
    List,
    /// One stored game day (its spec as JSON).
    Get { name: String },
    /// Delete a stored game day (operator token); its runs stay.
    Delete { name: String },
    /// Start a run of a stored game day (operator token). With --watch,
    /// follow it to its end; the exit status is 3 when it did not pass.
    Run {
        name: String,
        /// Plan only: targets, preflight, timeline and each agent's
        /// operations; nothing applied.
        #[arg(long)]
        dry_run: bool,
        /// Follow the run live until it ends.
        #[arg(long)]
        watch: bool,
        /// Seed of the target sampling (random when absent; recorded in the run).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Follow a run live until it ends (exit status 3 when it did not pass).
    Watch { run: String },
    /// Runs, newest first.
    Runs {
        /// Only runs of this game day.
        #[arg(long)]
        gameday: Option<String>,
        /// Only runs that ended so (passed, detection_gap, aborted, failed, cancelled).
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Abort a run (operator token): its faults are reverted at once.
    Abort {
        run: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume the gate a run waits at (operator token).
    Resume { run: String },
    /// A run's report: Markdown (default) or JSON.
    Report {
        run: String,
        #[arg(long, value_parser = ["md", "json"], default_value = "md")]
        format: String,
    },
}

/// `validate -f FILE`: no controller needed.
pub fn validate_file(output: Output, file: &Path) -> Result<String, CliError> {
    let text = read(file)?;
    validate(file, &text, output, Timestamp::now())
}

/// The commands that talk to the controller (and `validate`).
pub fn online(client: &Client, output: Output, cmd: &GameDayCmd) -> Result<String, CliError> {
    match cmd {
        GameDayCmd::Validate { file } => validate_file(output, file),
        GameDayCmd::Apply { file } => {
            // The same checks as validate, so a bad spec never leaves the host.
            let spec = checked(file, &read(file)?)?;
            let path = format!("/api/v1/gamedays/{}", encode_segment(&spec.name));
            let info: GameDayInfo = client.put(&path, &spec).map_err(CliError::Fault)?;
            Ok(match output {
                Output::Json => json(&info),
                Output::Yaml => yaml(&info),
                Output::Table => format!("game day {} stored (updated {})\n", info.name, info.updated_at),
            })
        }
        GameDayCmd::List => {
            let list: GameDayList = client.get("/api/v1/gamedays").map_err(CliError::Fault)?;
            Ok(match output {
                Output::Json => json(&list),
                Output::Yaml => yaml(&list),
                Output::Table => table(
                    &["NAME", "STEPS", "SCHEDULE", "UPDATED", "HYPOTHESIS"],
                    &list
                        .gamedays
                        .iter()
                        .map(|g| {
                            vec![
                                g.name.clone(),
                                g.spec.steps.len().to_string(),
                                g.spec
                                    .schedule
                                    .as_ref()
                                    .map_or_else(|| "-".to_owned(), |s| s.cron.clone()),
                                g.updated_at.to_string(),
                                g.spec.hypothesis.chars().take(60).collect(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            })
        }
        GameDayCmd::Get { name } => {
            let info: GameDayInfo = client
                .get(&format!("/api/v1/gamedays/{}", encode_segment(name)))
                .map_err(CliError::Fault)?;
            // The stored spec: JSON by default (it is what `apply -f` takes),
            // YAML with -o yaml.
            Ok(if output == Output::Yaml {
                yaml(&info)
            } else {
                json(&info)
            })
        }
        GameDayCmd::Delete { name } => {
            client
                .delete::<()>(&format!("/api/v1/gamedays/{}", encode_segment(name)))
                .map_err(CliError::Fault)?;
            Ok(match output {
                Output::Json => json(&serde_json::json!({"deleted": name})),
                Output::Yaml => yaml(&serde_json::json!({"deleted": name})),
                Output::Table => format!("game day {name} deleted\n"),
            })
        }
        GameDayCmd::Run {
            name,
            dry_run,
            watch: follow,
            seed,
        } => {
            let req = StartRun {
                dry_run: *dry_run,
                seed: *seed,
            };
            let path = format!("/api/v1/gamedays/{}/runs", encode_segment(name));
            let run: RunInfo = client.post(&path, &req).map_err(CliError::Fault)?;
            if *dry_run {
                return Ok(match output {
                    Output::Json => json(&run),
                    Output::Yaml => yaml(&run),
                    Output::Table => dry_run_text(&run),
                });
            }
            if *follow {
                return watch(client, output, &run.id);
            }
            Ok(match output {
                Output::Json => json(&run),
                Output::Yaml => yaml(&run),
                Output::Table => format!("run {} started (graydar gameday watch {} follows it)\n", run.id, run.id),
            })
        }
        GameDayCmd::Watch { run } => watch(client, output, run),
        GameDayCmd::Runs {
            gameday,
            outcome,
            limit,
        } => {
            let mut q = format!("/api/v1/runs?limit={limit}");
            if let Some(g) = gameday {
                let _ = write!(q, "&gameday={}", encode_segment(g));
            }
            if let Some(o) = outcome {
                let _ = write!(q, "&outcome={}", encode_segment(o));
            }
            let list: RunList = client.get(&q).map_err(CliError::Fault)?;
            Ok(match output {
                Output::Json => json(&list),
                Output::Yaml => yaml(&list),
                Output::Table => table(
                    &["RUN", "GAMEDAY", "STATE", "OUTCOME", "CREATED", "REASON"],
                    &list
                        .runs
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.clone(),
                                r.gameday.clone(),
                                r.state.as_str().to_owned(),
                                r.outcome.map_or("-", |o| o.as_str()).to_owned(),
                                r.created_at.to_string(),
                                r.reason.clone().unwrap_or_default().chars().take(60).collect(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            })
        }
        GameDayCmd::Abort { run, reason } => {
            let info: RunInfo = client
                .post(
                    &format!("/api/v1/runs/{}/abort", encode_segment(run)),
                    &AbortRun { reason: reason.clone() },
                )
                .map_err(CliError::Fault)?;
            Ok(match output {
                Output::Json => json(&info),
                Output::Yaml => yaml(&info),
                Output::Table => format!("run {} aborting: its faults are being reverted\n", info.id),
            })
        }
        GameDayCmd::Resume { run } => {
            let info: RunInfo = client
                .post(
                    &format!("/api/v1/runs/{}/resume", encode_segment(run)),
                    &serde_json::json!({}),
                )
                .map_err(CliError::Fault)?;
            Ok(match output {
                Output::Json => json(&info),
                Output::Yaml => yaml(&info),
                Output::Table => format!("run {}: gate resumed\n", info.id),
            })
        }
        GameDayCmd::Report { run, format } => {
            let info: RunInfo = client
                .get(&format!("/api/v1/runs/{}", encode_segment(run)))
                .map_err(CliError::Fault)?;
            Ok(if format == "json" || output == Output::Json {
                json(&info)
            } else if output == Output::Yaml {
                yaml(&info)
            } else {
                report::markdown(&info)
            })
        }
    }
}

/// A dry run as text: the preflight, then each step with its planned
/// start, agents and their operations.
fn dry_run_text(run: &RunInfo) -> String {
    let mut s = format!(
        "dry run of {} (seed {}): nothing applied\n\npreflight:\n",
        run.gameday, run.seed
    );
    for c in &run.preflight {
        let _ = writeln!(
            s,
            "  {} {}: {}",
            if c.ok { "ok    " } else { "FAILED" },
            c.check,
            c.detail
        );
    }
    if let Some(r) = &run.reason {
        let _ = writeln!(s, "  => {r}");
    }
    s.push_str("\ntargets:\n");
    for (g, h) in &run.targets {
        let _ = writeln!(
            s,
            "  {g}: {}",
            if h.is_empty() {
                "(none)".to_owned()
            } else {
                h.join(", ")
            }
        );
    }
    s.push_str("\ntimeline:\n");
    let mut steps: Vec<_> = run.steps.iter().collect();
    steps.sort_by_key(|st| st.planned_start_ms.unwrap_or(0));
    for st in steps {
        let _ = writeln!(
            s,
            "  +{:>7.1}s  {} ({}{}{})",
            st.planned_start_ms.unwrap_or(0) as f64 / 1000.0,
            st.id,
            st.action,
            st.duration_ms
                .map_or(String::new(), |d| format!(", {:.1}s", d as f64 / 1000.0)),
            if st.agents.is_empty() {
                String::new()
            } else {
                format!(", on {}", st.agents.join(", "))
            }
        );
        if let Some(r) = &st.reason {
            let _ = writeln!(s, "             refused: {r}");
        }
        for (agent, a) in &st.per_agent {
            let _ = writeln!(s, "             {agent} ({}):", a.state);
            for op in &a.operations {
                let _ = writeln!(s, "               {op}");
            }
            if let Some(r) = &a.reason {
                let _ = writeln!(s, "               {r}");
            }
        }
    }
    s
}

/// Follows a run until it ends: each timeline event as it arrives (with
/// the steps in effect and their time left), then the verdicts. Printed
/// as it happens; the final summary is returned.
fn watch(client: &Client, output: Output, id: &str) -> Result<String, CliError> {
    use std::io::Write as _;
    let path = format!("/api/v1/runs/{}", encode_segment(id));
    let mut shown = 0;
    let mut last_status = String::new();
    let started = std::time::Instant::now();
    loop {
        let run: RunInfo = match client.get(&path) {
            Ok(r) => r,
            // A controller restarting: keep following (the run ends
            // `aborted: controller restarted` there).
            Err(e) if e.is_transient() && started.elapsed() < Duration::from_secs(86_400) => {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(CliError::Fault(e)),
        };
        if output == Output::Table {
            let mut out = std::io::stdout().lock();
            for e in run.timeline.iter().skip(shown) {
                let who = match (&e.step, &e.host) {
                    (Some(s), Some(h)) => format!("[{s} {h}] "),
                    (Some(s), None) => format!("[{s}] "),
                    (None, Some(h)) => format!("[{h}] "),
                    (None, None) => String::new(),
                };
                let _ = writeln!(out, "{}  {who}{}", e.at, e.message);
            }
            shown = run.timeline.len();
            let status = live_status(&run);
            if !status.is_empty() && status != last_status {
                let _ = writeln!(out, "          {status}");
                last_status = status;
            }
            let _ = out.flush();
        }
        if run.is_finished() {
            let text = match output {
                Output::Json => json(&run),
                Output::Yaml => yaml(&run),
                Output::Table => summary(&run),
            };
            if run.outcome != Some(Outcome::Passed) {
                let _ = std::io::stdout().write_all(text.as_bytes());
                return Err(CliError::NotPassed {
                    run: run.id.clone(),
                    outcome: run.outcome.map_or("unknown", |o| o.as_str()).to_owned(),
                    reason: run.reason.clone(),
                });
            }
            return Ok(text);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The steps in effect with their time left (a countdown), e.g.
/// `active: blackhole (42s left) | gate: check-dashboards`.
fn live_status(run: &RunInfo) -> String {
    let now = graydar_common::timestamp::Timestamp::now().unix_ms();
    let parts: Vec<String> = run
        .steps
        .iter()
        .filter(|s| s.state.is_live() || s.state == StepState::Active)
        .map(|s| {
            let left = match (s.started_at, s.duration_ms) {
                (Some(t), Some(d)) => {
                    let end = t.unix_ms().saturating_add(i64::try_from(d).unwrap_or(i64::MAX));
                    format!(" ({}s left)", ((end - now).max(0) + 999) / 1000)
                }
                _ => String::new(),
            };
            format!("{} {}{left}", s.state.word(), s.id)
        })
        .collect();
    parts.join(" | ")
}

/// The end of a watch: outcome, verdicts and the detection matrix.
fn summary(run: &RunInfo) -> String {
    let mut s = format!(
        "\nrun {}: {}{}\n",
        run.id,
        run.outcome.map_or("?", |o| o.as_str()),
        run.reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
    );
    if let Some(v) = &run.verdicts {
        let _ = writeln!(s, "detection: {:?}, safety: {:?}", v.detection, v.safety);
    }
    if !run.detections.is_empty() {
        let rows: Vec<Vec<String>> = run
            .detections
            .iter()
            .map(|d| {
                vec![
                    d.step.clone(),
                    d.kinds.join("|"),
                    d.host.clone(),
                    format!("{:?}", d.state).to_lowercase(),
                    d.time_to_detect_ms
                        .map_or("-".into(), |t| format!("{:.1}s", t / 1000.0)),
                    format!("{:.1}s", d.within_ms as f64 / 1000.0),
                    d.clear.map_or("-".into(), |c| format!("{c:?}").to_lowercase()),
                ]
            })
            .collect();
        s.push_str(&table(
            &["STEP", "EXPECTED", "HOST", "RESULT", "DETECTED IN", "DEADLINE", "CLEAR"],
            &rows,
        ));
    }
    if !run.unexpected.is_empty() {
        let _ = writeln!(s, "unexpected findings: {}", run.unexpected.len());
        for u in &run.unexpected {
            let _ = writeln!(
                s,
                "  {} {} on {} ({})",
                u.severity.as_str(),
                u.kind.as_str(),
                u.host,
                u.subject
            );
        }
    }
    s
}

fn read(file: &Path) -> Result<String, CliError> {
    let r = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    };
    r.map_err(|source| CliError::Read {
        path: file.to_owned(),
        source,
    })
}

/// The report of a valid spec, or the error that lists every problem.
/// Checked against the default limits ([`Limits::default`]); a controller
/// configured with lower ones checks again.
pub fn validate(file: &Path, text: &str, output: Output, now: Timestamp) -> Result<String, CliError> {
    let spec = checked(file, text)?;
    let order = spec.step_order().unwrap_or_default();
    let doc = serde_json::json!({
        "valid": true,
        "order": order.iter().map(|s| &s.id).collect::<Vec<_>>(),
        "spec": spec,
    });
    Ok(show(output, &doc, |_| render(&spec, &order, now)))
}

/// `text` parsed and validated against the default limits.
fn checked(file: &Path, text: &str) -> Result<GameDaySpec, CliError> {
    let spec = GameDaySpec::parse(text).map_err(|source| CliError::GameDaySpec {
        path: file.to_owned(),
        source,
    })?;
    spec.validate(&Limits::default())
        .map_err(|errors| CliError::GameDayInvalid {
            path: file.to_owned(),
            errors: errors.iter().map(ToString::to_string).collect(),
        })?;
    Ok(spec)
}

fn d(v: Duration) -> String {
    humantime::format_duration(v).to_string()
}

fn render(spec: &GameDaySpec, order: &[&Step], now: Timestamp) -> String {
    let mut s = format!("game day {}\n", spec.name);
    if !spec.description.is_empty() {
        let _ = writeln!(s, "description: {}", spec.description);
    }
    let _ = writeln!(s, "hypothesis: {}", spec.hypothesis.trim());
    let _ = writeln!(s, "max duration: {}\n", d(spec.safety.max_duration));
    let groups: Vec<Vec<String>> = spec
        .targets
        .iter()
        .map(|(name, g)| {
            let members = if g.agents.is_empty() {
                let sel: Vec<String> = g.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("selector {}", sel.join(","))
            } else {
                g.agents.join(",")
            };
            let pick = match g.pick {
                Pick::All => "all".to_owned(),
                Pick::Count(n) => format!("count {n}"),
                Pick::Percent(p) => format!("{p}%"),
            };
            vec![name.clone(), members, pick, format!("{:?}", g.on_empty).to_lowercase()]
        })
        .collect();
    s.push_str(&table(&["GROUP", "AGENTS", "PICK", "ON EMPTY"], &groups));
    s.push('\n');
    let steps: Vec<Vec<String>> = order
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let after = if st.after.is_empty() {
                "-".to_owned()
            } else {
                st.after.join(",")
            };
            vec![(i + 1).to_string(), st.id.clone(), after, action_text(st)]
        })
        .collect();
    s.push_str(&table(&["#", "STEP", "AFTER", "ACTION"], &steps));
    if let Some(sched) = &spec.schedule {
        let _ = write!(
            s,
            "\nschedule: {} ({}){}",
            sched.cron,
            sched.time_zone,
            if sched.suspended { ", suspended" } else { "" }
        );
        if let Ok(next) = sched.next_runs(now, 3) {
            let next: Vec<String> = next
                .iter()
                .map(|z| z.strftime("%Y-%m-%d %H:%M %Z").to_string())
                .collect();
            let _ = write!(s, "; next: {}", next.join(", "));
        }
        s.push('\n');
    }
    s.push_str("\nvalid\n");
    s
}

fn action_text(step: &Step) -> String {
    let mut s = match step.action() {
        Some(Action::Fault(f)) => format!(
            "fault {} {} on {} for {}",
            f.spec.kind(),
            f.spec.target(),
            f.target,
            d(f.duration)
        ),
        Some(Action::Wait(w)) => format!("wait {}", d(w.duration)),
        Some(Action::Gate(g)) => {
            let mut t = "gate (operator resume)".to_owned();
            if let Some(to) = g.timeout {
                let _ = write!(t, ", timeout {}", d(to));
            }
            t
        }
        Some(Action::Load(l)) => {
            let kind = match &l.spec {
                LoadSpec::Fsync { dir, per_second, .. } => format!("fsync {dir} {per_second}/s"),
                LoadSpec::Traffic {
                    to,
                    protocol,
                    packets_per_second,
                    bits_per_second,
                    ..
                } => match (packets_per_second, bits_per_second) {
                    (Some(p), _) => format!("{} traffic to {to} {p} packets/s", protocol.as_str()),
                    (None, Some(b)) => format!("{} traffic to {to} {b} bit/s", protocol.as_str()),
                    (None, None) => format!("{} traffic to {to}", protocol.as_str()),
                },
                LoadSpec::Burst { to, bytes, every, .. } => {
                    format!("burst of {bytes} bytes to {to} every {}", d(*every))
                }
            };
            format!("load {kind} on {} for {}", l.target, d(l.duration))
        }
        None => "?".to_owned(),
    };
    if let Some(x) = &step.expect {
        for det in &x.detect {
            let _ = write!(
                s,
                "; expect {} on {} within {}",
                det.kind.names().join("|"),
                det.on,
                d(det.within)
            );
        }
        for a in &x.alerts {
            let _ = write!(s, "; alert {} within {}", a.alertname, d(a.within));
        }
        if let Some(c) = x.clear_within {
            let _ = write!(s, "; clear within {}", d(c));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn example(name: &str) -> (PathBuf, String) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/examples/gamedays")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (path, text)
    }

    fn now() -> Timestamp {
        "2026-03-20T12:00:00Z".parse().expect("instant")
    }

    #[test]
    fn the_command_parses() {
        let cli = crate::cli::Cli::try_parse_from(["graydar", "gameday", "validate", "-f", "x.yaml"]).expect("parse");
        assert!(matches!(
            cli.cmd,
            crate::cli::Cmd::Gameday {
                cmd: GameDayCmd::Validate { .. }
            }
        ));
    }

    #[test]
    fn a_valid_spec_prints_groups_steps_in_order_and_valid() {
        let (path, text) = example("dm-delay.yaml");
        let out = validate(&path, &text, Output::Table, now()).expect("valid");
        assert!(out.ends_with("\nvalid\n"), "{out}");
        assert!(out.contains("storage  selector role=storage  10%"), "{out}");
        let load = out
            .find("load fsync /var/lib/graydar-data 20/s on storage for 12m")
            .expect("load step");
        let gate = out.find("gate (operator resume), timeout 10m").expect("gate step");
        let fault = out
            .find("fault dm graydar-data on storage for 5m; expect fsync_latency|disk_slow on storage within 1m")
            .expect("fault step");
        assert!(load < gate && gate < fault, "steps in order: {out}");
        // Tuesdays 02:30 Berlin, CET then CEST (2026-03-29).
        assert!(
            out.contains("next: 2026-03-24 02:30 CET, 2026-03-31 02:30 CEST, 2026-04-07 02:30 CEST"),
            "{out}"
        );
        let out = validate(&path, &text, Output::Json, now()).expect("valid");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["valid"], true);
        assert_eq!(v["order"], serde_json::json!(["load", "approve", "delay"]));
    }

    #[test]
    fn an_invalid_spec_lists_every_error() {
        let (path, text) = example("blackhole-asymmetric.yaml");
        let text = text
            .replace("after: [baseline]", "after: [warmup]")
            .replace("target: a", "target: db")
            .replace("kind: asymmetric_connectivity", "kind: asymmetric_conectivity");
        let e = validate(&path, &text, Output::Table, now()).expect_err("invalid");
        let msg = e.to_string();
        for want in [
            "3 errors",
            "steps[1].after[0]: unknown step \"warmup\"",
            "steps[1].fault.target: unknown group \"db\"",
            "steps[1].expect.detect[0].kind: unknown finding kind \"asymmetric_conectivity\"",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        let e = validate(&path, "name: [", Output::Table, now()).expect_err("not YAML");
        assert!(e.to_string().contains("not a game-day spec"), "{e}");
    }
}
