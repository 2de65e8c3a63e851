//! SQS fan-out of a route (docs/fanout.md): the route's opt-in setting
//! (`route.fan_out`). The message body is in `work_message`. Pure code.
//!
//! The scheduled poller lists, checks readiness and claims as always, then
//! sends one [`WorkMessage`] per claimed file instead of streaming it; an
//! SQS-triggered worker (the same binary) streams, places and finishes the
//! file from its claim. The message carries the route itself, so a worker
//! needs nothing the schedule's input does not already hold.

use serde::{Deserialize, Serialize};

/// A worker gives a file this many receives by default before it moves it
/// to `failed/` (the DLQ's `maxReceiveCount` must be larger: docs/fanout.md).
pub const DEFAULT_MAX_RECEIVES: u32 = 5;

/// `route.fan_out`: absent means today's behaviour (the scheduled run streams
/// every file itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FanOutConfig {
    /// The route's work queue (Terraform's `infra/fanout.tf` fills it in
    /// the schedule's input from the queue it creates for the route).
    pub queue_url: String,
    /// Receives of one message after which a file still failing transiently
    /// is moved to `failed/` with the last reason (and the message acknowledged).
    #[serde(default = "default_max_receives")]
    pub max_receives: u32,
    /// Message group of a FIFO queue (`.fifo` URL); defaults to the route name,
    /// so one partner server's files are never worked on by more sessions
    /// than the event source mapping's maximum concurrency.
    #[serde(default)]
    pub message_group: Option<String>,
    /// The poller claims nothing new while this many messages (waiting or
    /// in flight) are on the queue; absent: the route's `limits.max_files`.
    /// Keeps the backlog, and so the time a claimed file waits, bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backlog: Option<u32>,
}

fn default_max_receives() -> u32 {
    DEFAULT_MAX_RECEIVES
}

/// Whether a poller may claim more files with `backlog` messages on the
/// queue: below `max_backlog`, else the route's `max_files`.
pub fn may_claim(backlog: u64, max_backlog: Option<u32>, max_files: u32) -> bool {
    backlog < u64::from(max_backlog.unwrap_or(max_files).max(1))
}

/// A bad `fan_out` setting: the field (under the route), its value, the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem} {value:?}")]
pub struct FanOutError {
    pub field: &'static str,
    pub value: String,
    pub problem: &'static str,
}

fn route_error(field: &'static str, value: &str, problem: &'static str) -> FanOutError {
    FanOutError {
        field,
        value: value.to_owned(),
        problem,
    }
}

impl FanOutConfig {
    /// Checks the fields (called from route validation, field names under `fan_out`).
    pub fn check(&self) -> Result<(), FanOutError> {
        let url = self.queue_url.trim();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.len() < "http://x".len()
            || url.chars().any(char::is_whitespace)
        {
            return Err(route_error(
                "fan_out.queue_url",
                &self.queue_url,
                "must be an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)",
            ));
        }
        if !(1..=100).contains(&self.max_receives) {
            return Err(route_error(
                "fan_out.max_receives",
                &self.max_receives.to_string(),
                "must be within 1..=100",
            ));
        }
        if self.max_backlog == Some(0) {
            return Err(route_error(
                "fan_out.max_backlog",
                "0",
                "must be at least 1 (or absent: the route's limits.max_files)",
            ));
        }
        if let Some(g) = &self.message_group
            && (g.is_empty() || g.len() > 128 || !g.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(route_error(
                "fan_out.message_group",
                g,
                "must be 1 to 128 printable ASCII characters",
            ));
        }
        Ok(())
    }

    /// The FIFO message group of `route`'s messages (`None` for a standard queue).
    pub fn group_for(&self, queue_url: &str, route_name: &str) -> Option<String> {
        queue_url.ends_with(".fifo").then(|| {
            self.message_group
                .clone()
                .unwrap_or_else(|| route_name.to_owned())
        })
    }
}

/// Where a worker left the file of one work message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkState {
    /// The file left its claim in this delivery: ingested (or skipped as
    /// identical), or moved to `failed/`.
    Finished,
    /// The claim named by the message no longer holds the file: an earlier
    /// delivery finished it, or a later run took the claim over (and sends
    /// its own message). Nothing is done a second time.
    NotInClaim,
    /// The file is still in its claim after a transient failure.
    StillClaimed { reason: String },
    /// The body cannot be worked on (not JSON, another version, a bad route):
    /// a redelivery carries the same body.
    Unreadable { reason: String },
}

/// What the worker answers for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkDecision {
    /// Acknowledge (the message is deleted from the queue).
    Ack,
    /// Report it in `batchItemFailures`: SQS delivers it again after the
    /// visibility timeout (and to the DLQ after the queue's maxReceiveCount).
    Retry { reason: String },
    /// The receive that reached `max_receives`: move the file to `failed/`
    /// with this reason, then acknowledge (retry if the move fails).
    MoveToFailed { reason: String },
}

