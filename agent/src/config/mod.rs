//! Agent configuration: defaults < TOML file < environment < command-line flags.
//! Unknown fields in the file are an error that names the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::detect::drops::DropConfig;
use crate::detect::incast::IncastConfig;
use crate::detect::routes::RoutesConfig;
pub use crate::probes::drops::kernel::AttachMode;

mod disk;
pub use disk::{DiskConfig, DiskConfigError};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9477";

/// Command line of graydar-agent. Every flag can also be set from the
/// environment variable named in its help.
#[derive(Debug, Parser, Default)]
#[command(name = "graydar-agent", version, about = "graydar gray-failure detection agent")]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "GRAYDAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address for /metrics, /healthz, /readyz and /api/v1 [default: 0.0.0.0:9477].
    #[arg(long, env = "GRAYDAR_LISTEN")]
    pub listen: Option<String>,
    /// Identity of this host in findings [default: the kernel hostname].
    #[arg(long, env = "GRAYDAR_HOSTNAME")]
    pub hostname: Option<String>,
    /// Where the host's /proc is mounted (a DaemonSet mounts it at /host/proc).
    #[arg(long, env = "PROCFS_ROOT")]
    pub procfs_root: Option<PathBuf>,
    /// Where the host's /sys is mounted.
    #[arg(long, env = "SYSFS_ROOT")]
    pub sysfs_root: Option<PathBuf>,
    /// Directory of the fault journal; faults left there by a crash are reverted at start
    /// [default: /var/lib/graydar].
    #[arg(long, env = "GRAYDAR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long, env = "GRAYDAR_LOG")]
    pub log_level: Option<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The configuration file. All fields optional.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub hostname: Option<String>,
    pub procfs_root: Option<PathBuf>,
    pub sysfs_root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    /// How long resolved findings of every kind stay listed in
    /// /api/v1/findings (default 1h). Replaces `[drops] resolved_retention`,
    /// which is still read (with a deprecation warning) when this is unset.
    #[serde(default, with = "humantime_serde")]
    pub resolved_retention: Option<Duration>,
    /// `[drops]`, split by [`DropsSection::from_table`].
    pub drops: Option<toml::Table>,
    #[serde(default)]
    pub ebpf: EbpfSection,
    /// `[disk]`: fsync/block-I/O probes, canaries, disk detectors.
    #[serde(default)]
    pub disk: DiskConfig,
    /// `[controller]`: where to report findings (no reporting without it).
    pub controller: Option<ControllerSection>,
    /// `[incast]`: TCP incast probes and detector.
    #[serde(default)]
    pub incast: IncastConfig,
    /// `[paths]`: the path-probe mesh (agent/src/signals/paths.rs).
    #[serde(default)]
    pub paths: crate::detect::paths::PathsConfig,
    /// `[routes]`: route / link / neighbour churn and the route_flap detector.
    #[serde(default)]
    pub routes: RoutesConfig,
}

/// `[ebpf]`: how probes attach.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbpfSection {
    #[serde(default)]
    pub kfree_skb: AttachMode,
    #[serde(default)]
    pub fsync: crate::probes::disk::fsync::FsyncWalk,
}

/// `[drops]`: sampling of the drop collectors plus the detector settings
/// ([`DropConfig`], in the same table).
#[derive(Debug, Clone)]
pub struct DropsSection {
    /// Sampling period of the drop collectors.
    pub interval: Duration,
    /// Deprecated: `[drops] resolved_retention`, the retention of resolved
    /// findings before it became the top-level `resolved_retention`. Still
    /// honoured when the top-level key is unset, with a warning.
    pub resolved_retention: Option<Duration>,
    /// Interfaces never evaluated (exact names).
    pub exclude_interfaces: Vec<String>,
    pub detector: DropConfig,
}

