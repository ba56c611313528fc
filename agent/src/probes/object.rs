//! Errors of the probes that take programs and maps from the shared eBPF
//! object, and the lookups that produce them: each error names the program,
//! map or kernel type that failed and keeps aya's (or the BTF reader's)
//! error as its source.

use aya::Ebpf;
use aya::maps::{Map, MapError};
use aya::programs::{Program, ProgramError};

use crate::btf::BtfError;

/// What failed while loading the object or setting up one of its probes.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading eBPF object: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    /// An offset or enum value the programs need is not in this kernel's BTF.
    #[error("{0}")]
    Btf(#[from] BtfError),
    /// aya could not parse the kernel BTF, which tp_btf programs need.
    #[error("the kernel BTF could not be parsed")]
    NoAyaBtf,
    #[error("probe setup already taken")]
    SetupTaken,
    #[error("program {0} missing from the object")]
    ProgramMissing(&'static str),
    /// The program is not of the type the probe expects.
    #[error("{program}: {source}")]
    ProgramType {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("loading {program}: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// `target`: where it was attached, e.g. `raw tracepoint kfree_skb`.
    #[error("attaching {program} to {target}: {source}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: ProgramError,
    },
    /// The tc classifier refused by `interface` twice: before and after
    /// adding a clsact qdisc (`first`: the first refusal).
    #[error("attaching tc ingress to {interface}: {source} (first try: {first})")]
    TcAttach {
        interface: String,
        first: Box<ProgramError>,
        #[source]
        source: ProgramError,
    },
    #[error("map {0} missing")]
    MapMissing(&'static str),
    /// The map is not of the type the probe expects.
    #[error("{map}: {source}")]
    MapType {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading {map}: {source}")]
    MapRead {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing {map}: {source}")]
    MapWrite {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

impl From<aya::EbpfError> for EbpfError {
    fn from(e: aya::EbpfError) -> Self {
        EbpfError::Object(Box::new(e))
    }
}

/// The program `name` of `ebpf`, as the type `T` (e.g. `RawTracePoint`).
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::ProgramMissing(name))?
        .try_into()
        .map_err(|source| EbpfError::ProgramType { program: name, source })
}

/// Takes the map `name` out of `ebpf`, as the type `T` (e.g. `PerCpuArray`).
pub fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::MapMissing(name))?;
    T::try_from(map).map_err(|source| EbpfError::MapType { map: name, source })
}

/// `ProgramError` → [`EbpfError::Load`] of `program`.
pub fn load_err(program: &'static str) -> impl FnOnce(ProgramError) -> EbpfError {
    move |source| EbpfError::Load { program, source }
}

/// `ProgramError` → [`EbpfError::Attach`] of `program` to `target`.
pub fn attach_err(program: &'static str, target: impl Into<String>) -> impl FnOnce(ProgramError) -> EbpfError {
    let target = target.into();
    move |source| EbpfError::Attach {
        program,
        target,
        source,
    }
}

/// `MapError` → [`EbpfError::MapRead`] of `map`.
pub fn read_err(map: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::MapRead { map, source }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::probes::ProbeError;

    #[test]
    fn errors_name_what_failed_and_keep_the_cause() {
        let e = ProbeError::from(load_err("kfree_skb")(ProgramError::NotLoaded));
        let text = e.to_string();
        assert!(text.starts_with("eBPF: loading kfree_skb: "), "{text}");
        assert!(text.ends_with(&ProgramError::NotLoaded.to_string()), "{text}");
        let cause = e.source().and_then(|s| s.source()).expect("aya's error kept");
        assert!(matches!(
            cause.downcast_ref::<ProgramError>(),
            Some(ProgramError::NotLoaded)
        ));

        let e = attach_err("kfree_skb", "raw tracepoint kfree_skb")(ProgramError::AlreadyAttached);
        assert!(
            e.to_string()
                .starts_with("attaching kfree_skb to raw tracepoint kfree_skb: "),
            "{e}"
        );
        let e = read_err("DROPS")(MapError::KeyNotFound);
        assert!(e.to_string().starts_with("reading DROPS: "), "{e}");
        assert!(e.source().and_then(|s| s.downcast_ref::<MapError>()).is_some());
        assert_eq!(
            EbpfError::ProgramMissing("tcp_fanin").to_string(),
            "program tcp_fanin missing from the object"
        );
        let e = EbpfError::from(BtfError::Missing("REQ_OP_READ".into()));
        assert_eq!(e.to_string(), "kernel BTF has no REQ_OP_READ");
    }
}
