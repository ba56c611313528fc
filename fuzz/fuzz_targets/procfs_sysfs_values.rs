//! The small procfs, sysfs and tracefs readers, one per first input byte
//! (the rest is the file's text):
//! 0 tracefs event `format` (agent/src/probes/disk/fsync.rs `tracefs_field_offset`,
//!   the field name on the first line);
//! 1 `/proc/<tid>/syscall` (`in_sync_call`);
//! 2 `net.ipv4.ip_local_port_range` (agent/src/probes/incast/fanin.rs);
//! 3 sysfs counter and `ifindex` files (agent/src/probes/drops/nic.rs);
//! 4 a static mesh peer `name=addr[:port]` from the config (agent/src/detect/paths/config.rs);
//! 5 a route prefix (agent/src/probes/routes.rs `Prefix`);
//! 6 a fault CIDR (graydar_common::faults::Cidr, strict and masked).
//!
//! Asserts, beyond never panicking: a tracefs offset is one the text names;
//! a port range is ordered; a counter is the trimmed text's number; a peer's
//! name is non-empty, trimmed and at most the mesh's id length; prefixes
//! and CIDRs print back to text that parses to the same value, and a strict
//! CIDR has no host bits.
#![no_main]

use std::str::FromStr as _;

use graydar_agent::detect::paths::parse_peer;
use graydar_agent::probes::disk::fsync;
use graydar_agent::probes::drops::nic;
use graydar_agent::probes::incast::fanin;
use graydar_agent::probes::paths::mesh::MAX_ID;
use graydar_agent::probes::routes::Prefix;
use graydar_common::faults::Cidr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 7 {
        0 => {
            let (field, format) = text.split_once('\n').unwrap_or((text, ""));
            if let Some(off) = fsync::tracefs_field_offset(format, field) {
                let named = format.lines().any(|l| {
                    l.contains(field)
                        && l.split(';').any(|p| {
                            p.trim()
                                .strip_prefix("offset:")
                                .and_then(|v| v.trim().parse::<u32>().ok())
                                == Some(off)
                        })
                });
                assert!(named, "offset {off} of {field:?} is on no line naming it");
            }
        }
        1 => {
            let _ = fsync::in_sync_call(&Some(text.to_owned()));
        }
        2 => {
            if let Some((lo, hi)) = fanin::parse_port_range(text) {
                assert!(lo <= hi);
            }
        }
        3 => {
            if let Ok(v) = nic::parse_counter("fuzz", text) {
                assert_eq!(Ok(v), text.trim().parse::<u64>());
            }
            if let Ok(v) = nic::parse_ifindex("fuzz", text) {
                assert_eq!(Ok(v), text.trim().parse::<u32>());
            }
        }
        4 => {
            if let Ok((name, _addr)) = parse_peer(text, 7946) {
                assert!(
                    !name.is_empty() && name.len() <= MAX_ID && name.trim() == name,
                    "{name:?}"
                );
            }
        }
        5 => {
            if let Ok(p) = Prefix::from_str(text) {
                let again = Prefix::from_str(&p.to_string()).expect("a printed prefix parses");
                assert_eq!(again, p);
            }
        }
        _ => {
            if let Ok(c) = Cidr::parse(text) {
                assert_eq!(c.network(), c.addr, "strict CIDR with host bits: {c}");
                assert_eq!(Cidr::parse(&c.to_string()), Ok(c));
            }
            if let Ok(c) = Cidr::parse_masked(text) {
                assert_eq!(c.network(), c.addr);
                assert_eq!(Cidr::parse(&c.to_string()), Ok(c));
            }
        }
    }
});
