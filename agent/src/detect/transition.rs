//! The vocabulary every detector shares: a [`Transition`] of a finding, and
//! the hysteresis that decides it, count-based ([`Hysteresis`]: k bad
//! evaluations of the last n fire, m quiet ones in a row resolve) or
//! time-based ([`TimedHysteresis`]: bad for `fire_after` fires, quiet for
//! `resolve_after` resolves).

use std::collections::VecDeque;
use std::time::Duration;

use graydar_common::api::Severity;

/// A change of the finding state of one subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Fired(Severity),
    SeverityChanged(Severity),
    Resolved,
}

impl Transition {
    /// The severity the finding has after this transition (`None`: resolved).
    pub fn severity(self) -> Option<Severity> {
        match self {
            Transition::Fired(s) | Transition::SeverityChanged(s) => Some(s),
            Transition::Resolved => None,
        }
    }
}

/// Parameters of the count-based hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountRule {
    /// Bad evaluations among the last `of_windows` that fire.
    pub fire_windows: usize,
    pub of_windows: usize,
    /// Consecutive quiet evaluations that resolve.
    pub resolve_windows: usize,
}

/// Count-based hysteresis of one subject: k of n bad evaluations fire, m
/// quiet evaluations in a row resolve; while firing, a bad evaluation of
/// another severity changes it.
#[derive(Clone, Debug, Default)]
pub struct Hysteresis {
    /// Badness of the last `of_windows` evaluations, oldest first.
    evaluations: VecDeque<bool>,
    quiet_streak: usize,
    firing: Option<Severity>,
}

impl Hysteresis {
    /// Severity while firing.
    pub fn firing(&self) -> Option<Severity> {
        self.firing
    }

    /// Evaluations remembered for the k-of-n decision (at most n).
    pub fn history_len(&self) -> usize {
        self.evaluations.len()
    }

    /// Forgets everything (the subject went away); whether it was firing.
    pub fn reset(&mut self) -> bool {
        let was = self.firing.is_some();
        *self = Hysteresis::default();
        was
    }

    /// One evaluation: whether it was bad and the severity it would fire with.
    pub fn step(&mut self, rule: CountRule, bad: bool, severity: Severity) -> Option<Transition> {
        self.evaluations.push_back(bad);
        while self.evaluations.len() > rule.of_windows {
            self.evaluations.pop_front();
        }
        self.quiet_streak = if bad { 0 } else { self.quiet_streak + 1 };
        match self.firing {
            None => {
                let bad_count = self.evaluations.iter().filter(|&&b| b).count();
                (bad_count >= rule.fire_windows).then(|| {
                    self.firing = Some(severity);
                    Transition::Fired(severity)
                })
            }
            Some(_) if self.quiet_streak >= rule.resolve_windows => {
                self.firing = None;
                // Start the next episode from a clean k-of-n history.
                self.evaluations.clear();
                Some(Transition::Resolved)
            }
            Some(current) if bad && current != severity => {
                self.firing = Some(severity);
                Some(Transition::SeverityChanged(severity))
            }
            Some(_) => None,
        }
    }
}

/// Parameters of the time-based hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedRule {
    /// A bad streak this long fires.
    pub fire_after: Duration,
    /// Nothing bad for this long resolves.
    pub resolve_after: Duration,
}

/// What one evaluation of a subject found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evaluation {
    /// Bad, at this severity.
    Bad(Severity),
    /// Data, and it is fine: the bad streak is broken.
    Good,
    /// No data: neither extends nor breaks a streak, unless the last bad
    /// evaluation is older than `fire_after`.
    NoData,
    /// Activity without a severity of its own (an event below the firing
    /// threshold): keeps a firing finding from resolving, as a bad
    /// evaluation would, but neither fires nor changes its severity.
    Active,
}

/// Time-based hysteresis of one subject (times on a monotonic clock).
#[derive(Clone, Debug, Default)]
pub struct TimedHysteresis {
    bad_since: Option<Duration>,
    last_bad: Option<Duration>,
    firing: Option<Severity>,
}

impl TimedHysteresis {
    /// Severity while firing.
    pub fn firing(&self) -> Option<Severity> {
        self.firing
    }

    /// When the subject was last bad.
    pub fn last_bad(&self) -> Option<Duration> {
        self.last_bad
    }

