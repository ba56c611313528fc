//! What both stores share: how values become columns and back (JSON
//! documents, enums by their serde names, RFC 3339 times), and how a list
//! of embedded migration files becomes a sqlx [`Migrator`].

use std::borrow::Cow;

use graydar_common::api::Timestamp;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr as _};

use super::StoreError;

/// Embedded migrations: (version, description, SQL), in order; the file of
/// each is `<version:04>_<description>.sql`.
pub type Migrations = &'static [(i64, &'static str, &'static str)];

pub fn migrator(migrations: Migrations) -> Migrator {
    let migrations: Vec<Migration> = migrations
        .iter()
        .map(|(v, desc, sql)| {
            Migration::new(
                *v,
                Cow::Borrowed(*desc),
                MigrationType::Simple,
                AssertSqlSafe(*sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|source| StoreError::Corrupt {
        what: what.to_owned(),
        source,
    })
}

pub fn parse_time(what: &'static str, s: &str) -> Result<Timestamp, StoreError> {
    s.parse().map_err(|source| StoreError::Time { what, source })
}

pub fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An enum stored by its serde name; `what` names the column in errors.
pub fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|source| StoreError::Corrupt {
        what: format!("{what} {s:?}"),
        source,
    })
}

/// A 32-byte digest read back from a column; `whose` names the row in errors.
pub fn digest(bytes: Vec<u8>, whose: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|v: Vec<u8>| StoreError::UnknownValue {
        what: "credential digest",
        value: format!("{} bytes for {whose}", v.len()),
    })
}

/// Checks that every `.sql` file of `dir` (relative to the controller's
/// manifest) is embedded in `migrations`, in order, under its name.
#[cfg(test)]
pub fn assert_every_file_embedded(dir: &str, migrations: Migrations) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    assert_eq!(files.len(), migrations.len(), "{} has {files:?}", dir.display());
    for (f, (v, desc, _)) in files.iter().zip(migrations) {
        assert_eq!(f, &format!("{v:04}_{desc}.sql"));
    }
}

/// What a transition row is stored (and deduplicated) under: finding id,
/// transition, time in milliseconds.
pub type TransitionKey = (String, String, i64);

/// One item of a batch to store: (its request's index, its agent, the item).
pub type BatchItem<'a> = (usize, &'a str, &'a super::TimedTransition);

pub fn transition_key(t: &super::TimedTransition) -> TransitionKey {
    (
        t.transition.finding.id.clone(),
        t.transition.transition.as_str().to_owned(),
        t.at_ms,
    )
}

/// After one multi-row `INSERT ... ON CONFLICT DO NOTHING RETURNING` of
/// `items` (in order) returned the keys `inserted`: per request (0 to
/// `requests`), how many of its items were stored and how many were already
/// there, and the stored items in order. Of two items with one key, the
/// first is the stored one, as inserting them one by one in order would.
pub fn attribute<'a>(
    requests: usize,
    items: &[BatchItem<'a>],
    mut inserted: std::collections::HashSet<TransitionKey>,
) -> (Vec<graydar_common::api::BatchResponse>, Vec<BatchItem<'a>>) {
    let mut out = vec![
        graydar_common::api::BatchResponse {
            accepted: 0,
            duplicates: 0,
        };
        requests
    ];
    let mut stored = Vec::new();
    for item in items {
        let Some(r) = out.get_mut(item.0) else { continue };
        if inserted.remove(&transition_key(item.2)) {
            r.accepted += 1;
            stored.push(*item);
        } else {
            r.duplicates += 1;
        }
    }
    (out, stored)
}

/// Of the stored items, the one each finding's row ends at: the greatest
/// time, the later on a tie, as one upsert per item in order (each `WHERE
/// excluded.state_at_ms >= findings.state_at_ms`) would leave it. One per
/// finding: PostgreSQL refuses a multi-row upsert touching a row twice.
pub fn latest_per_finding<'a>(stored: &[BatchItem<'a>]) -> Vec<BatchItem<'a>> {
    let mut by_id: std::collections::BTreeMap<&str, BatchItem<'a>> = std::collections::BTreeMap::new();
    for item in stored {
        let id = item.2.transition.finding.id.as_str();
        match by_id.get(id) {
            Some(kept) if kept.2.at_ms > item.2.at_ms => {}
            _ => {
                by_id.insert(id, *item);
            }
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod batch_tests {
    use std::collections::HashSet;

    use graydar_common::api::{
        Finding, FindingKind, FindingState, FindingTransition, Severity, Timestamp, TransitionKind,
    };

    use super::*;
    use crate::store::TimedTransition;

    fn item(id: &str, kind: TransitionKind, at_ms: i64) -> TimedTransition {
        let at = Timestamp::from_unix_ms(at_ms);
        TimedTransition {
            at_ms,
            transition: FindingTransition {
                transition: kind,
                at,
                finding: Finding {
                    id: id.to_owned(),
                    host: "h".into(),
                    kind: FindingKind::NicDrops,
                    subject: "eth0".into(),
                    severity: Severity::Warning,
                    state: FindingState::Firing,
                    since: at,
                    last_seen: at,
                    resolved_at: None,
                    summary: String::new(),
                    evidence: Default::default(),
                    runbook: String::new(),
                },
            },
        }
    }

    #[test]
    fn the_first_of_a_key_is_stored_and_the_rest_are_duplicates_of_their_request() {
        let a = item("f1", TransitionKind::Fired, 10);
        let b = item("f1", TransitionKind::Resolved, 20);
        let again = item("f1", TransitionKind::Fired, 10);
        let old = item("f2", TransitionKind::Fired, 5);
        // Request 0: a, b; request 1 re-sends a and an item already stored before.
        let items: Vec<BatchItem> = vec![(0, "h", &a), (0, "h", &b), (1, "h", &again), (1, "h", &old)];
        let inserted: HashSet<TransitionKey> = [transition_key(&a), transition_key(&b)].into_iter().collect();
        let (resp, stored) = attribute(2, &items, inserted);
        assert_eq!((resp[0].accepted, resp[0].duplicates), (2, 0));
        assert_eq!((resp[1].accepted, resp[1].duplicates), (0, 2));
        assert_eq!(stored.len(), 2);
        assert!(std::ptr::eq(stored[0].2, &a) && std::ptr::eq(stored[1].2, &b));
    }

    #[test]
    fn each_finding_ends_at_its_latest_item_the_later_on_a_tie() {
        let fired = item("f1", TransitionKind::Fired, 20);
        let older = item("f1", TransitionKind::SeverityChanged, 10);
        let tie_a = item("f2", TransitionKind::Fired, 30);
        let tie_b = item("f2", TransitionKind::SeverityChanged, 30);
        let stored: Vec<BatchItem> = vec![(0, "h", &fired), (0, "h", &older), (1, "h", &tie_a), (1, "h", &tie_b)];
        let latest = latest_per_finding(&stored);
        assert_eq!(latest.len(), 2);
        assert!(
            std::ptr::eq(latest[0].2, &fired),
            "the greatest time, not the last item"
        );
        assert!(std::ptr::eq(latest[1].2, &tie_b), "the later of two at the same time");
    }
}
