//! The controller's TOML configuration file and its tokens (controller/src/config/,
//! controller/src/auth.rs): input is `<config file>\0<tokens text>`; the
//! config is read from a file by `Config::load` and the tokens given as
//! `GRAYDAR_TOKENS` would be (the same parser as the tokens file).
//!
//! Asserts: neither panics; an accepted configuration has at least one
//! token, a heartbeat of at least 1s, stale_after and lost_after ordered
//! (lost >= stale) and a debug rendering that shows no token; a token the
//! tokens text names is found by `role_of`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use graydar_controller::auth::Tokens;
use graydar_controller::config::{Cli, Config, FileConfig};
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        base.join(format!("graydar-fuzz-controller-config-{}.toml", std::process::id()))
    })
}

/// `n` tokens unlike any the input names.
fn others(n: usize) -> Tokens {
    let text: Vec<String> = (0..n).map(|i| format!("viewer:another-token-{i:08}")).collect();
    Tokens::parse(&text.join("\n")).expect("valid tokens")
}

fuzz_target!(|data: &[u8]| {
    let (config, tokens) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(tokens) = std::str::from_utf8(tokens) else {
        return;
    };
    // The tokens parser on its own: every accepted entry is found again.
    if let Ok(t) = Tokens::parse(tokens) {
        assert_eq!(format!("{t:?}"), format!("{:?}", others(t.len())), "a token is shown");
        for entry in tokens
            .lines()
            .flat_map(|l| l.split('#').next().unwrap_or_default().split(','))
        {
            if let Some((_, tok)) = entry.trim().split_once(':') {
                let tok = tok.trim();
                assert!(t.role_of(tok.as_bytes()).is_some(), "token {tok:?} not found");
            }
        }
    }
    // A tokens_file would make the controller read whatever path the input
    // names (/dev/zero never ends): not this target's business.
    if let Ok(text) = std::str::from_utf8(config)
        && toml::from_str::<FileConfig>(text).is_ok_and(|f| f.tokens_file.is_some())
    {
        return;
    }
    std::fs::write(path(), config).expect("writing the config file");
    let cli = Cli {
        config: Some(path().clone()),
        ..Cli::default()
    };
    let Ok(c) = Config::load(&cli, Some(tokens)) else {
        return;
    };
    assert!(!c.tokens.is_empty());
    assert!(c.heartbeat_interval >= Duration::from_secs(1));
    assert!(c.lost_after >= c.stale_after, "{c:?}");
    // Redacted: the rendering does not change with the tokens.
    let other = Config {
        tokens: others(c.tokens.len()),
        ..c.clone()
    };
    assert_eq!(format!("{c:?}"), format!("{other:?}"), "a token is shown");
});
