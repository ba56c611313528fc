//! `cargo xtask run`: the controller and the agent together on this host,
//! the agent registered and reporting. Tokens are generated per session.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::{cargo, is_root, ok, token};

const CONTROLLER_LISTEN: &str = "127.0.0.1:8477";

struct Guard(Vec<(&'static str, Child)>);

impl Drop for Guard {
    fn drop(&mut self) {
        // Agent first (its reporter delivers what it buffered), then the controller.
        for (name, c) in self.0.iter_mut() {
            if let Ok(None) = c.try_wait() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
            }
            match c.wait() {
                Ok(s) => println!("xtask run: {name} exited: {s}"),
                Err(e) => println!("xtask run: waiting for {name}: {e}"),
            }
        }
    }
}

pub fn run(ws: &Path, args: &[String]) -> Result<()> {
    ok(cargo()
        .current_dir(ws)
        .args(["build", "--release", "-p", "graydar-agent", "-p", "graydar-controller"]))?;
    if !is_root() {
        println!("xtask run: not root: eBPF probes will be disabled (the agent says why); run as root for all probes");
    }
    let dir = ws.join("target/xtask-run");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (agent_tok, viewer_tok, operator_tok) = (token()?, token()?, token()?);
    let tokens_file = dir.join("tokens");
    std::fs::write(
        &tokens_file,
        format!("agent:{agent_tok}\nviewer:{viewer_tok}\noperator:{operator_tok}\n"),
    )?;
    let url = format!("http://{CONTROLLER_LISTEN}");
    let agent_cfg = dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!("[controller]\nurl = \"{url}\"\nreport_interval = \"5s\"\n"),
    )?;
    let rel = ws.join("target/release");

    // Ctrl-C reaches both children (same process group); xtask waits for
    // their graceful shutdown instead of dying first.
    // SAFETY: SIG_IGN for SIGINT in this process only; children spawned
    // afterwards get the default disposition back on exec.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let mut guard = Guard(Vec::new());
    let controller = Command::new(rel.join("graydar-controller"))
        .args(["--listen", CONTROLLER_LISTEN, "--data-dir"])
        .arg(dir.join("data"))
        .arg("--tokens-file")
        .arg(&tokens_file)
        .env_remove("GRAYDAR_TOKENS")
        .spawn()
        .context("starting graydar-controller")?;
    guard.0.push(("graydar-controller", controller));
    std::thread::sleep(Duration::from_millis(500));

    let mut agent = Command::new(rel.join("graydar-agent"));
    if args.iter().any(|a| a == "--config") {
        println!(
            "xtask run: your --config must have a [controller] section (url = \"{url}\") for the agent to report; \
             the token is passed as GRAYDAR_CONTROLLER_TOKEN"
        );
    } else {
        agent.arg("--config").arg(&agent_cfg);
    }
    let agent = agent
        .args(args)
        .env("GRAYDAR_CONTROLLER_TOKEN", &agent_tok)
        .spawn()
        .context("starting graydar-agent")?;
    guard.0.insert(0, ("graydar-agent", agent));

    // Wait until the agent shows up at the controller.
    let cli = rel.join("graydar");
    let start = Instant::now();
    let mut registered = false;
    while start.elapsed() < Duration::from_secs(30) {
        let out = Command::new(&cli)
            .args(["--url", &url, "--token", &viewer_tok, "agents"])
            .output();
        if let Ok(o) = out
            && o.status.success()
            && String::from_utf8_lossy(&o.stdout).lines().count() > 1
        {
            println!("{}", String::from_utf8_lossy(&o.stdout));
            registered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "127.0.0.1:9477".to_owned())
        .replace("0.0.0.0", "127.0.0.1");
    println!(
        "xtask run: {}",
        if registered {
            "agent registered and reporting"
        } else {
            "the agent has NOT registered yet (see the logs above)"
        }
    );
    println!("  controller: {url}   (data in {})", dir.join("data").display());
    println!("  tokens for this session ({}):", tokens_file.display());
    println!("    agent:    {agent_tok}");
    println!("    viewer:   {viewer_tok}");
    println!("    operator: {operator_tok}");
    println!(
        "  CLI:    GRAYDAR_URL={url} GRAYDAR_TOKEN={viewer_tok} {} findings",
        cli.display()
    );
    println!("  agent:  http://{listen}/metrics  http://{listen}/api/v1/findings");
    println!("  Ctrl-C stops both.");
    // Wait for the agent (Ctrl-C or exit), then the guard stops the controller.
    if let Some((_, a)) = guard.0.first_mut() {
        a.wait().context("waiting for the agent")?;
    }
    Ok(())
}
