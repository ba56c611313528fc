//! `cargo xtask bench --only detection`: graydar's detection table.
//!
//! Every library game day (runbooks/gamedays/) runs `runs` times through the
//! real controller, agents and CLI, by the same tests the test tiers run
//! once (they judge each run; here they report every run, misses included):
//! the netem, dm-delay and traffic game days in the VM (Debian's kernel
//! under QEMU: tests/tests/vm_gamedays.rs, `the_library_*`), the route flap
//! incast (24 sender agents behind a bottleneck) and the asymmetric route
//! (a detour through a second router) on this host's kernel in network
//! namespaces (tests/tests/netns_gamedays.rs, netns_incast_gameday.rs,
//! netns_route_detour.rs).
//! nic-queue-drops also runs at 1 % loss, the smallest loss the drop
//! detector is built to find. Then the quiet soak: the same topology under
//! UDP, TCP, fsync and burst load below every threshold, no fault, for
//! `soak_seconds`; every finding in it is counted (the goal is none).
//!
//! The tests print one `GRAYDAR_RESULT detection ...` line per expected
//! detection and run, and one `GRAYDAR_RESULT soak ...` line; this reads
//! them back, prints the table (Markdown, as the benchmarks page shows it)
//! and appends the raw lines to `target/bench/detection.txt`.
//!
//! The timings inside the game days are the test tiers' scaled ones (short
//! baselines and faults, the test fleet's fast probe settings); the goals
//! are the issue's, judged on p95.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// Runs per game day by default, and with `--quick`.
pub const RUNS: usize = 20;
pub const QUICK_RUNS: usize = 3;
/// The quiet soak's length by default, and with `--quick`.
pub const SOAK_SECONDS: u64 = 30 * 60;
pub const QUICK_SOAK_SECONDS: u64 = 5 * 60;

/// The goal per game day: time to detect at p95, in seconds, and how it reads.
fn goal(gameday: &str) -> Option<(f64, &'static str)> {
    Some(match gameday {
        "nic-queue-drops" | "nic-queue-drops-1pct" => (5.0, "≤ 5 s p95"),
        "disk-slow-io" => (3.0, "≤ 3 s p95"),
        "one-way-partition" => (10.0, "≤ 10 s p95"),
        // The 5th route change of the scaled flap (1 s down, 2 s up) comes
        // 6 s after the apply.
        "bgp-route-flap" => (7.0, "by the 5th change (6 s)"),
        // Counted from the load's start; the first burst is 2 s later.
        "incast" => (4.0, "≤ 2 s after the first burst"),
        _ => return None,
    })
}

pub fn run(ws: &Path, runs: usize, soak_seconds: u64) -> Result<()> {
    if runs == 0 {
        bail!("--detection-runs must be at least 1");
    }
    println!(
        "bench detection: every library game day {runs} times (VM: netem, dm-delay, loads; host: route flap, incast, asymmetric route), \
         then a quiet soak of {soak_seconds} s"
    );
    let started = Instant::now();
    let runs_s = runs.to_string();
    let soak_s = soak_seconds.to_string();
    let mut lines = crate::vm::run_test_targets(
        ws,
        &crate::vm::default_cache(ws),
        &["vm_gamedays"],
        &["the_library_".into(), "a_quiet_soak_".into()],
        &[("GRAYDAR_DETECTION_RUNS", &runs_s), ("GRAYDAR_SOAK_SECONDS", &soak_s)],
    )
    .context("the VM's library game days broke (a leftover or a run that could not finish): see above")?;
    lines.extend(host_game_days(ws, &runs_s)?);
    let wall = started.elapsed().as_secs_f64();

    let rows = table(&lines)?;
    let soak = lines
        .iter()
        .find_map(|l| l.strip_prefix("soak "))
        .context("the guest printed no soak result")?;
    let soak = fields(soak);
    println!();
    println!("{}", markdown(&rows));
    println!(
        "quiet soak: {} s of load, no fault: {} findings ({})",
        soak.get("seconds").map_or("?", String::as_str),
        soak.get("findings").map_or("?", String::as_str),
        soak.get("kinds").map_or("?", String::as_str),
    );
    println!("whole run {wall:.0} s (builds and boots included)");

    let dir = ws.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("detection.txt");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let now = graydar_common::timestamp::Timestamp::now();
    for l in &lines {
        writeln!(f, "{now} {l}").with_context(|| format!("writing {}", path.display()))?;
    }
    println!("raw lines appended to {}", path.display());
    Ok(())
}

