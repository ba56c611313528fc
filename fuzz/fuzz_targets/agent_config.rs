//! The agent's TOML configuration file (agent/src/config/): read from a file
//! with `Config::read_file`, then validated and merged with the (empty)
//! command line by `Config::merge`, as `graydar-agent --config` does.
//!
//! Asserts: neither panics; an accepted configuration keeps its documented
//! bounds (drops.interval 100ms..=1h, controller URL http(s), report interval
//! 100ms..=1h, buffer of at least one transition, not both token and
//! token_file) and its debug rendering (`--print-config`, logs) never shows
//! the controller token.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use graydar_agent::config::{Cli, Config};
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for every input (in /dev/shm
/// when there is one: no disk writes).
fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        base.join(format!("graydar-fuzz-agent-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("writing the config file");
    let Ok(file) = Config::read_file(path()) else { return };
    let Ok(c) = Config::merge(&Cli::default(), file) else {
        return;
    };
    assert!(
        c.drops.interval >= Duration::from_millis(100) && c.drops.interval <= Duration::from_secs(3600),
        "{:?}",
        c.drops.interval
    );
    if let Some(ctl) = &c.controller {
        assert!(ctl.url.starts_with("http://") || ctl.url.starts_with("https://"));
        assert!(ctl.report_interval >= Duration::from_millis(100) && ctl.report_interval <= Duration::from_secs(3600));
        assert!(ctl.buffer_size >= 1);
        assert!(!(ctl.token.is_some() && ctl.token_file.is_some()));
        if ctl.token.is_some() {
            // Redacted: the rendering does not change with the token.
            let mut other = c.clone();
            if let Some(o) = other.controller.as_mut() {
                o.token = Some("another-token-of-another-length".to_owned());
            }
            assert_eq!(format!("{c:?}"), format!("{other:?}"), "the token is shown");
        }
    }
});
