//! Is a listed file complete? A pure decision over what the listings showed.
//!
//! Every readiness condition a route configures must hold (see `route.rs`):
//! - `done_marker`: `x.pdf.done` exists next to `x.pdf`;
//! - `settle_secs`: two listings at least `settle_secs` apart saw the same
//!   size *and* mtime. mtime alone is not trusted: `sftp put -p` stamps the
//!   source's old mtime on a file before its bytes have arrived;
//! - `min_age_secs`: the mtime is at least that old (an mtime in the future,
//!   clock skew, counts as age 0);
//! - an empty file is only ever ready when `allow_empty` is set, since a
//!   zero-byte file is also what every upload looks like at its first instant.

use super::route::ReadinessConfig;

/// One listing's view of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub size: u64,
    /// Modification time, Unix seconds, as reported by the server.
    pub mtime: i64,
}

/// What the flow knows about a file at decision time `now` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    pub now: i64,
    pub current: Observation,
    /// An earlier listing of the same file and when it was taken.
    pub earlier: Option<(Observation, i64)>,
    pub marker_present: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    MarkerMissing,
    EmptyNotAllowed,
    /// Size or mtime changed between listings: still being written.
    Changing,
    /// Needs a second listing this many seconds after the first.
    NeedsSecondLook {
        wait_secs: u64,
    },
    /// Too young; ready in this many seconds at the earliest.
    TooYoung {
        wait_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotYet(NotReady),
    /// Complete, and never acceptable: refuse it (into `failed/`) instead of
    /// deferring it on every run.
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Empty, settled by every other condition, and the route does not
    /// allow empty files.
    EmptyNotAllowed,
}

impl Refusal {
    pub fn reason(&self) -> String {
        match self {
            Refusal::EmptyNotAllowed => "the file is empty (0 bytes) and stayed empty until it was complete by the route's readiness rule; the route does not allow empty files (readiness.allow_empty)".into(),
        }
    }
}

impl NotReady {
    pub fn reason(&self) -> String {
        match self {
            NotReady::MarkerMissing => "done-marker missing".into(),
            NotReady::EmptyNotAllowed => {
                "empty file and the route does not allow empty files".into()
            }
            NotReady::Changing => "size or mtime changed between listings".into(),
            NotReady::NeedsSecondLook { wait_secs } => {
                format!("needs a second listing in {wait_secs} s")
            }
            NotReady::TooYoung { wait_secs } => format!("too young, ready in {wait_secs} s"),
        }
    }
}

