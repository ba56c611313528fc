//! What the running kernel can do for faults, without changing anything.
//!
//! Each piece a fault needs (sch_netem, sch_prio, cls_flower, act_mirred,
//! sch_ingress for clsact, ifb, dm-mod, dm-delay, dm-flakey) is judged by,
//! in this order:
//! 1. the kernel's own configuration, when readable: `/proc/config.gz`
//!    (CONFIG_IKCONFIG_PROC), else `/boot/config-$(uname -r)`. `=y` means
//!    built in; `is not set` (or absent) means missing, final; `=m` means a
//!    module, usable if step 2 or 4 finds it;
//! 2. `/sys/module/<module>`: loaded (or built in with parameters);
//! 3. `/lib/modules/$(uname -r)/modules.builtin` lists it: built in;
//! 4. `/lib/modules/$(uname -r)/modules.dep` lists it: the module file is
//!    installed, and the kernel loads it on first use (request_module, as
//!    for `tc qdisc add ... netem`).
//!
//! Without any of these sources the piece counts as missing. An apply that
//! the kernel refuses anyway (a wrong answer here) still fails cleanly: each
//! kernel refusal is mapped to the same [`Piece`] and its config option.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use graydar_common::api::Capabilities;
use serde::Serialize;

/// A kernel feature a fault may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Piece {
    Netem,
    Prio,
    Flower,
    Mirred,
    /// sch_ingress: the `ingress` and `clsact` qdiscs.
    Clsact,
    Ifb,
    DeviceMapper,
    DmDelay,
    DmFlakey,
}

impl Piece {
    pub const ALL: [Piece; 9] = [
        Piece::Netem,
        Piece::Prio,
        Piece::Flower,
        Piece::Mirred,
        Piece::Clsact,
        Piece::Ifb,
        Piece::DeviceMapper,
        Piece::DmDelay,
        Piece::DmFlakey,
    ];

    /// Kernel config option.
    pub fn config(self) -> &'static str {
        match self {
            Piece::Netem => "CONFIG_NET_SCH_NETEM",
            Piece::Prio => "CONFIG_NET_SCH_PRIO",
            Piece::Flower => "CONFIG_NET_CLS_FLOWER",
            Piece::Mirred => "CONFIG_NET_ACT_MIRRED",
            Piece::Clsact => "CONFIG_NET_SCH_INGRESS",
            Piece::Ifb => "CONFIG_IFB",
            Piece::DeviceMapper => "CONFIG_BLK_DEV_DM",
            Piece::DmDelay => "CONFIG_DM_DELAY",
            Piece::DmFlakey => "CONFIG_DM_FLAKEY",
        }
    }

    /// Module name as in /sys/module and modules.dep (with `_`).
    pub fn module(self) -> &'static str {
        match self {
            Piece::Netem => "sch_netem",
            Piece::Prio => "sch_prio",
            Piece::Flower => "cls_flower",
            Piece::Mirred => "act_mirred",
            Piece::Clsact => "sch_ingress",
            Piece::Ifb => "ifb",
            Piece::DeviceMapper => "dm_mod",
            Piece::DmDelay => "dm_delay",
            Piece::DmFlakey => "dm_flakey",
        }
    }

    /// What it is, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Piece::Netem => "the netem qdisc",
            Piece::Prio => "the prio qdisc (scoped faults and the controller exclusion)",
            Piece::Flower => "the flower classifier (scoped faults, the controller exclusion, ingress redirect)",
            Piece::Mirred => "the mirred action (ingress faults: redirect to an ifb device)",
            Piece::Clsact => "the ingress/clsact qdisc (ingress faults)",
            Piece::Ifb => "ifb devices (ingress faults)",
            Piece::DeviceMapper => "device-mapper",
            Piece::DmDelay => "the dm-delay target",
            Piece::DmFlakey => "the dm-flakey target",
        }
    }
}

/// A kernel without `pieces`: the error every fault kind returns for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", missing_message(.0))]
pub struct Missing(pub Vec<Piece>);

