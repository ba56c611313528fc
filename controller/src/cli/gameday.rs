//! `graydar gameday validate -f FILE`: reads a game-day spec (YAML or
//! JSON) and checks it offline, as the controller will (no controller
//! needed). Running game days is not built yet.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use graydar_common::client::Client;
use graydar_common::gameday::jiff::Timestamp;
use graydar_common::gameday::{Action, GameDayInfo, GameDayList, GameDaySpec, Limits, LoadSpec, Pick, Step};
use graydar_common::url::encode_segment;

use super::CliError;
use super::output::{Output, json, table};

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
                Output::Table => format!("game day {} stored (updated {})\n", info.name, info.updated_at),
            })
        }
        GameDayCmd::List => {
            let list: GameDayList = client.get("/api/v1/gamedays").map_err(CliError::Fault)?;
            Ok(match output {
                Output::Json => json(&list),
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
            Ok(json(&info))
        }
    }
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
    Ok(match output {
        Output::Json => json(&serde_json::json!({
            "valid": true,
            "order": order.iter().map(|s| &s.id).collect::<Vec<_>>(),
            "spec": spec,
        })),
        Output::Table => render(&spec, &order, now),
    })
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
