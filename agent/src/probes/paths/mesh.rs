//! The path-probe mesh's UDP wire format and the receiving side's sequence
//! tracker. Pure: no sockets, no clock (agent/src/probes/paths/socket.rs does the I/O).
//!
//! Every datagram (probe, reply, hop list) starts with the same header, all
//! integers big-endian, and ends with a MAC:
//!
//! ```text
//!  0  magic u32 = 0x47445031 ("GDP1")      4  version u8 = 2
//!  5  kind u8 (1 probe, 2 reply, 3 hops,   6  flags u8 (bit 0: please traceroute me)
//!       4 trace, 5 trace echo)
//!  7  ttl u8: TTL / hop limit this datagram was sent with
//!  8  key_id u8: the fleet key the MAC is made with (auth.rs)
//!  9  epoch u32: the sender's session (random per process start)
//! 13  seq u64: the sender's probe sequence number (probes only; 0 otherwise)
//! 21  ctr u64: the sender's datagram counter in its session (every datagram;
//!     the receiver's replay window)
//! 29  tx_ns u64: the sender's CLOCK_REALTIME when sending
//! 37  report about the destination's probes, as the sender received them:
//!     rx_epoch u32 (0: none received yet), rx_base u64 (first seq tracked
//!     in that epoch: earlier probes were sent before the sender listened),
//!     rx_max_seq u64, rx_bitmap u64 (bit i: seq rx_max_seq - i arrived),
//!     rx_hops u8 (hop count of the destination's last probe, 255 unknown)
//! 66  id_len u8, id (1..=64 bytes, UTF-8): the sender's identity (hostname)
//!     ... the body ...
//! end mac [32]: HMAC-SHA256 with key `key_id` over every byte before it
//! ```
//!
//! A reply adds the request's fields and the responder's view of it:
//! `echo_seq u64, echo_tx_ns u64, echo_ttl u8, rx_ns u64, rx_ttl u8`.
//! A hop list (the sender's Paris traceroute toward the destination) adds
//! `count u8` and per hop `ttl u8, family u8 (0 none, 4, 6), address (0, 4 or
//! 16 bytes), rtt_us u32`.
//! A trace datagram (the Paris traceroute's probe, sent from the mesh socket
//! itself with a small TTL, so it takes the mesh flow's ECMP path) and its
//! echo (the destination's answer when the trace reached it) add
//! `probe_ttl u8, run u32`; both carry an empty report and seq 0.
//!
//! Because every datagram carries the report, each side learns which of its
//! probes the other received (forward loss measured by the receiver) from the
//! other side's probes as well as from its replies: when replies cannot come
//! back, the other side's probes still tell whether the forward direction
//! delivers. Decoding never panics; a bad datagram is an error with a reason,
//! and nothing is parsed before its MAC verified ([`decode`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::auth::{MAC_LEN, MeshKey, MeshKeys};

pub const MAGIC: u32 = 0x4744_5031;
pub const VERSION: u8 = 2;
pub const KIND_PROBE: u8 = 1;
pub const KIND_REPLY: u8 = 2;
pub const KIND_HOPS: u8 = 3;
pub const KIND_TRACE: u8 = 4;
pub const KIND_TRACE_ECHO: u8 = 5;
/// Flag: the sender asks the destination to traceroute back and send its hops.
pub const FLAG_TRACE_REQUEST: u8 = 1;
/// Unknown hop count in a report.
pub const HOPS_UNKNOWN: u8 = 255;
pub const MAX_ID: usize = 64;
pub const MAX_HOPS: usize = 32;
/// Largest datagram we build (a hop list of MAX_HOPS IPv6 hops).
pub const MAX_DATAGRAM: usize = HEADER_FIXED + MAX_ID + 1 + MAX_HOPS * 22 + MAC_LEN + 32;
const HEADER_FIXED: usize = 67;