fn missing_message(pieces: &[Piece]) -> String {
    let list: Vec<String> = pieces
        .iter()
        .map(|p| {
            format!(
                "{} ({}=y, or =m with the {} module installed)",
                p.what(),
                p.config(),
                p.module()
            )
        })
        .collect();
    format!("this kernel lacks {}", list.join("; "))
}

/// How a piece is available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    BuiltIn,
    Loaded,
    /// Installed as a module; loaded on first use.
    Module,
    Missing,
}

impl Availability {
    pub fn usable(self) -> bool {
        self != Availability::Missing
    }
}

/// The answers for every [`Piece`] and where they came from.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCaps {
    pub release: String,
    pub pieces: BTreeMap<Piece, Availability>,
    /// Which sources were readable (e.g. "/proc/config.gz", "modules.dep").
    pub sources: Vec<String>,
}

impl KernelCaps {
    pub fn usable(&self, p: Piece) -> bool {
        self.pieces.get(&p).is_some_and(|a| a.usable())
    }

    /// The fault pieces as the agent registers them with the controller
    /// (`ebpf` is not this probe's to tell: false).
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            ebpf: false,
            sch_netem: self.usable(Piece::Netem),
            device_mapper: self.usable(Piece::DeviceMapper),
            sch_prio: self.usable(Piece::Prio),
            cls_flower: self.usable(Piece::Flower),
            act_mirred: self.usable(Piece::Mirred),
            ifb: self.usable(Piece::Ifb),
            dm_delay: self.usable(Piece::DmDelay),
            dm_flakey: self.usable(Piece::DmFlakey),
        }
    }

    /// `Err` naming every piece of `needed` this kernel lacks.
    pub fn require(&self, needed: &[Piece]) -> Result<(), Missing> {
        let missing: Vec<Piece> = needed.iter().copied().filter(|p| !self.usable(*p)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Missing(missing))
        }
    }
}

/// Where to look (roots are configurable for containers: `--sysfs-root`).
#[derive(Clone, Debug)]
pub struct Roots {
    pub procfs: PathBuf,
    pub sysfs: PathBuf,
    /// `/lib/modules`
    pub modules: PathBuf,
    /// `/boot`
    pub boot: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            procfs: "/proc".into(),
            sysfs: "/sys".into(),
            modules: "/lib/modules".into(),
            boot: "/boot".into(),
        }
    }
}

/// Probes the running kernel (reads files only).
pub fn probe(roots: &Roots) -> KernelCaps {
    let release = std::fs::read_to_string(roots.procfs.join("sys/kernel/osrelease"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut sources = Vec::new();
    let config = read_config(roots, &release, &mut sources);
    let moddir = roots.modules.join(&release);
    let builtin = read_list(&moddir.join("modules.builtin"), "modules.builtin", &mut sources);
    let dep = read_list(&moddir.join("modules.dep"), "modules.dep", &mut sources);
    let pieces = Piece::ALL
        .iter()
        .map(|p| {
            let a = judge(
                *p,
                config.as_deref(),
                roots.sysfs.join("module").join(p.module()).exists(),
                &builtin,
                &dep,
            );
            (*p, a)
        })
        .collect();
    KernelCaps {
        release,
        pieces,
        sources,
    }
}

/// The decision for one piece, from what was read (pure, unit-tested).
pub fn judge(p: Piece, config: Option<&str>, sys_module: bool, builtin: &[String], dep: &[String]) -> Availability {
    let in_list = |list: &[String]| list.iter().any(|m| m == p.module());
    if let Some(cfg) = config {
        match config_value(cfg, p.config()) {
            Some("y") => return Availability::BuiltIn,
            Some("m") => {}
            _ => return Availability::Missing,
        }
    }
    if sys_module {
        Availability::Loaded
    } else if in_list(builtin) {
        Availability::BuiltIn
    } else if in_list(dep) {
        Availability::Module
    } else {
        Availability::Missing
    }
}

/// `y`, `m`, or `None` for "is not set" / absent.
fn config_value<'a>(cfg: &'a str, option: &str) -> Option<&'a str> {
    cfg.lines()
        .find_map(|l| l.strip_prefix(option)?.strip_prefix('=').map(str::trim))
}

