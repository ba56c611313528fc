//! device-mapper faults through the DM ioctl interface (the `devicemapper`
//! crate; no `dmsetup`): on a dm device whose table is linear, suspend →
//! load a `delay` or `flakey` table over the same segments → resume; revert
//! loads the original table back the same way.

use devicemapper::{DM, DevId, DmFlags, DmName, DmNameBuf, DmOptions};

use super::caps::Piece;

/// One table line: start sector, length in sectors, target type, parameters.
pub type TableLine = (u64, u64, String, String);

pub use graydar_common::faults::{DmFaultSpec, FlakeyMode, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum DmFaultError {
    #[error("device-mapper is not available: {0} (the kernel needs CONFIG_BLK_DEV_DM and the dm-mod module)")]
    NoDeviceMapper(#[source] devicemapper::DmError),
    #[error("dm device {0:?} does not exist")]
    NoDevice(String),
    #[error("dm device {name:?} has a {found} table; graydar only wraps linear segments, which it can restore exactly")]
    NotLinear { name: String, found: String },
    #[error("invalid dm fault: device name {name:?}: {source}")]
    InvalidName {
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    #[error("device-mapper {op} on {name:?}: {source}")]
    Ioctl {
        op: &'static str,
        name: String,
        #[source]
        source: devicemapper::DmError,
    },
    /// The table load was refused and the target is not available.
    #[error(transparent)]
    Missing(#[from] super::caps::Missing),
}

/// The dm target module a fault needs.
pub fn target_piece(spec: &DmFaultSpec) -> Piece {
    match spec {
        DmFaultSpec::Delay { .. } => Piece::DmDelay,
        DmFaultSpec::Flakey { .. } => Piece::DmFlakey,
    }
}

/// A refused table load → the missing target, when the capability probe
/// says its module is not there (the kernel answers a bare EINVAL).
fn explain_load_failure(table: &[TableLine], e: DmFaultError) -> DmFaultError {
    let caps = super::caps::probe(&super::caps::Roots::default());
    let missing: Vec<Piece> = table
        .iter()
        .filter_map(|(_, _, ty, _)| match ty.as_str() {
            "delay" => Some(Piece::DmDelay),
            "flakey" => Some(Piece::DmFlakey),
            _ => None,
        })
        .filter(|p| !caps.usable(*p))
        .collect();
    if missing.is_empty() || caps.sources.is_empty() {
        e
    } else {
        let mut m = missing;
        m.dedup();
        DmFaultError::Missing(super::caps::Missing(m))
    }
}

/// The device-mapper table of a [`DmFaultSpec`] (an extension trait: the
/// spec is a wire type in graydar-common).
pub trait DmTable {
    fn table(&self, prior: &[TableLine]) -> Vec<TableLine>;
}

impl DmTable for DmFaultSpec {
    /// The faulty table over the prior linear segments.
    fn table(&self, prior: &[TableLine]) -> Vec<TableLine> {
        prior
            .iter()
            .map(|(start, len, _linear, params)| {
                // linear params: "<major:minor> <offset>"
                let dev_off = params.trim();
                let (ty, p) = match self {
                    DmFaultSpec::Delay {
                        read_ms,
                        write_ms,
                        flush_ms,
                    } => {
                        let mut p = format!("{dev_off} {read_ms} {dev_off} {write_ms}");
                        if let Some(f) = flush_ms {
                            p.push_str(&format!(" {dev_off} {f}"));
                        }
                        ("delay", p)
                    }
                    DmFaultSpec::Flakey { up_s, down_s, mode } => {
                        let feature = match mode {
                            FlakeyMode::ErrorWrites => "error_writes",
                            FlakeyMode::DropWrites => "drop_writes",
                        };
                        ("flakey", format!("{dev_off} {up_s} {down_s} 1 {feature}"))
                    }
                };
                (*start, *len, ty.to_owned(), p)
            })
            .collect()
    }
}

fn ioctl_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(devicemapper::DmError) -> DmFaultError + 'a {
    move |source| DmFaultError::Ioctl {
        op,
        name: name.to_owned(),
        source,
    }
}

pub fn open() -> Result<DM, DmFaultError> {
    DM::new().map_err(DmFaultError::NoDeviceMapper)
}

fn name_buf(name: &str) -> Result<DmNameBuf, DmFaultError> {
    DmNameBuf::new(name.to_owned()).map_err(|source| DmFaultError::InvalidName {
        name: name.to_owned(),
        source,
    })
}

/// The live table of `name`.
pub fn table(dm: &DM, name: &str) -> Result<Vec<TableLine>, DmFaultError> {
    let n = name_buf(name)?;
    let id = DevId::Name(&n);
    dm.device_info(&id)
        .map_err(|_| DmFaultError::NoDevice(name.to_owned()))?;
    let (_, table) = dm
        .table_status(&id, DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE))
        .map_err(ioctl_err("table status", name))?;
    Ok(table)
}

/// The table waiting in the inactive slot of `name` (loaded, never
/// resumed); empty when the slot is empty.
pub fn inactive_table(dm: &DM, name: &str) -> Result<Vec<TableLine>, DmFaultError> {
    let n = name_buf(name)?;
    let id = DevId::Name(&n);
    let info = dm
        .device_info(&id)
        .map_err(|_| DmFaultError::NoDevice(name.to_owned()))?;
    if !info.flags().contains(DmFlags::DM_INACTIVE_PRESENT) {
        return Ok(Vec::new());
    }
    let (_, table) = dm
        .table_status(
            &id,
            DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE | DmFlags::DM_QUERY_INACTIVE_TABLE),
        )
        .map_err(ioctl_err("inactive table status", name))?;
    Ok(table)
}

/// Whether `t` is a table graydar loads over the linear `prior`: `prior`
/// itself (a revert's load) or delay / flakey targets over exactly its
/// segments and devices (an apply's, [`DmTable::table`]). Pure.
pub fn loaded_by_graydar(t: &[TableLine], prior: &[TableLine]) -> bool {
    !t.is_empty()
        && (t == prior
            || (t.len() == prior.len()
                && t.iter().zip(prior).all(|((s, l, ty, p), (ps, pl, _, pp))| {
                    s == ps
                        && l == pl
                        && matches!(ty.as_str(), "delay" | "flakey")
                        && p.strip_prefix(pp.trim()).is_some_and(|rest| rest.starts_with(' '))
                })))
}

/// Clears the inactive slot of `name` when it holds a table graydar loaded
/// over `prior` and never swapped in: the agent was killed between
/// DM_TABLE_LOAD and the resume. Left there, the next resume by anyone
/// would swap it in with nothing journaled to undo it. Any other inactive
/// table is someone else's and stays. Returns whether it cleared one.
pub fn clear_loaded_by_graydar(dm: &DM, name: &str, prior: &[TableLine]) -> Result<bool, DmFaultError> {
    if !loaded_by_graydar(&inactive_table(dm, name)?, prior) {
        return Ok(false);
    }
    let n = name_buf(name)?;
    dm.table_clear(&DevId::Name(&n))
        .map_err(ioctl_err("table clear", name))?;
    Ok(true)
}

/// Reads the table to restore later; refuses anything but linear segments.
pub fn snapshot(dm: &DM, name: &str) -> Result<Vec<TableLine>, DmFaultError> {
    let t = table(dm, name)?;
    if t.is_empty() {
        return Err(DmFaultError::NotLinear {
            name: name.to_owned(),
            found: "empty".into(),
        });
    }
    if let Some((_, _, ty, _)) = t.iter().find(|(_, _, ty, _)| ty != "linear") {
        return Err(DmFaultError::NotLinear {
            name: name.to_owned(),
            found: ty.clone(),
        });
    }
    Ok(t)
}

/// load (inactive slot) → resume. If the load fails nothing changed (the
/// device never stopped), so a failed fault leaves nothing behind.
///
/// DM_TABLE_LOAD only fills the inactive slot, and a resume with a table
/// waiting suspends the device, swaps the tables and resumes it (the kernel's
/// do_resume), so the device is stopped for just the swap. It skips lockfs (DM_SKIP_LOCKFS): freezing a filesystem on the device would
/// sync it through the old table first (with a delay table: every dirty page
/// waits its delay; measured 507 ms for a dm-delay apply under TCG with
/// lockfs), and the swap needs no filesystem-consistent point because the
/// new table maps the very same sectors. In-flight bios are still waited
/// for (dm-delay releases its queued bios at presuspend).
pub fn swap_table(dm: &DM, name: &str, table: &[TableLine]) -> Result<(), DmFaultError> {
    let n = name_buf(name)?;
    let id = DevId::Name(&n);
    dm.table_load(&id, table, DmOptions::default())
        .map_err(ioctl_err("table load", name))
        .map_err(|e| explain_load_failure(table, e))?;
    if let Err(e) = dm
        .device_suspend(&id, DmOptions::default().set_flags(DmFlags::DM_SKIP_LOCKFS))
        .map_err(ioctl_err("resume with the new table", name))
    {
        // Drop the loaded table; the live one never changed.
        let _ = dm.table_clear(&id);
        return Err(e);
    }
    Ok(())
}

/// The ioctls [`swap_table`] performs, for describe/dry-run.
pub fn describe(name: &str, table: &[TableLine]) -> Vec<String> {
    let mut ops = Vec::new();
    for (start, len, ty, params) in table {
        ops.push(format!("DM_TABLE_LOAD {name}: {start} {len} {ty} {params}"));
    }
    ops.push(format!(
        "DM_DEV_SUSPEND DM_SKIP_LOCKFS {name} (resume: the kernel suspends, swaps in the loaded table, resumes)"
    ));
    ops
}

/// Creates dm-linear `name` over the whole block device `major:minor` of
/// `sectors` sectors: the provisioning helper for demos and tests.
pub fn provision_linear(dm: &DM, name: &str, major: u32, minor: u32, sectors: u64) -> Result<(u32, u32), DmFaultError> {
    let n = name_buf(name)?;
    let info = dm
        .device_create(&n, None, DmOptions::default())
        .map_err(ioctl_err("create", name))?;
    let table = vec![(0, sectors, "linear".to_owned(), format!("{major}:{minor} 0"))];
    let id = DevId::Name(&n);
    if let Err(e) = dm
        .table_load(&id, &table, DmOptions::default())
        .map_err(ioctl_err("table load", name))
        .and_then(|_| {
            dm.device_suspend(&id, DmOptions::default())
                .map_err(ioctl_err("resume", name))
        })
    {
        let _ = dm.device_remove(&id, DmOptions::default());
        return Err(e);
    }
    let d = info.device();
    Ok((d.major, d.minor))
}

pub fn remove(dm: &DM, name: &str) -> Result<(), DmFaultError> {
    let n = name_buf(name)?;
    dm.device_remove(&DevId::Name(&n), DmOptions::default())
        .map_err(ioctl_err("remove", name))?;
    Ok(())
}

/// For callers holding only a borrowed name.
pub fn dm_name(name: &str) -> Result<&DmName, DmFaultError> {
    DmName::new(name).map_err(|source| DmFaultError::InvalidName {
        name: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear() -> Vec<TableLine> {
        vec![
            (0, 131072, "linear".into(), "7:0 0".into()),
            (131072, 2048, "linear".into(), "7:1 2048".into()),
        ]
    }

    #[test]
    fn delay_table_wraps_each_linear_segment() {
        let s = DmFaultSpec::Delay {
            read_ms: 0,
            write_ms: 100,
            flush_ms: Some(100),
        };
        s.validate().expect("valid");
        assert_eq!(
            s.table(&linear()),
            vec![
                (0, 131072, "delay".to_owned(), "7:0 0 0 7:0 0 100 7:0 0 100".to_owned()),
                (
                    131072,
                    2048,
                    "delay".to_owned(),
                    "7:1 2048 0 7:1 2048 100 7:1 2048 100".to_owned()
                ),
            ]
        );
        let s = DmFaultSpec::Delay {
            read_ms: 5,
            write_ms: 0,
            flush_ms: None,
        };
        assert_eq!(s.table(&linear())[0].3, "7:0 0 5 7:0 0 0");
    }

    #[test]
    fn only_tables_graydar_loads_over_the_prior_count_as_its_own() {
        let prior = linear();
        let delay = DmFaultSpec::Delay {
            read_ms: 0,
            write_ms: 100,
            flush_ms: None,
        }
        .table(&prior);
        let flakey = DmFaultSpec::Flakey {
            up_s: 1,
            down_s: 1,
            mode: FlakeyMode::DropWrites,
        }
        .table(&prior);
        assert!(loaded_by_graydar(&delay, &prior));
        assert!(loaded_by_graydar(&flakey, &prior));
        assert!(loaded_by_graydar(&prior, &prior), "a revert's load");
        assert!(!loaded_by_graydar(&[], &prior), "nothing loaded");
        assert!(!loaded_by_graydar(&delay[..1], &prior), "other segments");
        let mut other_dev = delay.clone();
        other_dev[0].3 = "8:0 0 0 8:0 0 100".into();
        assert!(!loaded_by_graydar(&other_dev, &prior), "another device");
        let mut other_target = delay.clone();
        other_target[0].2 = "crypt".into();
        assert!(!loaded_by_graydar(&other_target, &prior), "another target");
        // "7:1 2048" must not match "7:1 20480 ...".
        let mut longer_offset = delay;
        longer_offset[1].3 = "7:1 20480 0 7:1 20480 100".into();
        assert!(!loaded_by_graydar(&longer_offset, &prior));
    }

    #[test]
    fn flakey_table_has_its_feature() {
        let s = DmFaultSpec::Flakey {
            up_s: 0,
            down_s: 3600,
            mode: FlakeyMode::ErrorWrites,
        };
        s.validate().expect("valid");
        assert_eq!(
            s.table(&linear())[0],
            (0, 131072, "flakey".to_owned(), "7:0 0 0 3600 1 error_writes".to_owned())
        );
    }

    #[test]
    fn describe_lists_the_ioctls() {
        let t = DmFaultSpec::Delay {
            read_ms: 0,
            write_ms: 100,
            flush_ms: None,
        }
        .table(&linear()[..1]);
        assert_eq!(
            describe("data0", &t),
            vec![
                "DM_TABLE_LOAD data0: 0 131072 delay 7:0 0 0 7:0 0 100",
                "DM_DEV_SUSPEND DM_SKIP_LOCKFS data0 (resume: the kernel suspends, swaps in the loaded table, resumes)"
            ]
        );
    }

    #[test]
    fn invalid_specs_are_named() {
        assert!(
            DmFaultSpec::Delay {
                read_ms: 0,
                write_ms: 0,
                flush_ms: None
            }
            .validate()
            .is_err()
        );
        let e = DmFaultSpec::Flakey {
            up_s: 1,
            down_s: 0,
            mode: FlakeyMode::DropWrites,
        }
        .validate()
        .expect_err("x");
        assert!(e.to_string().contains("down_s"), "{e}");
        let e = DmFaultSpec::Delay {
            read_ms: 70_000,
            write_ms: 0,
            flush_ms: None,
        }
        .validate()
        .expect_err("x");
        assert!(e.to_string().contains("read_ms"), "{e}");
    }
}