/// The game days that need no netem or dm run on this host's kernel in
/// network namespaces: the route flap (tests/tests/netns_gamedays.rs),
/// incast with 24 sender agents behind a bottleneck
/// (tests/tests/netns_incast_gameday.rs) and the asymmetric route through a
/// second router (tests/tests/netns_route_detour.rs).
const HOST_TESTS: &[(&str, &str)] = &[
    (
        "netns_gamedays",
        "the_library_route_flap_game_day_passes_on_real_agents",
    ),
    (
        "netns_incast_gameday",
        "the_library_incast_game_day_passes_with_24_senders_behind_a_bottleneck",
    ),
    (
        "netns_route_detour",
        "the_library_asymmetric_route_game_day_passes_on_real_agents",
    ),
];

/// Each of [`HOST_TESTS`] `runs` times; their result lines.
fn host_game_days(ws: &Path, runs: &str) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut lines = Vec::new();
    for (target, test) in HOST_TESTS {
        let out = Command::new(&cargo)
            .current_dir(ws)
            .env("GRAYDAR_DETECTION_RUNS", runs)
            .args(["test", "-p", "graydar-tests", "--test", target, "--", "--exact", test])
            .output()
            .with_context(|| format!("running {test}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "{test} failed: {}\n{}\n{stderr}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        lines.extend(
            stderr
                .lines()
                .filter_map(|l| l.strip_prefix(crate::vm::RESULT_MARKER))
                .map(str::to_owned),
        );
    }
    Ok(lines)
}

fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One game day's row of the table.
#[derive(Debug, Default, PartialEq)]
struct Row {
    gameday: String,
    expected: String,
    /// The kind that counted, per run where one did.
    seen: BTreeMap<String, usize>,
    runs: usize,
    found: usize,
    ttd_s: Vec<f64>,
    ttc_s: Vec<f64>,
    /// Runs with any unexpected finding, and what they were.
    unexpected_runs: usize,
    unexpected: BTreeMap<String, usize>,
}

fn secs(v: Option<&String>) -> Result<Option<f64>> {
    match v.map(String::as_str) {
        None | Some("-") => Ok(None),
        Some(x) => {
            let ms: f64 = x.parse().with_context(|| format!("not a number of ms: {x:?}"))?;
            Ok(Some(ms / 1000.0))
        }
    }
}

fn table(lines: &[String]) -> Result<Vec<Row>> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for l in lines.iter().filter_map(|l| l.strip_prefix("detection ")) {
        let f = fields(l);
        let gameday = f.get("gameday").with_context(|| format!("no gameday in {l:?}"))?;
        let r = rows.entry(gameday.clone()).or_insert_with(|| Row {
            gameday: gameday.clone(),
            ..Row::default()
        });
        r.expected = f.get("expected").cloned().unwrap_or_default();
        r.runs += 1;
        let ttd = secs(f.get("ttd_ms")).with_context(|| format!("in {l:?}"))?;
        if let Some(t) = ttd {
            r.found += 1;
            r.ttd_s.push(t);
            if let Some(k) = f.get("kind") {
                *r.seen.entry(k.clone()).or_default() += 1;
            }
        }
        if let Some(t) = secs(f.get("ttc_ms")).with_context(|| format!("in {l:?}"))? {
            r.ttc_s.push(t);
        }
        let kinds = f.get("unexpected_kinds").map_or("-", String::as_str);
        if kinds != "-" {
            r.unexpected_runs += 1;
            for k in kinds.split(',') {
                *r.unexpected
                    .entry(k.split('@').next().unwrap_or(k).to_owned())
                    .or_default() += 1;
            }
        }
    }
    if rows.is_empty() {
        bail!("no detection results came back: {lines:?}");
    }
    Ok(rows.into_values().collect())
}

/// Nearest-rank percentile of `v` (sorted here), `p` in (0, 100].
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s.get(rank - 1).copied()
}

