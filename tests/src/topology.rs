//! A routed namespace topology for the path-mesh tests: hosts A and B, routers
//! R1 and R2.
//!
//! ```text
//!   A 10.206.1.2 ─── 10.206.1.1 R1 10.206.2.1 ─── 10.206.2.2 B
//!                                  10.206.3.1                  10.206.4.2
//!                                      │                          │
//!                                  10.206.3.2 R2 10.206.4.1 ──────┘
//! ```
//!
//! A and B reach each other through R1 (one router each way).
//! [`PathTopology::route_b_to_a_via_r2`] sends B's traffic to A through R2
//! and then R1 (two routers), keeping B's source address, so only the
//! direction B → A changes. Reverse-path filtering is off on every node
//! (the detour enters R1 from R2 with B's address). All addresses are inside
//! the namespaces the topology creates.

use graydar_common::api::{Evidence, Finding, FindingKind};

use crate::agent::AgentProcess;
use crate::netns::{NetNs, veth_pair};

/// A finding's evidence `key` as text (numbers formatted; "" when absent).
pub fn evidence_text(f: &Finding, key: &str) -> String {
    match f.evidence.get(key) {
        Some(Evidence::Text(s)) => s.clone(),
        Some(Evidence::Number(n)) => n.to_string(),
        None => String::new(),
    }
}

/// A finding's evidence `key` when it is a number.
pub fn evidence_number(f: &Finding, key: &str) -> Option<f64> {
    match f.evidence.get(key) {
        Some(Evidence::Number(n)) => Some(*n),
        _ => None,
    }
}

/// The agent's findings of the four path kinds.
pub fn path_findings(ag: &AgentProcess) -> Vec<Finding> {
    ag.findings()
        .findings
        .into_iter()
        .filter(|f| {
            matches!(
                f.kind,
                FindingKind::OneWayLoss
                    | FindingKind::AsymmetricConnectivity
                    | FindingKind::AsymmetricRoute
                    | FindingKind::LatencyAsymmetry
            )
        })
        .collect()
}

pub const A_ADDR: &str = "10.206.1.2";
pub const B_ADDR: &str = "10.206.2.2";
pub const R1_A: &str = "10.206.1.1";
pub const R1_B: &str = "10.206.2.1";
pub const R2_B: &str = "10.206.4.1";
/// The nftables table the tests add their rules to (in R1).
pub const NFT_TABLE: &str = "graydar_paths";

pub struct PathTopology {
    pub a: NetNs,
    pub b: NetNs,
    pub r1: NetNs,
    pub r2: NetNs,
}

fn sysctl(ns: &NetNs, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    ns.run_in(move || std::fs::write(&path, &value).unwrap_or_else(|e| panic!("write {path}: {e}")));
}

/// Adds a rule to `ns`'s forward chain in table inet [`NFT_TABLE`] (created on first use).
fn nft_forward_rule(ns: &NetNs, rule: &[&str]) {
    let listed = ns.exec_stdout("nft", ["list", "tables"]);
    if !listed.contains(NFT_TABLE) {
        ns.exec("nft", ["add", "table", "inet", NFT_TABLE]);
        ns.exec(
            "nft",
            [
                "add",
                "chain",
                "inet",
                NFT_TABLE,
                "forward",
                "{ type filter hook forward priority 0 ; policy accept ; }",
            ],
        );
    }
    let mut args = vec!["add", "rule", "inet", NFT_TABLE, "forward"];
    args.extend_from_slice(rule);
    ns.exec("nft", args);
}

