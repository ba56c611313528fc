//! A fault the journal cannot record as applied is reverted at once (root
//! tier). The journal write fails for real: the process's file size limit
//! (RLIMIT_FSIZE) lets the intent in and cuts the `applied` record off, as a
//! full disk would. One test in its own binary, because the limit is
//! process-wide.

use std::time::Duration;

use graydar_agent::faults::engine::{FaultEngine, FaultError, unix_now};
use graydar_agent::faults::journal::{FILE_NAME, FaultRecord, Mechanism, Record};
use graydar_common::faults::FaultSpec;
use graydar_tests::faults::with_netlink;
use graydar_tests::netns::{self, NetNs, veth_pair};

const PREFIX: &str = "10.205.90.0/24";
const LEASE: Duration = Duration::from_secs(60);

fn set_file_size_limit(bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given; no other preconditions.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_fault_the_journal_cannot_call_applied_is_reverted_at_once() {
    netns::require_root();
    // Past the limit a write fails with EFBIG instead of killing the process.
    // SAFETY: SIG_IGN for SIGXFSZ installs no handler code.
    unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) }
        .expect("ignore SIGXFSZ");
    let a = NetNs::new("fjfa");
    let b = NetNs::new("fjfb");
    veth_pair(&a, "va", "10.205.89.1/24", &b, "vb", "10.205.89.2/24");
    let spec = FaultSpec::Blackhole {
        prefix: PREFIX.into(),
        table: None,
    };
    // The intent record the engine will write (same fields, same length).
    let intent = Record::Intent {
        fault: FaultRecord {
            id: "full".into(),
            kind: Mechanism::Blackhole,
            target: PREFIX.into(),
            spec: serde_json::to_value(&spec).expect("json"),
            prior: serde_json::json!({"prefix": PREFIX, "table": 254}),
            lease_expires_unix: unix_now() + LEASE.as_secs(),
        },
    };
    let intent_len = serde_json::to_string(&intent).expect("json").len() as u64 + 1;
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_owned();
    let (result, active) = with_netlink(&a, async move |h| {
        let (mut e, _) = FaultEngine::start(&dir, h).await.expect("engine");
        set_file_size_limit(intent_len + 8);
        let r = e.apply("full", &spec, LEASE).await;
        set_file_size_limit(libc::RLIM_INFINITY);
        (r, e.active_ids())
    });
    let journal = std::fs::read_to_string(state.path().join(FILE_NAME)).expect("journal");
    let first: Record = serde_json::from_str(journal.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the intent was journaled whole ({e}): {journal:?}"));
    assert!(
        matches!(&first, Record::Intent { fault } if fault.id == "full"),
        "{first:?}"
    );
    let err = result.expect_err("the applied record could not be written");
    assert!(matches!(err, FaultError::Journal(_)), "{err}");
    assert!(active.is_empty(), "not left active: {active:?}");
    let routes = a.exec_stdout("ip", ["route", "show", "table", "all", "type", "blackhole"]);
    assert!(
        !routes.contains("10.205.90.0/24"),
        "reported failed, so nothing may be left in the kernel: {routes}"
    );
}
