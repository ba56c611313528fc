//! `[disk]`: the disk signal's probes, canaries and detectors.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::detect::disk::fsync_latency::{FsyncConfig, FsyncConfigError};
use crate::detect::disk::slow::{SlowConfig, SlowConfigError};

/// `[disk]` in the agent configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskConfig {
    /// Attach the fsync and block-I/O eBPF probes.
    pub ebpf: bool,
    /// Sampling period of the disk signal.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Directories to run an fdatasync canary in (a `.graydar-canary` file
    /// of 64 KiB is created in each). None by default.
    pub canary_directories: Vec<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub canary_interval: Duration,
    /// A canary call in flight this long raises `disk_hung`.
    #[serde(with = "humantime_serde")]
    pub canary_stall_limit: Duration,
    /// Devices never judged (exact kernel names, e.g. "loop0").
    pub exclude_devices: Vec<String>,
    /// `[disk.fsync]`: the fsync_latency detector.
    pub fsync: FsyncConfig,
    /// `[disk.slow]`: the disk_slow detector.
    pub slow: SlowConfig,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            ebpf: true,
            interval: Duration::from_millis(500),
            canary_directories: Vec::new(),
            canary_interval: Duration::from_secs(1),
            canary_stall_limit: Duration::from_secs(5),
            exclude_devices: Vec::new(),
            fsync: FsyncConfig::default(),
            slow: SlowConfig::default(),
        }
    }
}

/// An invalid [`DiskConfig`]; the message names the offending `disk.*` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Fsync(#[from] FsyncConfigError),
    #[error(transparent)]
    Slow(#[from] SlowConfigError),
}

impl DiskConfig {
    pub fn validate(&self) -> Result<(), DiskConfigError> {
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(60) {
            return Err(DiskConfigError::Invalid(format!(
                "disk.interval must be between 100ms and 60s, got {:?}",
                self.interval
            )));
        }
        if self.canary_interval < Duration::from_millis(10) {
            return Err(DiskConfigError::Invalid(format!(
                "disk.canary_interval must be at least 10ms, got {:?}",
                self.canary_interval
            )));
        }
        if self.canary_stall_limit < Duration::from_millis(100) {
            return Err(DiskConfigError::Invalid(format!(
                "disk.canary_stall_limit must be at least 100ms, got {:?}",
                self.canary_stall_limit
            )));
        }
        for d in &self.canary_directories {
            if !d.is_absolute() {
                return Err(DiskConfigError::Invalid(format!(
                    "disk.canary_directories: {} is not an absolute path",
                    d.display()
                )));
            }
        }
        self.fsync.validate()?;
        self.slow.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_config_defaults_and_validation() {
        let c = DiskConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.canary_directories.is_empty(), "no canary unless configured");
        assert_eq!(c.canary_stall_limit, Duration::from_secs(5));
        assert_eq!(c.fsync.warning, Duration::from_millis(50));
        assert_eq!(c.fsync.critical, Duration::from_millis(100));
        let bad = DiskConfig {
            canary_directories: vec!["relative/dir".into()],
            ..DiskConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
