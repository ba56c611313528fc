//! Load: what a game day's `load` step asks agents to generate so that a
//! fault shows without production traffic (a dm-delay is invisible while
//! nothing syncs; netem loss while nothing sends). A load is carried and
//! bounded exactly like a fault (faults.rs): created at the controller,
//! handed to agents with a lease, journaled, stopped at the lease's end, at
//! revert and at SIGTERM. Traffic and bursts go only to registered graydar
//! agents' sinks (the controller refuses any other address), each bounded
//! here in rate and size.
//!
//! [`Pacer`] is the rate limiter every generator uses: a token bucket on a
//! caller's clock, so its bounds are unit-tested without sleeping.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::SpecError;

/// The port agents' load sinks listen on unless a load says otherwise.
pub const DEFAULT_SINK_PORT: u16 = 7476;
/// Most packets (UDP datagrams or TCP writes) a second one agent sends for one load.
pub const MAX_PACKETS_PER_SECOND: u64 = 200_000;
/// Most bits a second one agent sends for one load (10 Gbit/s).
pub const MAX_BITS_PER_SECOND: u64 = 10_000_000_000;
/// Most destinations of one traffic load.
pub const MAX_DESTINATIONS: usize = 256;
/// Most TCP connections per destination.
pub const MAX_CONNECTIONS: u32 = 64;
/// Most syncs a second of one fsync load.
pub const MAX_SYNCS_PER_SECOND: u32 = 2_000;
/// Largest block one fsync load writes before each sync (1 MiB).
pub const MAX_BLOCK_BYTES: u32 = 1 << 20;
/// The latest burst start accepted (9999-12-31T23:59:59.999Z).
pub const MAX_START_UNIX_MS: i64 = 253_402_300_799_999;
/// Most bytes each sender of a burst sends per burst (64 MiB).
pub const MAX_BURST_BYTES: u64 = 64 << 20;

/// TCP or UDP.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadProtocol {
    Tcp,
    #[default]
    Udp,
}

impl LoadProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadProtocol::Tcp => "tcp",
            LoadProtocol::Udp => "udp",
        }
    }
}

fn default_port() -> u16 {
    DEFAULT_SINK_PORT
}

fn default_size() -> u32 {
    1200
}

fn default_connections() -> u32 {
    1
}

fn default_block() -> u32 {
    4096
}

/// Traffic from each target agent to each of `to` (registered agents'
/// addresses, their sinks on `port`) at a rate: `packets_per_second` or
/// `bits_per_second` per destination, in `size`-byte datagrams (UDP) or
/// writes (TCP, over `connections` connections per destination).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// Destination addresses: each must be a registered agent's.
    pub to: Vec<String>,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub protocol: LoadProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_second: Option<u64>,
    /// Bytes per datagram or write (16 to 65507).
    #[serde(default = "default_size")]
    pub size: u32,
    /// TCP connections per destination (1 to 64); UDP uses one socket.
    #[serde(default = "default_connections")]
    pub connections: u32,
}

impl TrafficSpec {
    /// The packets a second sent to each destination.
    pub fn packets_per_second(&self) -> u64 {
        match (self.packets_per_second, self.bits_per_second) {
            (Some(p), _) => p,
            (None, Some(b)) => (b / (8 * u64::from(self.size.max(1)))).max(1),
            (None, None) => 0,
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        destinations("traffic", &self.to)?;
        port("traffic", self.port)?;
        if !(16..=65_507).contains(&self.size) {
            return Err(SpecError(format!(
                "traffic: size must be 16 to 65507 bytes, got {}",
                self.size
            )));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(SpecError(format!(
                "traffic: connections must be 1 to {MAX_CONNECTIONS}, got {}",
                self.connections
            )));
        }
        match (self.packets_per_second, self.bits_per_second) {
            (Some(_), Some(_)) => {
                return Err(SpecError(
                    "traffic: give packets_per_second or bits_per_second, not both".into(),
                ));
            }
            (None, None) => {
                return Err(SpecError("traffic: give packets_per_second or bits_per_second".into()));
            }
            (Some(p), None) if !(1..=MAX_PACKETS_PER_SECOND).contains(&p) => {
                return Err(SpecError(format!(
                    "traffic: packets_per_second must be 1 to {MAX_PACKETS_PER_SECOND}, got {p}"
                )));
            }
            (None, Some(b)) if !(8 * u64::from(self.size)..=MAX_BITS_PER_SECOND).contains(&b) => {
                return Err(SpecError(format!(
                    "traffic: bits_per_second must be {} (one packet of size a second) to {MAX_BITS_PER_SECOND}, got {b}",
                    8 * u64::from(self.size)
                )));
            }
            _ => {}
        }
        let pps = self.packets_per_second();
        if pps > MAX_PACKETS_PER_SECOND {
            return Err(SpecError(format!(
                "traffic: {pps} packets/s of {} bytes is above the limit of {MAX_PACKETS_PER_SECOND} packets/s",
                self.size
            )));
        }
        let bits = pps.saturating_mul(8 * u64::from(self.size));
        if bits > MAX_BITS_PER_SECOND {
            return Err(SpecError(format!(
                "traffic: {pps} packets/s of {} bytes is {bits} bit/s, above the limit of {MAX_BITS_PER_SECOND} bit/s",
                self.size
            )));
        }
        Ok(())
    }
}

/// A write of `block_bytes` and an fdatasync, `per_second` times a second,
/// to a file graydar creates in `dir` (an absolute directory on the device
/// under test) and removes at the end.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsyncSpec {
    pub dir: String,
    #[serde(default = "default_block")]
    pub block_bytes: u32,
    pub per_second: u32,
}

