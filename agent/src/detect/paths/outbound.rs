//! Outbound accounting (me → peer): which of my probes the peer received,
//! from its reports: delivered, lost, or unknown.

use std::collections::VecDeque;
use std::time::Duration;

use crate::probes::paths::mesh::{RxReport, report_covers};

/// Outcome of my probes, finalized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutOutcome {
    pub delivered: u64,
    pub lost: u64,
    /// No word from the peer: cannot tell.
    pub unknown: u64,
}

#[derive(Clone, Debug)]
struct Sent {
    seq: u64,
    at: Duration,
    tx_ns: u64,
    delivered: bool,
}

/// My probes to one peer and what the peer's reports say about them.
#[derive(Clone, Debug, Default)]
pub struct OutTracker {
    sent: VecDeque<Sent>,
    /// Arrival of the peer's last datagram and its report.
    last: Option<(Duration, RxReport)>,
    /// The peer's run (its epoch) and when its first datagram arrived.
    /// Probes sent before that may have met a peer that was not listening
    /// yet (agent starting or restarting): unknown, never lost.
    peer_run: Option<(u32, Duration)>,
}

const MAX_PENDING: usize = 8192;

impl OutTracker {
    pub fn on_sent(&mut self, seq: u64, tx_ns: u64, at: Duration) {
        if self.sent.len() >= MAX_PENDING {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            seq,
            at,
            tx_ns,
            delivered: false,
        });
    }

    /// A datagram of the peer's run `peer_epoch` arrived at `at` with
    /// `report` about my probes.
    pub fn on_report(&mut self, my_epoch: u32, peer_epoch: u32, report: RxReport, at: Duration) {
        if self.peer_run.is_none_or(|(e, _)| e != peer_epoch) {
            self.peer_run = Some((peer_epoch, at));
        }
        if report.epoch == my_epoch {
            for s in self.sent.iter_mut().filter(|s| !s.delivered) {
                if report_covers(&report, s.seq) == Some(true) {
                    s.delivered = true;
                }
            }
        }
        self.last = Some((at, report));
    }

    /// A reply to `seq` (sent at CLOCK_REALTIME `tx_ns`) arrived; true when it
    /// matches a probe still tracked (the RTT is then valid).
    pub fn on_reply(&mut self, seq: u64, tx_ns: u64) -> bool {
        match self.sent.iter_mut().find(|s| s.seq == seq) {
            Some(s) if s.tx_ns == tx_ns => {
                s.delivered = true;
                true
            }
            _ => false,
        }
    }

    /// Finalizes probes, oldest first.
    pub fn take(&mut self, my_epoch: u32, now: Duration, grace: Duration, unknown_after: Duration) -> OutOutcome {
        let mut out = OutOutcome::default();
        while let Some(s) = self.sent.front() {
            let age = now.saturating_sub(s.at);
            if s.delivered {
                out.delivered += 1;
            } else if age < grace {
                break;
            } else {
                let heard_since = self.peer_run.map(|(_, t)| t);
                let verdict = match self.last {
                    // The peer started tracking us after this probe.
                    Some((_, r)) if r.epoch == my_epoch && s.seq < r.base => Some(false),
                    // The peer tracked later probes of ours, not this one.
                    Some((_, r)) if r.epoch == my_epoch && r.max_seq > s.seq => Some(true),
                    // Sent before this run of the peer was first heard
                    // from: it may not have been listening yet.
                    _ if heard_since.is_some_and(|h| s.at < h) => Some(false),
                    // The peer keeps talking and has not heard it.
                    Some((t, _)) if t >= s.at + grace => Some(true),
                    _ => None,
                };
                match verdict {
                    Some(true) => out.lost += 1,
                    Some(false) => out.unknown += 1,
                    None if age >= unknown_after => out.unknown += 1,
                    None => break,
                }
            }
            self.sent.pop_front();
        }
        out
    }
}
