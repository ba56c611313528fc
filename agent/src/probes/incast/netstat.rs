//! `$PROCFS_ROOT/net/netstat` and `$PROCFS_ROOT/net/snmp`: the kernel's TCP
//! and IP MIB counters of this network namespace.
//!
//! Both files are pairs of lines with the same prefix: a header line naming
//! the columns and a value line (`TcpExt: SyncookiesSent ...` then
//! `TcpExt: 0 ...`). Counters are keyed `"<Prefix>.<Name>"`, e.g.
//! `TcpExt.TCPTimeouts`. Negative values (`Tcp: MaxConn -1`) are not
//! counters and are skipped.
//!
//! The incast signal uses them to cross-check its eBPF retransmission
//! counts (`TcpExt.TCPTimeouts`, `TcpExt.TCPLossProbes`) and for drops on
//! the receiver's path (receive-queue, backlog and out-of-order drops).

use std::collections::BTreeMap;
use std::path::Path;

use crate::probes::ProbeError;

/// MIB counters by `"<Prefix>.<Name>"`.
pub type Counters = BTreeMap<String, u64>;

/// Counters of drops on the receiving path of TCP (after the device):
/// receive queue full, socket backlog full, out-of-order queue full, zero
/// window, memory pressure pruning, listen queue overflow.
pub const RECEIVE_DROP_COUNTERS: &[&str] = &[
    "TcpExt.TCPRcvQDrop",
    "TcpExt.TCPBacklogDrop",
    "TcpExt.TCPOFODrop",
    "TcpExt.TCPZeroWindowDrop",
    "TcpExt.PruneCalled",
    "TcpExt.RcvPruned",
    "TcpExt.OfoPruned",
    "TcpExt.ListenDrops",
];

/// Parses one file's text (pure).
pub fn parse(text: &str) -> Result<Counters, ProbeError> {
    let mut out = Counters::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut n = 0;
    while let Some(header) = lines.next() {
        n += 1;
        let err = |detail: String| ProbeError::Parse {
            what: format!("netstat/snmp line pair {n}"),
            detail,
        };
        let values = lines
            .next()
            .ok_or_else(|| err(format!("header {header:?} without a value line")))?;
        let (hp, hnames) = header
            .split_once(':')
            .ok_or_else(|| err(format!("no prefix in {header:?}")))?;
        let (vp, vvals) = values
            .split_once(':')
            .ok_or_else(|| err(format!("no prefix in {values:?}")))?;
        if hp != vp {
            return Err(err(format!("prefix {hp:?} followed by {vp:?}")));
        }
        let names: Vec<&str> = hnames.split_whitespace().collect();
        let vals: Vec<&str> = vvals.split_whitespace().collect();
        if names.len() != vals.len() {
            return Err(err(format!("{hp}: {} names but {} values", names.len(), vals.len())));
        }
        for (name, v) in names.iter().zip(vals) {
            let v: i64 = v.parse().map_err(|e| err(format!("{hp}.{name} = {v:?}: {e}")))?;
            if let Ok(v) = u64::try_from(v) {
                out.insert(format!("{hp}.{name}"), v);
            }
        }
    }
    Ok(out)
}

/// Reads and merges `net/netstat` and `net/snmp` under `procfs_root`.
pub fn read(procfs_root: &Path) -> Result<Counters, ProbeError> {
    let mut out = Counters::new();
    for file in ["net/netstat", "net/snmp"] {
        let path = procfs_root.join(file);
        let text = std::fs::read_to_string(&path).map_err(|source| ProbeError::Io { path, source })?;
        out.extend(parse(&text)?);
    }
    Ok(out)
}

/// Sum of [`RECEIVE_DROP_COUNTERS`] present in `c`.
pub fn receive_drops(c: &Counters) -> u64 {
    RECEIVE_DROP_COUNTERS
        .iter()
        .filter_map(|k| c.get(*k))
        .fold(0u64, |a, v| a.saturating_add(*v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
    }

    #[test]
    fn parses_the_hosts_netstat() {
        let c = parse(&fixture("netstat.host")).expect("parse netstat.host");
        // Columns the incast signal relies on exist on 6.x kernels.
        for k in [
            "TcpExt.TCPTimeouts",
            "TcpExt.TCPLossProbes",
            "TcpExt.TCPRcvQDrop",
            "TcpExt.TCPOFODrop",
            "TcpExt.TCPBacklogDrop",
            "IpExt.InCEPkts",
        ] {
            assert!(c.contains_key(k), "{k} missing");
        }
        assert_eq!(c["IpExt.InOctets"], 599_595_456);
        assert_eq!(c["TcpExt.TW"], 83);
    }

    #[test]
    fn parses_snmp_and_skips_negative_values() {
        let c = parse(&fixture("snmp.host")).expect("parse snmp.host");
        assert!(c.contains_key("Tcp.RetransSegs"));
        assert!(!c.contains_key("Tcp.MaxConn"), "MaxConn is -1 and no counter");
        assert_eq!(c["Tcp.RtoMin"], 200);
    }

    #[test]
    fn rejects_malformed_text() {
        assert!(parse("TcpExt: A B\nTcpExt: 1\n").is_err());
        assert!(parse("TcpExt: A\nIpExt: 1\n").is_err());
        assert!(parse("TcpExt: A\n").is_err());
        assert!(parse("TcpExt: A\nTcpExt: x\n").is_err());
        assert!(parse("").expect("empty is fine").is_empty());
    }

    #[test]
    fn sums_receive_drops() {
        let c = parse("TcpExt: TCPRcvQDrop TCPOFODrop Other\nTcpExt: 3 4 100\n").expect("parse");
        assert_eq!(receive_drops(&c), 7);
    }
}
