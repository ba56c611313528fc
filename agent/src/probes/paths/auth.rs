//! Authentication of the path mesh: the fleet keys every datagram is signed
//! with (HMAC-SHA256 over the whole datagram, mesh.rs), where they come from
//! (a key file, or the controller with the peer list), and the replay window
//! kept per sender.
//!
//! Without authentication any host that can reach the mesh port could send
//! datagrams claiming a peer's name and feed the detectors its own loss,
//! hop counts and timestamps, and use the agent as a reflector. So a
//! datagram is believed, and answered, only when its MAC verifies with a key
//! of the fleet and it is not a replay; everything else is counted and
//! dropped without a word back.
//!
//! Keys have a one-byte id carried in every datagram. Several are accepted at
//! once (rotation: the controller hands out a new key first, and makes it the
//! sending key only once every agent had time to learn it).

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;

/// Bytes of a key (256 bits, the HMAC-SHA256 block-size-friendly length).
pub const KEY_LEN: usize = 32;
/// Bytes of the MAC at the end of every datagram.
pub const MAC_LEN: usize = 32;
/// Most keys accepted at once.
pub const MAX_KEYS: usize = 4;
/// A sender silent this long may start over with an older-looking session
/// (its wall clock was stepped back across a restart).
pub const IDLE_RESTART: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("mesh key {id}: {what}")]
    Bad { id: String, what: String },
    #[error("mesh keys: {0}")]
    Set(String),
}

/// One fleet key.
#[derive(Clone)]
pub struct MeshKey {
    pub id: u8,
    key: ring::hmac::Key,
}

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshKey({})", self.id)
    }
}

impl MeshKey {
    pub fn new(id: u8, secret: &[u8]) -> Result<MeshKey, KeyError> {
        if secret.len() != KEY_LEN {
            return Err(KeyError::Bad {
                id: id.to_string(),
                what: format!("must be {KEY_LEN} bytes, got {}", secret.len()),
            });
        }
        Ok(MeshKey {
            id,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        })
    }

    /// From standard base64 (`openssl rand -base64 32`).
    pub fn from_base64(id: u8, text: &str) -> Result<MeshKey, KeyError> {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| KeyError::Bad {
                id: id.to_string(),
                what: format!("not base64: {e}"),
            })?;
        MeshKey::new(id, &secret)
    }

    pub fn sign(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let tag = ring::hmac::sign(&self.key, data);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of `mac` over `data`.
    pub fn verify(&self, data: &[u8], mac: &[u8]) -> bool {
        ring::hmac::verify(&self.key, data, mac).is_ok()
    }
}

/// The keys a mesh signs with (one) and accepts (all of them).
#[derive(Clone, Debug)]
pub struct MeshKeys {
    send: u8,
    keys: Vec<MeshKey>,
}

impl MeshKeys {
    /// `send` must be the id of one of `keys`; ids are distinct.
    pub fn new(send: u8, keys: Vec<MeshKey>) -> Result<MeshKeys, KeyError> {
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(KeyError::Set(format!("1 to {MAX_KEYS} keys, got {}", keys.len())));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(KeyError::Set(format!("key id {} appears twice", k.id)));
            }
        }
        if !keys.iter().any(|k| k.id == send) {
            return Err(KeyError::Set(format!("the sending key {send} is not among the keys")));
        }
        Ok(MeshKeys { send, keys })
    }

    /// A key file: one key per line, `<id> <base64 of 32 bytes>`, the first
    /// line the key to sign with, the others accepted too; `#` comments and
    /// blank lines ignored.
    pub fn parse_file(text: &str) -> Result<MeshKeys, KeyError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let (id, b64) = line.split_once(char::is_whitespace).ok_or_else(|| KeyError::Bad {
                id: format!("on line {}", n + 1),
                what: "expected `<id 0-255> <base64 key>`".into(),
            })?;
            let id: u8 = id.parse().map_err(|_| KeyError::Bad {
                id: format!("{id:?} on line {}", n + 1),
                what: "the id must be a number from 0 to 255".into(),
            })?;
            keys.push(MeshKey::from_base64(id, b64)?);
        }
        let send = keys
            .first()
            .map(|k| k.id)
            .ok_or_else(|| KeyError::Set("the key file holds no key".into()))?;
        MeshKeys::new(send, keys)
    }

    pub fn sending(&self) -> &MeshKey {
        // new() guarantees the sending key is present.
        self.keys.iter().find(|k| k.id == self.send).unwrap_or(&self.keys[0])
    }

    pub fn get(&self, id: u8) -> Option<&MeshKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn ids(&self) -> Vec<u8> {
        self.keys.iter().map(|k| k.id).collect()
    }
}

/// Why an authenticated datagram was still refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Seen before (same session, same counter).
    Duplicate,
    /// Older than the 64 datagrams the window remembers.
    TooOld,
    /// From a session older than the newest one seen from that sender.
    OldSession,
}

impl Replay {
    pub fn reason(self) -> &'static str {
        match self {
            Replay::Duplicate => "replay",
            Replay::TooOld => "replay_old",
            Replay::OldSession => "replay_session",
        }
    }
}

