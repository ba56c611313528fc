//! Kernel type information read from the running kernel's BTF
//! (`$SYSFS_ROOT/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations (aya-rs/aya#349), so a struct
//! offset compiled into a program would be the offset of the kernel it was
//! built against. Instead the agent looks offsets up here, by member name,
//! and hands them to the programs as globals before load. Drop reason names
//! come from the kernel's own `enum skb_drop_reason`, never a built-in table.

use std::collections::BTreeMap;
use std::path::Path;

use btf_rs::{Backend, Btf, Type};
use graydar_common::drops::DropOffsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading kernel BTF {}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)", path.display())]
    Load {
        path: std::path::PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no {0}")]
    Missing(String),
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
    /// A bitfield the programs read as one byte spans two.
    #[error("{member}: bitfield at bit {bit} width {width} spans bytes")]
    Bitfield { member: String, bit: u32, width: u32 },
}

pub struct KernelBtf {
    btf: Btf,
}

/// Names of `enum skb_drop_reason` values, without the `SKB_DROP_REASON_` prefix.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    names: BTreeMap<u32, String>,
}

impl DropReasons {
    pub fn from_enum(values: BTreeMap<u32, String>) -> Self {
        let names = values
            .into_iter()
            .map(|(v, n)| {
                let short = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(&n).to_owned();
                (v, short)
            })
            .collect();
        DropReasons { names }
    }

    /// The kernel's name for `value`, or `reason_<value>` for a value this
    /// kernel's core enum does not list (e.g. subsystem-specific reasons).
    pub fn name(&self, value: u32) -> String {
        match self.names.get(&value) {
            Some(n) => n.clone(),
            None => format!("reason_{value}"),
        }
    }

