//! What faults can target on this host, reported to the controller at
//! registration and with every heartbeat, so it can refuse a fault on an
//! interface or dm device that does not exist ("interface eth9 does not exist
//! on agent X (it has eth0, lo)") before any agent sees it.

use std::path::Path;

/// Network interfaces of this namespace: the entries of `<sysfs>/class/net`,
/// sorted. `None` when the directory cannot be read (unknown, not empty).
pub fn interfaces(sysfs_root: &Path) -> Option<Vec<String>> {
    let dir = sysfs_root.join("class/net");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "listing interfaces");
            return None;
        }
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    out.sort();
    Some(out)
}

/// device-mapper devices, by the DM_LIST_DEVICES ioctl. An empty list when
/// the kernel has no device-mapper (no `/dev/mapper/control`); `None` when
/// it exists but cannot be asked (e.g. not root).
pub fn dm_devices() -> Option<Vec<String>> {
    if !Path::new("/dev/mapper/control").exists() {
        return Some(Vec::new());
    }
    let dm = match devicemapper::DM::new() {
        Ok(dm) => dm,
        Err(e) => {
            tracing::debug!(error = %e, "device-mapper: cannot open the control device");
            return None;
        }
    };
    match dm.list_devices() {
        Ok(list) => {
            let mut out: Vec<String> = list.into_iter().map(|(name, _, _)| name.to_string()).collect();
            out.sort();
            Some(out)
        }
        Err(e) => {
            tracing::debug!(error = %e, "device-mapper: listing devices");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_the_sorted_entries_of_class_net() {
        let dir = tempfile::tempdir().expect("temp dir");
        let net = dir.path().join("class/net");
        for n in ["lo", "eth0", "veth9"] {
            std::fs::create_dir_all(net.join(n)).expect("mkdir");
        }
        assert_eq!(
            interfaces(dir.path()),
            Some(vec!["eth0".to_owned(), "lo".to_owned(), "veth9".to_owned()])
        );
        assert_eq!(interfaces(&dir.path().join("missing")), None);
    }
}