/// Decide readiness. Conditions are checked cheapest-first; the first unmet
/// one is reported.
pub fn assess(rule: &ReadinessConfig, ev: &Evidence) -> Readiness {
    use Readiness::NotYet;
    if rule.done_marker.is_some() && !ev.marker_present {
        return NotYet(NotReady::MarkerMissing);
    }
    if ev.current.size == 0 && !rule.allow_empty {
        // Still arriving, or an empty file for good? Once every other
        // condition holds, it is the latter: the partner must be told.
        let rest = ReadinessConfig {
            allow_empty: true,
            ..rule.clone()
        };
        return match assess(&rest, ev) {
            Readiness::Ready => Readiness::Refuse(Refusal::EmptyNotAllowed),
            _ => NotYet(NotReady::EmptyNotAllowed),
        };
    }
    if let Some(min_age) = rule.min_age_secs {
        let age = ev.now.saturating_sub(ev.current.mtime).max(0) as u64;
        if age < min_age {
            return NotYet(NotReady::TooYoung {
                wait_secs: min_age - age,
            });
        }
    }
    if let Some(settle) = rule.settle_secs {
        match ev.earlier {
            None => return NotYet(NotReady::NeedsSecondLook { wait_secs: settle }),
            Some((before, _)) if before != ev.current => return NotYet(NotReady::Changing),
            Some((_, at)) => {
                let elapsed = ev.now.saturating_sub(at).max(0) as u64;
                if elapsed < settle {
                    return NotYet(NotReady::NeedsSecondLook {
                        wait_secs: settle - elapsed,
                    });
                }
            }
        }
    }
    Readiness::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        marker: bool,
        settle: Option<u64>,
        min_age: Option<u64>,
        empty: bool,
    ) -> ReadinessConfig {
        ReadinessConfig {
            done_marker: marker.then(|| ".done".to_owned()),
            settle_secs: settle,
            min_age_secs: min_age,
            allow_empty: empty,
        }
    }

    fn obs(size: u64, mtime: i64) -> Observation {
        Observation { size, mtime }
    }

    fn ev(
        now: i64,
        current: Observation,
        earlier: Option<(Observation, i64)>,
        marker: bool,
    ) -> Evidence {
        Evidence {
            now,
            current,
            earlier,
            marker_present: marker,
        }
    }

    #[test]
    fn given_marker_rule_when_marker_absent_then_not_ready_and_when_present_then_ready() {
        let r = rule(true, None, None, false);
        assert_eq!(
            assess(&r, &ev(100, obs(5, 0), None, false)),
            Readiness::NotYet(NotReady::MarkerMissing)
        );
        assert_eq!(
            assess(&r, &ev(100, obs(5, 0), None, true)),
            Readiness::Ready
        );
    }

    #[test]
    fn given_file_growing_between_listings_when_assessed_then_never_ready() {
        let r = rule(false, Some(10), None, false);
        let e = ev(120, obs(2000, 110), Some((obs(1000, 105), 100)), false);
        assert_eq!(assess(&r, &e), Readiness::NotYet(NotReady::Changing));
        // Same size but a newer mtime is also a write in progress.
        let e = ev(120, obs(1000, 111), Some((obs(1000, 105), 100)), false);
        assert_eq!(assess(&r, &e), Readiness::NotYet(NotReady::Changing));
    }

    #[test]
    fn given_settle_rule_when_unchanged_long_enough_then_ready_else_wait_reported() {
        let r = rule(false, Some(10), None, false);
        assert_eq!(
            assess(&r, &ev(100, obs(5, 50), None, false)),
            Readiness::NotYet(NotReady::NeedsSecondLook { wait_secs: 10 })
        );
        assert_eq!(
            assess(&r, &ev(104, obs(5, 50), Some((obs(5, 50), 100)), false)),
            Readiness::NotYet(NotReady::NeedsSecondLook { wait_secs: 6 })
        );
        assert_eq!(
            assess(&r, &ev(110, obs(5, 50), Some((obs(5, 50), 100)), false)),
            Readiness::Ready
        );
    }

    #[test]
    fn given_min_age_when_mtime_recent_or_in_future_then_too_young() {
        let r = rule(false, None, Some(60), false);
        assert_eq!(
            assess(&r, &ev(100, obs(5, 70), None, false)),
            Readiness::NotYet(NotReady::TooYoung { wait_secs: 30 })
        );
        assert_eq!(
            assess(&r, &ev(100, obs(5, 500), None, false)),
            Readiness::NotYet(NotReady::TooYoung { wait_secs: 60 })
        );
        assert_eq!(
            assess(&r, &ev(100, obs(5, 40), None, false)),
            Readiness::Ready
        );
    }

    #[test]
    fn given_empty_file_when_route_disallows_then_waits_until_settled_then_refused() {
        // Complete by the marker and still empty: refused, not deferred forever.
        let strict = rule(true, None, None, false);
        assert_eq!(
            assess(&strict, &ev(100, obs(0, 0), None, true)),
            Readiness::Refuse(Refusal::EmptyNotAllowed)
        );
        // Young (may be the first instant of an upload): waits.
        let aged = rule(false, None, Some(60), false);
        assert_eq!(
            assess(&aged, &ev(100, obs(0, 90), None, false)),
            Readiness::NotYet(NotReady::EmptyNotAllowed)
        );
        assert_eq!(
            assess(&aged, &ev(1000, obs(0, 90), None, false)),
            Readiness::Refuse(Refusal::EmptyNotAllowed)
        );
        let lenient = rule(true, None, None, true);
        assert_eq!(
            assess(&lenient, &ev(100, obs(0, 0), None, true)),
            Readiness::Ready
        );
    }

    #[test]
    fn given_all_conditions_when_one_unmet_then_not_ready() {
        let r = rule(true, Some(5), Some(60), false);
        let settled = Some((obs(5, 0), 90));
        assert_eq!(
            assess(&r, &ev(100, obs(5, 0), settled, true)),
            Readiness::Ready
        );
        assert!(matches!(
            assess(&r, &ev(100, obs(5, 0), settled, false)),
            Readiness::NotYet(_)
        ));
        assert!(matches!(
            assess(&r, &ev(100, obs(5, 50), Some((obs(5, 50), 90)), true)),
            Readiness::NotYet(NotReady::TooYoung { .. })
        ));
        assert!(matches!(
            assess(&r, &ev(100, obs(5, 0), None, true)),
            Readiness::NotYet(NotReady::NeedsSecondLook { .. })
        ));
    }
}