impl FsyncSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        if !self.dir.starts_with('/') || self.dir.contains('\0') || self.dir.split('/').any(|c| c == "..") {
            return Err(SpecError(format!(
                "fsync: dir {:?} must be an absolute directory without ..",
                self.dir
            )));
        }
        if !(512..=MAX_BLOCK_BYTES).contains(&self.block_bytes) {
            return Err(SpecError(format!(
                "fsync: block_bytes must be 512 to {MAX_BLOCK_BYTES}, got {}",
                self.block_bytes
            )));
        }
        if !(1..=MAX_SYNCS_PER_SECOND).contains(&self.per_second) {
            return Err(SpecError(format!(
                "fsync: per_second must be 1 to {MAX_SYNCS_PER_SECOND}, got {}",
                self.per_second
            )));
        }
        Ok(())
    }
}

/// A synchronized fan-in: at `start_unix_ms` and every `every_ms` after
/// it, each target agent opens a TCP connection to `to` (a registered
/// agent's address, its sink on `port`) and sends `bytes`. The controller
/// hands every sender the same start, so the bursts meet at the receiver
/// within the senders' clock offsets: real incast.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstSpec {
    pub to: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub bytes: u64,
    /// The period (1 s to 1 h).
    pub every_ms: u64,
    /// The first burst, Unix milliseconds; 0: the controller sets it when
    /// the fault is created (two periods ahead, at least one second).
    #[serde(default)]
    pub start_unix_ms: i64,
}

impl BurstSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        destinations("burst", std::slice::from_ref(&self.to))?;
        port("burst", self.port)?;
        if !(1024..=MAX_BURST_BYTES).contains(&self.bytes) {
            return Err(SpecError(format!(
                "burst: bytes must be 1024 to {MAX_BURST_BYTES}, got {}",
                self.bytes
            )));
        }
        if !(1000..=3_600_000).contains(&self.every_ms) {
            return Err(SpecError(format!(
                "burst: every_ms must be 1000 to 3600000, got {}",
                self.every_ms
            )));
        }
        if !(0..=MAX_START_UNIX_MS).contains(&self.start_unix_ms) {
            return Err(SpecError(format!(
                "burst: start_unix_ms must be 0 to {MAX_START_UNIX_MS} (the year 9999), got {}",
                self.start_unix_ms
            )));
        }
        Ok(())
    }

    /// When the next burst after `now_unix_ms` starts (the first at
    /// `start_unix_ms`), Unix milliseconds.
    pub fn next_after(&self, now_unix_ms: i64) -> i64 {
        if now_unix_ms < self.start_unix_ms {
            return self.start_unix_ms;
        }
        let every = i64::try_from(self.every_ms.max(1)).unwrap_or(i64::MAX);
        let n = (now_unix_ms - self.start_unix_ms) / every + 1;
        self.start_unix_ms.saturating_add(n.saturating_mul(every))
    }
}

/// A sink: TCP and UDP on `port`, reading and discarding what arrives.
/// The controller gives it to every agent a traffic or burst load is aimed
/// at, for as long as that load is wanted (off otherwise).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(default = "default_port")]
    pub port: u16,
}

impl SinkSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        port("load_sink", self.port)
    }
}

fn port(kind: &str, p: u16) -> Result<(), SpecError> {
    if p < 1024 {
        return Err(SpecError(format!(
            "{kind}: port must be 1024 to 65535 (a sink never takes a privileged port), got {p}"
        )));
    }
    Ok(())
}

