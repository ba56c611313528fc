//! A schedule's cron expression and time zone: parsing, and the next run
//! times after an instant.
//!
//! croner follows the Open Cron Pattern Specification (Vixie cron's DST
//! rules): a fixed time (`30 2 * * *`) that a spring-forward skips runs at
//! the first minute after the gap, and once only when a fall-back repeats
//! it; an interval (`0 * * * *`) skips what the gap removes and runs in
//! both passes of a repeated hour. Searches move in real time. The time
//! zone comes from jiff's bundled IANA database.

use std::str::FromStr as _;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use super::Schedule;

/// A schedule that cannot be evaluated (`Cron`: the `cron` field, `TimeZone`: `time_zone`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0:?} is not a cron expression: {1}")]
    Cron(String, String),
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Berlin or UTC)")]
    TimeZone(String),
    #[error("no run time found after {0}")]
    NoNextRun(String),
}

/// Exactly five fields (minute hour day-of-month month day-of-week), as
/// crontab(5) and Kubernetes CronJobs take them: croner would also take a
/// seconds and a year field, which a game day does not need.
pub(super) fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    let bad = |why: String| ScheduleError::Cron(expr.to_owned(), why);
    let fields = expr.split_whitespace().count();
    if fields != 5 && !expr.trim_start().starts_with('@') {
        return Err(bad(format!(
            "it has {fields} fields, 5 are needed (minute hour day-of-month month day-of-week)"
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| bad(e.to_string()))
}

pub(super) fn parse_time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name).map_err(|_| ScheduleError::TimeZone(name.to_owned()))
}

impl Schedule {
    /// The next `n` run times strictly after `after`, in the schedule's time zone.
    pub fn next_runs(&self, after: Timestamp, n: usize) -> Result<Vec<Zoned>, ScheduleError> {
        let cron = parse_cron(&self.cron)?;
        let tz = parse_time_zone(&self.time_zone)?;
        let mut at = after.to_zoned(tz);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            at = cron
                .find_next_occurrence(&at, false)
                .map_err(|_| ScheduleError::NoNextRun(at.to_string()))?;
            out.push(at.clone());
        }
        Ok(out)
    }

    /// croner's English description of the expression (`At 02:30`).
    pub fn describe(&self) -> Option<String> {
        Cron::from_str(&self.cron).ok().map(|c| c.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str) -> Schedule {
        Schedule {
            cron: cron.to_owned(),
            time_zone: tz.to_owned(),
            concurrency: Default::default(),
            starting_deadline: None,
            history_limit: 10,
            suspended: false,
        }
    }

    fn runs(cron: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
        let after: Timestamp = after.parse().expect("instant");
        schedule(cron, tz)
            .next_runs(after, n)
            .expect("runs")
            .iter()
            .map(|z| z.strftime("%Y-%m-%dT%H:%M%:z").to_string())
            .collect()
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_runs_right_after_it() {
        // Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T02:30+01:00",
                "2026-03-29T03:00+02:00",
                "2026-03-30T02:30+02:00"
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_autumn_overlap_runs_once() {
        // Europe/Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET, so
        // 02:30 happens twice that night.
        assert_eq!(
            runs("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 3),
            [
                "2026-10-25T02:30+02:00",
                "2026-10-26T02:30+01:00",
                "2026-10-27T02:30+01:00"
            ]
        );
    }

    #[test]
    fn an_hourly_schedule_follows_real_time_across_both_changes() {
        assert_eq!(
            runs("0 * * * *", "Europe/Berlin", "2026-03-29T00:30:00Z", 2),
            ["2026-03-29T03:00+02:00", "2026-03-29T04:00+02:00"],
            "01:30 CET is 00:30 UTC; 02:00 does not exist"
        );
        assert_eq!(
            runs("0 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", 3),
            [
                "2026-10-25T02:00+02:00",
                "2026-10-25T02:00+01:00",
                "2026-10-25T03:00+01:00"
            ],
            "the repeated hour runs in both passes"
        );
        // In UTC nothing moves.
        assert_eq!(
            runs("0 6 * * MON-FRI", "UTC", "2026-03-27T07:00:00Z", 2),
            ["2026-03-30T06:00+00:00", "2026-03-31T06:00+00:00"]
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_by_name() {
        for bad in [
            "* * * *",
            "0 0 * * * *",
            "0 0 0 * * * 2026",
            "61 * * * *",
            "0 0 * * MOO",
            "",
        ] {
            let e = parse_cron(bad).expect_err(bad);
            assert!(
                matches!(e, ScheduleError::Cron(..)) && e.to_string().contains("not a cron expression"),
                "{bad}: {e}"
            );
        }
        assert!(parse_cron("*/15 9-17 * * 1-5").is_ok());
        assert!(parse_cron("@daily").is_ok(), "nicknames are documented as accepted");
        let e = parse_time_zone("Europe/Atlantis").expect_err("no such zone");
        assert!(e.to_string().contains("Europe/Atlantis"), "{e}");
        assert!(parse_time_zone("Europe/Berlin").is_ok());
    }
}
