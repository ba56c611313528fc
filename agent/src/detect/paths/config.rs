//! `[paths]`: the mesh's and the pair detectors' settings, and peer parsing.

use std::time::Duration;

use serde::Deserialize;

/// An invalid [`PathsConfig`]; the message names the offending `paths.*` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathsConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// `[paths]` in the agent config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Run the prober and responder.
    pub enabled: bool,
    /// UDP port of the prober and responder (both families).
    pub port: u16,
    /// Probe interval per peer.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Static peers, `"name=address"` or `"name=address:port"` (`[v6]:port`).
    pub peers: Vec<String>,
    /// Most peers probed (static + from the controller); also the bound of the
    /// `peer` label of the path metrics.
    pub max_peers: usize,
    /// Address peers should probe, told to the controller (default: the
    /// first address the agent registered with).
    pub advertise: Option<String>,
    /// The fleet keys that sign and check every mesh datagram: one key per
    /// line, `<id> <base64 of 32 bytes>`, the first the one to sign with.
    /// Unset: the keys the controller hands out with the peer list. With
    /// neither, the mesh sends and answers nothing.
    pub key_file: Option<std::path::PathBuf>,
    /// How long a probe may take before it counts as lost.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Window of the loss ratios (one_way_loss).
    #[serde(with = "humantime_serde")]
    pub loss_window: Duration,
    /// Window of asymmetric_connectivity (nothing delivered one way).
    #[serde(with = "humantime_serde")]
    pub connectivity_window: Duration,
    /// Window of the current RTT and one-way delays (latency_asymmetry).
    #[serde(with = "humantime_serde")]
    pub latency_window: Duration,
    /// History the RTT baseline is the median of.
    #[serde(with = "humantime_serde")]
    pub baseline_window: Duration,
    /// A changed hop count becomes the new baseline after this long.
    #[serde(with = "humantime_serde")]
    pub route_stable_after: Duration,
    /// Loss ratio one way that makes an evaluation bad.
    pub loss_threshold: f64,
    /// Loss ratio of a critical one_way_loss.
    pub critical_loss: f64,
    /// The other direction is clean when its loss is at most this ratio (or one probe).
    pub clean_ratio: f64,
    /// Fewest finalized probes per direction in the loss window.
    pub min_probes: u64,
    /// Fewest lost probes for one_way_loss and asymmetric_connectivity.
    pub min_lost: u64,
    /// latency_asymmetry: RTT above this many times the baseline ...
    pub rtt_factor: f64,
    /// ... and at least this much above it.
    #[serde(with = "humantime_serde")]
    pub rtt_floor: Duration,
    pub fire_windows: usize,
    pub of_windows: usize,
    pub resolve_windows: usize,
    /// Run the Paris traceroute toward a suspect peer.
    pub traceroute: bool,
    pub traceroute_max_hops: u8,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            enabled: true,
            port: 9478,
            interval: Duration::from_secs(1),
            peers: Vec::new(),
            max_peers: 64,
            advertise: None,
            key_file: None,
            grace: Duration::from_secs(2),
            loss_window: Duration::from_secs(60),
            connectivity_window: Duration::from_secs(5),
            latency_window: Duration::from_secs(30),
            baseline_window: Duration::from_secs(600),
            route_stable_after: Duration::from_secs(600),
            loss_threshold: 0.02,
            critical_loss: 0.2,
            clean_ratio: 0.005,
            min_probes: 20,
            min_lost: 3,
            rtt_factor: 2.0,
            rtt_floor: Duration::from_millis(5),
            fire_windows: 3,
            of_windows: 5,
            resolve_windows: 10,
            traceroute: true,
            traceroute_max_hops: 16,
        }
    }
}

