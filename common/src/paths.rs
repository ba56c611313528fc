//! Wire types of the path-probe mesh at the controller: agents push what
//! they measure per peer and direction (`POST /api/v1/agents/{hostname}/paths`)
//! and get their peer list back; viewers read the matrix (`GET /api/v1/paths`).

use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

/// One direction of one pair, as an agent measured it over its loss window.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionStats {
    /// Probes that arrived (outbound: according to the peer's reports).
    pub delivered: u64,
    /// Probes that did not.
    pub lost: u64,
    /// lost / (delivered + lost); absent without finalized probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_ratio: Option<f64>,
    /// Routers on the way (sent TTL − received TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hops: Option<u8>,
    /// Median one-way delay of the latency window minus its baseline, seconds
    /// (a variation: absolute one-way delay needs synchronized clocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owd_variation_seconds: Option<f64>,
}

/// What an agent knows about one peer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerObservation {
    /// The peer's identity (its hostname when it runs an agent).
    pub peer: String,
    /// Address probed.
    pub address: String,
    /// Reporting agent → peer.
    pub outbound: DirectionStats,
    /// Peer → reporting agent.
    pub inbound: DirectionStats,
    /// Probes whose fate is unknown (the peer said nothing).
    #[serde(default)]
    pub unknown: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_p50_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_p99_seconds: Option<f64>,
    /// Path finding kinds firing on this agent for the pair.
    #[serde(default)]
    pub firing: Vec<String>,
}

/// `POST /api/v1/agents/{hostname}/paths`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathReport {
    /// UDP port of the agent's prober/responder.
    pub port: u16,
    /// Addresses peers should probe (one per family at most is used).
    pub addresses: Vec<String>,
    /// Most peers the agent probes (the controller's list is cut to it).
    pub max_peers: u32,
    /// Probe interval, seconds.
    pub interval_seconds: f64,
    pub peers: Vec<PeerObservation>,
}

/// A peer to probe.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTarget {
    pub hostname: String,
    pub address: String,
    pub port: u16,
}

/// Answer to a path report: whom to probe.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathReportResponse {
    pub peers: Vec<PeerTarget>,
    /// Mesh members in total (the list is a subset when larger than max_peers).
    pub members: u64,
    /// The fleet keys every mesh datagram is signed and checked with (absent
    /// from controllers that do not hand them out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_keys: Option<MeshKeySet>,
}

/// The path mesh's fleet keys: every agent accepts all of them and signs with
/// `send_key_id`. A rotated key is handed out before it becomes the sending
/// key, so every agent knows it by the time anyone signs with it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshKeySet {
    pub send_key_id: u8,
    pub keys: Vec<MeshKeyEntry>,
}

/// One fleet key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshKeyEntry {
    /// 1 to 255, carried in every datagram.
    pub id: u8,
    /// 32 bytes, standard base64.
    pub key: String,
}

impl std::fmt::Debug for MeshKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshKeyEntry {{ id: {}, key: <redacted> }}", self.id)
    }
}

/// `POST /api/v1/paths/keys/rotate` and `GET /api/v1/paths/keys`: the keys
/// by id and when each is (or becomes) the sending key; never the secrets.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshKeyList {
    pub send_key_id: u8,
    pub keys: Vec<MeshKeyInfo>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshKeyInfo {
    pub id: u8,
    pub created: crate::timestamp::Timestamp,
    /// From then on agents sign with it (if it is the newest such key).
    pub active_from: crate::timestamp::Timestamp,
}

/// One ordered pair of the matrix (src → dst).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathPair {
    pub src: String,
    pub dst: String,
    /// Loss src → dst: the source's view (through the destination's
    /// reports), else the destination's (sequence gaps it saw).
    pub loss_ratio: Option<f64>,
    pub delivered: u64,
    pub lost: u64,
    /// Round trip seen by src.
    pub rtt_p50_seconds: Option<f64>,
    pub rtt_p99_seconds: Option<f64>,
    /// Routers on src → dst.
    pub hops: Option<u8>,
    pub owd_variation_seconds: Option<f64>,
    /// `ok`, `lossy`, `down`, `unknown` or `stale` (no fresh report).
    pub state: String,
    /// Path findings firing on either agent for the pair.
    pub firing: Vec<String>,
    /// When the freshest report about the pair arrived, RFC 3339 UTC.
    pub reported_at: Timestamp,
}

/// `GET /api/v1/paths`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathMatrix {
    pub pairs: Vec<PathPair>,
}

#[cfg(feature = "client")]
impl crate::client::Client {
    pub fn push_paths(
        &self,
        hostname: &str,
        report: &PathReport,
    ) -> Result<PathReportResponse, crate::client::ClientError> {
        self.post(
            &format!("/api/v1/agents/{}/paths", crate::client::encode_segment(hostname)),
            report,
        )
    }

    pub fn paths(&self) -> Result<PathMatrix, crate::client::ClientError> {
        self.get("/api/v1/paths")
    }
}