fn read_config(roots: &Roots, release: &str, sources: &mut Vec<String>) -> Option<String> {
    let gz = roots.procfs.join("config.gz");
    if let Ok(bytes) = std::fs::read(&gz)
        && let Some(text) = gunzip(&bytes)
    {
        sources.push(gz.display().to_string());
        return Some(text);
    }
    let plain = roots.boot.join(format!("config-{release}"));
    let text = std::fs::read_to_string(&plain).ok()?;
    sources.push(plain.display().to_string());
    Some(text)
}

/// Module names listed in modules.builtin / modules.dep (`kernel/net/sched/sch_prio.ko[.xz]: deps` →
/// `sch_prio`; `-` and `_` are the same in module names).
fn read_list(path: &Path, name: &str, sources: &mut Vec<String>) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    sources.push(name.to_owned());
    text.lines().filter_map(module_name).collect()
}

fn module_name(line: &str) -> Option<String> {
    let path = line.split(':').next()?.trim();
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// A gzip member (RFC 1952) → text. Only what /proc/config.gz uses.
fn gunzip(b: &[u8]) -> Option<String> {
    if b.len() < 18 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return None;
    }
    let flags = b[3];
    let mut i = 10;
    if flags & 0x04 != 0 {
        let xlen = usize::from(u16::from_le_bytes([*b.get(i)?, *b.get(i + 1)?]));
        i += 2 + xlen;
    }
    for bit in [0x08, 0x10] {
        if flags & bit != 0 {
            i += b.get(i..)?.iter().position(|c| *c == 0)? + 1;
        }
    }
    if flags & 0x02 != 0 {
        i += 2;
    }
    let raw = miniz_oxide::inflate::decompress_to_vec(b.get(i..)?).ok()?;
    let mut s = String::new();
    raw.as_slice().read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_decides_when_present() {
        let cfg = "CONFIG_NET_SCH_HTB=y\n# CONFIG_NET_SCH_NETEM is not set\nCONFIG_IFB=m\nCONFIG_NET_SCH_PRIO=y\n";
        assert_eq!(judge(Piece::Netem, Some(cfg), false, &[], &[]), Availability::Missing);
        // Not set stays missing even if something named like it is on disk.
        assert_eq!(
            judge(Piece::Netem, Some(cfg), false, &[], &["sch_netem".into()]),
            Availability::Missing
        );
        assert_eq!(judge(Piece::Prio, Some(cfg), false, &[], &[]), Availability::BuiltIn);
        // =m: usable only when the module is installed or loaded.
        assert_eq!(judge(Piece::Ifb, Some(cfg), false, &[], &[]), Availability::Missing);
        assert_eq!(
            judge(Piece::Ifb, Some(cfg), false, &[], &["ifb".into()]),
            Availability::Module
        );
        assert_eq!(judge(Piece::Ifb, Some(cfg), true, &[], &[]), Availability::Loaded);
        assert_eq!(
            judge(Piece::Flower, Some(cfg), false, &[], &[]),
            Availability::Missing,
            "absent"
        );
    }

    #[test]
    fn without_a_config_the_module_lists_decide() {
        let dep: Vec<String> = [
            "kernel/net/sched/sch_netem.ko: ",
            "kernel/drivers/md/dm-delay.ko: kernel/drivers/md/dm-mod.ko",
            "kernel/drivers/net/ifb.ko.xz:",
        ]
        .iter()
        .filter_map(|l| module_name(l))
        .collect();
        assert_eq!(dep, ["sch_netem", "dm_delay", "ifb"]);
        assert_eq!(judge(Piece::DmDelay, None, false, &[], &dep), Availability::Module);
        assert_eq!(judge(Piece::DmFlakey, None, false, &[], &dep), Availability::Missing);
        let builtin = vec!["sch_prio".to_owned()];
        assert_eq!(judge(Piece::Prio, None, false, &builtin, &dep), Availability::BuiltIn);
        assert_eq!(judge(Piece::Mirred, None, true, &[], &[]), Availability::Loaded);
    }

    #[test]
    fn missing_pieces_name_their_config_options() {
        let caps = KernelCaps {
            release: "x".into(),
            pieces: [
                (Piece::Netem, Availability::Missing),
                (Piece::Prio, Availability::Module),
            ]
            .into_iter()
            .collect(),
            sources: vec![],
        };
        assert!(caps.require(&[Piece::Prio]).is_ok());
        let e = caps
            .require(&[Piece::Prio, Piece::Netem, Piece::Flower])
            .expect_err("missing");
        assert_eq!(e.0, [Piece::Netem, Piece::Flower]);
        let msg = e.to_string();
        assert!(
            msg.contains("CONFIG_NET_SCH_NETEM") && msg.contains("CONFIG_NET_CLS_FLOWER"),
            "{msg}"
        );
        assert!(!msg.contains("CONFIG_NET_SCH_PRIO"), "{msg}");
    }

    #[test]
    fn gunzip_reads_a_gzip_member() {
        // `printf 'CONFIG_IFB=y\n' | gzip -n | xxd -i`
        let gz = [
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x73, 0xf6, 0xf7, 0x73, 0xf3, 0x74, 0x8f, 0xf7,
            0x74, 0x73, 0xb2, 0xad, 0xe4, 0x02, 0x00, 0x07, 0x0a, 0xc8, 0x22, 0x0d, 0x00, 0x00, 0x00,
        ];
        assert_eq!(gunzip(&gz).as_deref(), Some("CONFIG_IFB=y\n"));
    }

    #[test]
    fn every_piece_has_its_own_config_option_and_module() {
        let mut configs = std::collections::BTreeSet::new();
        let mut modules = std::collections::BTreeSet::new();
        for p in Piece::ALL {
            assert!(configs.insert(p.config()), "{p:?}: {} used twice", p.config());
            assert!(modules.insert(p.module()), "{p:?}: {} used twice", p.module());
            let c = p.config();
            assert!(
                c.strip_prefix("CONFIG_").is_some_and(|n| !n.is_empty()
                    && n.chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')),
                "{p:?}: {c:?} is not a kernel config option"
            );
            // The name a modules.dep line of the module's file yields (files use `-`).
            let line = format!("kernel/x/{}.ko.xz: kernel/y/dep.ko", p.module().replace('_', "-"));
            assert_eq!(module_name(&line).as_deref(), Some(p.module()), "{p:?}");
        }
        assert_eq!(configs.len(), Piece::ALL.len());
    }

    /// `text` as a gzip member (what /proc/config.gz holds); the trailer's
    /// CRC and size are not checked by [`gunzip`], so zeros do.
    fn gzip(text: &str) -> Vec<u8> {
        let mut gz = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03];
        gz.extend(miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 6));
        gz.extend([0u8; 8]);
        gz
    }

    /// A fake root: /proc (osrelease, config.gz), /boot/config-R, /lib/modules/R
    /// (modules.builtin, modules.dep), /sys/module/act_mirred.
    fn fixture(dir: &Path) -> Roots {
        let roots = Roots {
            procfs: dir.join("proc"),
            sysfs: dir.join("sys"),
            modules: dir.join("lib/modules"),
            boot: dir.join("boot"),
        };
        let release = "6.1.0-test";
        let write = |path: PathBuf, bytes: &[u8]| {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, bytes).expect("write");
        };
        write(roots.procfs.join("sys/kernel/osrelease"), b"6.1.0-test\n");
        let config = "CONFIG_NET_SCH_NETEM=m\nCONFIG_NET_SCH_PRIO=m\n# CONFIG_NET_CLS_FLOWER is not set\n\
                      CONFIG_NET_ACT_MIRRED=m\nCONFIG_NET_SCH_INGRESS=y\nCONFIG_IFB=m\nCONFIG_BLK_DEV_DM=y\n\
                      CONFIG_DM_DELAY=m\nCONFIG_DM_FLAKEY=m\n";
        write(roots.procfs.join("config.gz"), &gzip(config));
        // /boot says otherwise: it must only count without /proc/config.gz.
        write(
            roots.boot.join(format!("config-{release}")),
            b"CONFIG_NET_SCH_NETEM=y\nCONFIG_IFB=y\nCONFIG_NET_SCH_PRIO=m\n",
        );
        let moddir = roots.modules.join(release);
        write(moddir.join("modules.builtin"), b"kernel/net/sched/sch_prio.ko\n");
        write(
            moddir.join("modules.dep"),
            b"kernel/net/sched/sch_netem.ko.xz:\nkernel/drivers/md/dm-delay.ko: kernel/drivers/md/dm-mod.ko\n",
        );
        std::fs::create_dir_all(roots.sysfs.join("module/act_mirred")).expect("sys module");
        roots
    }

    #[test]
    fn a_fixture_kernel_is_probed_from_its_config_and_module_lists() {
        use Availability::{BuiltIn, Loaded, Missing, Module};
        let dir = tempfile::tempdir().expect("temp dir");
        let roots = fixture(dir.path());
        let caps = probe(&roots);
        assert_eq!(caps.release, "6.1.0-test");
        let gz = roots.procfs.join("config.gz").display().to_string();
        assert_eq!(caps.sources, [gz.as_str(), "modules.builtin", "modules.dep"]);
        let want = |list: [(Piece, Availability); 9]| list.into_iter().collect::<BTreeMap<_, _>>();
        assert_eq!(
            caps.pieces,
            want([
                (Piece::Netem, Module),   // =m, in modules.dep
                (Piece::Prio, BuiltIn),   // =m, but modules.builtin lists it
                (Piece::Flower, Missing), // is not set
                (Piece::Mirred, Loaded),  // =m, in /sys/module
                (Piece::Clsact, BuiltIn), // =y
                (Piece::Ifb, Missing),    // =m, but installed nowhere
                (Piece::DeviceMapper, BuiltIn),
                (Piece::DmDelay, Module), // dm-delay.ko in modules.dep
                (Piece::DmFlakey, Missing),
            ])
        );
        let c = caps.capabilities();
        assert!(c.sch_netem && c.sch_prio && c.act_mirred && c.device_mapper && c.dm_delay);
        assert!(!c.cls_flower && !c.ifb && !c.dm_flakey);
        let e = caps
            .require(&[Piece::Netem, Piece::Ifb, Piece::DmFlakey])
            .expect_err("missing");
        assert_eq!(e.0, [Piece::Ifb, Piece::DmFlakey]);

        // Without /proc/config.gz, /boot/config-R decides.
        std::fs::remove_file(roots.procfs.join("config.gz")).expect("rm");
        let caps = probe(&roots);
        let boot = roots.boot.join("config-6.1.0-test").display().to_string();
        assert_eq!(caps.sources.first(), Some(&boot));
        assert_eq!(caps.pieces[&Piece::Netem], BuiltIn);
        assert_eq!(caps.pieces[&Piece::Ifb], BuiltIn);
        assert_eq!(caps.pieces[&Piece::Mirred], Missing, "absent from this config");

        // Without any config, the module lists and /sys/module decide.
        std::fs::remove_file(roots.boot.join("config-6.1.0-test")).expect("rm");
        let caps = probe(&roots);
        assert_eq!(caps.sources, ["modules.builtin", "modules.dep"]);
        assert_eq!(
            caps.pieces,
            want([
                (Piece::Netem, Module),
                (Piece::Prio, BuiltIn),
                (Piece::Flower, Missing),
                (Piece::Mirred, Loaded),
                (Piece::Clsact, Missing),
                (Piece::Ifb, Missing),
                (Piece::DeviceMapper, Missing),
                (Piece::DmDelay, Module),
                (Piece::DmFlakey, Missing),
            ])
        );
    }
}
