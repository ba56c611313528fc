//! Controller configuration: defaults < TOML file < environment < flags
//! (like the agent's). Unknown fields in the file are an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

mod faults;

pub use faults::{FaultConfig, FaultConfigError, FaultsSection};

use crate::auth::{TokenError, Tokens};
use crate::store::{Database, DatabaseUrl, DatabaseUrlError};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8477";
/// Largest request body accepted by default (413 beyond).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

#[derive(Debug, Parser, Default)]
#[command(
    name = "graydar-controller",
    version,
    about = "graydar controller: agent registry and findings history"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "GRAYDAR_CONTROLLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address [default: 0.0.0.0:8477].
    #[arg(long, env = "GRAYDAR_CONTROLLER_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the SQLite database [default: /var/lib/graydar-controller] (the agent keeps its
    /// fault journal in /var/lib/graydar).
    #[arg(long, env = "GRAYDAR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL instead of the SQLite database in --data-dir: `postgres://user:password@host/db`
    /// (or `postgresql://`; a Unix socket: `postgres:///db?host=/run/postgresql`).
    #[arg(long, env = "GRAYDAR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File of `role:token` lines; `GRAYDAR_TOKENS` (same format, comma-separated) adds to it.
    #[arg(long, env = "GRAYDAR_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "GRAYDAR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GRAYDAR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long, env = "GRAYDAR_LOG")]
    pub log_level: Option<String>,
    /// Base URL of the Prometheus game days ask (PromQL checks and aborts, expected alerts).
    #[arg(long, env = "GRAYDAR_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// Print the effective configuration (tokens redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the controller does instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Copy the SQLite database of a data directory into a new, empty PostgreSQL database, then exit
    /// (stop the controller that uses the data directory first; docs/src/install/ha.md).
    CopyToPostgres {
        /// The SQLite controller's data directory (its `data_dir`).
        #[arg(long, default_value = "/var/lib/graydar-controller")]
        from_data_dir: PathBuf,
        /// The PostgreSQL database to fill: `postgres://user:password@host/db`.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `postgres://…`: PostgreSQL instead of SQLite in `data_dir`.
    pub database_url: Option<String>,
    pub tokens_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub tls: Option<TlsSection>,
    /// Interval agents are told to heartbeat at (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// No heartbeat for this long: stale (default 3 heartbeat intervals).
    #[serde(default, with = "humantime_serde")]
    pub stale_after: Option<Duration>,
    /// No heartbeat for this long: lost (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub lost_after: Option<Duration>,
    /// Largest request body (bytes) before 413 (default 1 MiB).
    pub max_body_bytes: Option<usize>,
    /// `[faults]`: blast radius, maximum duration, lease TTL.
    #[serde(default)]
    pub faults: Option<FaultsSection>,
    /// `[prometheus]`: what game days ask.
    #[serde(default)]
    pub prometheus: Option<PrometheusSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSection {
    /// Base URL (`http://prometheus:9090`).
    pub url: String,
    /// Per query (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// A run whose abort rules cannot be evaluated for this long aborts
    /// (default 30s, 5s to 10m).
    #[serde(default, with = "humantime_serde")]
    pub abort_unanswered_after: Option<Duration>,
}

/// Where the controller's Prometheus is (its queries: gamedays/promql.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// Base URL (`http://prometheus:9090`), without a trailing `/`.
    pub url: String,
    pub timeout: Duration,
    /// A run whose `abort.promql` cannot be evaluated for this long aborts.
    pub abort_unanswered_after: Duration,
}

