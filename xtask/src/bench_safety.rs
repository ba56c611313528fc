//! `cargo xtask bench --only safety`: the VM tier's randomized kill /
//! partition trials (tests/tests/vm_fault_safety.rs,
//! `randomized_kill_and_partition_trials_leave_no_orphans`) run 200 times
//! instead of CI's 50, in the same guest the VM tier boots. The test prints
//! its report as a `GRAYDAR_RESULT safety ...` line; this reads it back,
//! prints it as a table, appends it to `target/bench/safety.txt`, and fails
//! when the trials fail or any orphan remains (the kernel after the trials
//! differs from its baseline: tests/src/orphans.rs).

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// Trials per run (CI's VM tier runs 50).
pub const TRIALS: u32 = 200;
const TEST: &str = "randomized_kill_and_partition_trials_leave_no_orphans";

pub fn run(ws: &Path) -> Result<()> {
    println!(
        "bench safety: {TRIALS} randomized kill / restart / partition trials over every fault kind in the VM (TCG), \
         then revert-all and the orphan census against the baseline"
    );
    let started = Instant::now();
    let trials = TRIALS.to_string();
    let lines = crate::vm::run_test_targets(
        ws,
        &crate::vm::default_cache(ws),
        &["vm_fault_safety"],
        &["--exact".into(), TEST.into()],
        &[("GRAYDAR_SAFETY_TRIALS", &trials)],
    )
    .context("the safety trials failed in the guest (orphans, or a trial that broke): see the report above")?;
    let wall = started.elapsed().as_secs_f64();
    let line = lines
        .iter()
        .find(|l| l.starts_with("safety "))
        .with_context(|| format!("the guest printed no safety result (lines: {lines:?})"))?;
    let r = parse(line).with_context(|| format!("parsing the guest's result {line:?}"))?;
    println!(
        "  trials                  {} (seed {}: GRAYDAR_TRIAL_SEED repeats the draws)",
        r.trials, r.seed
    );
    println!(
        "  trial time              {} s (whole run, build and boot included: {wall:.0} s)",
        r.seconds
    );
    println!("  actions                 {}", r.actions.replace(',', ", "));
    println!("  applied/chosen per kind {}", r.kinds.replace(',', ", "));
    println!(
        "  orphans after settling  {} ({} s to settle)",
        r.orphans, r.settle_seconds
    );
    let dir = ws.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("safety.txt");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(
        f,
        "{} {line} wall_seconds={wall:.0}",
        graydar_common::timestamp::Timestamp::now()
    )
    .with_context(|| format!("writing {}", path.display()))?;
    println!("  recorded in {}", path.display());
    if r.trials != TRIALS {
        bail!("asked for {TRIALS} trials, the guest ran {}", r.trials);
    }
    if r.orphans != 0 {
        bail!("{} orphans remain after the trials", r.orphans);
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct Report {
    trials: u32,
    seed: String,
    seconds: String,
    settle_seconds: String,
    orphans: u32,
    actions: String,
    kinds: String,
}

fn parse(line: &str) -> Result<Report> {
    let field = |name: &str| -> Result<String> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
            .with_context(|| format!("no {name}="))
    };
    let num = |name: &str| -> Result<u32> { field(name)?.parse().with_context(|| format!("{name} is not a number")) };
    Ok(Report {
        trials: num("trials")?,
        seed: field("seed")?,
        seconds: field("seconds")?,
        settle_seconds: field("settle_seconds")?,
        orphans: num("orphans")?,
        actions: field("actions")?,
        kinds: field("kinds")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_report() {
        let r = parse(
            "safety trials=12 seed=99 seconds=77 settle_seconds=0.8 orphans=0 actions=agent-kill-restart:2,partition:4 \
             kinds=netem-egress:1/1,dm-flakey:0/1",
        )
        .expect("parses");
        assert_eq!(
            r,
            Report {
                trials: 12,
                seed: "99".into(),
                seconds: "77".into(),
                settle_seconds: "0.8".into(),
                orphans: 0,
                actions: "agent-kill-restart:2,partition:4".into(),
                kinds: "netem-egress:1/1,dm-flakey:0/1".into(),
            }
        );
        assert!(parse("safety trials=12 seconds=77").is_err());
        assert!(parse("safety trials=x seed=1 seconds=1 settle_seconds=1 orphans=0 actions= kinds=").is_err());
    }
}
