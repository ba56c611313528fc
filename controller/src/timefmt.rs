//! Milliseconds since the epoch <-> RFC 3339 UTC.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn ms_to_rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// A time that is not RFC 3339 or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{input:?} is not an RFC 3339 time: {source}")]
    Parse {
        input: String,
        #[source]
        source: time::error::Parse,
    },
    #[error("{input:?} is out of range")]
    Range { input: String },
}

/// Parses RFC 3339 (any offset) to milliseconds since the epoch.
pub fn rfc3339_to_ms(s: &str) -> Result<i64, TimeError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|source| TimeError::Parse {
        input: s.to_owned(),
        source,
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| TimeError::Range { input: s.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(rfc3339_to_ms("1970-01-01T00:00:01.5Z"), Ok(1500));
        assert_eq!(rfc3339_to_ms("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(ms_to_rfc3339(1500), "1970-01-01T00:00:01.5Z");
        assert!(rfc3339_to_ms("yesterday").is_err());
    }
}