/// Default of `[prometheus] abort_unanswered_after`.
pub const ABORT_UNANSWERED_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// SQLite in the data directory, or PostgreSQL (`database_url`).
    pub database: Database,
    pub tokens: Tokens,
    pub tls: Option<TlsSection>,
    pub log_level: String,
    pub heartbeat_interval: Duration,
    pub stale_after: Duration,
    pub lost_after: Duration,
    pub max_body_bytes: usize,
    pub faults: FaultConfig,
    pub prometheus: Option<PrometheusConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {}", path.display(), source.to_string().trim_end())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("listen: {input:?} is not a socket address like 0.0.0.0:8477")]
    Listen {
        input: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// No token at all.
    #[error(
        "tokens: no tokens configured: every API endpoint needs one (--tokens-file or GRAYDAR_TOKENS, `role:token` entries)"
    )]
    NoTokens,
    /// A token entry of `origin` (a file, or `GRAYDAR_TOKENS`).
    #[error("tokens: {origin}: {source}")]
    TokenEntry {
        origin: String,
        #[source]
        source: TokenError,
    },
    #[error("tls: --tls-cert and --tls-key go together")]
    TlsPair,
    #[error("heartbeat_interval must be at least 1s")]
    HeartbeatInterval,
    #[error(transparent)]
    Faults(#[from] FaultConfigError),
    #[error("prometheus abort_unanswered_after: {0:?} is not between 5s and 10m")]
    AbortUnanswered(Duration),
    #[error("prometheus url: {0:?} is not an http:// or https:// URL")]
    PrometheusUrl(String),
    #[error(transparent)]
    DatabaseUrl(#[from] DatabaseUrlError),
}

/// `--prometheus-url` (or its variable) over `[prometheus] url`.
fn prometheus(flag: Option<String>, file: Option<PrometheusSection>) -> Result<Option<PrometheusConfig>, ConfigError> {
    let timeout = file.as_ref().and_then(|f| f.timeout).unwrap_or(Duration::from_secs(5));
    let abort_unanswered_after = file
        .as_ref()
        .and_then(|f| f.abort_unanswered_after)
        .unwrap_or(ABORT_UNANSWERED_AFTER);
    if !(Duration::from_secs(5)..=Duration::from_secs(600)).contains(&abort_unanswered_after) {
        return Err(ConfigError::AbortUnanswered(abort_unanswered_after));
    }
    let Some(url) = flag.or(file.map(|f| f.url)) else {
        return Ok(None);
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(ConfigError::PrometheusUrl(url));
    }
    Ok(Some(PrometheusConfig {
        url: url.trim_end_matches('/').to_owned(),
        timeout,
        abort_unanswered_after,
    }))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Config {
    /// `env_tokens` is the value of `GRAYDAR_TOKENS`, if set.
    pub fn load(cli: &Cli, env_tokens: Option<&str>) -> Result<Config, ConfigError> {
        let file: FileConfig = match &cli.config {
            Some(p) => toml::from_str(&read(p)?).map_err(|source| ConfigError::Parse {
                path: p.clone(),
                source,
            })?,
            None => FileConfig::default(),
        };
        let listen_s = cli
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_s.parse().map_err(|source| ConfigError::Listen {
            input: listen_s.clone(),
            source,
        })?;
        let mut tokens = Tokens::default();
        if let Some(p) = cli.tokens_file.clone().or(file.tokens_file) {
            tokens.add(&read(&p)?).map_err(|source| ConfigError::TokenEntry {
                origin: p.display().to_string(),
                source,
            })?;
        }
        if let Some(t) = env_tokens {
            tokens.add(t).map_err(|source| ConfigError::TokenEntry {
                origin: "GRAYDAR_TOKENS".to_owned(),
                source,
            })?;
        }
        if tokens.is_empty() {
            return Err(ConfigError::NoTokens);
        }
        let tls = match (cli.tls_cert.clone(), cli.tls_key.clone()) {
            (Some(cert), Some(key)) => Some(TlsSection { cert, key }),
            (None, None) => file.tls,
            _ => return Err(ConfigError::TlsPair),
        };
        let heartbeat_interval = file.heartbeat_interval.unwrap_or(Duration::from_secs(10));
        if heartbeat_interval < Duration::from_secs(1) {
            return Err(ConfigError::HeartbeatInterval);
        }
        // Saturating: `heartbeat_interval * 3` panics past Duration::MAX / 3.
        let stale_after = file.stale_after.unwrap_or(heartbeat_interval.saturating_mul(3));
        let lost_after = file.lost_after.unwrap_or(Duration::from_secs(300)).max(stale_after);
        let database = match cli.database_url.clone().or(file.database_url) {
            Some(url) => Database::Postgres(DatabaseUrl::parse(&url)?),
            None => Database::Sqlite {
                data_dir: cli
                    .data_dir
                    .clone()
                    .or(file.data_dir)
                    .unwrap_or_else(|| "/var/lib/graydar-controller".into()),
            },
        };
        Ok(Config {
            listen,
            database,
            tokens,
            tls,
            log_level: cli
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            heartbeat_interval,
            stale_after,
            lost_after,
            max_body_bytes: file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
            faults: file.faults.unwrap_or_default().resolve()?,
            prometheus: prometheus(cli.prometheus_url.clone(), file.prometheus)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller.example.toml");
        let text = std::fs::read_to_string(&path).expect("read deploy/controller.example.toml");
        let f: FileConfig = toml::from_str(&text).expect("example parses");
        assert!(f.listen.is_some());
    }

    #[test]
    fn unknown_fields_are_named_and_tokens_are_required() {
        let e = toml::from_str::<FileConfig>("listn = \"x\"").expect_err("unknown field");
        assert!(e.to_string().contains("listn"), "{e}");
        let cli = Cli::default();
        assert!(matches!(Config::load(&cli, None), Err(ConfigError::NoTokens)));
        let c = Config::load(&cli, Some("viewer:0123456789abcdef")).expect("config");
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.stale_after, Duration::from_secs(30));
    }

    #[test]
    fn abort_unanswered_after_defaults_to_30s_and_is_bounded() {
        let section = |extra: &str| -> Result<Option<PrometheusConfig>, ConfigError> {
            let f: PrometheusSection =
                toml::from_str(&format!("url = \"http://prom:9090\"\n{extra}")).expect("section parses");
            prometheus(None, Some(f))
        };
        let c = section("").expect("default").expect("configured");
        assert_eq!(c.abort_unanswered_after, ABORT_UNANSWERED_AFTER);
        let c = section("abort_unanswered_after = \"10s\"")
            .expect("10s")
            .expect("configured");
        assert_eq!(c.abort_unanswered_after, Duration::from_secs(10));
        for bad in ["1s", "11m"] {
            let e = section(&format!("abort_unanswered_after = \"{bad}\"")).expect_err(bad);
            assert!(e.to_string().contains("abort_unanswered_after"), "{e}");
        }
    }

    #[test]
    fn database_url_picks_postgres_and_its_password_is_not_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("controller.toml");
        std::fs::write(&path, "database_url = \"postgres://g:from-file@db/graydar\"\n").expect("write");
        let tokens = Some("viewer:0123456789abcdef");
        let c = Config::load(&Cli::default(), tokens).expect("config");
        assert!(matches!(c.database, Database::Sqlite { .. }), "SQLite by default");
        let from_file = Cli {
            config: Some(path),
            ..Cli::default()
        };
        let c = Config::load(&from_file, tokens).expect("config");
        let Database::Postgres(url) = &c.database else {
            panic!("database_url picks PostgreSQL: {c:?}");
        };
        assert_eq!(url.expose(), "postgres://g:from-file@db/graydar");
        assert!(!format!("{c:?}").contains("from-file"), "{c:?}");
        let flag = Cli {
            database_url: Some("postgresql:///graydar?host=/run/postgresql".into()),
            ..from_file
        };
        let c = Config::load(&flag, tokens).expect("config");
        assert!(
            matches!(&c.database, Database::Postgres(u) if u.expose().starts_with("postgresql:///")),
            "the flag over the file"
        );
        let bad = Cli {
            database_url: Some("mysql://db/graydar".into()),
            ..Cli::default()
        };
        let e = Config::load(&bad, tokens).expect_err("not PostgreSQL");
        assert!(e.to_string().contains("postgres://"), "{e}");
    }

    /// Found with the controller_config fuzz target's invariants: a huge
    /// heartbeat_interval made the default stale_after (3 heartbeats)
    /// overflow and the controller panic at start instead of starting.
    #[test]
    fn a_huge_heartbeat_interval_does_not_overflow_stale_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("controller.toml");
        std::fs::write(&path, "heartbeat_interval = \"10000000000000000000s\"\n").expect("write");
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        let c = Config::load(&cli, Some("viewer:0123456789abcdef")).expect("config");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10_000_000_000_000_000_000));
        assert_eq!(c.stale_after, Duration::MAX);
        assert!(c.lost_after >= c.stale_after);
    }
}
