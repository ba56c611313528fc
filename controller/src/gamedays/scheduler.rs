//! Scheduled starts: every second, each stored game day with a `schedule`
//! (not suspended) gets at most one run for the latest cron slot that came
//! since the last look, never a burst of catch-up runs. A slot that comes
//! while a run of the game day is in progress is skipped and recorded (a
//! cancelled run saying so: `concurrency: forbid`). At start, slots missed
//! while the controller was down are looked at only within
//! `starting_deadline` (else they are skipped); creating a scheduled game
//! day does not start a run.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use graydar_common::gameday::jiff::Timestamp as JTimestamp;
use graydar_common::gameday::run::StartRun;
use graydar_common::gameday::{Schedule, ScheduleError};

use super::GameDayService;

/// The latest slot of `schedule` in (`after`, `now`], if any.
pub fn latest_due(
    schedule: &Schedule,
    after: JTimestamp,
    now: JTimestamp,
) -> Result<Option<JTimestamp>, ScheduleError> {
    let mut at = after;
    let mut due = None;
    // Bounded: a once-a-minute cron over a day of downtime is 1440 slots,
    // and `after` is never older than a starting_deadline (at most 7 days).
    for _ in 0..20_000 {
        let Some(next) = schedule.next_runs(at, 1)?.into_iter().next() else {
            break;
        };
        let t = next.timestamp();
        if t > now {
            break;
        }
        due = Some(t);
        at = t;
    }
    Ok(due)
}

/// Where each game day's schedule was last looked at.
struct Looked(HashMap<String, JTimestamp>);

impl Looked {
    /// The instant to look from: the last look, or for a game day seen the
    /// first time, now (minus its starting deadline at the controller's start).
    fn since(&mut self, name: &str, schedule: &Schedule, now: JTimestamp, at_start: bool) -> JTimestamp {
        *self
            .0
            .entry(name.to_owned())
            .or_insert_with(|| match (at_start, schedule.starting_deadline) {
                (true, Some(d)) => now
                    .checked_sub(graydar_common::gameday::jiff::SignedDuration::try_from(d).unwrap_or_default())
                    .unwrap_or(now),
                _ => now,
            })
    }
}

/// Runs the scheduler until the service is dropped.
pub fn spawn(svc: Weak<GameDayService>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut looked = Looked(HashMap::new());
        let mut first = true;
        loop {
            let Some(svc) = svc.upgrade() else { return };
            tick(&svc, &mut looked, first).await;
            first = false;
            drop(svc);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn tick(svc: &GameDayService, looked: &mut Looked, at_start: bool) {
    let defs = match svc.list().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "scheduler: listing game days");
            return;
        }
    };
    let now = JTimestamp::now();
    looked.0.retain(|name, _| defs.iter().any(|d| &d.name == name));
    for def in defs {
        let Some(schedule) = &def.spec.schedule else {
            looked.0.remove(&def.name);
            continue;
        };
        let since = looked.since(&def.name, schedule, now, at_start);
        looked.0.insert(def.name.clone(), now);
        if schedule.suspended {
            continue;
        }
        let slot = match latest_due(schedule, since, now) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(gameday = %def.name, error = %e, "scheduler: the schedule has no next run");
                continue;
            }
        };
        if let Some(run) = svc.live_run_of(&def.name) {
            let reason = format!(
                "scheduled start at {slot} skipped: run {run} of this game day is in progress (concurrency: forbid)"
            );
            if let Err(e) = svc.record_skipped(&def.name, &reason).await {
                tracing::warn!(gameday = %def.name, error = %e, "scheduler: recording a skipped start");
            }
            continue;
        }
        tracing::info!(gameday = %def.name, %slot, "scheduled game-day run due");
        match svc.start(&def.name, StartRun::default(), "schedule").await {
            Ok(run) => tracing::info!(gameday = %def.name, run = %run.id, "scheduled run started"),
            Err(e) => tracing::warn!(gameday = %def.name, error = %e, "scheduled run not started"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graydar_common::gameday::Concurrency;

    fn every(cron: &str) -> Schedule {
        Schedule {
            cron: cron.into(),
            time_zone: "Europe/Berlin".into(),
            concurrency: Concurrency::Forbid,
            starting_deadline: Some(Duration::from_secs(600)),
            history_limit: 10,
            suspended: false,
        }
    }

    fn t(s: &str) -> JTimestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn only_the_latest_slot_since_the_last_look_is_due() {
        let s = every("*/5 * * * *");
        // Nothing between two looks inside one slot.
        assert_eq!(
            latest_due(&s, t("2026-12-06T10:01:00Z"), t("2026-12-06T10:04:59Z")).expect("due"),
            None
        );
        // A slot on the boundary counts once.
        assert_eq!(
            latest_due(&s, t("2026-12-06T10:04:59Z"), t("2026-12-06T10:05:00Z")).expect("due"),
            Some(t("2026-12-06T10:05:00Z"))
        );
        assert_eq!(
            latest_due(&s, t("2026-12-06T10:05:00Z"), t("2026-12-06T10:05:01Z")).expect("due"),
            None
        );
        // Three slots missed (the controller was down): one run, the latest.
        assert_eq!(
            latest_due(&s, t("2026-12-06T10:01:00Z"), t("2026-12-06T10:17:00Z")).expect("due"),
            Some(t("2026-12-06T10:15:00Z"))
        );
    }

    #[test]
    fn at_start_missed_slots_are_looked_at_only_within_the_starting_deadline() {
        let s = every("0 * * * *");
        let now = t("2026-12-06T10:20:00Z");
        let mut looked = Looked(HashMap::new());
        let since = looked.since("g", &s, now, true);
        assert_eq!(since, t("2026-12-06T10:10:00Z"));
        assert_eq!(
            latest_due(&s, since, now).expect("due"),
            None,
            "10:00 is older than 10 minutes"
        );
        let now = t("2026-12-06T10:05:00Z");
        let mut looked = Looked(HashMap::new());
        let since = looked.since("g", &s, now, true);
        assert_eq!(
            latest_due(&s, since, now).expect("due"),
            Some(t("2026-12-06T10:00:00Z"))
        );
        // A game day first seen later (created while running): from now.
        let mut looked = Looked(HashMap::new());
        assert_eq!(looked.since("g", &s, now, false), now);
    }
}