/// The receiver's report about the destination's probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxReport {
    /// Epoch of the probes this refers to (0: none received yet).
    pub epoch: u32,
    /// First sequence number tracked in this epoch.
    pub base: u64,
    pub max_seq: u64,
    pub bitmap: u64,
    pub hops: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u8,
    pub ttl: u8,
    /// The key the datagram was signed with (set by [`encode`]).
    pub key_id: u8,
    pub epoch: u32,
    pub seq: u64,
    /// The sender's datagram counter in its session.
    pub ctr: u64,
    pub tx_ns: u64,
    pub report: RxReport,
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    pub seq: u64,
    pub tx_ns: u64,
    pub ttl: u8,
    /// The responder's CLOCK_REALTIME when the probe arrived.
    pub rx_ns: u64,
    /// TTL / hop limit the probe arrived with.
    pub rx_ttl: u8,
}

/// One hop of a traceroute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ttl: u8,
    /// Who answered (None: no answer, `*`).
    pub addr: Option<IpAddr>,
    pub rtt: Duration,
}

impl Hop {
    /// `"2 10.0.0.1 0.31ms"` or `"3 *"`.
    pub fn display(&self) -> String {
        match self.addr {
            Some(a) => format!("{} {a} {:.2}ms", self.ttl, self.rtt.as_secs_f64() * 1e3),
            None => format!("{} *", self.ttl),
        }
    }
}

/// A traceroute probe (or its echo): the TTL it was sent with and the run it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceProbe {
    pub ttl: u8,
    pub run: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Probe,
    Reply(Echo),
    Hops(Vec<Hop>),
    Trace(TraceProbe),
    TraceEcho(TraceProbe),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub header: Header,
    pub body: Body,
}

/// Why a datagram was refused (the `reason` label of the bad-datagram counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("too short")]
    Short,
    #[error("bad magic")]
    Magic,
    #[error("unsupported version")]
    Version,
    #[error("unknown kind")]
    Kind,
    #[error("bad sender id")]
    Id,
    #[error("bad hop list")]
    Hops,
    #[error("trailing bytes")]
    Trailing,
    /// Signed with a key this agent does not have.
    #[error("unknown key")]
    UnknownKey,
    /// The MAC does not verify: forged, corrupted, or another fleet's key.
    #[error("bad MAC")]
    Mac,
    /// This agent has no key yet: it can neither check nor answer.
    #[error("no mesh key")]
    NoKey,
}

