//! The path mesh's fleet keys: every agent signs its mesh datagrams with one
//! of them and accepts all (agent/src/probes/paths/auth.rs). Kept in the
//! store; the first is created on a new store. A rotation hands the new key
//! out at once with every peer list but makes it the sending key only
//! [`KEY_ACTIVATION`] later, so every agent (reporting every few seconds)
//! already accepts it when the first datagram signed with it arrives; the
//! previous keys stay accepted until they are dropped ([`KEYS_KEPT`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use graydar_common::api::Timestamp;
use graydar_common::paths::{MeshKeyEntry, MeshKeyInfo, MeshKeyList, MeshKeySet};
use ring::rand::SecureRandom as _;

use super::PathError;
use crate::store::{MeshKeyRecord, Store};

/// How long after a rotation the new key becomes the sending key.
pub const KEY_ACTIVATION: Duration = Duration::from_secs(60);
/// Keys kept (and accepted) at once: the newest, the one it replaces, and
/// the one before that for agents that slept through a rotation.
pub const KEYS_KEPT: usize = 3;
const KEY_LEN: usize = 32;

pub struct MeshKeys {
    store: Arc<dyn Store>,
    keys: Mutex<Vec<MeshKeyRecord>>,
    /// One rotation at a time.
    rotating: tokio::sync::Mutex<()>,
}

fn new_secret() -> Result<Vec<u8>, PathError> {
    let mut secret = vec![0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| PathError::Random)?;
    Ok(secret)
}

impl MeshKeys {
    /// Loads the keys; creates the first (active at once) when there is none.
    pub async fn open(store: Arc<dyn Store>, now_ms: i64) -> Result<MeshKeys, PathError> {
        let mut keys = store.mesh_keys().await?;
        if keys.is_empty() {
            let first = MeshKeyRecord {
                id: 1,
                secret: new_secret()?,
                created_ms: now_ms,
                active_ms: now_ms,
            };
            store.add_mesh_key(&first, KEYS_KEPT).await?;
            tracing::info!(id = first.id, "path mesh: created the first fleet key");
            keys.push(first);
        }
        Ok(MeshKeys {
            store,
            keys: Mutex::new(keys),
            rotating: tokio::sync::Mutex::new(()),
        })
    }

    /// Rereads the keys from the store (another controller on the same
    /// database rotated them).
    pub async fn reload(&self) -> Result<(), PathError> {
        let _one = self.rotating.lock().await;
        let keys = self.store.mesh_keys().await?;
        if !keys.is_empty() {
            *self.lock() = keys;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<MeshKeyRecord>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sending key at `now_ms`: the newest active one (the oldest key
    /// when none is active yet, which only a clock step can cause).
    fn send_id(keys: &[MeshKeyRecord], now_ms: i64) -> u8 {
        keys.iter()
            .filter(|k| k.active_ms <= now_ms)
            .max_by_key(|k| (k.active_ms, k.created_ms))
            .or_else(|| keys.first())
            .map_or(0, |k| k.id)
    }

    /// What agents get with their peer list.
    pub fn key_set(&self, now_ms: i64) -> MeshKeySet {
        let keys = self.lock();
        MeshKeySet {
            send_key_id: Self::send_id(&keys, now_ms),
            keys: keys
                .iter()
                .map(|k| MeshKeyEntry {
                    id: k.id,
                    key: base64::engine::general_purpose::STANDARD.encode(&k.secret),
                })
                .collect(),
        }
    }

    /// The keys by id, no secrets.
    pub fn list(&self, now_ms: i64) -> MeshKeyList {
        let keys = self.lock();
        MeshKeyList {
            send_key_id: Self::send_id(&keys, now_ms),
            keys: keys
                .iter()
                .map(|k| MeshKeyInfo {
                    id: k.id,
                    created: Timestamp::from_unix_ms(k.created_ms),
                    active_from: Timestamp::from_unix_ms(k.active_ms),
                })
                .collect(),
        }
    }

    /// Adds a new key (stored first), sending from `now_ms + KEY_ACTIVATION`.
    pub async fn rotate(&self, now_ms: i64) -> Result<MeshKeyList, PathError> {
        let _one = self.rotating.lock().await;
        let newest = self.lock().iter().max_by_key(|k| k.created_ms).map_or(0, |k| k.id);
        let activation = i64::try_from(KEY_ACTIVATION.as_millis()).unwrap_or(i64::MAX);
        let key = MeshKeyRecord {
            // 1..=255, never 0 (a zeroed field is no key).
            id: newest % 255 + 1,
            secret: new_secret()?,
            created_ms: now_ms,
            active_ms: now_ms.saturating_add(activation),
        };
        self.store.add_mesh_key(&key, KEYS_KEPT).await?;
        let mut keys = self.lock();
        keys.retain(|k| k.id != key.id);
        keys.push(key);
        keys.sort_by_key(|k| (k.created_ms, k.id));
        let excess = keys.len().saturating_sub(KEYS_KEPT);
        keys.drain(..excess);
        tracing::info!(ids = ?keys.iter().map(|k| k.id).collect::<Vec<_>>(), "path mesh: fleet key rotated");
        drop(keys);
        Ok(self.list(now_ms))
    }
}
