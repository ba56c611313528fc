//! `cargo xtask bench --only idle-cpus`: the agent's idle memory against the
//! number of CPUs, measured in the VM (QEMU, TCG) booted with 2 and with 16
//! virtual CPUs, so that what grows with the CPU count (per-CPU map values,
//! threads, buffers sized by CPUs) shows on a 2-core machine too.
//!
//! The guest runs the release agent with its default configuration for
//! `idle_seconds`, then prints its `/proc/PID/status` memory lines; the host
//! reads them back from the console (`GRAYDAR_RESULT` lines). RSS is what the
//! agent holds; CPU time under software emulation says nothing about a real
//! host and is not reported.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// The guest CPU counts measured, smallest first (the first is the baseline).
pub const CPU_COUNTS: &[u32] = &[2, 16];

pub fn run(ws: &Path, bin: &Path, idle_seconds: u64) -> Result<()> {
    println!(
        "bench idle-cpus: agent idle RSS against the CPU count, in the VM (TCG), {idle_seconds} s idle, \
         default configuration"
    );
    let cache = crate::vm::default_cache(ws);
    let mut rows = Vec::new();
    for &cpus in CPU_COUNTS {
        let script = guest_script(bin, idle_seconds);
        let lines = crate::vm::run_command_results(ws, &cache, &script, cpus)?;
        let line = lines
            .iter()
            .find(|l| l.starts_with("idle "))
            .with_context(|| format!("the guest with {cpus} CPUs printed no result (lines: {lines:?})"))?;
        let r = parse(line).with_context(|| format!("parsing the guest's result {line:?}"))?;
        if r.cpus != cpus {
            bail!("asked for {cpus} virtual CPUs, the guest saw {}", r.cpus);
        }
        rows.push(r);
    }
    let base = rows.first().context("no measurement")?;
    println!(
        "  {:>5} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "CPUs", "possible", "RSS MiB", "anon MiB", "peak MiB", "threads"
    );
    for r in &rows {
        println!(
            "  {:>5} {:>9} {:>10.1} {:>10.1} {:>10.1} {:>8}",
            r.cpus,
            r.possible,
            r.rss_kib as f64 / 1024.0,
            r.anon_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0,
            r.threads
        );
    }
    for r in rows.iter().skip(1) {
        println!(
            "  {} CPUs / {} CPUs: RSS x{:.2} (+{:.1} MiB), anon x{:.2} (goal: RSS <= 32 MiB at 16 CPUs)",
            r.cpus,
            base.cpus,
            r.rss_kib as f64 / base.rss_kib.max(1) as f64,
            (r.rss_kib as f64 - base.rss_kib as f64) / 1024.0,
            r.anon_kib as f64 / base.anon_kib.max(1) as f64,
        );
    }
    Ok(())
}

fn guest_script(bin: &Path, idle_seconds: u64) -> String {
    format!(
        "st=$(mktemp -d)\n\
         {bin} --listen 127.0.0.1:9477 --state-dir \"$st\" --log-level warn &\n\
         pid=$!\n\
         sleep {idle_seconds}\n\
         kill -0 $pid || {{ echo 'the agent exited during the idle period'; exit 1; }}\n\
         m() {{ awk -v k=\"$1:\" '$1 == k {{ print $2 }}' /proc/$pid/status; }}\n\
         echo \"GRAYDAR_RESULT idle cpus=$(nproc) possible=$(cat /sys/devices/system/cpu/possible) \
         rss=$(m VmRSS) anon=$(m RssAnon) hwm=$(m VmHWM) threads=$(m Threads)\"\n\
         kill $pid; wait $pid\n\
         exit 0\n",
        bin = bin.display()
    )
}

#[derive(Debug, PartialEq)]
struct Idle {
    cpus: u32,
    possible: String,
    rss_kib: u64,
    anon_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

fn parse(line: &str) -> Result<Idle> {
    let field = |name: &str| -> Result<&str> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .with_context(|| format!("no {name}="))
    };
    let num = |name: &str| -> Result<u64> { field(name)?.parse().with_context(|| format!("{name} is not a number")) };
    Ok(Idle {
        cpus: u32::try_from(num("cpus")?)?,
        possible: field("possible")?.to_owned(),
        rss_kib: num("rss")?,
        anon_kib: num("anon")?,
        hwm_kib: num("hwm")?,
        threads: num("threads")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_result_line() {
        let r = parse("idle cpus=16 possible=0-15 rss=23456 anon=9000 hwm=40000 threads=7").expect("parses");
        assert_eq!(
            r,
            Idle {
                cpus: 16,
                possible: "0-15".into(),
                rss_kib: 23456,
                anon_kib: 9000,
                hwm_kib: 40000,
                threads: 7
            }
        );
        assert!(parse("idle cpus=16 possible=0-15 rss= anon=1 hwm=1 threads=1").is_err());
    }
}
