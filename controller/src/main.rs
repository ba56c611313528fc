//! graydar-controller: agent registry, findings history and REST API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use graydar_controller::agents::Liveness;
use graydar_controller::api::{AppState, router};
use graydar_controller::config::{Cli, Config};
use graydar_controller::metrics::Metrics;
use graydar_controller::services::Services;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(graydar_controller::config::Command::CopyToPostgres { from_data_dir, to }) = &cli.command {
        return copy_to_postgres(from_data_dir, to);
    }
    let env_tokens = std::env::var("GRAYDAR_TOKENS").ok();
    let cfg = match Config::load(&cli, env_tokens.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("graydar-controller: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.print_config {
        println!("{cfg:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cfg.log_level).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("graydar-controller: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("graydar-controller: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `graydar-controller copy-to-postgres`: the SQLite database of a data
/// directory into an empty PostgreSQL database (store/copy.rs).
fn copy_to_postgres(from: &std::path::Path, to: &str) -> std::process::ExitCode {
    let url = match graydar_controller::store::DatabaseUrl::parse(to) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("graydar-controller: --to: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("graydar-controller: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(graydar_controller::store::copy::copy_sqlite_to_postgres(from, &url)) {
        Ok(report) => {
            for (table, rows) in &report.rows {
                println!("{table}: {rows} rows");
            }
            println!(
                "copied {} into {url}: start the controllers with --database-url (or database_url) now",
                from.join("graydar.db").display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("graydar-controller: copy-to-postgres: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls: reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls: certificates in {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "tls: no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("tls: private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let liveness = Liveness {
        stale_after: cfg.stale_after,
        lost_after: cfg.lost_after,
    };
    // A migration that fails stops the start here, with its reason.
    let store = graydar_controller::store::open(&cfg.database)
        .await
        .with_context(|| format!("opening the database ({})", cfg.database))?;
    let tls = match &cfg.tls {
        Some(t) => Some(tls_config(&t.cert, &t.key)?),
        None => None,
    };
    // Several controllers may share a PostgreSQL database (cluster.rs).
    let cluster = match &cfg.database {
        graydar_controller::store::Database::Postgres(url) => graydar_controller::cluster::Cluster::postgres(url)
            .await
            .with_context(|| format!("joining the controllers on {}", cfg.database))?,
        graydar_controller::store::Database::Sqlite { .. } => graydar_controller::cluster::Cluster::single(),
    };
    let services = Services::open_in(store, cluster, liveness, cfg.faults, cfg.prometheus.clone()).await?;
    let metrics = Metrics::for_services(&services);
    let app = Arc::new(AppState {
        services,
        tokens: cfg.tokens.clone(),
        metrics,
        heartbeat_interval_seconds: cfg.heartbeat_interval.as_secs(),
        tls: cfg.tls.is_some(),
    });
    let routes = router(app.clone(), cfg.max_body_bytes);
    let listener =
        std::net::TcpListener::bind(cfg.listen).with_context(|| format!("listen: cannot bind {}", cfg.listen))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = %cfg.database,
        tokens = cfg.tokens.len(),
        "listening on {scheme}://{local}"
    );

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (flusher, background) = app.services.spawn_background(stop_rx.clone());

    let server = match tls {
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let h2 = handle.clone();
            tokio::spawn(async move {
                let _ = stop_rx.changed().await;
                h2.graceful_shutdown(Some(Duration::from_secs(5)));
            });
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            tokio::spawn(async move {
                axum_server::tls_rustls::from_tcp_rustls(listener, rustls)?
                    .handle(handle)
                    .serve(routes.into_make_service())
                    .await
            })
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(async move {
                axum::serve(listener, routes)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.changed().await;
                    })
                    .await
            })
        }
    };

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    match server.await {
        Ok(r) => r.context("http server")?,
        Err(e) => tracing::warn!(error = %e, "http task"),
    }
    let _ = flusher.await;
    for task in background {
        task.abort();
    }
    app.services.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