impl PathTopology {
    /// Builds the four namespaces (names from `prefix`, unique per call).
    pub fn new(prefix: &str) -> PathTopology {
        let p: String = prefix.chars().take(2).collect();
        let t = PathTopology {
            a: NetNs::new(&format!("{p}a")),
            b: NetNs::new(&format!("{p}b")),
            r1: NetNs::new(&format!("{p}r1")),
            r2: NetNs::new(&format!("{p}r2")),
        };
        veth_pair(&t.a, "a0", "10.206.1.2/24", &t.r1, "r1a", "10.206.1.1/24");
        veth_pair(&t.r1, "r1b", "10.206.2.1/24", &t.b, "b0", "10.206.2.2/24");
        veth_pair(&t.r1, "r1r2", "10.206.3.1/24", &t.r2, "r2r1", "10.206.3.2/24");
        veth_pair(&t.r2, "r2b", "10.206.4.1/24", &t.b, "b1", "10.206.4.2/24");
        for ns in [&t.a, &t.b, &t.r1, &t.r2] {
            for conf in ["all", "default"] {
                sysctl(ns, &format!("net.ipv4.conf.{conf}.rp_filter"), "0");
            }
        }
        for ifname in ["r1a", "r1b", "r1r2"] {
            sysctl(&t.r1, &format!("net.ipv4.conf.{ifname}.rp_filter"), "0");
        }
        for ifname in ["r2r1", "r2b"] {
            sysctl(&t.r2, &format!("net.ipv4.conf.{ifname}.rp_filter"), "0");
        }
        for ifname in ["b0", "b1"] {
            sysctl(&t.b, &format!("net.ipv4.conf.{ifname}.rp_filter"), "0");
        }
        sysctl(&t.a, "net.ipv4.conf.a0.rp_filter", "0");
        sysctl(&t.r1, "net.ipv4.ip_forward", "1");
        sysctl(&t.r2, "net.ipv4.ip_forward", "1");
        t.a.ip(["route", "add", "10.206.0.0/16", "via", R1_A]);
        t.b.ip(["route", "add", "10.206.1.0/24", "via", R1_B]);
        t.b.ip(["route", "add", "10.206.3.0/24", "via", R1_B]);
        t.r1.ip(["route", "add", "10.206.4.0/24", "via", "10.206.3.2"]);
        t.r2.ip(["route", "add", "10.206.1.0/24", "via", "10.206.3.1"]);
        t.r2.ip(["route", "add", "10.206.2.0/24", "via", "10.206.3.1"]);
        t
    }

    /// B → A now goes B → R2 → R1 → A (one more router); A → B unchanged.
    pub fn route_b_to_a_via_r2(&self) {
        self.b.ip([
            "route",
            "replace",
            "10.206.1.0/24",
            "via",
            R2_B,
            "dev",
            "b1",
            "src",
            B_ADDR,
        ]);
    }

    /// Adds a rule (nft tokens after `add rule inet <table> forward`) to R1's forward chain.
    pub fn r1_forward_rule(&self, rule: &[&str]) {
        nft_forward_rule(&self.r1, rule);
    }

    /// Removes every rule added with [`PathTopology::r1_forward_rule`].
    pub fn r1_flush(&self) {
        self.r1.exec("nft", ["flush", "chain", "inet", NFT_TABLE, "forward"]);
    }
}

// ---------------------------------------------------------------------------
// IPv6

pub const A6_ADDR: &str = "fd00:206:1::2";
pub const B6_ADDR: &str = "fd00:206:2::2";
pub const R1_A6: &str = "fd00:206:1::1";
pub const R1_B6: &str = "fd00:206:2::1";
pub const R2_B6: &str = "fd00:206:4::1";

/// The same four namespaces as [`PathTopology`], IPv6 only (no IPv4 address
/// anywhere but `lo`):
///
/// ```text
///   A fd00:206:1::2 ─── ::1 R1 fd00:206:2::1 ─── fd00:206:2::2 B
///                           fd00:206:3::1               fd00:206:4::2
///                                │                          │
///                           fd00:206:3::2 R2 fd00:206:4::1 ─┘
/// ```
///
/// [`crate::netns::NetNs`] disables IPv6 in every namespace it creates (so
/// neighbour discovery and MLD add no packets to the IPv4 tests); this
/// topology turns it back on in its own namespaces (`all`, `default` and each
/// interface), with forwarding in R1 and R2, no duplicate address detection
/// (addresses are usable at once) and no router advertisements.
pub struct PathTopology6 {
    pub a: NetNs,
    pub b: NetNs,
    pub r1: NetNs,
    pub r2: NetNs,
}