    /// One evaluation at `now`.
    pub fn step(&mut self, rule: TimedRule, now: Duration, eval: Evaluation) -> Option<Transition> {
        let mut transition = None;
        match eval {
            Evaluation::Bad(severity) => {
                let since = *self.bad_since.get_or_insert(now);
                self.last_bad = Some(now);
                match self.firing {
                    None if now.saturating_sub(since) >= rule.fire_after => {
                        self.firing = Some(severity);
                        transition = Some(Transition::Fired(severity));
                    }
                    Some(s) if s != severity => {
                        self.firing = Some(severity);
                        transition = Some(Transition::SeverityChanged(severity));
                    }
                    _ => {}
                }
                return transition;
            }
            Evaluation::Active => {
                self.last_bad = Some(now);
                return None;
            }
            Evaluation::Good => self.bad_since = None,
            Evaluation::NoData => {
                if self.last_bad.is_some_and(|t| now.saturating_sub(t) > rule.fire_after) {
                    self.bad_since = None;
                }
            }
        }
        if self.firing.is_some()
            && self
                .last_bad
                .is_none_or(|t| now.saturating_sub(t) >= rule.resolve_after)
        {
            self.firing = None;
            self.bad_since = None;
            transition = Some(Transition::Resolved);
        }
        transition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: CountRule = CountRule {
        fire_windows: 2,
        of_windows: 3,
        resolve_windows: 2,
    };

    #[test]
    fn k_of_n_fires_and_m_quiet_resolve() {
        let mut h = Hysteresis::default();
        assert_eq!(h.step(RULE, true, Severity::Warning), None);
        assert_eq!(h.step(RULE, false, Severity::Warning), None);
        assert_eq!(
            h.step(RULE, true, Severity::Warning),
            Some(Transition::Fired(Severity::Warning))
        );
        assert_eq!(
            h.step(RULE, true, Severity::Critical),
            Some(Transition::SeverityChanged(Severity::Critical))
        );
        assert_eq!(
            h.step(RULE, false, Severity::Warning),
            None,
            "one quiet window is not enough"
        );
        assert_eq!(h.step(RULE, false, Severity::Warning), Some(Transition::Resolved));
        assert_eq!(h.firing(), None);
        // A clean history after resolving: one bad window does not re-fire.
        assert_eq!(h.step(RULE, true, Severity::Warning), None);
    }

    #[test]
    fn timed_fires_after_a_streak_and_resolves_after_quiet() {
        let rule = TimedRule {
            fire_after: Duration::from_secs(3),
            resolve_after: Duration::from_secs(5),
        };
        let s = Duration::from_secs;
        let mut h = TimedHysteresis::default();
        assert_eq!(h.step(rule, s(0), Evaluation::Bad(Severity::Warning)), None);
        assert_eq!(h.step(rule, s(2), Evaluation::Bad(Severity::Warning)), None);
        assert_eq!(
            h.step(rule, s(3), Evaluation::Bad(Severity::Warning)),
            Some(Transition::Fired(Severity::Warning))
        );
        assert_eq!(
            h.step(rule, s(4), Evaluation::Bad(Severity::Critical)),
            Some(Transition::SeverityChanged(Severity::Critical))
        );
        assert_eq!(h.step(rule, s(6), Evaluation::Good), None);
        assert_eq!(h.step(rule, s(8), Evaluation::NoData), None);
        assert_eq!(h.step(rule, s(9), Evaluation::Good), Some(Transition::Resolved));
        // Activity keeps it firing but does not fire by itself.
        assert_eq!(
            h.step(rule, s(9) + s(1) / 2, Evaluation::Active),
            None,
            "not firing: activity alone does not fire"
        );
        let mut f = TimedHysteresis::default();
        let instant = TimedRule {
            fire_after: Duration::ZERO,
            resolve_after: s(5),
        };
        assert_eq!(
            f.step(instant, s(0), Evaluation::Bad(Severity::Warning)),
            Some(Transition::Fired(Severity::Warning))
        );
        assert_eq!(f.step(instant, s(4), Evaluation::Active), None);
        assert_eq!(f.step(instant, s(8), Evaluation::NoData), None, "active at 4 s");
        assert_eq!(f.step(instant, s(9), Evaluation::NoData), Some(Transition::Resolved));
        // A broken streak starts over.
        assert_eq!(h.step(rule, s(10), Evaluation::Bad(Severity::Warning)), None);
        assert_eq!(h.step(rule, s(11), Evaluation::Good), None);
        assert_eq!(h.step(rule, s(12), Evaluation::Bad(Severity::Warning)), None);
        assert_eq!(h.step(rule, s(14), Evaluation::Bad(Severity::Warning)), None);
        assert_eq!(
            h.step(rule, s(15), Evaluation::Bad(Severity::Warning)),
            Some(Transition::Fired(Severity::Warning))
        );
    }
}