fn s1(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| game day | expected | kind that counted | detected | detect p50 / p95 / max (s) | clear p50 / p95 (s) | runs with unexpected findings | goal | met |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let seen: Vec<String> = r.seen.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        let unexpected: Vec<String> = r.unexpected.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        let p95 = percentile(&r.ttd_s, 95.0);
        let (goal_text, met) = match goal(&r.gameday) {
            Some((limit, text)) => (
                text,
                if r.found == r.runs && p95.is_some_and(|p| p <= limit) {
                    "yes"
                } else {
                    "no"
                },
            ),
            None => ("the file's deadline", "–"),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {}/{} | {} / {} / {} | {} / {} | {}{} | {} | {} |\n",
            r.gameday,
            r.expected.replace('|', ", "),
            if seen.is_empty() {
                "–".to_owned()
            } else {
                seen.join(", ")
            },
            r.found,
            r.runs,
            s1(percentile(&r.ttd_s, 50.0)),
            s1(p95),
            s1(percentile(&r.ttd_s, 100.0)),
            s1(percentile(&r.ttc_s, 50.0)),
            s1(percentile(&r.ttc_s, 95.0)),
            r.unexpected_runs,
            if unexpected.is_empty() {
                String::new()
            } else {
                format!(" ({})", unexpected.join(", "))
            },
            goal_text,
            met,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "detection gameday=nic-queue-drops run=1 outcome=passed expected=qdisc_drops|nic_drops|kernel_drops \
                        kind=qdisc_drops state=detected ttd_ms=3200 upper_ms=4500 ttc_ms=10700 within_ms=15000 unexpected=0 \
                        unexpected_kinds=-";

    #[test]
    fn rows_count_runs_misses_kinds_and_unexpected_findings() {
        let lines = vec![
            LINE.to_owned(),
            LINE.replace("run=1", "run=2").replace("ttd_ms=3200", "ttd_ms=4100"),
            LINE.replace("run=1", "run=3")
                .replace("kind=qdisc_drops", "kind=-")
                .replace("ttd_ms=3200", "ttd_ms=-")
                .replace("ttc_ms=10700", "ttc_ms=-")
                .replace("unexpected_kinds=-", "unexpected_kinds=one_way_loss@a,nic_drops@b"),
            "soak seconds=60 outcome=passed findings=0 kinds=-".to_owned(),
        ];
        let rows = table(&lines).expect("table");
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.runs, r.found, r.unexpected_runs), (3, 2, 1));
        assert_eq!(r.seen, BTreeMap::from([("qdisc_drops".to_owned(), 2)]));
        assert_eq!(r.ttd_s, [3.2, 4.1]);
        assert_eq!(r.ttc_s, [10.7, 10.7]);
        assert_eq!(
            r.unexpected,
            BTreeMap::from([("nic_drops".to_owned(), 1), ("one_way_loss".to_owned(), 1)])
        );
        let md = markdown(&rows);
        assert!(md.contains("| nic-queue-drops | qdisc_drops, nic_drops, kernel_drops | qdisc_drops ×2 | 2/3 | 3.2 / 4.1 / 4.1 | 10.7 / 10.7 | 1 (nic_drops ×1, one_way_loss ×1) | ≤ 5 s p95 | no |"), "{md}");
    }

    #[test]
    fn a_goal_is_met_only_with_every_run_detected_and_p95_within_it() {
        let lines: Vec<String> = (1..=20)
            .map(|i| {
                LINE.replace("run=1", &format!("run={i}"))
                    .replace("ttd_ms=3200", &format!("ttd_ms={}", i * 250))
            })
            .collect();
        let rows = table(&lines).expect("table");
        // p95 of 0.25 .. 5.0 s by nearest rank is the 19th: 4.75 s.
        assert_eq!(percentile(&rows[0].ttd_s, 95.0), Some(4.75));
        assert!(markdown(&rows).contains("| ≤ 5 s p95 | yes |"));
        let slow: Vec<String> = lines.iter().map(|l| l.replace("ttd_ms=", "ttd_ms=9")).collect();
        assert!(markdown(&table(&slow).expect("table")).contains("| ≤ 5 s p95 | no |"));
    }

    #[test]
    fn garbage_is_an_error_not_a_row() {
        assert!(table(&["detection gameday=x ttd_ms=soon".to_owned()]).is_err());
        assert!(table(&["soak seconds=1".to_owned()]).is_err());
        assert!(table(&["detection run=1".to_owned()]).is_err());
    }
}
