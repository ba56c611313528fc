//! Qdisc statistics over rtnetlink (RTM_GETQDISC dump): drops, overlimits,
//! backlog, requeues per qdisc.
//!
//! [`from_message`] (pure) converts one `RTM_NEWQDISC` message; [`dump`] does the
//! netlink round trip. The kernel sends statistics twice: the legacy
//! `TCA_STATS` (`struct tc_stats`, 32-bit packets) and the nested `TCA_STATS2`
//! (`TCA_STATS_BASIC` with 64-bit bytes, `TCA_STATS_QUEUE`, and
//! `TCA_STATS_PKT64` once the packet count no longer fits 32 bits). `TCA_STATS2`
//! wins where present.
//!
//! Note for consumers: classful/multiqueue roots (`mq`, `mqprio`, `htb`, ...)
//! report the sum of their children, so summing every qdisc of an interface
//! double counts. Use the root ([`QdiscStats::is_root`]) for per-interface totals.

use futures_util::TryStreamExt;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcStats2};
use rtnetlink::packet_core::{DefaultNla, Nla};

use crate::probes::ProbeError;

/// `TCA_STATS_PKT64` (include/uapi/linux/gen_stats.h), not typed by
/// netlink-packet-route 0.34: a `u64` packet count sent when it exceeds `u32`.
const TCA_STATS_PKT64: u16 = 8;

/// Statistics of one qdisc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QdiscStats {
    pub ifindex: u32,
    /// Qdisc kind: `pfifo_fast`, `fq_codel`, `mq`, `tbf`, `noqueue`, `ingress`, ...
    pub kind: String,
    /// `major << 16 | minor`, as in `tcm_handle`.
    pub handle: u32,
    /// `tcm_parent`: `0xffff_ffff` for a root qdisc, `0xffff_fff1` for ingress/clsact.
    pub parent: u32,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub overlimits: u64,
    pub requeues: u64,
    pub backlog_bytes: u64,
    /// Packets in the queue now (`qlen`, what `tc -s` prints as `backlog ...p`).
    pub backlog_packets: u64,
    /// Same value as `backlog_packets` (`tc_stats.qlen` / `gnet_stats_queue.qlen`).
    pub qlen: u64,
}

fn handle_to_string(h: u32) -> String {
    let major = h >> 16;
    let minor = h & 0xffff;
    if minor == 0 {
        format!("{major:x}:")
    } else {
        format!("{major:x}:{minor:x}")
    }
}

impl QdiscStats {
    /// The handle as `tc` prints it: `8001:`, `1:`, `0:` (minor shown when nonzero).
    pub fn handle_str(&self) -> String {
        handle_to_string(self.handle)
    }

    /// The parent as `tc` prints it: `root`, `ingress`, or `1:4`.
    pub fn parent_str(&self) -> String {
        match self.parent {
            p if p == u32::from(TcHandle::ROOT) => "root".to_owned(),
            p if p == u32::from(TcHandle::INGRESS) => "ingress".to_owned(),
            p => handle_to_string(p),
        }
    }

    /// Root egress qdisc of its interface (parent `TC_H_ROOT`).
    pub fn is_root(&self) -> bool {
        self.parent == u32::from(TcHandle::ROOT)
    }

    /// Ingress or clsact qdisc (parent `TC_H_INGRESS`).
    pub fn is_ingress(&self) -> bool {
        self.parent == u32::from(TcHandle::INGRESS)
    }
}