fn enable_ipv6(ns: &NetNs) {
    for conf in ["all", "default"] {
        sysctl(ns, &format!("net.ipv6.conf.{conf}.disable_ipv6"), "0");
        sysctl(ns, &format!("net.ipv6.conf.{conf}.accept_dad"), "0");
        sysctl(ns, &format!("net.ipv6.conf.{conf}.accept_ra"), "0");
    }
    sysctl(ns, "net.ipv6.conf.lo.disable_ipv6", "0");
}

/// A veth pair with one IPv6 address each end (`nodad`).
fn veth6(a: &NetNs, a_if: &str, a_addr: &str, b: &NetNs, b_if: &str, b_addr: &str) {
    a.ip([
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        sysctl(ns, &format!("net.ipv6.conf.{ifname}.disable_ipv6"), "0");
        sysctl(ns, &format!("net.ipv6.conf.{ifname}.accept_dad"), "0");
        ns.ip(["addr", "add", &format!("{addr}/64"), "dev", ifname, "nodad"]);
        ns.ip(["link", "set", ifname, "up"]);
    }
}

impl PathTopology6 {
    /// Builds the four namespaces (names from `prefix`, unique per call).
    pub fn new(prefix: &str) -> PathTopology6 {
        let p: String = prefix.chars().take(2).collect();
        let t = PathTopology6 {
            a: NetNs::new(&format!("{p}a")),
            b: NetNs::new(&format!("{p}b")),
            r1: NetNs::new(&format!("{p}r1")),
            r2: NetNs::new(&format!("{p}r2")),
        };
        for ns in [&t.a, &t.b, &t.r1, &t.r2] {
            enable_ipv6(ns);
        }
        veth6(&t.a, "a0", A6_ADDR, &t.r1, "r1a", R1_A6);
        veth6(&t.r1, "r1b", R1_B6, &t.b, "b0", B6_ADDR);
        veth6(&t.r1, "r1r2", "fd00:206:3::1", &t.r2, "r2r1", "fd00:206:3::2");
        veth6(&t.r2, "r2b", R2_B6, &t.b, "b1", "fd00:206:4::2");
        sysctl(&t.r1, "net.ipv6.conf.all.forwarding", "1");
        sysctl(&t.r2, "net.ipv6.conf.all.forwarding", "1");
        t.a.ip(["-6", "route", "add", "fd00:206::/32", "via", R1_A6]);
        t.b.ip(["-6", "route", "add", "fd00:206:1::/64", "via", R1_B6]);
        t.b.ip(["-6", "route", "add", "fd00:206:3::/64", "via", R1_B6]);
        t.r1.ip(["-6", "route", "add", "fd00:206:4::/64", "via", "fd00:206:3::2"]);
        t.r2.ip(["-6", "route", "add", "fd00:206:1::/64", "via", "fd00:206:3::1"]);
        t.r2.ip(["-6", "route", "add", "fd00:206:2::/64", "via", "fd00:206:3::1"]);
        t
    }

    /// B → A now goes B → R2 → R1 → A (one more router); A → B unchanged.
    pub fn route_b_to_a_via_r2(&self) {
        self.b.ip([
            "-6",
            "route",
            "replace",
            "fd00:206:1::/64",
            "via",
            R2_B6,
            "dev",
            "b1",
            "src",
            B6_ADDR,
        ]);
    }

    /// Adds a rule (nft tokens after `add rule inet <table> forward`) to R1's forward chain.
    pub fn r1_forward_rule(&self, rule: &[&str]) {
        nft_forward_rule(&self.r1, rule);
    }

    /// Removes every rule added with [`PathTopology6::r1_forward_rule`].
    pub fn r1_flush(&self) {
        self.r1.exec("nft", ["flush", "chain", "inet", NFT_TABLE, "forward"]);
    }
}