impl DecodeError {
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Short => "short",
            DecodeError::Magic => "magic",
            DecodeError::Version => "version",
            DecodeError::Kind => "kind",
            DecodeError::Id => "id",
            DecodeError::Hops => "hops",
            DecodeError::Trailing => "trailing",
            DecodeError::UnknownKey => "unknown_key",
            DecodeError::Mac => "mac",
            DecodeError::NoKey => "no_key",
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Short)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Short)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// Encodes a datagram and signs it with `key` (the header's `key_id` is
/// the key's). Ids longer than [`MAX_ID`] are cut (at a char boundary), hop
/// lists longer than [`MAX_HOPS`] too.
pub fn encode(d: &Datagram, key: &MeshKey) -> Vec<u8> {
    let h = &d.header;
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(VERSION);
    out.push(match d.body {
        Body::Probe => KIND_PROBE,
        Body::Reply(_) => KIND_REPLY,
        Body::Hops(_) => KIND_HOPS,
        Body::Trace(_) => KIND_TRACE,
        Body::TraceEcho(_) => KIND_TRACE_ECHO,
    });
    out.push(h.flags);
    out.push(h.ttl);
    out.push(key.id);
    out.extend_from_slice(&h.epoch.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.ctr.to_be_bytes());
    out.extend_from_slice(&h.tx_ns.to_be_bytes());
    out.extend_from_slice(&h.report.epoch.to_be_bytes());
    out.extend_from_slice(&h.report.base.to_be_bytes());
    out.extend_from_slice(&h.report.max_seq.to_be_bytes());
    out.extend_from_slice(&h.report.bitmap.to_be_bytes());
    out.push(h.report.hops);
    let mut id = h.id.as_str();
    while id.len() > MAX_ID {
        let mut cut = MAX_ID;
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        id = &id[..cut];
    }
    out.push(u8::try_from(id.len()).unwrap_or(0));
    out.extend_from_slice(id.as_bytes());
    match &d.body {
        Body::Probe => {}
        Body::Reply(e) => {
            out.extend_from_slice(&e.seq.to_be_bytes());
            out.extend_from_slice(&e.tx_ns.to_be_bytes());
            out.push(e.ttl);
            out.extend_from_slice(&e.rx_ns.to_be_bytes());
            out.push(e.rx_ttl);
        }
        Body::Trace(t) | Body::TraceEcho(t) => {
            out.push(t.ttl);
            out.extend_from_slice(&t.run.to_be_bytes());
        }
        Body::Hops(hops) => {
            let hops = &hops[..hops.len().min(MAX_HOPS)];
            out.push(u8::try_from(hops.len()).unwrap_or(0));
            for hop in hops {
                out.push(hop.ttl);
                match hop.addr {
                    None => out.push(0),
                    Some(IpAddr::V4(a)) => {
                        out.push(4);
                        out.extend_from_slice(&a.octets());
                    }
                    Some(IpAddr::V6(a)) => {
                        out.push(6);
                        out.extend_from_slice(&a.octets());
                    }
                }
                let us = u32::try_from(hop.rtt.as_micros()).unwrap_or(u32::MAX);
                out.extend_from_slice(&us.to_be_bytes());
            }
        }
    }
    let mac = key.sign(&out);
    out.extend_from_slice(&mac);
    out
}

/// Checks magic, version and the MAC (with the key the datagram names, among
/// `keys`), then decodes; never panics. Nothing of an unverified datagram is
/// parsed beyond its first nine bytes.
pub fn decode(buf: &[u8], keys: Option<&MeshKeys>) -> Result<Datagram, DecodeError> {
    let (data, mac) = split_mac(buf)?;
    let keys = keys.ok_or(DecodeError::NoKey)?;
    let key = keys.get(data[8]).ok_or(DecodeError::UnknownKey)?;
    if !key.verify(data, mac) {
        return Err(DecodeError::Mac);
    }
    parse(data)
}

/// Decodes without checking the MAC: only for our own datagrams quoted back
/// in ICMP errors (traceroute.rs), which routers, not peers, send.
pub fn decode_unverified(buf: &[u8]) -> Result<Datagram, DecodeError> {
    let (data, _) = split_mac(buf)?;
    parse(data)
}

/// Magic and version first (so a datagram of another version says so),
/// then the body and its MAC apart.
fn split_mac(buf: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    if buf.len() < 5 {
        return Err(DecodeError::Short);
    }
    if buf[..4] != MAGIC.to_be_bytes() {
        return Err(DecodeError::Magic);
    }
    if buf[4] != VERSION {
        return Err(DecodeError::Version);
    }
    if buf.len() < HEADER_FIXED + MAC_LEN {
        return Err(DecodeError::Short);
    }
    Ok(buf.split_at(buf.len() - MAC_LEN))
}

