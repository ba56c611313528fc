//! Per-agent credentials: an agent enrolls once with the fleet's shared
//! bootstrap token (role `agent`), binding to its hostname the SHA-256 of a
//! secret it generated (and saved) itself; every later call of that agent
//! presents the secret, and the API refuses it for any other hostname. So
//! one host's secret cannot re-register another host with new labels (which
//! moves where selector-targeted faults land), post its findings or report
//! its faults reverted, and the bootstrap token cannot move an enrolled host.
//!
//! The controller never sees a secret before the agent first presents it,
//! and stores only digests (the secret is 32 random bytes, so a plain digest
//! is enough: nothing to brute-force). Enrollment is idempotent for the same
//! digest, so an agent whose answer was lost (a timeout, a kill) retries
//! with the secret it saved and succeeds. Lookups go through a map of
//! digests held in memory, written through to the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use graydar_common::api::CREDENTIAL_PREFIX;

use crate::store::{CredentialRecord, CredentialStore, StoreError};
use crate::timefmt::now_ms;

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The hostname is bound to another credential: its agent must present
    /// that one (or an operator resets it, after which the next enrollment
    /// binds the new one).
    #[error(
        "agent {hostname:?} is enrolled already with another credential: present that one, or have an operator \
         reset it (`graydar agents reset-credential {hostname}`, DELETE /api/v1/agents/{hostname}/credential)"
    )]
    Enrolled { hostname: String },
    /// The digest is bound to another hostname.
    #[error("this credential is enrolled for another hostname: generate a new one")]
    InUse,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Credentials {
    store: Arc<dyn CredentialStore>,
    /// Digest → hostname.
    by_digest: Mutex<HashMap<[u8; 32], String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The SHA-256 of a presented secret.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A `credential_sha256` of a registration: 64 lowercase hex digits.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    // Lowercase only: the stored form is canonical.
    if !text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    <[u8; 32] as hex::FromHex>::from_hex(text).ok()
}

impl Credentials {
    /// Loads the stored credentials.
    pub async fn open(store: Arc<dyn CredentialStore>) -> Result<Credentials, StoreError> {
        let by_digest = store
            .credentials()
            .await?
            .into_iter()
            .map(|c| (c.sha256, c.hostname))
            .collect();
        Ok(Credentials {
            store,
            by_digest: Mutex::new(by_digest),
        })
    }