/// Converts one qdisc message (pure). `None` when it has no `TCA_KIND` or
/// no valid interface index (not a qdisc of a device).
pub fn from_message(msg: &TcMessage) -> Option<QdiscStats> {
    let ifindex = u32::try_from(msg.header.index).ok().filter(|&i| i != 0)?;
    let mut out = QdiscStats {
        ifindex,
        handle: u32::from(msg.header.handle),
        parent: u32::from(msg.header.parent),
        ..QdiscStats::default()
    };
    let mut kind = None;
    let mut pkt64 = None;
    let mut have_basic = false;
    let mut have_queue = false;
    // First pass: TCA_STATS2 (preferred). Second pass: TCA_STATS for what is missing.
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => kind = Some(k.clone()),
            TcAttribute::Stats2(stats) => {
                for s in stats {
                    match s {
                        TcStats2::Basic(b) => {
                            have_basic = true;
                            out.bytes = b.bytes;
                            out.packets = u64::from(b.packets);
                        }
                        TcStats2::Queue(q) => {
                            have_queue = true;
                            out.qlen = u64::from(q.qlen);
                            out.backlog_packets = u64::from(q.qlen);
                            out.backlog_bytes = u64::from(q.backlog);
                            out.drops = u64::from(q.drops);
                            out.requeues = u64::from(q.requeues);
                            out.overlimits = u64::from(q.overlimits);
                        }
                        TcStats2::Other(nla) => pkt64 = pkt64.or_else(|| parse_pkt64(nla)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    for attr in &msg.attributes {
        if let TcAttribute::Stats(s) = attr {
            if !have_basic {
                out.bytes = s.bytes;
                out.packets = u64::from(s.packets);
            }
            if !have_queue {
                out.qlen = u64::from(s.qlen);
                out.backlog_packets = u64::from(s.qlen);
                out.backlog_bytes = u64::from(s.backlog);
                out.drops = u64::from(s.drops);
                out.overlimits = u64::from(s.overlimits);
            }
        }
    }
    if let Some(p) = pkt64 {
        out.packets = p;
    }
    out.kind = kind?;
    Some(out)
}

fn parse_pkt64(nla: &DefaultNla) -> Option<u64> {
    let mut buf = [0u8; 8];
    if nla.kind() != TCA_STATS_PKT64 || nla.value_len() != buf.len() {
        return None;
    }
    nla.emit_value(&mut buf);
    Some(u64::from_ne_bytes(buf))
}

/// Dumps every qdisc of the namespace `handle` is connected to. An empty list
/// is a valid answer.
pub async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<QdiscStats>, ProbeError> {
    let messages: Vec<TcMessage> =
        handle
            .qdisc()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| ProbeError::Netlink {
                what: "dumping qdiscs",
                source,
            })?;
    Ok(messages.iter().filter_map(from_message).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::RouteNetlinkMessage;
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
    use std::path::PathBuf;

    use crate::probes::fixture;

    /// Parses a fixture holding one raw RTM_NEWQDISC netlink message.
    fn message(name: &str) -> TcMessage {
        let path = fixture(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("deserializing {}: {e}", path.display()));
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(m)) => m,
            other => panic!("{}: not RTM_NEWQDISC: {other:?}", path.display()),
        }
    }

    fn stats(name: &str) -> QdiscStats {
        from_message(&message(name)).unwrap_or_else(|| panic!("{name}: no qdisc stats"))
    }

    #[test]
    fn handle_and_parent_strings_match_tc() {
        let q = QdiscStats {
            handle: 0x8001_0000,
            parent: 0xffff_ffff,
            ..QdiscStats::default()
        };
        assert_eq!(q.handle_str(), "8001:");
        assert_eq!(q.parent_str(), "root");
        assert!(q.is_root());
        let child = QdiscStats {
            handle: 0,
            parent: 0x0001_0004,
            ..QdiscStats::default()
        };
        assert_eq!(child.handle_str(), "0:");
        assert_eq!(child.parent_str(), "1:4");
        assert!(!child.is_root());
        let ingress = QdiscStats {
            handle: 0xffff_0000,
            parent: 0xffff_fff1,
            ..QdiscStats::default()
        };
        assert_eq!(ingress.handle_str(), "ffff:");
        assert!(ingress.is_ingress());
    }

    #[test]
    fn tbf_with_drops_and_backlog_from_captured_bytes() {
        // Captured on a veth with `tbf rate 1mbit burst 4kb limit 6kb` under a UDP
        // flood; values cross-checked with an independent decode of the bytes.
        let q = stats("qdisc_tbf_drops_backlog.bin");
        assert_eq!(q.kind, "tbf");
        assert_eq!(q.ifindex, 3);
        assert_eq!(q.handle_str(), "8001:");
        assert!(q.is_root());
        assert_eq!(q.bytes, 1_532_422);
        assert_eq!(q.packets, 1_131);
        assert_eq!(q.drops, 2_116_292);
        assert_eq!(q.overlimits, 2_118_266);
        assert_eq!(q.requeues, 0);
        assert_eq!(q.backlog_bytes, 4_968);
        assert_eq!(q.backlog_packets, 4);
        assert_eq!(q.qlen, 4);
    }

    #[test]
    fn host_qdiscs_from_captured_bytes() {
        let lo = stats("qdisc_lo_noqueue.bin");
        assert_eq!((lo.ifindex, lo.kind.as_str()), (1, "noqueue"));
        assert_eq!(lo.handle_str(), "0:");
        assert!(lo.is_root());
        let eth0 = stats("qdisc_eth0_pfifo_fast.bin");
        assert_eq!(eth0.kind, "pfifo_fast");
        assert_eq!((eth0.bytes, eth0.packets, eth0.drops), (735_636, 7_682, 0));
    }

    #[test]
    fn mq_root_and_child_from_captured_bytes() {
        let root = stats("qdisc_mq_root.bin");
        assert_eq!(root.kind, "mq");
        assert_eq!(root.handle_str(), "1:");
        assert!(root.is_root());
        assert_eq!(root.packets, 711);
        let child = stats("qdisc_mq_child_pfifo_fast.bin");
        assert_eq!(child.kind, "pfifo_fast");
        assert_eq!(child.parent_str(), "1:4");
        assert!(!child.is_root());
        assert_eq!(child.packets, 706);
        assert!(child.packets <= root.packets, "mq root sums its children");
    }

    #[test]
    fn ingress_from_captured_bytes() {
        let q = stats("qdisc_ingress.bin");
        assert_eq!(q.kind, "ingress");
        assert_eq!(q.handle_str(), "ffff:");
        assert_eq!(q.parent_str(), "ingress");
        assert!(q.is_ingress() && !q.is_root());
    }

    #[test]
    fn prefers_stats2_and_pkt64_over_legacy_stats() {
        let mut msg = message("qdisc_tbf_drops_backlog.bin");
        for attr in &mut msg.attributes {
            if let TcAttribute::Stats2(s) = attr {
                s.push(TcStats2::Other(DefaultNla::new(
                    TCA_STATS_PKT64,
                    (5_000_000_000u64).to_ne_bytes().to_vec(),
                )));
            }
        }
        let q = from_message(&msg).expect("stats");
        assert_eq!(q.packets, 5_000_000_000);
        assert_eq!(q.drops, 2_116_292);
    }

    #[test]
    fn falls_back_to_legacy_stats() {
        let mut msg = message("qdisc_tbf_drops_backlog.bin");
        msg.attributes.retain(|a| !matches!(a, TcAttribute::Stats2(_)));
        let q = from_message(&msg).expect("stats");
        assert_eq!(q.packets, 1_131);
        assert_eq!(q.drops, 2_116_292);
        assert_eq!(q.overlimits, 2_118_266);
        assert_eq!(q.backlog_bytes, 4_968);
        assert_eq!(q.qlen, 4);
        assert_eq!(q.requeues, 0);
    }

    #[test]
    fn message_without_kind_is_not_a_qdisc() {
        let msg = TcMessage::with_index(3);
        assert_eq!(from_message(&msg), None);
    }

    /// Real netlink round trip; RTM_GETQDISC dumps need no privilege.
    #[test]
    fn dump_current_namespace() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let qdiscs = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().expect("netlink socket");
            let task = tokio::spawn(conn);
            let out = dump(&handle).await.expect("qdisc dump");
            task.abort();
            out
        });
        // An empty list is a valid answer (e.g. a namespace with only `lo`).
        for q in &qdiscs {
            assert!(q.ifindex > 0, "{q:?}");
            assert!(!q.kind.is_empty(), "{q:?}");
        }
    }

    /// One-off capture of raw RTM_NEWQDISC messages of the current namespace:
    /// `GRAYDAR_CAPTURE_DIR=/tmp/q cargo test -p graydar-agent --lib capture_qdisc -- --ignored`
    /// writes one `if<index>_<kind>_h<handle>_p<parent>.bin` file per qdisc.
    #[test]
    #[ignore = "writes capture files; run by hand to refresh fixtures"]
    fn capture_qdisc_messages() {
        use rtnetlink::packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
        use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

        let dir = PathBuf::from(std::env::var_os("GRAYDAR_CAPTURE_DIR").expect("set GRAYDAR_CAPTURE_DIR"));
        std::fs::create_dir_all(&dir).expect("create capture dir");
        let mut socket = Socket::new(NETLINK_ROUTE).expect("netlink socket");
        socket.bind_auto().expect("bind");
        socket.connect(&SocketAddr::new(0, 0)).expect("connect");
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        socket.send(&buf, 0).expect("send dump request");

        let mut written = 0;
        'recv: loop {
            let (data, _) = socket.recv_from_full().expect("recv");
            let mut off = 0;
            while off + 16 <= data.len() {
                let len = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().expect("2 bytes"));
                assert!(len >= 16 && off + len <= data.len(), "bad netlink length");
                let raw = &data[off..off + len];
                match ty {
                    3 => break 'recv,                             // NLMSG_DONE
                    2 => panic!("netlink error answer: {raw:?}"), // NLMSG_ERROR
                    36 => {
                        // RTM_NEWQDISC
                        let msg =
                            NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).expect("parse captured message");
                        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(tc)) = msg.payload
                        else {
                            panic!("unexpected payload")
                        };
                        let q = from_message(&tc).expect("qdisc stats");
                        let name = format!("if{}_{}_h{:08x}_p{:08x}.bin", q.ifindex, q.kind, q.handle, q.parent);
                        std::fs::write(dir.join(&name), raw).expect("write capture");
                        println!("{name}: {q:?}");
                        written += 1;
                    }
                    _ => {}
                }
                off += (len + 3) & !3;
            }
        }
        println!("{written} qdisc messages written to {}", dir.display());
    }
}
