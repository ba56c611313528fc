//! graydar-agent: watches this host for gray failures and serves what it finds.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser as _;
use graydar_agent::config::{Cli, Config};
use graydar_agent::findings::FindingStore;
use graydar_agent::http::{AppState, router};
use graydar_agent::metrics::Metrics;
use graydar_agent::signals::disk::DiskSignal;
use graydar_agent::signals::drops::DropSignal;
use graydar_agent::signals::incast::IncastSignal;
use graydar_agent::signals::paths::PathsSignal;
use graydar_agent::signals::routes::RouteSignal;
use graydar_agent::signals::{self, Context, Runner};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("graydar-agent: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.print_config {
        println!("{cfg:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_new(&cfg.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
    for d in &cfg.deprecations {
        tracing::warn!("configuration: {d}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("graydar-agent: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("graydar-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), host = %cfg.hostname, listen = %cfg.listen, "starting");
    let metrics = Arc::new(Metrics::new());
    let findings = Arc::new(Mutex::new(FindingStore::new(
        cfg.hostname.clone(),
        cfg.resolved_retention,
    )));
    let ready = Arc::new(AtomicBool::new(false));

    // Bind first: a bad or busy listen address fails before any probe loads.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", cfg.listen))?;
    let shutdown = shutdown_signal();

    let netlink = match rtnetlink::new_connection() {
        Ok((conn, handle, _)) => {
            tokio::spawn(conn);
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "netlink unavailable: qdisc statistics disabled");
            None
        }
    };

    // Faults: reverts what a previous run left applied, before anything else
    // (before the eBPF load, which takes seconds on a busy host).
    let faults = graydar_agent::faults::runtime::FaultRuntime::start(&cfg.state_dir, netlink.clone()).await;

    // The eBPF object, loaded once; each probe takes its programs from it.
    let mut ebpf = signals::load_ebpf(&cfg);
    let kernel = signals::drops::start_kernel_probe(&cfg, &metrics, &mut ebpf);
    // The controller channel (agent/src/channel/), shared by the reporter,
    // fault assignments and the path mesh: only with a [controller] section.
    let channel = match &cfg.controller {
        Some(section) => {
            Some(graydar_agent::channel::Channel::new(section, &cfg.state_dir).context("controller channel")?)
        }
        None => None,
    };
    let reporter = match (&cfg.controller, &channel) {
        (Some(section), Some(channel)) => Some(graydar_agent::reporter::Reporter::start(
            &cfg,
            section,
            channel.clone(),
            metrics.clone(),
            findings.clone(),
            kernel.is_some(),
        )),
        _ => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Fault assignments from the controller (long-poll; agent/src/faults/assign.rs).
    let assign_task = match (&cfg.controller, &channel, &faults) {
        (Some(section), Some(channel), Some(rt)) if section.faults => Some(tokio::spawn(
            graydar_agent::faults::assign::Assigner::new(
                &cfg,
                channel.clone(),
                rt.engine.clone(),
                &rt.recovered,
                metrics.clone(),
                stop_rx.clone(),
            )
            .run(),
        )),
        _ => None,
    };
    // The signals (agent/src/signals/), one runner for all. Routes first:
    // subscribed before the agent reports ready (the drop sampler's first round).
    let mut signals = Runner::new(
        Context {
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            findings: findings.clone(),
            netlink,
            ebpf,
            kernel_drops: kernel,
            channel: channel.clone(),
        },
        ready.clone(),
        stop_rx.clone(),
    );
    signals
        .start::<RouteSignal>()
        .start::<DropSignal>()
        .start::<IncastSignal>()
        .start::<DiskSignal>()
        .start::<PathsSignal>()
        .started();
    // Start-up's freed heap (BTF, the eBPF object) back to the kernel: once
    // now, and once more when the agent is ready (the signals' own start-up,
    // their first samples and first netlink dumps, ends only then).
    graydar_agent::sys::release_freed_heap();
    tokio::spawn(release_heap_when_ready(ready.clone(), stop_rx.clone()));

    let app = router(AppState {
        metrics,
        findings,
        ready,
    });
    tracing::info!("serving http://{}/metrics and /api/v1/findings", cfg.listen);
    let mut stop_http = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_http.changed().await;
            })
            .await
    });

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(t) = assign_task {
        // It stops at once on the signal (an in-flight apply finishes first).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
    }
    if let Some(f) = faults {
        f.stop().await;
    }
    signals.join().await;
    if let Some(r) = reporter {
        // One last delivery, bounded by the request timeout.
        r.stop().await;
    }
    match server.await {
        Ok(r) => r.context("http server")?,
        Err(e) => tracing::warn!(error = %e, "http task"),
    }
    // The runner dropped the signals and with them the eBPF object: programs detached.
    tracing::info!("stopped");
    Ok(())
}

/// Waits until the agent is ready (or stopping), lets the first round of
/// every signal settle, then hands the freed heap back once more.
async fn release_heap_when_ready(ready: Arc<AtomicBool>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let poll = async {
        while !ready.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::select! {
        () = poll => graydar_agent::sys::release_freed_heap(),
        _ = stop.changed() => {}
    }
}

/// Installs the SIGTERM and SIGINT handlers now (not on first poll), so a
/// SIGTERM that arrives as soon as /readyz answers reaches the graceful
/// shutdown instead of killing the process; the future resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (term, int) => {
                if let Err(e) = term.as_ref().and(int.as_ref()) {
                    tracing::warn!(error = %e, "cannot install SIGTERM/SIGINT handlers");
                }
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