    /// Rereads the credentials from the store (another controller on the
    /// same database bound or reset some).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let by_digest = self
            .store
            .credentials()
            .await?
            .into_iter()
            .map(|c| (c.sha256, c.hostname))
            .collect();
        *lock(&self.by_digest) = by_digest;
        Ok(())
    }

    /// Rereads `hostname`'s credential (another controller bound or reset it).
    pub async fn reload_one(&self, hostname: &str) -> Result<(), StoreError> {
        let stored = self.store.credential(hostname).await?;
        let mut by_digest = lock(&self.by_digest);
        by_digest.retain(|_, h| h != hostname);
        if let Some(c) = stored {
            by_digest.insert(c.sha256, c.hostname);
        }
        Ok(())
    }

    /// The hostname `presented` is the credential of, if any.
    pub fn hostname_of(&self, presented: &[u8]) -> Option<String> {
        if !presented.starts_with(CREDENTIAL_PREFIX.as_bytes()) {
            return None;
        }
        lock(&self.by_digest).get(&digest(presented)).cloned()
    }

    /// Whether `hostname` has a credential.
    pub fn is_enrolled(&self, hostname: &str) -> bool {
        lock(&self.by_digest).values().any(|h| h == hostname)
    }

    /// Binds `sha256` to `hostname`, stored before it is answered. The same
    /// binding again succeeds (a retry); another digest for an enrolled
    /// hostname is refused, checked by the store in one transaction so that
    /// of two concurrent enrollments only one binds.
    pub async fn enroll(&self, hostname: &str, sha256: [u8; 32]) -> Result<(), EnrollError> {
        match lock(&self.by_digest).get(&sha256) {
            Some(h) if h == hostname => return Ok(()),
            Some(_) => return Err(EnrollError::InUse),
            None => {}
        }
        let record = CredentialRecord {
            hostname: hostname.to_owned(),
            sha256,
            created_ms: now_ms(),
        };
        let bound = self.store.bind_credential(&record).await?;
        if bound != sha256 {
            return Err(EnrollError::Enrolled {
                hostname: hostname.to_owned(),
            });
        }
        lock(&self.by_digest).insert(sha256, record.hostname);
        Ok(())
    }

    /// Forgets `hostname`'s credential (its agent's calls answer 401 from
    /// now on; the next enrollment of the hostname binds a new one). Whether
    /// there was one.
    pub async fn reset(&self, hostname: &str) -> Result<bool, StoreError> {
        let had = self.store.delete_credential(hostname).await?;
        lock(&self.by_digest).retain(|_, h| h != hostname);
        Ok(had)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    async fn open() -> (Credentials, Arc<SqliteStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteStore::open(dir.path()).await.expect("store"));
        (Credentials::open(store.clone()).await.expect("open"), store, dir)
    }

    fn secret(n: u8) -> String {
        format!("{CREDENTIAL_PREFIX}{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn digests_parse_as_64_lowercase_hex_digits_only() {
        let d = digest(b"x");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_digest(&hex), Some(d));
        for bad in [
            &hex[..62],
            &hex.to_uppercase(),
            &format!("{}zz", &hex[..62]),
            "",
            &format!("{hex}00"),
        ] {
            assert_eq!(parse_digest(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_credential_names_its_host_survives_a_restart_and_binds_once() {
        let (c, store, _dir) = open().await;
        let (a, b) = (secret(1), secret(2));
        c.enroll("node-a", digest(a.as_bytes())).await.expect("enroll");
        assert_eq!(c.hostname_of(a.as_bytes()).as_deref(), Some("node-a"));
        assert!(c.is_enrolled("node-a") && !c.is_enrolled("node-b"));
        // A retry with the same digest (a lost answer) succeeds; another
        // digest for node-a does not; node-a's digest for node-b neither.
        c.enroll("node-a", digest(a.as_bytes()))
            .await
            .expect("the same binding again");
        let e = c
            .enroll("node-a", digest(b.as_bytes()))
            .await
            .expect_err("bound already");
        assert!(matches!(e, EnrollError::Enrolled { .. }), "{e}");
        assert!(e.to_string().contains("reset-credential node-a"), "{e}");
        let e = c.enroll("node-b", digest(a.as_bytes())).await.expect_err("in use");
        assert!(matches!(e, EnrollError::InUse), "{e}");
        c.enroll("node-b", digest(b.as_bytes())).await.expect("enroll b");
        // Without the prefix, or with a changed byte: nobody.
        assert_eq!(c.hostname_of(&a.as_bytes()[CREDENTIAL_PREFIX.len()..]), None);
        assert_eq!(c.hostname_of(secret(3).as_bytes()), None);
        // Reopened from the store: the same answers.
        let again = Credentials::open(store.clone()).await.expect("reopen");
        assert_eq!(again.hostname_of(a.as_bytes()).as_deref(), Some("node-a"));
        assert_eq!(again.hostname_of(b.as_bytes()).as_deref(), Some("node-b"));
        let e = again
            .enroll("node-a", digest(b.as_bytes()))
            .await
            .expect_err("stored binding");
        assert!(matches!(e, EnrollError::InUse | EnrollError::Enrolled { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_reset_credential_stops_working_and_the_host_can_enroll_again() {
        let (c, store, _dir) = open().await;
        let a = secret(1);
        c.enroll("node-a", digest(a.as_bytes())).await.expect("enroll");
        assert!(c.reset("node-a").await.expect("reset"));
        assert!(!c.reset("node-a").await.expect("reset again"), "nothing left to reset");
        assert_eq!(c.hostname_of(a.as_bytes()), None);
        let reopened = Credentials::open(store.clone()).await.expect("reopen");
        assert_eq!(reopened.hostname_of(a.as_bytes()), None, "the reset is stored");
        let a2 = secret(9);
        c.enroll("node-a", digest(a2.as_bytes()))
            .await
            .expect("enroll after the reset");
        assert_eq!(c.hostname_of(a2.as_bytes()).as_deref(), Some("node-a"));
    }

    #[tokio::test]
    async fn of_concurrent_enrollments_of_one_host_exactly_one_digest_binds() {
        let (c, _store, _dir) = open().await;
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..16u8)
            .map(|n| {
                let c = c.clone();
                tokio::spawn(async move { c.enroll("node-a", digest(secret(n).as_bytes())).await.is_ok() })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.expect("task"));
        }
        assert_eq!(ok, 1);
    }
}
