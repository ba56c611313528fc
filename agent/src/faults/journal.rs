//! The fault journal: what the agent is about to change in the kernel, and
//! what it changed back, on disk before it happens.
//!
//! Invariant (DESIGN.md "Faults" 1): an `Intent` record holding the fault and
//! the prior state is written and fsync'ed (file and directory) *before* the
//! kernel is touched; `Reverted` is written after the revert succeeded. At
//! start the agent reverts every fault whose intent has no `Reverted` record,
//! whether or not the apply ever happened (reverts are idempotent), so a crash
//! at any point leaves nothing applied after restart.
//!
//! Format: one JSON object per line, appended. A torn last line (crash in the
//! middle of a write) is ignored and cut off when the journal is opened (it is
//! rewritten with only the pending intents); a write that fails part-way in
//! a running agent (disk full, file size limit) is cut off before the next
//! append, so the next record is never glued to its remains and lost. An
//! unreadable line elsewhere is skipped with a warning and counted, never
//! fatal: what can be read is still reverted.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};

use graydar_common::faults::FaultKind;
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "faults.journal";

/// How a fault was carried out, which decides how it is reverted: the
/// record's `kind` (`netem`, `netem_tree`, `dm`, `blackhole`, `route_flap`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Mechanism {
    /// A netem root qdisc replacing the interface's root (`netem`).
    Netem,
    /// prio root + netem child + flower filters; ingress through an ifb (`netem_tree`).
    NetemTree,
    /// A delay / flakey table swapped in on a dm device (`dm`).
    Dm,
    /// A blackhole route (`blackhole`).
    Blackhole,
    /// A blackhole route added and removed in turn (`route_flap`); its
    /// prior is a blackhole's: the revert removes the route if it is there.
    RouteFlap,
    /// A unicast route through another gateway (`route_detour`); its prior
    /// is a blackhole's: the revert removes graydar's route for the prefix.
    RouteDetour,
    /// An interface's ring sizes changed (`nic_rings`); the prior holds the sizes before.
    NicRings,
    /// A load (`traffic`, `fsync`, `burst`, `load_sink`: agent/src/load/);
    /// its prior names the file an fsync load writes, removed at the revert.
    Load(FaultKind),
    /// A kind this agent does not know (another version wrote it): the
    /// record stays pending and its revert fails naming the kind, so it is
    /// neither lost nor guessed.
    Unknown(String),
}

impl Mechanism {
    pub fn as_str(&self) -> &str {
        match self {
            Mechanism::Netem => "netem",
            Mechanism::NetemTree => "netem_tree",
            Mechanism::Dm => "dm",
            Mechanism::Blackhole => "blackhole",
            Mechanism::RouteFlap => "route_flap",
            Mechanism::RouteDetour => "route_detour",
            Mechanism::NicRings => "nic_rings",
            Mechanism::Load(k) => k.as_str(),
            Mechanism::Unknown(k) => k,
        }
    }

    /// The fault kind carried out this way; `None` for an unknown mechanism.
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            Mechanism::Netem | Mechanism::NetemTree => Some(FaultKind::Netem),
            Mechanism::Dm => Some(FaultKind::Dm),
            Mechanism::Blackhole => Some(FaultKind::Blackhole),
            Mechanism::RouteFlap => Some(FaultKind::RouteFlap),
            Mechanism::RouteDetour => Some(FaultKind::RouteDetour),
            Mechanism::NicRings => Some(FaultKind::NicRings),
            Mechanism::Load(k) => Some(*k),
            Mechanism::Unknown(_) => None,
        }
    }
}

