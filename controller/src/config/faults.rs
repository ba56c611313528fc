//! `[faults]` of the controller's configuration: blast radius, longest
//! duration, lease TTL, dry-run wait.

use std::time::Duration;

use serde::Deserialize;

/// A `[faults]` setting out of its bounds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultConfigError {
    #[error("faults.max_target_share must be in (0, 1], got {0}")]
    TargetShare(f64),
    #[error("faults.lease must be between 3s and 10m, got {0:?}")]
    Lease(Duration),
    #[error("faults.max_duration must be at least 1s")]
    MaxDuration,
    #[error("faults.dry_run_wait must be at most 60s")]
    DryRunWait,
}

/// `[faults]` of the controller's config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsSection {
    /// Largest share of the alive agents that may be under running faults,
    /// a new fault's targets included, without `force` (0 < x <= 1;
    /// default 0.5).
    pub max_target_share: Option<f64>,
    /// Longest fault duration accepted (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Lease TTL handed to agents (default 20s): an agent that hears nothing
    /// from the controller for this long reverts the fault on its own.
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// How long `POST /api/v1/faults` with `dry_run` waits for the agents'
    /// operations before answering 202 (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub dry_run_wait: Option<Duration>,
}

/// The effective fault settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    pub max_target_share: f64,
    pub max_duration: Duration,
    pub lease: Duration,
    pub dry_run_wait: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            max_target_share: 0.5,
            max_duration: Duration::from_secs(3600),
            lease: Duration::from_secs(20),
            dry_run_wait: Duration::from_secs(10),
        }
    }
}

impl FaultsSection {
    pub fn resolve(&self) -> Result<FaultConfig, FaultConfigError> {
        let d = FaultConfig::default();
        let c = FaultConfig {
            max_target_share: self.max_target_share.unwrap_or(d.max_target_share),
            max_duration: self.max_duration.unwrap_or(d.max_duration),
            lease: self.lease.unwrap_or(d.lease),
            dry_run_wait: self.dry_run_wait.unwrap_or(d.dry_run_wait),
        };
        if !(c.max_target_share > 0.0 && c.max_target_share <= 1.0) {
            return Err(FaultConfigError::TargetShare(c.max_target_share));
        }
        if c.lease < Duration::from_secs(3) || c.lease > Duration::from_secs(600) {
            return Err(FaultConfigError::Lease(c.lease));
        }
        if c.max_duration < Duration::from_secs(1) {
            return Err(FaultConfigError::MaxDuration);
        }
        if c.dry_run_wait > Duration::from_secs(60) {
            return Err(FaultConfigError::DryRunWait);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_defaults_and_bounds() {
        let c = FaultsSection::default().resolve().expect("defaults");
        assert_eq!(c, FaultConfig::default());
        let s: FaultsSection = toml::from_str("max_target_share = 0.25\nlease = \"30s\"").expect("parse");
        let c = s.resolve().expect("valid");
        assert_eq!(c.max_target_share, 0.25);
        assert_eq!(c.lease, Duration::from_secs(30));
        let bad: FaultsSection = toml::from_str("max_target_share = 1.5").expect("parse");
        assert!(
            bad.resolve()
                .expect_err("too big")
                .to_string()
                .contains("max_target_share")
        );
        assert!(toml::from_str::<FaultsSection>("leese = \"1s\"").is_err());
    }
}
