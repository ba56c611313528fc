//! graydar-controller (skeleton): serves health endpoints so deployments can
//! be wired; the registry, findings history and game days come in the
//! controller issue.

use clap::Parser;

#[derive(Parser)]
#[command(name = "graydar-controller", version, about = "graydar controller (skeleton)")]
struct Cli {
    /// HTTP listen address.
    #[arg(long, env = "GRAYDAR_CONTROLLER_LISTEN", default_value = "0.0.0.0:8477")]
    listen: std::net::SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(|| async { "ready\n" }));
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("graydar-controller (skeleton) listening on {}", cli.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