impl PathsConfig {
    pub fn validate(&self) -> Result<(), PathsConfigError> {
        let ms = Duration::from_millis;
        if self.interval < ms(10) || self.interval > Duration::from_secs(60) {
            return Err(PathsConfigError::Invalid(format!(
                "paths.interval must be 10ms..=60s, got {:?}",
                self.interval
            )));
        }
        if self.port == 0 {
            return Err(PathsConfigError::Invalid("paths.port must not be 0".into()));
        }
        if self.max_peers == 0 || self.max_peers > 1024 {
            return Err(PathsConfigError::Invalid(format!(
                "paths.max_peers must be 1..=1024, got {}",
                self.max_peers
            )));
        }
        if self.grace < ms(50) {
            return Err(PathsConfigError::Invalid(format!(
                "paths.grace must be at least 50ms, got {:?}",
                self.grace
            )));
        }
        for (n, w) in [
            ("loss_window", self.loss_window),
            ("connectivity_window", self.connectivity_window),
            ("latency_window", self.latency_window),
            ("baseline_window", self.baseline_window),
        ] {
            if w < Duration::from_secs(1) || w > Duration::from_secs(86_400) {
                return Err(PathsConfigError::Invalid(format!(
                    "paths.{n} must be 1s..=1d, got {w:?}"
                )));
            }
        }
        for (n, v) in [
            ("loss_threshold", self.loss_threshold),
            ("critical_loss", self.critical_loss),
            ("clean_ratio", self.clean_ratio),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(PathsConfigError::Invalid(format!("paths.{n} = {v} must be in (0, 1]")));
            }
        }
        if self.clean_ratio >= self.loss_threshold {
            return Err(PathsConfigError::Invalid(
                "paths.clean_ratio must be below paths.loss_threshold".into(),
            ));
        }
        if !(self.rtt_factor.is_finite() && self.rtt_factor > 1.0) {
            return Err(PathsConfigError::Invalid(format!(
                "paths.rtt_factor = {} must be > 1",
                self.rtt_factor
            )));
        }
        if self.fire_windows == 0 || self.fire_windows > self.of_windows || self.resolve_windows == 0 {
            return Err(PathsConfigError::Invalid(
                "paths: need 1 <= fire_windows <= of_windows and resolve_windows >= 1".into(),
            ));
        }
        if self.traceroute_max_hops == 0 || usize::from(self.traceroute_max_hops) > crate::probes::paths::mesh::MAX_HOPS
        {
            return Err(PathsConfigError::Invalid(
                "paths.traceroute_max_hops must be 1..=32".into(),
            ));
        }
        for p in &self.peers {
            parse_peer(p, self.port)?;
        }
        if let Some(a) = &self.advertise
            && a.parse::<std::net::IpAddr>().is_err()
        {
            return Err(PathsConfigError::Invalid(format!(
                "paths.advertise = {a:?} must be an IP address"
            )));
        }
        Ok(())
    }

    /// Probes that go unanswered this long with no word from the peer are unknown, not lost.
    pub fn unknown_after(&self) -> Duration {
        (self.grace * 3).max(Duration::from_secs(3))
    }
}

/// A static peer that does not parse (the message quotes it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("paths.peers: {0:?} is not name=address")]
    NotNameAddress(String),
    #[error("paths.peers: {0:?}: the name must be 1..=64 characters")]
    Name(String),
    #[error("paths.peers: {peer:?}: {source} (an IP address, or address:port)")]
    Address {
        peer: String,
        #[source]
        source: std::net::AddrParseError,
    },
}

/// Parses a static peer `name=addr[:port]`; port defaults to `default_port`.
pub fn parse_peer(s: &str, default_port: u16) -> Result<(String, std::net::SocketAddr), PeerError> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| PeerError::NotNameAddress(s.to_owned()))?;
    let name = name.trim();
    if name.is_empty() || name.len() > crate::probes::paths::mesh::MAX_ID {
        return Err(PeerError::Name(s.to_owned()));
    }
    let addr = addr.trim();
    // `[2001:db8::5]` without a port is an address too.
    let bare = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    let sock = if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        std::net::SocketAddr::new(ip, default_port)
    } else {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|source| PeerError::Address {
                peer: s.to_owned(),
                source,
            })?
    };
    Ok((name.to_owned(), sock))
}