fn parse(buf: &[u8]) -> Result<Datagram, DecodeError> {
    if buf.len() < HEADER_FIXED {
        return Err(DecodeError::Short);
    }
    let mut r = Reader { buf, pos: 0 };
    if r.u32()? != MAGIC {
        return Err(DecodeError::Magic);
    }
    if r.u8()? != VERSION {
        return Err(DecodeError::Version);
    }
    let kind = r.u8()?;
    if !matches!(kind, KIND_PROBE..=KIND_TRACE_ECHO) {
        return Err(DecodeError::Kind);
    }
    let flags = r.u8()?;
    let ttl = r.u8()?;
    let key_id = r.u8()?;
    let epoch = r.u32()?;
    let seq = r.u64()?;
    let ctr = r.u64()?;
    let tx_ns = r.u64()?;
    let report = RxReport {
        epoch: r.u32()?,
        base: r.u64()?,
        max_seq: r.u64()?,
        bitmap: r.u64()?,
        hops: r.u8()?,
    };
    let id_len = usize::from(r.u8()?);
    if id_len == 0 || id_len > MAX_ID {
        return Err(DecodeError::Id);
    }
    let id = std::str::from_utf8(r.take(id_len)?)
        .map_err(|_| DecodeError::Id)?
        .to_owned();
    if id.chars().any(char::is_control) {
        return Err(DecodeError::Id);
    }
    let body = match kind {
        KIND_PROBE => Body::Probe,
        KIND_REPLY => Body::Reply(Echo {
            seq: r.u64()?,
            tx_ns: r.u64()?,
            ttl: r.u8()?,
            rx_ns: r.u64()?,
            rx_ttl: r.u8()?,
        }),
        KIND_TRACE | KIND_TRACE_ECHO => {
            let t = TraceProbe {
                ttl: r.u8()?,
                run: r.u32()?,
            };
            if kind == KIND_TRACE {
                Body::Trace(t)
            } else {
                Body::TraceEcho(t)
            }
        }
        _ => {
            let n = usize::from(r.u8().map_err(|_| DecodeError::Hops)?);
            if n > MAX_HOPS {
                return Err(DecodeError::Hops);
            }
            let mut hops = Vec::with_capacity(n);
            for _ in 0..n {
                let ttl = r.u8().map_err(|_| DecodeError::Hops)?;
                let addr = match r.u8().map_err(|_| DecodeError::Hops)? {
                    0 => None,
                    4 => {
                        let b = r.take(4).map_err(|_| DecodeError::Hops)?;
                        Some(IpAddr::from([b[0], b[1], b[2], b[3]]))
                    }
                    6 => {
                        let b = r.take(16).map_err(|_| DecodeError::Hops)?;
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        Some(IpAddr::from(a))
                    }
                    _ => return Err(DecodeError::Hops),
                };
                let us = r.u32().map_err(|_| DecodeError::Hops)?;
                hops.push(Hop {
                    ttl,
                    addr,
                    rtt: Duration::from_micros(u64::from(us)),
                });
            }
            Body::Hops(hops)
        }
    };
    if r.pos != buf.len() {
        return Err(DecodeError::Trailing);
    }
    Ok(Datagram {
        header: Header {
            kind,
            flags,
            ttl,
            key_id,
            epoch,
            seq,
            ctr,
            tx_ns,
            report,
            id,
        },
        body,
    })
}

/// Hop count from the TTL a datagram was sent with and the TTL it arrived
/// with; None when impossible (received > sent, or unknown).
pub fn hop_count(sent: u8, received: Option<u8>) -> Option<u8> {
    let r = received?;
    (r <= sent && sent != HOPS_UNKNOWN).then(|| sent - r)
}

/// Outcome of the peer's probes as this side received them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxOutcome {
    pub delivered: u64,
    pub lost: u64,
}

/// Tracks one sender's probe sequence at the receiver: what arrived (for the
/// report in every datagram back), and what is missing. A gap becomes *lost*
/// once it has stayed open for `grace` (reordering within it is not loss).
/// A new epoch (the sender restarted) or a jump of more than `max_gap`
/// sequence numbers starts over instead of counting a huge loss.
#[derive(Clone, Debug, Default)]
pub struct RxTracker {
    epoch: u32,
    base: u64,
    max_seq: u64,
    bitmap: u64,
    started: bool,
    /// Missing seq → when the gap was seen.
    gaps: BTreeMap<u64, Duration>,
    pending_delivered: u64,
    pub last_hops: Option<u8>,
}

/// Gaps wider than this restart the sequence instead of counting loss.
pub const MAX_GAP: u64 = 10_000;

