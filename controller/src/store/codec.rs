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
