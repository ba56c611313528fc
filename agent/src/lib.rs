//! graydar-agent library. Layers, each importing only those below it:
//! `probes` (kernel, procfs, sysfs, netlink readers) <- `detect` (pure
//! detectors) <- `signals` (one per failure family, run by one runner) <-
//! main.rs; `config` is read by the signals only.
pub mod btf;
pub mod channel;
pub mod config;
pub mod detect;
pub mod ebpf;
pub mod faults;
pub mod findings;
pub mod http;
pub mod load;
pub mod metrics;
pub mod probes;
pub mod reporter;
pub mod signals;
pub mod sys;

/// The layering rule, checked on the sources: nothing imports upward.
#[cfg(test)]
mod layering {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }

    /// Every `(file, forbidden)` pair found under `dir`.
    fn violations(dir: &str, forbidden: &[&str]) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root.join(dir), &mut files);
        assert!(!files.is_empty(), "no sources under src/{dir}");
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            for word in forbidden {
                if text.contains(word) {
                    out.push(format!("{} uses {word}", f.display()));
                }
            }
        }
        out
    }

    #[test]
    fn probes_know_neither_detectors_nor_configuration_nor_signals() {
        let v = violations(
            "probes",
            &[
                "crate::detect",
                "crate::config",
                "crate::signals",
                "crate::findings",
                "crate::metrics",
                "crate::ebpf",
            ],
        );
        assert!(v.is_empty(), "{v:#?}");
    }

    #[test]
    fn detectors_are_pure_and_know_no_configuration_nor_signals() {
        let v = violations(
            "detect",
            &[
                "crate::config",
                "crate::signals",
                "crate::findings",
                "crate::metrics",
                "crate::ebpf",
                "std::fs",
                "tokio",
                "SystemTime::now",
                "Instant::now",
            ],
        );
        assert!(v.is_empty(), "{v:#?}");
    }

    #[test]
    fn configuration_knows_no_signals() {
        let v = violations("config", &["crate::signals", "crate::findings"]);
        assert!(v.is_empty(), "{v:#?}");
    }
}