/// One sender's replay window: its session (epoch), the highest datagram
/// counter seen in it with a 64-bit bitmap below (as IPsec's anti-replay
/// window), and the newest send time seen. A new session is accepted only
/// when it was sent later than anything seen before (a replay of an older
/// session is older), or after the sender was silent for [`IDLE_RESTART`].
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    started: bool,
    epoch: u32,
    max: u64,
    bitmap: u64,
    last_tx_ns: u64,
    last_seen: Duration,
}

impl ReplayWindow {
    /// Checks a datagram of session `epoch`, counter `ctr`, sent at `tx_ns`
    /// (sender's wall clock), arriving at `now` (ours, monotonic); notes it
    /// when accepted.
    pub fn accept(&mut self, epoch: u32, ctr: u64, tx_ns: u64, now: Duration) -> Result<(), Replay> {
        let restart = !self.started
            || (epoch != self.epoch && (tx_ns > self.last_tx_ns || now.saturating_sub(self.last_seen) >= IDLE_RESTART));
        if restart {
            *self = ReplayWindow {
                started: true,
                epoch,
                max: ctr,
                bitmap: 1,
                last_tx_ns: tx_ns,
                last_seen: now,
            };
            return Ok(());
        }
        if epoch != self.epoch {
            return Err(Replay::OldSession);
        }
        if ctr > self.max {
            let shift = ctr - self.max;
            self.bitmap = if shift >= 64 { 0 } else { self.bitmap << shift };
            self.bitmap |= 1;
            self.max = ctr;
        } else {
            let back = self.max - ctr;
            if back >= 64 {
                return Err(Replay::TooOld);
            }
            if self.bitmap & (1 << back) != 0 {
                return Err(Replay::Duplicate);
            }
            self.bitmap |= 1 << back;
        }
        self.last_tx_ns = self.last_tx_ns.max(tx_ns);
        self.last_seen = now;
        Ok(())
    }
}

/// Replay windows per sender id, at most `max` senders (the least recently
/// heard is forgotten first).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    windows: HashMap<String, ReplayWindow>,
}

impl ReplayGuard {
    pub fn accept(
        &mut self,
        id: &str,
        epoch: u32,
        ctr: u64,
        tx_ns: u64,
        now: Duration,
        max: usize,
    ) -> Result<(), Replay> {
        if !self.windows.contains_key(id)
            && self.windows.len() >= max.max(1)
            && let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last_seen)
                .map(|(k, _)| k.clone())
        {
            self.windows.remove(&oldest);
        }
        self.windows
            .entry(id.to_owned())
            .or_default()
            .accept(epoch, ctr, tx_ns, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn key_files_name_the_sending_key_first_and_refuse_bad_lines() {
        let keys = MeshKeys::parse_file(&format!("# fleet keys\n7 {K2}\n\n3 {K1}  # previous\n")).expect("parses");
        assert_eq!(keys.sending().id, 7);
        assert_eq!(keys.ids(), [7, 3]);
        assert!(keys.get(3).is_some() && keys.get(4).is_none());
        for (text, want) in [
            ("", "no key"),
            ("7", "expected `<id"),
            (&format!("300 {K1}") as &str, "0 to 255"),
            ("1 not-base64!", "not base64"),
            ("1 AAEC", "32 bytes"),
            (&format!("1 {K1}\n1 {K2}"), "twice"),
        ] {
            let e = MeshKeys::parse_file(text).expect_err(text);
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_mac_verifies_only_with_its_key_and_its_bytes() {
        let k1 = MeshKey::from_base64(1, K1).expect("k1");
        let k2 = MeshKey::from_base64(2, K2).expect("k2");
        let mac = k1.sign(b"datagram");
        assert!(k1.verify(b"datagram", &mac));
        assert!(!k2.verify(b"datagram", &mac));
        assert!(!k1.verify(b"datagrAm", &mac));
        assert!(!k1.verify(b"datagram", &mac[..16]));
    }

    #[test]
    fn the_window_refuses_duplicates_old_counters_and_older_sessions() {
        let t = Duration::from_secs;
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(9, 100, 1_000, t(0)), Ok(()));
        assert_eq!(w.accept(9, 100, 1_000, t(0)), Err(Replay::Duplicate));
        assert_eq!(w.accept(9, 102, 1_002, t(1)), Ok(()));
        assert_eq!(w.accept(9, 101, 1_001, t(1)), Ok(()), "reordered, not replayed");
        assert_eq!(w.accept(9, 101, 1_001, t(1)), Err(Replay::Duplicate));
        assert_eq!(w.accept(9, 300, 1_300, t(2)), Ok(()));
        assert_eq!(w.accept(9, 200, 1_200, t(2)), Err(Replay::TooOld));
        // The sender restarted: a new session sent later is accepted...
        assert_eq!(w.accept(5, 1, 2_000, t(3)), Ok(()));
        // ...and a replay of the old session is not.
        assert_eq!(w.accept(9, 301, 1_301, t(4)), Err(Replay::OldSession));
        // A session that looks older after a long silence: a stepped clock.
        assert_eq!(w.accept(6, 1, 500, t(3) + IDLE_RESTART), Ok(()));
    }

    #[test]
    fn the_guard_is_bounded() {
        let mut g = ReplayGuard::default();
        for i in 0..10u64 {
            g.accept(&format!("h{i}"), 1, 1, 1, Duration::from_secs(i), 4)
                .expect("accept");
        }
        assert_eq!(g.windows.len(), 4);
        assert!(g.windows.contains_key("h9") && !g.windows.contains_key("h0"));
    }
}