/// Decides one message from where its file is and how often SQS delivered it.
///
/// An unreadable body is never acknowledged: it is reported as a failure
/// until the queue's redrive moves it to the DLQ, where its alarm shows it
/// (dropping it would lose the file's only pointer to its claim; the claim
/// itself is taken over by the poller after its lease).
pub fn decide(state: &WorkState, receive_count: u32, max_receives: u32) -> WorkDecision {
    match state {
        WorkState::Finished | WorkState::NotInClaim => WorkDecision::Ack,
        WorkState::Unreadable { reason } => WorkDecision::Retry {
            reason: reason.clone(),
        },
        WorkState::StillClaimed { reason } if receive_count >= max_receives => {
            WorkDecision::MoveToFailed {
                reason: format!(
                    "moved to failed/ at receive {receive_count} of its work message (fan_out.max_receives = {max_receives}); last error: {reason}"
                ),
            }
        }
        WorkState::StillClaimed { reason } => WorkDecision::Retry {
            reason: reason.clone(),
        },
    }
}

/// `ApproximateReceiveCount` of an SQS record: `None` when absent or not a
/// positive number (the worker then never moves the file early: it counts
/// as a first receive and the DLQ's maxReceiveCount still bounds it).
pub fn receive_count(attribute: Option<&str>) -> Option<u32> {
    attribute
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n >= 1)
}

/// The `batchItemFailures` of a batch, in batch order, from each message's
/// id and whether it must come again. On a FIFO queue Lambda must get every
/// message from the first failure on (a message group is processed in
/// order, so a later message must not be acknowledged before an earlier one).
pub fn batch_item_failures<'a>(
    results: impl IntoIterator<Item = (&'a str, bool)>,
    fifo: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut failing = false;
    for (id, retry) in results {
        failing |= retry && fifo;
        if retry || failing {
            out.push(id.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_settings_are_checked() {
        let bad = FanOutConfig {
            queue_url: "sqs:q".into(),
            max_receives: 5,
            message_group: None,
            max_backlog: None,
        };
        assert_eq!(bad.check().unwrap_err().field, "fan_out.queue_url");
        let empty = FanOutConfig {
            queue_url: String::new(),
            max_receives: 5,
            message_group: None,
            max_backlog: None,
        };
        assert_eq!(empty.check().unwrap_err().field, "fan_out.queue_url");
        let zero = FanOutConfig {
            queue_url: "http://q".into(),
            max_receives: 0,
            message_group: None,
            max_backlog: None,
        };
        assert_eq!(zero.check().unwrap_err().field, "fan_out.max_receives");
        let ok = FanOutConfig {
            max_receives: 1,
            ..zero.clone()
        };
        assert_eq!(ok.check(), Ok(()));
        let bad_group = FanOutConfig {
            message_group: Some("a b".into()),
            ..ok.clone()
        };
        assert_eq!(
            bad_group.check().unwrap_err().field,
            "fan_out.message_group"
        );
        assert_eq!(zero.group_for("http://q.fifo", "r").as_deref(), Some("r"));
        assert_eq!(zero.group_for("http://q", "r"), None);
    }

    #[test]
    fn a_finished_or_absent_file_is_acknowledged_at_any_receive() {
        for n in [1, 5, 50] {
            assert_eq!(decide(&WorkState::Finished, n, 5), WorkDecision::Ack);
            assert_eq!(decide(&WorkState::NotInClaim, n, 5), WorkDecision::Ack);
        }
    }

    #[test]
    fn a_transient_failure_is_retried_until_the_last_receive_then_moved_to_failed() {
        let s = WorkState::StillClaimed {
            reason: "ECM 503".into(),
        };
        for n in 1..5 {
            assert_eq!(
                decide(&s, n, 5),
                WorkDecision::Retry {
                    reason: "ECM 503".into()
                }
            );
        }
        for n in [5, 6, 9] {
            match decide(&s, n, 5) {
                WorkDecision::MoveToFailed { reason } => {
                    assert!(reason.contains(&format!("receive {n}")), "{reason}");
                    assert!(reason.contains("max_receives = 5"), "{reason}");
                    assert!(reason.contains("ECM 503"), "{reason}");
                }
                other => panic!("receive {n}: {other:?}"),
            }
        }
        // max_receives 1: the first failure is final.
        assert!(matches!(
            decide(&s, 1, 1),
            WorkDecision::MoveToFailed { .. }
        ));
    }

    #[test]
    fn an_unreadable_body_is_never_acknowledged() {
        let s = WorkState::Unreadable {
            reason: "not JSON".into(),
        };
        for n in [1, 5, 100] {
            assert!(matches!(decide(&s, n, 5), WorkDecision::Retry { .. }));
        }
    }

    #[test]
    fn the_poller_claims_only_below_the_backlog_limit() {
        assert!(may_claim(0, None, 100));
        assert!(may_claim(99, None, 100));
        assert!(!may_claim(100, None, 100));
        assert!(may_claim(499, Some(500), 100));
        assert!(!may_claim(500, Some(500), 100));
    }

    #[test]
    fn receive_counts_are_read_strictly() {
        assert_eq!(receive_count(Some("3")), Some(3));
        assert_eq!(receive_count(Some(" 1 ")), Some(1));
        for bad in [None, Some(""), Some("0"), Some("-1"), Some("x")] {
            assert_eq!(receive_count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn batch_failures_list_retries_and_on_fifo_everything_after_the_first() {
        let r = [("a", false), ("b", true), ("c", false), ("d", true)];
        assert_eq!(batch_item_failures(r, false), vec!["b", "d"]);
        assert_eq!(batch_item_failures(r, true), vec!["b", "c", "d"]);
        assert!(batch_item_failures([("a", false)], true).is_empty());
    }
}
