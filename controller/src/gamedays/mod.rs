//! Game-day definitions: specs validated against the controller's limits
//! and stored by name. Runs come later (docs/src/gamedays.md).

use std::sync::Arc;
use std::time::Duration;

use graydar_common::gameday::{GameDayInfo, GameDaySpec, Limits};
use graydar_common::timestamp::Timestamp;

use crate::store::{GameDayRecord, GameDayStore, StoreError};
use crate::timefmt::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum GameDayError {
    /// The spec does not validate: every error with its field path (422).
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A create of a name that exists (409).
    #[error("game day {name:?} exists: replace it with PUT /api/v1/gamedays/{name} (graydar gameday apply)")]
    Exists { name: String },
    #[error("no game day {name:?}")]
    NotFound { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct GameDayService {
    store: Arc<dyn GameDayStore>,
    limits: Limits,
}

impl GameDayService {
    /// `max_fault_duration`: the controller's `faults.max_duration`, the
    /// longest fault step a spec may have.
    pub fn new(store: Arc<dyn GameDayStore>, max_fault_duration: Duration) -> GameDayService {
        GameDayService {
            store,
            limits: Limits {
                max_fault_duration,
                ..Limits::default()
            },
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn check(&self, spec: &GameDaySpec) -> Result<String, GameDayError> {
        spec.validate(&self.limits)
            .map_err(|errors| GameDayError::Invalid(errors.iter().map(ToString::to_string).collect()))?;
        Ok(spec.to_json())
    }

    /// Stores a new definition (409 when the name exists).
    pub async fn create(&self, spec: GameDaySpec) -> Result<GameDayInfo, GameDayError> {
        let json = self.check(&spec)?;
        let now = now_ms();
        let record = GameDayRecord {
            name: spec.name.clone(),
            spec: json,
            created_ms: now,
            updated_ms: now,
        };
        if !self.store.insert_gameday(&record).await? {
            return Err(GameDayError::Exists { name: spec.name });
        }
        tracing::info!(gameday = %spec.name, "game day created");
        Ok(info(spec, now, now))
    }

    /// Creates or replaces `name`'s definition (the spec's own name must be
    /// `name`); whether it replaced one.
    pub async fn put(&self, name: &str, spec: GameDaySpec) -> Result<(GameDayInfo, bool), GameDayError> {
        if spec.name != name {
            return Err(GameDayError::Invalid(vec![format!(
                "name: {:?} differs from the name in the path, {name:?}",
                spec.name
            )]));
        }
        let json = self.check(&spec)?;
        let now = now_ms();
        let record = GameDayRecord {
            name: name.to_owned(),
            spec: json,
            created_ms: now,
            updated_ms: now,
        };
        let earlier = self.store.put_gameday(&record).await?;
        tracing::info!(gameday = %name, replaced = earlier.is_some(), "game day stored");
        Ok((info(spec, earlier.unwrap_or(now), now), earlier.is_some()))
    }

    pub async fn get(&self, name: &str) -> Result<GameDayInfo, GameDayError> {
        let record = self
            .store
            .gameday(name)
            .await?
            .ok_or_else(|| GameDayError::NotFound { name: name.to_owned() })?;
        decode(record)
    }

    pub async fn list(&self) -> Result<Vec<GameDayInfo>, GameDayError> {
        self.store.gamedays().await?.into_iter().map(decode).collect()
    }

    pub async fn delete(&self, name: &str) -> Result<(), GameDayError> {
        if self.store.delete_gameday(name).await? {
            tracing::info!(gameday = %name, "game day deleted");
            Ok(())
        } else {
            Err(GameDayError::NotFound { name: name.to_owned() })
        }
    }
}

fn info(spec: GameDaySpec, created_ms: i64, updated_ms: i64) -> GameDayInfo {
    GameDayInfo {
        name: spec.name.clone(),
        spec,
        created_at: Timestamp::from_unix_ms(created_ms),
        updated_at: Timestamp::from_unix_ms(updated_ms),
    }
}

/// A stored spec read back. It was valid when stored; one that no longer
/// parses (a later, stricter version) is reported as a store error naming it.
fn decode(r: GameDayRecord) -> Result<GameDayInfo, GameDayError> {
    let spec = GameDaySpec::from_json(&r.spec).map_err(|e| {
        GameDayError::Store(StoreError::UnknownValue {
            what: "stored game-day spec",
            value: format!("{}: {e}", r.name),
        })
    })?;
    Ok(info(spec, r.created_ms, r.updated_ms))
}
