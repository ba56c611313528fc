//! Points in time on the wire: RFC 3339 text in JSON and query strings,
//! typed in code. Formatting and parsing go through the `time` crate.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A time as the API carries it, e.g. `2026-01-01T00:00:30.5Z`.
///
/// Parsed values keep the offset and the precision they were given, so
/// they are written back as they came (up to trailing zeros of the
/// fraction). Every value can be written as RFC 3339 (year 0 to 9999, an
/// offset of whole minutes): the constructors fall back to the epoch for
/// times outside that range. Equality and order compare instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// Text that is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 time: {source}")]
pub struct TimestampError {
    pub input: String,
    #[source]
    pub source: time::error::Parse,
}

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp(OffsetDateTime::UNIX_EPOCH);

    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// `t` in UTC with its full precision (the epoch when out of range).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let nanos = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).ok(),
            Err(e) => i128::try_from(e.duration().as_nanos()).ok().map(|n| -n),
        };
        nanos.map_or(Timestamp::UNIX_EPOCH, Timestamp::from_unix_nanos)
    }

    /// Milliseconds since the epoch, in UTC (the epoch when out of range).
    pub fn from_unix_ms(ms: i64) -> Timestamp {
        Timestamp::from_unix_nanos(i128::from(ms) * 1_000_000)
    }

    fn from_unix_nanos(nanos: i128) -> Timestamp {
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .filter(|t| (0..=9999).contains(&t.year()))
            .map_or(Timestamp::UNIX_EPOCH, Timestamp)
    }

    /// Milliseconds since the epoch (the fraction below a millisecond is
    /// truncated toward zero).
    pub fn unix_ms(self) -> i64 {
        // RFC 3339 years (0 to 9999, any offset) fit in i64 milliseconds.
        i64::try_from(self.0.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        SystemTime::from(self.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp::from_system_time(t)
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// RFC 3339 with any offset.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Timestamp)
            .map_err(|source| TimestampError {
                input: s.to_owned(),
                source,
            })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every constructor keeps the value within RFC 3339's range; the
        // epoch is written should formatting fail all the same.
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => f.write_str("1970-01-01T00:00:00Z"),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Rfc3339Visitor;

        impl Visitor<'_> for Rfc3339Visitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Timestamp, E> {
                s.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Rfc3339Visitor)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 time, e.g. `2026-01-01T00:00:30.5Z`."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("an RFC 3339 time")
    }

    #[test]
    fn milliseconds_round_trip_through_rfc3339() {
        assert_eq!(ts("1970-01-01T00:00:01.5Z").unix_ms(), 1500);
        assert_eq!(ts("1970-01-01T01:00:00+01:00").unix_ms(), 0);
        assert_eq!(Timestamp::from_unix_ms(1500).to_string(), "1970-01-01T00:00:01.5Z");
        assert_eq!(Timestamp::from_unix_ms(0).to_string(), "1970-01-01T00:00:00Z");
        assert!("yesterday".parse::<Timestamp>().is_err());
    }

    #[test]
    fn system_times_keep_their_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_000_000, 123_456_789);
        assert_eq!(
            Timestamp::from_system_time(t).to_string(),
            "1970-01-12T13:46:40.123456789Z"
        );
        assert_eq!(Timestamp::from(t).to_system_time(), t);
        assert_eq!(
            Timestamp::from_system_time(UNIX_EPOCH - Duration::from_millis(1500)).unix_ms(),
            -1500
        );
    }

    #[test]
    fn out_of_range_times_become_the_epoch() {
        assert_eq!(Timestamp::from_unix_ms(i64::MAX), Timestamp::UNIX_EPOCH);
        assert_eq!(Timestamp::from_unix_ms(-100_000_000_000_000), Timestamp::UNIX_EPOCH);
        assert_eq!(
            Timestamp::from_system_time(UNIX_EPOCH + Duration::from_secs(400_000_000_000)),
            Timestamp::UNIX_EPOCH
        );
    }

    #[test]
    fn parsed_text_is_written_back_as_given() {
        for s in [
            "2026-01-01T00:00:30.5Z",
            "2026-01-01T00:00:30Z",
            "2026-12-04T18:20:43.123456789Z",
            "2026-01-01T01:00:00+01:00",
        ] {
            assert_eq!(ts(s).to_string(), s);
        }
        // The same instant with another offset is equal.
        assert_eq!(ts("2026-01-01T01:00:00+01:00"), ts("2026-01-01T00:00:00Z"));
        assert!(ts("2026-01-01T00:00:01Z") > ts("2026-01-01T00:00:00.5Z"));
    }

    #[test]
    fn json_is_a_string_and_bad_text_names_the_problem() {
        let t = ts("2026-01-01T00:00:30.5Z");
        let json = serde_json::to_string(&t).expect("serialize");
        assert_eq!(json, r#""2026-01-01T00:00:30.5Z""#);
        assert_eq!(serde_json::from_str::<Timestamp>(&json).expect("deserialize"), t);
        let e = serde_json::from_str::<Timestamp>(r#""yesterday""#).expect_err("not a time");
        assert!(e.to_string().contains("\"yesterday\" is not an RFC 3339 time"), "{e}");
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
    }
}