impl RxTracker {
    /// A probe `seq` of `epoch` arrived at `now`.
    pub fn on_probe(&mut self, epoch: u32, seq: u64, hops: Option<u8>, now: Duration) {
        if hops.is_some() {
            self.last_hops = hops;
        }
        if !self.started || epoch != self.epoch || seq > self.max_seq.saturating_add(MAX_GAP) {
            self.epoch = epoch;
            self.base = seq;
            self.max_seq = seq;
            self.bitmap = 1;
            self.started = true;
            self.gaps.clear();
            self.pending_delivered += 1;
            return;
        }
        if seq > self.max_seq {
            let shift = seq - self.max_seq;
            for missing in self.max_seq + 1..seq {
                self.gaps.insert(missing, now);
            }
            self.bitmap = if shift >= 64 { 0 } else { self.bitmap << shift };
            self.bitmap |= 1;
            self.max_seq = seq;
            self.pending_delivered += 1;
        } else if self.gaps.remove(&seq).is_some() {
            // Late (reordered) but within grace: delivered.
            let back = self.max_seq - seq;
            if back < 64 {
                self.bitmap |= 1 << back;
            }
            self.pending_delivered += 1;
        }
        // else: duplicate, or older than the tracked window: ignored.
    }

    /// Delivered probes since the last call, and gaps older than `grace` (lost).
    pub fn take(&mut self, now: Duration, grace: Duration) -> RxOutcome {
        let mut lost = 0;
        self.gaps.retain(|_, seen| {
            if now.saturating_sub(*seen) >= grace {
                lost += 1;
                false
            } else {
                true
            }
        });
        RxOutcome {
            delivered: std::mem::take(&mut self.pending_delivered),
            lost,
        }
    }

    /// The report to put in datagrams to this sender.
    pub fn report(&self) -> RxReport {
        if !self.started {
            return RxReport {
                hops: HOPS_UNKNOWN,
                ..RxReport::default()
            };
        }
        RxReport {
            epoch: self.epoch,
            base: self.base,
            max_seq: self.max_seq,
            bitmap: self.bitmap,
            hops: self.last_hops.unwrap_or(HOPS_UNKNOWN),
        }
    }
}