impl From<String> for Mechanism {
    fn from(s: String) -> Mechanism {
        match s.as_str() {
            "netem" => Mechanism::Netem,
            "netem_tree" => Mechanism::NetemTree,
            "dm" => Mechanism::Dm,
            "blackhole" => Mechanism::Blackhole,
            "route_flap" => Mechanism::RouteFlap,
            "route_detour" => Mechanism::RouteDetour,
            "nic_rings" => Mechanism::NicRings,
            "traffic" => Mechanism::Load(FaultKind::Traffic),
            "fsync" => Mechanism::Load(FaultKind::Fsync),
            "burst" => Mechanism::Load(FaultKind::Burst),
            "load_sink" => Mechanism::Load(FaultKind::LoadSink),
            _ => Mechanism::Unknown(s),
        }
    }
}

impl From<Mechanism> for String {
    fn from(m: Mechanism) -> String {
        match m {
            Mechanism::Unknown(s) => s,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything needed to revert a fault without the controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRecord {
    pub id: String,
    pub kind: Mechanism,
    /// Interface, device or prefix the fault acts on.
    pub target: String,
    /// The fault as requested.
    pub spec: serde_json::Value,
    /// What was there before (e.g. the root qdisc, the dm table) to restore.
    pub prior: serde_json::Value,
    /// Lease expiry, seconds since the Unix epoch.
    pub lease_expires_unix: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    Intent {
        fault: FaultRecord,
    },
    Applied {
        id: String,
    },
    Reverted {
        id: String,
        /// Why there was nothing to restore (the interface or dm device was
        /// removed); absent when the kernel was restored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The apply failed and was rolled back.
    Failed {
        id: String,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("fault journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Journal {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    /// Bytes of whole records in the file: anything past it is the remains
    /// of a failed write, cut off before the next append.
    len: u64,
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Faults to revert now, oldest first.
    pub pending: Vec<FaultRecord>,
    /// Lines that could not be read (not counting a torn last line).
    pub unreadable_lines: usize,
    pub torn_tail: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Journal {
    /// Opens (creating) `<dir>/faults.journal`, returns the faults still
    /// pending and compacts the file down to them.
    pub fn open(dir: &Path) -> Result<(Journal, Recovery), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE_NAME);
        let recovery = match File::open(&path) {
            Ok(f) => Self::replay(BufReader::new(f), &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Recovery::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        // Compact: rewrite only the pending intents, atomically.
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            for fault in &recovery.pending {
                let line = serde_json::to_string(&Record::Intent { fault: fault.clone() })
                    .map_err(|e| io(&tmp)(std::io::Error::other(e)))?;
                writeln!(f, "{line}").map_err(io(&tmp))?;
            }
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(dir)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        Ok((
            Journal {
                path,
                dir: dir.to_owned(),
                file,
                len,
            },
            recovery,
        ))
    }

    fn replay(reader: impl std::io::BufRead, path: &Path) -> Result<Recovery, JournalError> {
        let mut rec = Recovery::default();
        // Bytes, not `lines()`: a line that is not UTF-8 (a write torn inside
        // a multi-byte character, a corrupted block) is one unreadable
        // record, not a journal that cannot be opened (found by the
        // fault_journal fuzz target).
        let lines: Vec<Vec<u8>> = reader.split(b'\n').collect::<Result<_, _>>().map_err(io(path))?;
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(Record::Intent { fault }) => {
                    rec.pending.retain(|f| f.id != fault.id);
                    rec.pending.push(fault);
                }
                Ok(Record::Applied { .. }) => {}
                Ok(Record::Reverted { id, .. }) | Ok(Record::Failed { id, .. }) => rec.pending.retain(|f| f.id != id),
                Err(e) if i == last => {
                    tracing::warn!(error = %e, "fault journal: ignoring a torn last record");
                    rec.torn_tail = true;
                }
                Err(e) => {
                    tracing::warn!(line = i + 1, error = %e, "fault journal: skipping an unreadable record");
                    rec.unreadable_lines += 1;
                }
            }
        }
        Ok(rec)
    }

    /// Appends `record` and makes it durable before returning. Cuts off
    /// the remains of an earlier failed write first.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let line = serde_json::to_string(record).map_err(|e| io(&self.path)(std::io::Error::other(e)))? + "\n";
        let on_disk = self.file.metadata().map_err(io(&self.path))?.len();
        if on_disk != self.len {
            tracing::warn!(
                path = %self.path.display(),
                torn_bytes = on_disk.saturating_sub(self.len),
                "fault journal: cutting off the remains of a failed write"
            );
            self.file.set_len(self.len).map_err(io(&self.path))?;
        }
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            // Best effort now; the next append checks again.
            let _ = self.file.set_len(self.len);
            return Err(io(&self.path)(e));
        }
        self.file.sync_data().map_err(io(&self.path))?;
        sync_dir(&self.dir)?;
        self.len += line.len() as u64;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(id: &str) -> FaultRecord {
        FaultRecord {
            id: id.into(),
            kind: Mechanism::Netem,
            target: "eth0".into(),
            spec: serde_json::json!({"delay_ms": 100}),
            prior: serde_json::json!({"root_qdisc": "fq_codel"}),
            lease_expires_unix: 1_800_000_000,
        }
    }

    #[test]
    fn an_intent_without_revert_is_pending_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut j, rec) = Journal::open(dir.path()).expect("open");
            assert!(rec.pending.is_empty());
            j.append(&Record::Intent { fault: fault("a") }).expect("intent a");
            j.append(&Record::Applied { id: "a".into() }).expect("applied a");
            j.append(&Record::Intent { fault: fault("b") }).expect("intent b");
            j.append(&Record::Applied { id: "b".into() }).expect("applied b");
            j.append(&Record::Reverted {
                id: "b".into(),
                reason: None,
            })
            .expect("reverted b");
            j.append(&Record::Intent { fault: fault("c") }).expect("intent c");
            j.append(&Record::Failed {
                id: "c".into(),
                reason: "no sch_netem".into(),
            })
            .expect("failed c");
            j.append(&Record::Intent { fault: fault("d") })
                .expect("intent d, crash before apply");
            // dropped without closing cleanly: the process "crashes" here
        }
        let (_j, rec) = Journal::open(dir.path()).expect("reopen");
        let ids: Vec<&str> = rec.pending.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "d"],
            "applied-not-reverted and intent-only faults must be reverted"
        );
        assert_eq!(rec.pending[0], fault("a"), "the prior state survives the restart");
    }

    #[test]
    fn reopening_compacts_to_the_pending_faults() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut j, _) = Journal::open(dir.path()).expect("open");
            for i in 0..50 {
                let id = format!("f{i}");
                j.append(&Record::Intent { fault: fault(&id) }).expect("intent");
                j.append(&Record::Reverted { id, reason: None }).expect("reverted");
            }
            j.append(&Record::Intent { fault: fault("live") }).expect("intent");
        }
        let (_j, rec) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(rec.pending.len(), 1);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).expect("read");
        assert_eq!(text.lines().count(), 1, "compacted: {text}");
        let (_j, rec) = Journal::open(dir.path()).expect("reopen again");
        assert_eq!(rec.pending[0].id, "live", "compaction keeps what is pending");
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_earlier_garbage_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = serde_json::to_string(&Record::Intent { fault: fault("a") }).expect("json");
        let text = format!(
            "{good}\nnot json at all\n{}\n{}",
            good.replace("\"a\"", "\"b\""),
            &good[..good.len() / 2]
        );
        std::fs::write(dir.path().join(FILE_NAME), text).expect("write");
        let (_j, rec) = Journal::open(dir.path()).expect("open");
        let ids: Vec<&str> = rec.pending.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(rec.torn_tail);
        assert_eq!(rec.unreadable_lines, 1);
    }

    /// Found by the fault_journal fuzz target: one byte that is not UTF-8
    /// made the whole journal unreadable (`Journal::open` failed), so no
    /// pending fault was reverted.
    #[test]
    fn lines_that_are_not_utf8_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = serde_json::to_string(&Record::Intent { fault: fault("a") }).expect("json");
        let other = good.replace("\"a\"", "\"b\"");
        let mut text = format!("{good}\n").into_bytes();
        text.extend_from_slice(b"{\"event\": \"applied\", \"id\": \"\xff\xfe\"}\n");
        text.extend_from_slice(format!("{other}\n").as_bytes());
        // A write torn inside a two-byte character ("é" is 0xc3 0xa9).
        text.extend_from_slice(b"{\"event\": \"reverted\", \"id\": \"a\", \"reason\": \"caf\xc3");
        std::fs::write(dir.path().join(FILE_NAME), text).expect("write");
        let (_j, rec) = Journal::open(dir.path()).expect("a journal with bytes that are not UTF-8 opens");
        let ids: Vec<&str> = rec.pending.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(rec.unreadable_lines, 1);
        assert!(rec.torn_tail);
        let (_j, again) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(
            (again.pending.len(), again.unreadable_lines, again.torn_tail),
            (2, 0, false)
        );
    }

    #[test]
    fn the_remains_of_a_failed_write_are_cut_off_before_the_next_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        let (mut j, _) = Journal::open(dir.path()).expect("open");
        j.append(&Record::Intent { fault: fault("a") }).expect("intent a");
        // What a write that failed part-way (ENOSPC, EFBIG) leaves behind.
        let good = serde_json::to_string(&Record::Intent { fault: fault("x") }).expect("json");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open for append");
        f.write_all(&good.as_bytes()[..good.len() / 3]).expect("partial write");
        drop(f);
        j.append(&Record::Intent { fault: fault("b") }).expect("intent b");
        drop(j);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "one line per record: {text}");
        let (_j, rec) = Journal::open(dir.path()).expect("reopen");
        let ids: Vec<&str> = rec.pending.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "b is not glued to the torn bytes and lost");
        assert!(!rec.torn_tail);
        assert_eq!(rec.unreadable_lines, 0);
    }

    #[test]
    fn a_reverted_record_keeps_its_reason_and_old_records_still_read() {
        let r = Record::Reverted {
            id: "d".into(),
            reason: Some("dm device gd-1 was removed".into()),
        };
        let line = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<Record>(&line).expect("parse"), r);
        let old: Record = serde_json::from_str(r#"{"event":"reverted","id":"d"}"#).expect("an older agent's line");
        assert_eq!(
            old,
            Record::Reverted {
                id: "d".into(),
                reason: None
            }
        );
        assert_eq!(
            serde_json::to_string(&old).expect("json"),
            r#"{"event":"reverted","id":"d"}"#,
            "no reason, no field"
        );
    }

    #[test]
    fn kinds_are_written_as_before_and_unknown_ones_kept() {
        for (m, text) in [
            (Mechanism::Netem, "netem"),
            (Mechanism::NetemTree, "netem_tree"),
            (Mechanism::Dm, "dm"),
            (Mechanism::Blackhole, "blackhole"),
            (Mechanism::RouteFlap, "route_flap"),
            (Mechanism::RouteDetour, "route_detour"),
        ] {
            assert_eq!(serde_json::to_string(&m).expect("json"), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<Mechanism>(&format!("\"{text}\"")).expect("parse"),
                m
            );
        }
        assert_eq!(Mechanism::NetemTree.fault_kind(), Some(FaultKind::Netem));
        let line = r#"{"event":"intent","fault":{"id":"x","kind":"qdisc_v9","target":"eth0","spec":{},"prior":{},"lease_expires_unix":1}}"#;
        let Record::Intent { fault } = serde_json::from_str::<Record>(line).expect("parses") else {
            panic!("an intent");
        };
        assert_eq!(fault.kind, Mechanism::Unknown("qdisc_v9".into()));
        assert_eq!(fault.kind.fault_kind(), None);
        assert_eq!(
            serde_json::to_string(&Record::Intent { fault }).expect("json"),
            line,
            "rewritten byte for byte at compaction"
        );
    }
}