impl DropsSection {
    /// serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
    /// agent's own keys are taken out here and the rest must be exactly
    /// [`DropConfig`]'s fields (unknown ones are named in the error).
    pub fn from_table(mut t: toml::Table) -> Result<DropsSection, ConfigError> {
        let mut out = DropsSection::default();
        if let Some(v) = t.remove("interval") {
            out.interval = duration_field("drops.interval", v)?;
        }
        if let Some(v) = t.remove("resolved_retention") {
            out.resolved_retention = Some(duration_field("drops.resolved_retention", v)?);
        }
        if let Some(v) = t.remove("exclude_interfaces") {
            out.exclude_interfaces = Vec::<String>::deserialize(v).map_err(ConfigError::DropsExcluded)?;
        }
        out.detector = DropConfig::deserialize(toml::Value::Table(t)).map_err(ConfigError::Drops)?;
        Ok(out)
    }
}

fn duration_field(field: &'static str, v: toml::Value) -> Result<Duration, ConfigError> {
    let s = v.as_str().ok_or(ConfigError::DurationType { field })?;
    humantime::parse_duration(s).map_err(|source| ConfigError::BadDuration {
        field,
        value: s.to_owned(),
        source,
    })
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_retention() -> Duration {
    Duration::from_secs(3600)
}

impl Default for DropsSection {
    fn default() -> Self {
        DropsSection {
            interval: default_interval(),
            resolved_retention: None,
            exclude_interfaces: Vec::new(),
            detector: DropConfig::default(),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub hostname: String,
    pub procfs_root: PathBuf,
    pub sysfs_root: PathBuf,
    pub state_dir: PathBuf,
    pub log_level: String,
    /// How long resolved findings (every kind) stay listed in /api/v1/findings.
    pub resolved_retention: Duration,
    /// Deprecated settings found in the file, one message each, for the
    /// agent to log once logging is set up.
    pub deprecations: Vec<String>,
    pub drops: DropsSection,
    pub ebpf: EbpfSection,
    pub incast: IncastConfig,
    pub disk: DiskConfig,
    pub controller: Option<ControllerSection>,
    pub routes: RoutesConfig,
    pub paths: crate::detect::paths::PathsConfig,
    /// The mesh keys read from `[paths] key_file` (None: from the controller).
    pub mesh_keys: Option<crate::probes::paths::auth::MeshKeys>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[paths] key_file {path}: {source}")]
    MeshKeys {
        path: PathBuf,
        #[source]
        source: crate::probes::paths::auth::KeyError,
    },
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the unknown or mistyped field and its line.
    #[error("config file {}: {}", path.display(), source.to_string().trim_end())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("listen: {value:?} is not a socket address like 0.0.0.0:9477 ({source})")]
    Listen {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// `[drops]` keys other than the agent's own that are not [`DropConfig`]'s.
    #[error("drops: {}", .0.to_string().trim_end())]
    Drops(#[source] toml::de::Error),
    #[error("drops: exclude_interfaces: {0}")]
    DropsExcluded(#[source] toml::de::Error),
    #[error("drops: {field}: expected a duration string like \"1s\"")]
    DurationType { field: &'static str },
    #[error("drops: {field}: {value:?}: {source}")]
    BadDuration {
        field: &'static str,
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("drops: {0}")]
    DropsInvalid(#[from] crate::detect::drops::DropConfigError),
    #[error("drops.interval must be between 100ms and 1h, got {0:?}")]
    Interval(Duration),
    #[error("disk: {0}")]
    Disk(#[from] DiskConfigError),
    #[error("controller: {0}")]
    Controller(String),
    /// The token file cannot be read. The message stops before the cause:
    /// the controller channel's set-up error that carries it is printed
    /// with its chain of sources (`{:#}`), which names the cause once.
    #[error("controller: token_file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The systemd credential cannot be read (printed like [`ConfigError::TokenFile`]).
    #[error("controller: credential {}", path.display())]
    Credential {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Incast(#[from] crate::detect::incast::IncastConfigError),
    #[error("{0}")]
    Paths(#[from] crate::detect::paths::PathsConfigError),
    #[error("{0}")]
    Routes(#[from] crate::detect::routes::RoutesConfigError),
}

impl Config {
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let listen_str = cli
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_str.parse().map_err(|source| ConfigError::Listen {
            value: listen_str.clone(),
            source,
        })?;
        let hostname = cli
            .hostname
            .clone()
            .or(file.hostname)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(kernel_hostname);
        let drops = match file.drops {
            Some(t) => DropsSection::from_table(t)?,
            None => DropsSection::default(),
        };
        drops.detector.validate()?;
        if drops.interval < Duration::from_millis(100) || drops.interval > Duration::from_secs(3600) {
            return Err(ConfigError::Interval(drops.interval));
        }
        file.incast.validate()?;
        file.paths.validate()?;
        let mesh_keys = match &file.paths.key_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let keys = crate::probes::paths::auth::MeshKeys::parse_file(&text).map_err(|source| {
                    ConfigError::MeshKeys {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(keys)
            }
        };
        file.routes.validate()?;
        file.disk.validate()?;
        let controller = file.controller.map(ControllerSection::validated).transpose()?;
        let mut deprecations = Vec::new();
        if drops.resolved_retention.is_some() {
            deprecations.push(if file.resolved_retention.is_some() {
                "[drops] resolved_retention is deprecated and ignored: the top-level resolved_retention is set".to_owned()
            } else {
                "[drops] resolved_retention is deprecated: set resolved_retention at the top level of the file (it applies to every finding kind)".to_owned()
            });
        }
        let resolved_retention = file
            .resolved_retention
            .or(drops.resolved_retention)
            .unwrap_or_else(default_retention);
        Ok(Config {
            listen,
            hostname,
            procfs_root: cli
                .procfs_root
                .clone()
                .or(file.procfs_root)
                .unwrap_or_else(|| "/proc".into()),
            sysfs_root: cli
                .sysfs_root
                .clone()
                .or(file.sysfs_root)
                .unwrap_or_else(|| "/sys".into()),
            state_dir: cli
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| "/var/lib/graydar".into()),
            log_level: cli
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            resolved_retention,
            deprecations,
            drops,
            ebpf: file.ebpf,
            incast: file.incast,
            disk: file.disk,
            controller,
            routes: file.routes,
            paths: file.paths,
            mesh_keys,
        })
    }
}

fn kernel_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `[controller]`: the reporter registers with the controller at `url`,
/// heartbeats and pushes finding transitions every `report_interval`,
/// buffering at most `buffer_size` transitions while it is unreachable.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// e.g. `http://controller:8477` or `https://...`.
    pub url: String,
    /// Bearer token with the `agent` role (or `token_file`, or the
    /// GRAYDAR_CONTROLLER_TOKEN environment variable).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// PEM certificate to trust for HTTPS (self-signed or private CA).
    pub ca_cert: Option<PathBuf>,
    #[serde(default = "default_report_interval", with = "humantime_serde")]
    pub report_interval: Duration,
    #[serde(default = "default_buffer_size")]
    pub buffer_size: usize,
    /// Labels sent at registration (e.g. rack, zone).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Take fault assignments from the controller (long-poll; default true).
    #[serde(default = "default_true")]
    pub faults: bool,
}

fn default_true() -> bool {
    true
}

fn default_report_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_buffer_size() -> usize {
    10_000
}

impl std::fmt::Debug for ControllerSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerSection")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_cert", &self.ca_cert)
            .field("report_interval", &self.report_interval)
            .field("buffer_size", &self.buffer_size)
            .field("labels", &self.labels)
            .field("faults", &self.faults)
            .finish()
    }
}

impl ControllerSection {
    fn validated(self) -> Result<ControllerSection, ConfigError> {
        let err = |m: String| Err(ConfigError::Controller(m));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return err(format!("url {:?} must start with http:// or https://", self.url));
        }
        if self.report_interval < Duration::from_millis(100) || self.report_interval > Duration::from_secs(3600) {
            return err(format!(
                "report_interval must be between 100ms and 1h, got {:?}",
                self.report_interval
            ));
        }
        if self.buffer_size == 0 {
            return err("buffer_size must be at least 1".into());
        }
        if self.token.is_some() && self.token_file.is_some() {
            return err("set token or token_file, not both".into());
        }
        Ok(self)
    }

    /// The token: `token`, else the contents of `token_file`, else `env`
    /// (GRAYDAR_CONTROLLER_TOKEN).
    pub fn resolve_token(&self, env: Option<String>) -> Result<Option<String>, ConfigError> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        if let Some(p) = &self.token_file {
            return std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|source| ConfigError::TokenFile {
                    path: p.clone(),
                    source,
                });
        }
        Ok(env.filter(|t| !t.is_empty()))
    }

    /// The token as the agent process finds it, `env` looking up environment
    /// variables (`std::env::var` in the agent, a map in tests): `token`, else
    /// `token_file` (a `${CREDENTIALS_DIRECTORY}` in it is expanded), else
    /// GRAYDAR_CONTROLLER_TOKEN, else the systemd credential
    /// `$CREDENTIALS_DIRECTORY/controller-token` when the unit loaded one
    /// (`LoadCredential=controller-token:/etc/graydar/agent.token` in
    /// deploy/systemd/graydar-agent.service).
    pub fn resolve_token_from(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
        let creds = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty());
        if let Some(p) = &self.token_file {
            let text = p.to_string_lossy();
            if text.contains("${CREDENTIALS_DIRECTORY}") {
                let Some(dir) = &creds else {
                    return Err(ConfigError::Controller(format!(
                        "token_file {text}: CREDENTIALS_DIRECTORY is not set (only systemd's LoadCredential= sets it)"
                    )));
                };
                let path = PathBuf::from(text.replace("${CREDENTIALS_DIRECTORY}", dir));
                return std::fs::read_to_string(&path)
                    .map(|t| Some(t.trim().to_owned()))
                    .map_err(|source| ConfigError::TokenFile { path, source });
            }
        }
        if self.token.is_some() || self.token_file.is_some() {
            return self.resolve_token(None);
        }
        if let Some(t) = env("GRAYDAR_CONTROLLER_TOKEN").filter(|t| !t.is_empty()) {
            return Ok(Some(t));
        }
        if let Some(dir) = creds {
            let path = Path::new(&dir).join(TOKEN_CREDENTIAL);
            match std::fs::read_to_string(&path) {
                Ok(t) => return Ok(Some(t.trim().to_owned()).filter(|t| !t.is_empty())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::Credential { path, source }),
            }
        }
        Ok(None)
    }
}

/// The systemd credential the agent's controller token is loaded as.
pub const TOKEN_CREDENTIAL: &str = "controller-token";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "test.toml".into(),
            source,
        })?;
        Config::merge(&Cli::default(), file)
    }

    #[test]
    fn defaults_listen_on_9477() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.listen.port(), 9477);
        assert_eq!(c.drops.interval, Duration::from_secs(1));
        assert_eq!(c.procfs_root, PathBuf::from("/proc"));
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let err = parse("listen = \"127.0.0.1:1\"\nlisten_adress = 3\n").expect_err("must fail");
        assert!(err.to_string().contains("listen_adress"), "{err}");
        let err = parse("[drops]\nwarnig_ratio = 0.1\n").expect_err("must fail");
        assert!(err.to_string().contains("warnig_ratio"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_named() {
        let err = parse("listen = \"localhost\"").expect_err("must fail");
        assert!(err.to_string().contains("listen"), "{err}");
        assert!(err.to_string().contains("localhost"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str("listen = \"127.0.0.1:1000\"\nhostname = \"a\"").expect("toml");
        let cli = Cli {
            listen: Some("127.0.0.1:2000".into()),
            ..Cli::default()
        };
        let c = Config::merge(&cli, file).expect("valid");
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.hostname, "a");
    }

    #[test]
    fn resolved_retention_is_a_top_level_setting() {
        let c = parse("").expect("valid");
        assert_eq!(c.resolved_retention, Duration::from_secs(3600));
        assert!(c.deprecations.is_empty());
        let c = parse("resolved_retention = \"10m\"\n").expect("valid");
        assert_eq!(c.resolved_retention, Duration::from_secs(600));
        assert!(c.deprecations.is_empty());
    }

    #[test]
    fn the_old_drops_resolved_retention_still_works_with_a_deprecation() {
        let c = parse("[drops]\nresolved_retention = \"5m\"\n").expect("valid");
        assert_eq!(c.resolved_retention, Duration::from_secs(300));
        assert_eq!(c.deprecations.len(), 1);
        assert!(c.deprecations[0].contains("deprecated"), "{:?}", c.deprecations);
        // The top-level key wins over the old one.
        let c = parse("resolved_retention = \"2m\"\n[drops]\nresolved_retention = \"5m\"\n").expect("valid");
        assert_eq!(c.resolved_retention, Duration::from_secs(120));
        assert_eq!(c.deprecations.len(), 1);
        assert!(c.deprecations[0].contains("ignored"), "{:?}", c.deprecations);
        let err = parse("resolved_retention = \"soon\"\n").expect_err("must fail");
        assert!(err.to_string().contains("resolved_retention"), "{err}");
    }

    #[test]
    fn durations_are_human_readable() {
        let c = parse("[drops]\ninterval = \"500ms\"\nshort_window = \"5s\"\n").expect("valid");
        assert_eq!(c.drops.interval, Duration::from_millis(500));
        assert_eq!(c.drops.detector.short_window, Duration::from_secs(5));
    }

    #[test]
    fn the_shipped_example_config_is_valid_and_matches_the_defaults() {
        let c =
            parse(include_str!("../../../deploy/agent.example.toml")).expect("deploy/agent.example.toml must parse");
        let d = DropConfig::default();
        assert_eq!(c.drops.detector.warning_ratio, d.warning_ratio);
        assert_eq!(c.drops.detector.short_window, d.short_window);
        assert_eq!(c.drops.detector.resolve_windows, d.resolve_windows);
        assert_eq!(c.drops.interval, Duration::from_secs(1));
        assert_eq!(c.resolved_retention, Duration::from_secs(3600));
        assert!(c.deprecations.is_empty(), "the example uses no deprecated key");
        assert_eq!(
            c.incast,
            IncastConfig::default(),
            "[incast] in the example must match the defaults"
        );
        assert_eq!(
            c.routes,
            RoutesConfig::default(),
            "[routes] in the example must match the defaults"
        );
        assert_eq!(
            c.paths,
            crate::detect::paths::PathsConfig::default(),
            "[paths] in the example must match the defaults"
        );
        let mut disk = DiskConfig::default();
        disk.canary_directories = c.disk.canary_directories.clone();
        assert_eq!(
            c.disk, disk,
            "[disk] in the example must match the defaults (canary directories aside)"
        );
    }

    #[test]
    fn controller_section_is_validated_and_the_token_redacted() {
        let c = parse("[controller]\nurl = \"http://c:8477\"\ntoken = \"secret-agent-token\"\n").expect("valid");
        let s = c.controller.expect("section");
        assert_eq!(s.report_interval, Duration::from_secs(5));
        assert_eq!(s.buffer_size, 10_000);
        assert!(!format!("{s:?}").contains("secret-agent-token"));
        assert_eq!(
            s.resolve_token(None).expect("token").as_deref(),
            Some("secret-agent-token")
        );
        assert!(parse("[controller]\nurl = \"c:8477\"\n").is_err());
        assert!(parse("[controller]\nurl = \"http://c\"\nreport_interval = \"1ms\"\n").is_err());
        let err = parse("[controller]\nurl = \"http://c\"\ntokn = \"x\"\n").expect_err("unknown field");
        assert!(err.to_string().contains("tokn"), "{err}");
        assert!(parse("").expect("empty").controller.is_none());
    }

    #[test]
    fn the_token_comes_from_the_systemd_credential_when_nothing_else_names_one() {
        let creds = tempfile::tempdir().expect("temp dir");
        std::fs::write(creds.path().join(TOKEN_CREDENTIAL), "cred-token\n").expect("write credential");
        let dir = creds.path().to_string_lossy().into_owned();
        let env = |vars: &'static [(&'static str, &'static str)], dir: String| {
            move |k: &str| {
                if k == "CREDENTIALS_DIRECTORY" && !dir.is_empty() {
                    return Some(dir.clone());
                }
                vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
            }
        };
        let section = |extra: &str| {
            parse(&format!("[controller]\nurl = \"http://c:8477\"\n{extra}"))
                .expect("valid")
                .controller
                .expect("section")
        };
        // Started by the unit: only CREDENTIALS_DIRECTORY.
        let s = section("");
        assert_eq!(
            s.resolve_token_from(&env(&[], dir.clone())).expect("ok").as_deref(),
            Some("cred-token")
        );
        // Explicit settings win: token, token_file, the environment variable.
        let t = section("token = \"inline\"");
        assert_eq!(
            t.resolve_token_from(&env(&[], dir.clone())).expect("ok").as_deref(),
            Some("inline")
        );
        let env_var: &'static [(&'static str, &'static str)] = &[("GRAYDAR_CONTROLLER_TOKEN", "from-env")];
        assert_eq!(
            s.resolve_token_from(&env(env_var, dir.clone())).expect("ok").as_deref(),
            Some("from-env")
        );
        // token_file naming the credential directory is expanded.
        let f = section("token_file = \"${CREDENTIALS_DIRECTORY}/controller-token\"");
        assert_eq!(
            f.resolve_token_from(&env(&[], dir.clone())).expect("ok").as_deref(),
            Some("cred-token")
        );
        let err = f
            .resolve_token_from(&env(&[], String::new()))
            .expect_err("no directory");
        assert!(err.to_string().contains("CREDENTIALS_DIRECTORY"), "{err}");
        // No credential loaded, nothing configured: no token (the reporter warns).
        assert_eq!(s.resolve_token_from(&env(&[], String::new())).expect("ok"), None);
        let empty = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            s.resolve_token_from(&env(&[], empty.path().to_string_lossy().into_owned()))
                .expect("ok"),
            None
        );
    }

    #[test]
    fn disk_section_is_validated_and_named() {
        let c =
            parse("[disk]\ncanary_directories = [\"/var/lib/db\"]\n[disk.fsync]\nwarning = \"20ms\"\n").expect("valid");
        assert_eq!(c.disk.canary_directories, vec![PathBuf::from("/var/lib/db")]);
        assert_eq!(c.disk.fsync.warning, Duration::from_millis(20));
        assert!(parse("").expect("valid").disk.canary_directories.is_empty());
        let err = parse("[disk]\ncanary_dirs = []\n").expect_err("unknown field");
        assert!(err.to_string().contains("canary_dirs"), "{err}");
        let err = parse("[disk.fsync]\nwarning = \"1s\"\ncritical = \"100ms\"\n").expect_err("invalid");
        assert!(err.to_string().contains("disk.fsync.warning"), "{err}");
    }

    #[test]
    fn incast_section_is_validated_and_named() {
        let c = parse("[incast]\nsenders = 32\nwindow = \"5ms\"\n").expect("valid");
        assert_eq!(c.incast.senders, 32);
        assert_eq!(c.incast.window, Duration::from_millis(5));
        let err = parse("[incast]\nsendrs = 3\n").expect_err("unknown field");
        assert!(err.to_string().contains("sendrs"), "{err}");
        let err = parse("[incast]\nsenders = 1\n").expect_err("invalid");
        assert!(err.to_string().contains("incast.senders"), "{err}");
    }
}
