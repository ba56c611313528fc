//! Where the CLI finds the controller and its token: flags > environment
//! (`GRAYDAR_URL`, `GRAYDAR_TOKEN`, `GRAYDAR_CA_CERT`) > config file
//! (`--config`, `GRAYDAR_CLI_CONFIG`, else `~/.config/graydar/cli.toml` when
//! present).

use std::path::{Path, PathBuf};
use std::time::Duration;

use graydar_common::client::ClientConfig;
use serde::Deserialize;

use super::{Cli, CliError};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8477";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The client configuration from flags, environment and file.
pub fn client_config(cli: &Cli) -> Result<ClientConfig, CliError> {
    let path = cli.config.clone().or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".config/graydar/cli.toml");
        p.is_file().then_some(p)
    });
    let file: FileConfig = match &path {
        Some(p) => toml::from_str(&read(p)?).map_err(|source| CliError::ConfigFile {
            path: p.clone(),
            source,
        })?,
        None => FileConfig::default(),
    };
    let token = match (&cli.token, file.token, file.token_file) {
        (Some(t), _, _) => Some(t.clone()),
        (None, Some(t), _) => Some(t),
        (None, None, Some(p)) => Some(read(&p)?.trim().to_owned()),
        (None, None, None) => None,
    };
    let ca_cert_pem = match cli.ca_cert.clone().or(file.ca_cert) {
        Some(p) => Some(std::fs::read(&p).map_err(|source| CliError::Read { path: p, source })?),
        None => None,
    };
    Ok(ClientConfig {
        url: cli.url.clone().or(file.url).unwrap_or_else(|| DEFAULT_URL.to_owned()),
        token,
        ca_cert_pem,
        timeout: Duration::from_secs(15),
    })
}
