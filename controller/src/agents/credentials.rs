//! Per-agent credentials: an agent enrolls once with the shared bootstrap
//! token (role `agent`) and gets a secret bound to its hostname; every later
//! call of that agent presents the secret, and the API refuses it for any
//! other hostname. So one host's secret cannot re-register another host with
//! new labels (which moves where selector-targeted faults land), post its
//! findings or report its faults reverted.
//!
//! Only the secret's SHA-256 is stored (the secret is 32 random bytes, so a
//! plain digest is enough: nothing to brute-force). Lookups go through a
//! map of digests held in memory, written through to the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::{CredentialRecord, CredentialStore, StoreError};
use crate::timefmt::now_ms;

/// Every credential starts with this, so that secret scanners and humans
/// can tell what a leaked string is.
pub const PREFIX: &str = "gdra_";

/// Why an enrollment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The hostname has a credential already: the agent must present it (or
    /// an operator resets it, after which the next enrollment gets a new one).
    #[error(
        "agent {hostname:?} is enrolled already: present its credential, or have an operator reset it \
         (DELETE /api/v1/agents/{hostname}/credential, `graydar agents reset-credential {hostname}`)"
    )]
    Enrolled { hostname: String },
    #[error("generating a credential: the system random source failed")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A freshly issued credential: the secret, handed out once.
pub struct Issued {
    pub secret: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued(<redacted>)")
    }
}

pub struct Credentials {
    store: Arc<dyn CredentialStore>,
    /// Digest → hostname.
    by_digest: Mutex<HashMap<[u8; 32], String>>,
    rng: ring::rand::SystemRandom,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn digest(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
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
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The hostname `presented` is the credential of, if any.
    pub fn hostname_of(&self, presented: &[u8]) -> Option<String> {
        if !presented.starts_with(PREFIX.as_bytes()) {
            return None;
        }
        lock(&self.by_digest).get(&digest(presented)).cloned()
    }

    /// Whether `hostname` has a credential.
    pub fn is_enrolled(&self, hostname: &str) -> bool {
        lock(&self.by_digest).values().any(|h| h == hostname)
    }

    /// Issues `hostname`'s credential, stored before it is returned; refused
    /// when the hostname has one already (checked by the store in one
    /// statement, so of two concurrent enrollments only one succeeds).
    pub async fn enroll(&self, hostname: &str) -> Result<Issued, EnrollError> {
        let mut raw = [0u8; 32];
        ring::rand::SecureRandom::fill(&self.rng, &mut raw).map_err(|_| EnrollError::Random)?;
        let secret = format!("{PREFIX}{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let record = CredentialRecord {
            hostname: hostname.to_owned(),
            sha256: digest(secret.as_bytes()),
            created_ms: now_ms(),
        };
        if !self.store.insert_credential(&record).await? {
            return Err(EnrollError::Enrolled {
                hostname: hostname.to_owned(),
            });
        }
        lock(&self.by_digest).insert(record.sha256, record.hostname);
        Ok(Issued { secret })
    }

    /// Forgets `hostname`'s credential (its agent's calls answer 401 from
    /// now on; the next enrollment of the hostname gets a new one). Whether
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

    #[tokio::test]
    async fn a_credential_names_its_host_survives_a_restart_and_is_issued_once() {
        let (c, store, _dir) = open().await;
        let a = c.enroll("node-a").await.expect("enroll");
        assert!(a.secret.starts_with(PREFIX) && a.secret.len() == PREFIX.len() + 64);
        assert_eq!(c.hostname_of(a.secret.as_bytes()).as_deref(), Some("node-a"));
        assert!(c.is_enrolled("node-a"));
        assert!(!c.is_enrolled("node-b"));
        let e = c.enroll("node-a").await.expect_err("enrolled already");
        assert!(matches!(e, EnrollError::Enrolled { .. }), "{e}");
        assert!(e.to_string().contains("reset-credential node-a"), "{e}");
        // Another host's secret, a prefix-less copy and a changed byte name nobody.
        let b = c.enroll("node-b").await.expect("enroll b");
        assert_ne!(a.secret, b.secret);
        assert_eq!(c.hostname_of(&a.secret.as_bytes()[PREFIX.len()..]), None);
        let mut forged = a.secret.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(c.hostname_of(&forged), None);
        // Reopened from the store: the same answers.
        let again = Credentials::open(store.clone()).await.expect("reopen");
        assert_eq!(again.hostname_of(a.secret.as_bytes()).as_deref(), Some("node-a"));
        assert_eq!(again.hostname_of(b.secret.as_bytes()).as_deref(), Some("node-b"));
    }

    #[tokio::test]
    async fn a_reset_credential_stops_working_and_the_host_can_enroll_again() {
        let (c, store, _dir) = open().await;
        let a = c.enroll("node-a").await.expect("enroll");
        assert!(c.reset("node-a").await.expect("reset"));
        assert!(!c.reset("node-a").await.expect("reset again"), "nothing left to reset");
        assert_eq!(c.hostname_of(a.secret.as_bytes()), None);
        assert_eq!(
            Credentials::open(store.clone())
                .await
                .expect("reopen")
                .hostname_of(a.secret.as_bytes()),
            None,
            "the reset is stored"
        );
        let a2 = c.enroll("node-a").await.expect("enroll after the reset");
        assert_eq!(c.hostname_of(a2.secret.as_bytes()).as_deref(), Some("node-a"));
    }

    #[tokio::test]
    async fn of_concurrent_enrollments_of_one_host_exactly_one_succeeds() {
        let (c, _store, _dir) = open().await;
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.enroll("node-a").await.is_ok() })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.expect("task"));
        }
        assert_eq!(ok, 1);
    }
}
