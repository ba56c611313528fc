//! The fault journal's replay (agent/src/faults/journal.rs): the input is
//! the journal file `Journal::open` finds at start after a crash (one JSON
//! record per line, possibly torn or corrupted on disk).
//!
//! Asserts: opening never fails and never panics on any content (every
//! readable intent must still be reverted); pending faults have distinct ids;
//! opening again reads back the compacted file with the same pending faults
//! and nothing unreadable or torn; a netem fault's journaled prior root
//! qdisc, when it is one graydar wrote (hex of an RTM_NEWQDISC message),
//! decodes or is refused with an error, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use graydar_agent::faults::journal::{FILE_NAME, Journal, Mechanism};
use graydar_agent::faults::tc::{self, PriorRoot};
use libfuzzer_sys::fuzz_target;

/// One journal directory per fuzzing process (in /dev/shm when there is
/// one: the journal fsyncs every write).
fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        base.join(format!("graydar-fuzz-journal-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::create_dir_all(dir).expect("journal dir");
    std::fs::write(dir.join(FILE_NAME), data).expect("writing the journal");
    let (journal, rec) = Journal::open(dir).unwrap_or_else(|e| panic!("the journal cannot be opened: {e}"));
    drop(journal);
    let mut ids: Vec<&str> = rec.pending.iter().map(|f| f.id.as_str()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "a fault is pending twice");
    let (_journal, again) = Journal::open(dir).expect("reopening the compacted journal");
    assert_eq!(again.unreadable_lines, 0, "compaction wrote an unreadable line");
    assert!(!again.torn_tail, "compaction wrote a torn line");
    assert_eq!(again.pending.len(), rec.pending.len());
    for (a, b) in rec.pending.iter().zip(&again.pending) {
        assert_eq!(
            (&a.id, &a.kind, &a.target, a.lease_expires_unix),
            (&b.id, &b.kind, &b.target, b.lease_expires_unix)
        );
    }
    for f in &rec.pending {
        if f.kind == Mechanism::Netem
            && let Ok(PriorRoot::Configured { message_hex, .. }) = serde_json::from_value::<PriorRoot>(f.prior.clone())
        {
            let _ = tc::prior_message(&message_hex, 1);
        }
    }
});