/// Whether `seq` is marked received in `report`: Some(true/false) when the
/// report covers it (its bitmap window), None when it is older.
pub fn report_covers(report: &RxReport, seq: u64) -> Option<bool> {
    if seq > report.max_seq {
        return Some(false);
    }
    let back = report.max_seq - seq;
    (back < 64).then(|| report.bitmap & (1 << back) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MeshKey {
        MeshKey::new(3, &[7u8; 32]).expect("key")
    }

    fn keys() -> MeshKeys {
        MeshKeys::new(3, vec![key(), MeshKey::new(4, &[8u8; 32]).expect("key")]).expect("keys")
    }

    /// Signs `data` (a datagram without its MAC) with [`key`].
    fn signed(mut data: Vec<u8>) -> Vec<u8> {
        let mac = key().sign(&data);
        data.extend_from_slice(&mac);
        data
    }

    fn unsigned(bytes: &[u8]) -> Vec<u8> {
        bytes[..bytes.len() - MAC_LEN].to_vec()
    }

    fn header(kind: u8) -> Header {
        Header {
            kind,
            flags: FLAG_TRACE_REQUEST,
            ttl: 64,
            key_id: 3,
            epoch: 0xdead_beef,
            seq: 42,
            ctr: 77,
            tx_ns: 1_700_000_000_123_456_789,
            report: RxReport {
                epoch: 7,
                base: 3,
                max_seq: 41,
                bitmap: 0b1011,
                hops: 2,
            },
            id: "node-a".into(),
        }
    }

    #[test]
    fn probe_reply_and_hops_round_trip() {
        let probe = Datagram {
            header: header(KIND_PROBE),
            body: Body::Probe,
        };
        assert_eq!(decode(&encode(&probe, &key()), Some(&keys())), Ok(probe.clone()));
        let reply = Datagram {
            header: Header {
                seq: 0,
                ..header(KIND_REPLY)
            },
            body: Body::Reply(Echo {
                seq: 42,
                tx_ns: 5,
                ttl: 64,
                rx_ns: 9,
                rx_ttl: 62,
            }),
        };
        assert_eq!(decode(&encode(&reply, &key()), Some(&keys())), Ok(reply.clone()));
        let hops = Datagram {
            header: header(KIND_HOPS),
            body: Body::Hops(vec![
                Hop {
                    ttl: 1,
                    addr: Some("10.0.0.1".parse().expect("ip")),
                    rtt: Duration::from_micros(150),
                },
                Hop {
                    ttl: 2,
                    addr: None,
                    rtt: Duration::ZERO,
                },
                Hop {
                    ttl: 3,
                    addr: Some("2001:db8::3".parse().expect("ip")),
                    rtt: Duration::from_micros(900),
                },
            ]),
        };
        assert_eq!(decode(&encode(&hops, &key()), Some(&keys())), Ok(hops));
        assert_eq!(encode(&probe, &key()).len(), HEADER_FIXED + 6 + MAC_LEN);
        for body in [
            Body::Trace(TraceProbe {
                ttl: 3,
                run: 0xdead_beef,
            }),
            Body::TraceEcho(TraceProbe { ttl: 3, run: 7 }),
        ] {
            let d = Datagram {
                header: header(if matches!(body, Body::Trace(_)) {
                    KIND_TRACE
                } else {
                    KIND_TRACE_ECHO
                }),
                body,
            };
            let bytes = encode(&d, &key());
            assert_eq!(decode(&bytes, Some(&keys())), Ok(d));
            for n in 0..bytes.len() {
                assert!(decode(&bytes[..n], Some(&keys())).is_err(), "truncated at {n}");
            }
        }
    }

    #[test]
    fn bad_datagrams_are_refused_with_a_reason_and_never_panic() {
        let good = encode(
            &Datagram {
                header: header(KIND_REPLY),
                body: Body::Reply(Echo {
                    seq: 1,
                    tx_ns: 2,
                    ttl: 3,
                    rx_ns: 4,
                    rx_ttl: 5,
                }),
            },
            &key(),
        );
        let d = |b: &[u8]| decode(b, Some(&keys()));
        assert!(d(&good).is_ok());
        assert_eq!(d(&[]), Err(DecodeError::Short));
        assert_eq!(d(&good[..20]), Err(DecodeError::Short));
        let mut m = good.clone();
        m[0] ^= 0xff;
        assert_eq!(d(&m), Err(DecodeError::Magic));
        let mut v = good.clone();
        v[4] = 1;
        assert_eq!(d(&v), Err(DecodeError::Version), "a version-1 datagram says so");
        // Structural errors of datagrams with a valid MAC.
        let mut k = unsigned(&good);
        k[5] = 77;
        assert_eq!(d(&signed(k)), Err(DecodeError::Kind));
        let mut id = unsigned(&good);
        id[66] = 0;
        assert_eq!(d(&signed(id)), Err(DecodeError::Id));
        let mut t = unsigned(&good);
        t.push(0);
        assert_eq!(d(&signed(t)), Err(DecodeError::Trailing));
        let mut hops = unsigned(&encode(
            &Datagram {
                header: header(KIND_HOPS),
                body: Body::Hops(vec![]),
            },
            &key(),
        ));
        *hops.last_mut().expect("count byte") = 200;
        assert_eq!(d(&signed(hops)), Err(DecodeError::Hops));
        // Authentication.
        assert_eq!(decode(&good, None), Err(DecodeError::NoKey));
        let mut other = unsigned(&good);
        other[8] = 9;
        assert_eq!(d(&signed(other)), Err(DecodeError::UnknownKey));
        let forged = encode(
            &Datagram {
                header: header(KIND_PROBE),
                body: Body::Probe,
            },
            &MeshKey::new(3, &[9u8; 32]).expect("another fleet's key, same id"),
        );
        assert_eq!(d(&forged), Err(DecodeError::Mac));
        // Every truncation and every single-byte change: refused, no panic.
        for n in 0..good.len() {
            assert!(d(&good[..n]).is_err(), "truncated at {n}");
        }
        for i in 0..good.len() {
            for b in [0u8, 0x7f, 0xff] {
                let mut c = good.clone();
                if c[i] == b {
                    continue;
                }
                c[i] = b;
                assert!(d(&c).is_err(), "byte {i} set to {b} must not verify");
            }
        }
        // The traceroute reads our own datagram back from an ICMP quote.
        assert_eq!(decode_unverified(&forged).map(|d| d.body), Ok(Body::Probe));
    }

    #[test]
    fn long_ids_are_cut_at_a_char_boundary() {
        let d = Datagram {
            header: Header {
                id: "é".repeat(40),
                ..header(KIND_PROBE)
            },
            body: Body::Probe,
        };
        let back = decode(&encode(&d, &key()), Some(&keys())).expect("decodes");
        assert_eq!(back.header.id, "é".repeat(32));
    }

    #[test]
    fn hop_counts() {
        assert_eq!(hop_count(64, Some(62)), Some(2));
        assert_eq!(hop_count(64, Some(64)), Some(0));
        assert_eq!(hop_count(64, Some(65)), None);
        assert_eq!(hop_count(64, None), None);
    }

    #[test]
    fn tracker_counts_gaps_as_loss_after_grace_and_tolerates_reordering() {
        let s = Duration::from_secs;
        let mut t = RxTracker::default();
        t.on_probe(1, 10, Some(1), s(0));
        t.on_probe(1, 11, Some(1), s(1));
        t.on_probe(1, 14, Some(1), s(2)); // 12, 13 missing
        assert_eq!(t.report().max_seq, 14);
        assert_eq!(t.report().bitmap & 0b11111, 0b11001);
        t.on_probe(1, 12, Some(1), s(2)); // late, within grace
        assert_eq!(t.report().bitmap & 0b11111, 0b11101);
        assert_eq!(t.take(s(3), s(2)), RxOutcome { delivered: 4, lost: 0 });
        assert_eq!(t.take(s(4), s(2)), RxOutcome { delivered: 0, lost: 1 });
        t.on_probe(1, 13, None, s(5)); // too late: already counted lost, ignored
        assert_eq!(t.take(s(5), s(2)).delivered, 0);
        // duplicate ignored
        t.on_probe(1, 14, None, s(5));
        assert_eq!(t.take(s(6), s(2)), RxOutcome::default());
        // sender restarted: new epoch starts over, no loss counted
        t.on_probe(2, 1, Some(3), s(7));
        assert_eq!(t.take(s(20), s(2)), RxOutcome { delivered: 1, lost: 0 });
        assert_eq!(t.report().epoch, 2);
        assert_eq!(t.report().hops, 3);
        // a huge jump restarts too
        t.on_probe(2, 1 + MAX_GAP + 5, None, s(21));
        assert_eq!(t.take(s(30), s(2)).lost, 0);
    }

    #[test]
    fn reports_cover_the_last_64_sequence_numbers() {
        let r = RxReport {
            epoch: 1,
            base: 1,
            max_seq: 100,
            bitmap: 0b101,
            hops: 1,
        };
        assert_eq!(report_covers(&r, 100), Some(true));
        assert_eq!(report_covers(&r, 99), Some(false));
        assert_eq!(report_covers(&r, 98), Some(true));
        assert_eq!(report_covers(&r, 101), Some(false));
        assert_eq!(report_covers(&r, 36), None);
        let mut t = RxTracker::default();
        t.on_probe(1, 1, None, Duration::ZERO);
        t.on_probe(1, 200, None, Duration::ZERO);
        assert_eq!(t.report().bitmap, 1, "a jump beyond 64 clears the bitmap");
    }
}