fn destinations(kind: &str, to: &[String]) -> Result<(), SpecError> {
    if to.is_empty() {
        return Err(SpecError(format!("{kind}: to: no destination")));
    }
    if to.len() > MAX_DESTINATIONS {
        return Err(SpecError(format!(
            "{kind}: to: {} destinations, above the limit of {MAX_DESTINATIONS}",
            to.len()
        )));
    }
    for a in to {
        let ip: IpAddr = a
            .parse()
            .map_err(|_| SpecError(format!("{kind}: to: {a:?} is not an IP address")))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(SpecError(format!("{kind}: to: {a} is not a host address")));
        }
        if let IpAddr::V4(v4) = ip
            && v4.is_broadcast()
        {
            return Err(SpecError(format!("{kind}: to: {a} is not a host address")));
        }
    }
    Ok(())
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. The
/// caller passes its own clock reading (time since any fixed start), so the
/// bound is exact and testable: over any interval `t`, at most
/// `burst + rate * t` tokens are taken.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl Pacer {
    /// `rate` a second (> 0), at most `burst` (>= 1) at once; starts with one token.
    pub fn new(rate: f64, burst: f64, now: Duration) -> Pacer {
        let burst = burst.max(1.0);
        Pacer {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: 1.0_f64.min(burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Takes up to `want` whole tokens now; returns how many were taken.
    pub fn take(&mut self, now: Duration, want: u64) -> u64 {
        self.refill(now);
        // Whole tokens only; the cast is bounded by `burst`.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "0 <= floor(tokens) <= burst"
        )]
        let have = self.tokens.floor().max(0.0) as u64;
        let n = have.min(want);
        self.tokens -= n as f64;
        n
    }

    /// How long from `now` until a token is available.
    pub fn wait(&mut self, now: Duration) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic() -> TrafficSpec {
        TrafficSpec {
            to: vec!["10.0.0.2".into()],
            port: DEFAULT_SINK_PORT,
            protocol: LoadProtocol::Udp,
            packets_per_second: Some(2000),
            bits_per_second: None,
            size: 1200,
            connections: 1,
        }
    }

    #[test]
    fn traffic_bounds_name_the_field() {
        assert_eq!(traffic().validate(), Ok(()));
        let cases: Vec<(TrafficSpec, &str)> = vec![
            (
                TrafficSpec {
                    to: vec![],
                    ..traffic()
                },
                "to: no destination",
            ),
            (
                TrafficSpec {
                    to: vec!["example.com".into()],
                    ..traffic()
                },
                "not an IP address",
            ),
            (
                TrafficSpec {
                    to: vec!["0.0.0.0".into()],
                    ..traffic()
                },
                "not a host address",
            ),
            (
                TrafficSpec {
                    to: vec!["255.255.255.255".into()],
                    ..traffic()
                },
                "not a host address",
            ),
            (
                TrafficSpec {
                    to: vec!["224.0.0.1".into()],
                    ..traffic()
                },
                "not a host address",
            ),
            (TrafficSpec { port: 80, ..traffic() }, "port must be 1024"),
            (TrafficSpec { size: 8, ..traffic() }, "size must be"),
            (
                TrafficSpec {
                    size: 70_000,
                    ..traffic()
                },
                "size must be",
            ),
            (
                TrafficSpec {
                    connections: 0,
                    ..traffic()
                },
                "connections must be",
            ),
            (
                TrafficSpec {
                    connections: 65,
                    ..traffic()
                },
                "connections must be",
            ),
            (
                TrafficSpec {
                    packets_per_second: None,
                    ..traffic()
                },
                "give packets_per_second or bits_per_second",
            ),
            (
                TrafficSpec {
                    bits_per_second: Some(1_000_000),
                    ..traffic()
                },
                "not both",
            ),
            (
                TrafficSpec {
                    packets_per_second: Some(0),
                    ..traffic()
                },
                "packets_per_second must be 1",
            ),
            (
                TrafficSpec {
                    packets_per_second: Some(200_001),
                    ..traffic()
                },
                "packets_per_second must be 1",
            ),
            // 200,000 packets of 65,507 bytes: 104.8 Gbit/s.
            (
                TrafficSpec {
                    size: 65_507,
                    packets_per_second: Some(200_000),
                    ..traffic()
                },
                "bit/s, above the limit",
            ),
            (
                TrafficSpec {
                    packets_per_second: None,
                    bits_per_second: Some(20_000_000_000),
                    ..traffic()
                },
                "bits_per_second must be",
            ),
            (
                TrafficSpec {
                    to: vec!["10.0.0.1".into(); 257],
                    ..traffic()
                },
                "above the limit of 256",
            ),
        ];
        for (spec, want) in cases {
            let err = spec.validate().expect_err(want).0;
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(err.starts_with("traffic:"), "{err}");
        }
    }

    #[test]
    fn bits_per_second_become_packets_of_the_size() {
        let t = TrafficSpec {
            packets_per_second: None,
            bits_per_second: Some(96_000_000),
            ..traffic()
        };
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.packets_per_second(), 10_000);
    }

    #[test]
    fn fsync_and_burst_bounds() {
        let f = FsyncSpec {
            dir: "/var/lib/graydar".into(),
            block_bytes: 4096,
            per_second: 10,
        };
        assert_eq!(f.validate(), Ok(()));
        for (bad, want) in [
            (
                FsyncSpec {
                    dir: "tmp".into(),
                    ..f.clone()
                },
                "absolute",
            ),
            (
                FsyncSpec {
                    dir: "/a/../etc".into(),
                    ..f.clone()
                },
                "absolute",
            ),
            (
                FsyncSpec {
                    block_bytes: 100,
                    ..f.clone()
                },
                "block_bytes",
            ),
            (
                FsyncSpec {
                    per_second: 0,
                    ..f.clone()
                },
                "per_second",
            ),
            (
                FsyncSpec {
                    per_second: 5000,
                    ..f.clone()
                },
                "per_second",
            ),
        ] {
            let e = bad.validate().expect_err(want).0;
            assert!(e.contains(want) && e.starts_with("fsync:"), "{e}");
        }
        let b = BurstSpec {
            to: "10.0.0.9".into(),
            port: DEFAULT_SINK_PORT,
            bytes: 64 * 1024,
            every_ms: 5000,
            start_unix_ms: 0,
        };
        assert_eq!(b.validate(), Ok(()));
        for (bad, want) in [
            (BurstSpec { bytes: 10, ..b.clone() }, "bytes must be"),
            (
                BurstSpec {
                    bytes: MAX_BURST_BYTES + 1,
                    ..b.clone()
                },
                "bytes must be",
            ),
            (
                BurstSpec {
                    every_ms: 10,
                    ..b.clone()
                },
                "every_ms",
            ),
            (
                BurstSpec {
                    to: "nope".into(),
                    ..b.clone()
                },
                "not an IP address",
            ),
            (
                BurstSpec {
                    start_unix_ms: -1,
                    ..b.clone()
                },
                "start_unix_ms",
            ),
        ] {
            let e = bad.validate().expect_err(want).0;
            assert!(e.contains(want) && e.starts_with("burst:"), "{e}");
        }
        assert!(SinkSpec { port: 22 }.validate().is_err());
    }

    #[test]
    fn bursts_fall_on_the_shared_schedule() {
        let b = BurstSpec {
            to: "10.0.0.9".into(),
            port: DEFAULT_SINK_PORT,
            bytes: 4096,
            every_ms: 5000,
            start_unix_ms: 1_000_000,
        };
        assert_eq!(b.next_after(0), 1_000_000);
        assert_eq!(b.next_after(999_999), 1_000_000);
        // At a burst's own instant the next one is a period later.
        assert_eq!(b.next_after(1_000_000), 1_005_000);
        assert_eq!(b.next_after(1_004_999), 1_005_000);
        assert_eq!(b.next_after(1_012_345), 1_015_000);
    }

    #[test]
    fn the_pacer_never_exceeds_its_rate_plus_its_burst() {
        // 1000 a second, burst 10, asked greedily every 0.1 ms for 2 s.
        let mut p = Pacer::new(1000.0, 10.0, Duration::ZERO);
        let mut taken = 0u64;
        let mut t = Duration::ZERO;
        while t <= Duration::from_secs(2) {
            taken += p.take(t, 1000);
            t += Duration::from_micros(100);
        }
        assert!(taken <= 10 + 2000, "{taken}");
        assert!(taken >= 1990, "a greedy caller gets the rate: {taken}");
        // Idle for a minute saves no more than the burst.
        let later = t + Duration::from_secs(60);
        assert_eq!(p.take(later, 1_000_000), 10);
        assert_eq!(p.take(later, 1), 0);
        let w = p.wait(later);
        assert!(w > Duration::ZERO && w <= Duration::from_millis(1), "{w:?}");
        // A clock that goes backwards adds nothing.
        assert_eq!(p.take(later - Duration::from_secs(1), 5), 0);
    }

    #[test]
    fn specs_read_with_defaults_and_refuse_unknown_fields() {
        let t: TrafficSpec = serde_json::from_str(r#"{"to":["10.0.0.2"],"packets_per_second":100}"#).expect("parse");
        assert_eq!(t.port, DEFAULT_SINK_PORT);
        assert_eq!(t.protocol, LoadProtocol::Udp);
        assert_eq!((t.size, t.connections), (1200, 1));
        assert!(serde_json::from_str::<TrafficSpec>(r#"{"to":["10.0.0.2"],"pps":100}"#).is_err());
    }
}