    pub fn value_of(&self, name: &str) -> Option<u32> {
        self.names.iter().find(|(_, n)| n.as_str() == name).map(|(v, _)| *v)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl KernelBtf {
    pub fn load(sysfs_root: &Path) -> Result<Self, BtfError> {
        let path = sysfs_root.join("kernel/btf/vmlinux");
        // Mmap backend first: the default (Cache) parses all ~5 MB of vmlinux
        // BTF into memory (peak RSS +40 MiB) and the agent needs a dozen
        // lookups. Kernels before 6.16 cannot mmap the sysfs BTF file
        // (ENODEV), so fall back to reading it.
        let btf = match Btf::from_file_with_backend(&path, Backend::Mmap) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "mmap of kernel BTF refused; parsing it into memory");
                Btf::from_file(&path).map_err(|source| BtfError::Load { path, source })?
            }
        };
        Ok(KernelBtf { btf })
    }

    /// Follows typedef/const/volatile/restrict/type-tag chains to the real type.
    fn strip(&self, mut ty: Type) -> Result<Type, BtfError> {
        for _ in 0..32 {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) => self.btf.resolve_chained_type(t)?,
                Type::Restrict(t) => self.btf.resolve_chained_type(t)?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
        Err(BtfError::Missing("end of a type chain (loop?)".into()))
    }

    fn struct_named(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        for ty in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            if let Type::Struct(s) = ty {
                // Skip forward declarations' empty twins.
                if !s.members.is_empty() {
                    return Ok(s);
                }
            }
        }
        Err(BtfError::Missing(format!("struct {name}")))
    }

    /// Bit offset of `member` inside `s`, searching anonymous struct/union
    /// members recursively (e.g. `sk_buff.dev` lives in an anonymous union).
    /// Returns the offset and the member's type.
    fn find_member(&self, s: &btf_rs::Struct, member: &str, depth: usize) -> Result<Option<(u32, Type)>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                let ty = self.strip(self.btf.resolve_chained_type(m)?)?;
                return Ok(Some((m.bit_offset(), ty)));
            }
            if name.is_empty() {
                let ty = self.strip(self.btf.resolve_chained_type(m)?)?;
                if let Type::Struct(inner) | Type::Union(inner) = &ty
                    && let Some((off, t)) = self.find_member(inner, member, depth + 1)?
                {
                    return Ok(Some((m.bit_offset() + off, t)));
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of `path` (members separated by '.') from the start of
    /// `struct <name>`, e.g. `member_offset("net", "ns.inum")`.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        let mut s = self.struct_named(struct_name)?;
        let mut bits = 0u32;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, ty) = self
                .find_member(&s, part, 0)?
                .ok_or_else(|| BtfError::Missing(format!("member {struct_name}.{path}")))?;
            bits += off;
            if i + 1 < parts.len() {
                s = match ty {
                    Type::Struct(inner) | Type::Union(inner) => inner,
                    _ => return Err(BtfError::Missing(format!("struct type at {struct_name}.{path}"))),
                };
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Missing(format!("byte-aligned {struct_name}.{path}")));
        }
        Ok(bits / 8)
    }

    /// Bit offset from the start of `struct <struct_name>` and bit width of
    /// the direct (or anonymous-nested) member `member`, for bitfields such
    /// as `inet_connection_sock.icsk_ca_state`; the width is `None` for a
    /// plain member.
    pub fn member_bits(&self, struct_name: &str, member: &str) -> Result<(u32, Option<u32>), BtfError> {
        let s = self.struct_named(struct_name)?;
        self.find_member_bits(&s, member, 0)?
            .ok_or_else(|| BtfError::Missing(format!("member {struct_name}.{member}")))
    }

    fn find_member_bits(
        &self,
        s: &btf_rs::Struct,
        member: &str,
        depth: usize,
    ) -> Result<Option<(u32, Option<u32>)>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Ok(Some((m.bit_offset(), m.bitfield_size().filter(|b| *b > 0))));
            }
            if name.is_empty() {
                let ty = self.strip(self.btf.resolve_chained_type(m)?)?;
                if let Type::Struct(inner) | Type::Union(inner) = &ty
                    && let Some((off, bits)) = self.find_member_bits(inner, member, depth + 1)?
                {
                    return Ok(Some((m.bit_offset() + off, bits)));
                }
            }
        }
        Ok(None)
    }

    /// All values of `enum <name>`.
    pub fn enum_values(&self, name: &str) -> Result<BTreeMap<u32, String>, BtfError> {
        for ty in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            match ty {
                Type::Enum(e) => {
                    let mut out = BTreeMap::new();
                    for m in &e.members {
                        out.insert(m.val(), self.btf.resolve_name(m)?);
                    }
                    return Ok(out);
                }
                Type::Enum64(e) => {
                    let mut out = BTreeMap::new();
                    for m in &e.members {
                        if let Ok(v) = u32::try_from(m.val()) {
                            out.insert(v, self.btf.resolve_name(m)?);
                        }
                    }
                    return Ok(out);
                }
                _ => {}
            }
        }
        Err(BtfError::Missing(format!("enum {name}")))
    }

    /// Offsets and reason names for the kfree_skb probe. Network-namespace
    /// attribution is optional: without it (`dev_nd_net = u32::MAX`) drops are
    /// attributed by ifindex alone, and the agent says so in its log.
    pub fn drop_probe_setup(&self) -> Result<(DropOffsets, DropReasons), BtfError> {
        let reasons = DropReasons::from_enum(self.enum_values("skb_drop_reason")?);
        let mut off = DropOffsets {
            skb_dev: self.member_offset("sk_buff", "dev")?,
            dev_ifindex: self.member_offset("net_device", "ifindex")?,
            dev_nd_net: u32::MAX,
            net_ns_inum: 0,
            reason_consumed: reasons
                .value_of("SKB_CONSUMED")
                .or_else(|| reasons.value_of("CONSUMED"))
                .unwrap_or(u32::MAX),
            reason_not_dropped_yet: reasons
                .value_of("SKB_NOT_DROPPED_YET")
                .or_else(|| reasons.value_of("NOT_DROPPED_YET"))
                .unwrap_or(u32::MAX),
        };
        if let (Ok(nd_net), Ok(inum)) = (
            self.member_offset("net_device", "nd_net.net"),
            self.member_offset("net", "ns.inum"),
        ) {
            off.dev_nd_net = nd_net;
            off.net_ns_inum = inum;
        }
        Ok((off, reasons))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_btf() -> Option<KernelBtf> {
        // Unit tier: runs wherever the build host exposes BTF (all machines
        // of this project do); reports clearly otherwise.
        match KernelBtf::load(Path::new("/sys")) {
            Ok(b) => Some(b),
            Err(e) => panic!("this test needs /sys/kernel/btf/vmlinux: {e}"),
        }
    }

    #[test]
    fn finds_members_inside_anonymous_unions() {
        let Some(btf) = host_btf() else { return };
        let dev = btf.member_offset("sk_buff", "dev").expect("sk_buff.dev");
        // `dev` follows next/prev pointers in the first anonymous union.
        assert_eq!(dev, 16, "sk_buff.dev on x86_64 is at 16 since 4.x");
        let ifindex = btf.member_offset("net_device", "ifindex").expect("net_device.ifindex");
        assert!(ifindex > 0 && ifindex < 4096, "implausible ifindex offset {ifindex}");
        btf.member_offset("net", "ns.inum").expect("net.ns.inum");
        assert!(btf.member_offset("sk_buff", "no_such_member").is_err());
    }

    #[test]
    fn reads_drop_reasons_from_the_running_kernel() {
        let Some(btf) = host_btf() else { return };
        let (off, reasons) = btf.drop_probe_setup().expect("drop probe setup");
        assert!(reasons.len() > 20, "only {} drop reasons", reasons.len());
        let nf = reasons.value_of("NETFILTER_DROP").expect("NETFILTER_DROP");
        assert_eq!(reasons.name(nf), "NETFILTER_DROP");
        assert!(reasons.value_of("NO_SOCKET").is_some());
        assert_ne!(off.reason_consumed, u32::MAX, "6.x kernels define SKB_CONSUMED");
        assert_ne!(off.dev_nd_net, u32::MAX);
        assert_eq!(reasons.name(0xdead_0000), "reason_3735879680");
    }
}
