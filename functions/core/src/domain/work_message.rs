//! The body of one SQS work message of a fan-out route (docs/fanout.md):
//! one claimed file, versioned JSON. Parsing checks everything a worker
//! relies on (the route, the claim's tag, the raw name segments). Pure code.

use serde::{Deserialize, Serialize};

use super::claim::ClaimTag;
use super::route::{Route, RouteConfig, serde_error};

/// The only body version this build writes and reads.
pub const WORK_MESSAGE_VERSION: u32 = 1;

/// Sidecar of a claimed file, as the poller claimed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkSidecar {
    /// `json` or `xml`.
    pub format: super::route::SidecarFormat,
    /// Raw name segments below the claim directory, each hex-encoded
    /// (SFTP names need not be UTF-8).
    pub segments_hex: Vec<String>,
}

/// One claimed file for a worker: version 1 of the message body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkMessage {
    /// [`WORK_MESSAGE_VERSION`].
    pub v: u32,
    /// The route (validated again by the worker).
    pub route: RouteConfig,
    /// The claim directory's name under `.inflight/` (its tag).
    pub claim: String,
    /// Original path below `source_dir` (`%XX`-escaped text, as in reports).
    pub source_path: String,
    /// Raw segments of that path, hex-encoded (what the worker opens).
    pub segments_hex: Vec<String>,
    /// Where the poller claimed it: `.inflight/<claim>/<source_path>`.
    pub claimed_path: String,
    pub size: u64,
    /// Modification time (Unix seconds) at the claim: part of the claim identity.
    pub mtime: i64,
    #[serde(default)]
    pub sidecar: Option<WorkSidecar>,
    /// The file's row of a CSV index read by the poller (the worker does
    /// not read the index again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_meta: Option<super::classify::Metadata>,
    /// Invocation id of the poller that claimed and sent it.
    pub run_id: String,
}

/// A message body that cannot be worked on (not retryable: a redelivery
/// carries the same body; the DLQ keeps it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkMessageError {
    #[error("work message body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "work message version {found} is not supported (this build reads version {WORK_MESSAGE_VERSION})"
    )]
    Version { found: String },
    #[error("work message: {0}")]
    Invalid(String),
}

/// A parsed, checked message: the validated route, the claim tag and raw segments.
#[derive(Debug)]
pub struct Work {
    pub msg: WorkMessage,
    pub route: Route,
    pub tag: ClaimTag,
    pub segments: Vec<Vec<u8>>,
    pub sidecar_segments: Option<Vec<Vec<u8>>>,
}

fn decode_segments(field: &str, segs: &[String]) -> Result<Vec<Vec<u8>>, WorkMessageError> {
    if segs.is_empty() {
        return Err(WorkMessageError::Invalid(format!("{field} is empty")));
    }
    segs.iter()
        .enumerate()
        .map(|(i, s)| {
            let b = hex::decode(s)
                .map_err(|e| WorkMessageError::Invalid(format!("{field}[{i}] {s:?}: {e}")))?;
            if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
                return Err(WorkMessageError::Invalid(format!(
                    "{field}[{i}] {s:?} is not a file name"
                )));
            }
            Ok(b)
        })
        .collect()
}

/// Hex-encodes raw name segments for a message.
pub fn encode_segments(segs: &[Vec<u8>]) -> Vec<String> {
    segs.iter().map(hex::encode).collect()
}

impl WorkMessage {
    /// Parses and checks a message body.
    pub fn parse(body: &str) -> Result<Work, WorkMessageError> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| WorkMessageError::NotJson(e.to_string()))?;
        match value.get("v") {
            Some(serde_json::Value::Number(n))
                if n.as_u64() == Some(WORK_MESSAGE_VERSION.into()) => {}
            other => {
                return Err(WorkMessageError::Version {
                    found: other
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "(missing)".into()),
                });
            }
        }
        let msg: WorkMessage = serde_path_to_error::deserialize(value.clone())
            .map_err(|e| WorkMessageError::Invalid(serde_error(e, "").to_string()))?;
        let route_value = value.get("route").cloned().unwrap_or_default();
        let config: RouteConfig = serde_path_to_error::deserialize(route_value)
            .map_err(|e| WorkMessageError::Invalid(serde_error(e, "route").to_string()))?;
        let route = config.validate().map_err(|mut e| {
            e.field = format!("route.{}", e.field);
            WorkMessageError::Invalid(e.to_string())
        })?;
        if route.config.fan_out.is_none() {
            return Err(WorkMessageError::Invalid(format!(
                "route {} has no fan_out setting",
                route.config.name
            )));
        }
        let tag = ClaimTag::parse(&msg.claim).ok_or_else(|| {
            WorkMessageError::Invalid(format!(
                "claim {:?} is not a claim directory name",
                msg.claim
            ))
        })?;
        if tag.route_tag != super::claim::route_tag(&route.config.name) {
            return Err(WorkMessageError::Invalid(format!(
                "claim {:?} does not belong to route {}",
                msg.claim, route.config.name
            )));
        }
        let segments = decode_segments("segments_hex", &msg.segments_hex)?;
        let sidecar_segments = match &msg.sidecar {
            Some(s) => Some(decode_segments("sidecar.segments_hex", &s.segments_hex)?),
            None => None,
        };
        Ok(Work {
            msg,
            route,
            tag,
            segments,
            sidecar_segments,
        })
    }
}

/// One record of an SQS event, as Lambda's event source mapping delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsRecord {
    pub message_id: String,
    pub body: String,
    /// `ApproximateReceiveCount` (`None`: absent or unreadable).
    pub receive_count: Option<u32>,
    /// From a FIFO queue (`eventSourceARN` ending in `.fifo`).
    pub fifo: bool,
}

/// Recognises the SQS event shape: `None` when `event` is no SQS event
/// (a scheduled run, a manual retry); an error naming the record and the
/// field when it is one that cannot be read.
pub fn parse_sqs_event(event: &serde_json::Value) -> Option<Result<Vec<SqsRecord>, String>> {
    let records = event.get("Records")?.as_array()?;
    let is_sqs =
        |r: &serde_json::Value| r.get("eventSource").and_then(|s| s.as_str()) == Some("aws:sqs");
    if !records.iter().any(is_sqs) {
        return None;
    }
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        if !is_sqs(r) {
            return Some(Err(format!(
                "Records[{i}].eventSource is not \"aws:sqs\": an SQS event holds only SQS records"
            )));
        }
        let text = |field: &str| {
            r.get(field)
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("Records[{i}].{field} is missing or not a string"))
        };
        let message_id = match text("messageId") {
            Ok(id) if !id.is_empty() => id.to_owned(),
            Ok(_) => return Some(Err(format!("Records[{i}].messageId is empty"))),
            Err(e) => return Some(Err(e)),
        };
        let body = match text("body") {
            Ok(b) => b.to_owned(),
            Err(e) => return Some(Err(e)),
        };
        let attrs = r.get("attributes");
        let receive_count = super::fanout::receive_count(
            attrs
                .and_then(|a| a.get("ApproximateReceiveCount"))
                .and_then(|v| v.as_str()),
        );
        let fifo = r
            .get("eventSourceARN")
            .and_then(|v| v.as_str())
            .is_some_and(|a| a.ends_with(".fifo"));
        out.push(SqsRecord {
            message_id,
            body,
            receive_count,
            fifo,
        });
    }
    Some(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_json() -> serde_json::Value {
        let ev: serde_json::Value =
            serde_json::from_str(include_str!("../../../../events/ingest-sqs-worker.json"))
                .unwrap();
        let body = ev["Records"][0]["body"].as_str().unwrap();
        serde_json::from_str::<serde_json::Value>(body).unwrap()["route"].clone()
    }

    fn body(route: serde_json::Value) -> serde_json::Value {
        let tag = ClaimTag::new(route["name"].as_str().unwrap(), 1, 1_700_000_000, "run-1");
        serde_json::json!({
            "v": 1, "route": route, "claim": tag.dir_name(),
            "source_path": "INV-1234_0000012345.pdf",
            "segments_hex": [hex::encode("INV-1234_0000012345.pdf")],
            "claimed_path": format!(".inflight/{}/INV-1234_0000012345.pdf", tag.dir_name()),
            "size": 10, "mtime": 1_700_000_000, "run_id": "run-1"
        })
    }

    #[test]
    fn sample_event_body_parses() {
        let ev: serde_json::Value =
            serde_json::from_str(include_str!("../../../../events/ingest-sqs-worker.json"))
                .unwrap();
        let w = WorkMessage::parse(ev["Records"][0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(w.segments, vec![w.msg.source_path.as_bytes().to_vec()]);
    }

    #[test]
    fn a_valid_body_round_trips() {
        let b = body(route_json());
        let w = WorkMessage::parse(&b.to_string()).unwrap();
        assert_eq!(serde_json::to_value(&w.msg).unwrap()["claim"], b["claim"]);
        assert_eq!(w.tag.attempt, 1);
    }

    #[test]
    fn an_unknown_version_is_refused_naming_it() {
        let mut b = body(route_json());
        b["v"] = serde_json::json!(2);
        let e = WorkMessage::parse(&b.to_string()).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn a_path_escaping_the_claim_is_refused() {
        let mut b = body(route_json());
        b["segments_hex"] = serde_json::json!([hex::encode("..")]);
        let e = WorkMessage::parse(&b.to_string()).unwrap_err();
        assert!(e.to_string().contains("segments_hex[0]"), "{e}");
    }

    #[test]
    fn a_claim_of_another_route_is_refused() {
        let mut b = body(route_json());
        b["claim"] = serde_json::json!(ClaimTag::new("other", 1, 1, "x").dir_name());
        let e = WorkMessage::parse(&b.to_string()).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    #[test]
    fn a_route_without_fan_out_is_refused() {
        let mut r = route_json();
        r.as_object_mut().unwrap().remove("fan_out");
        let e = WorkMessage::parse(&body(r).to_string()).unwrap_err();
        assert!(e.to_string().contains("no fan_out"), "{e}");
    }

    #[test]
    fn the_sqs_event_shape_is_recognised_and_read() {
        let ev: serde_json::Value =
            serde_json::from_str(include_str!("../../../../events/ingest-sqs-worker.json"))
                .unwrap();
        let recs = parse_sqs_event(&ev).unwrap().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].message_id, "059f36b4-87a3-44ab-83d2-661975830a7d");
        assert_eq!(recs[0].receive_count, Some(1));
        assert!(!recs[0].fifo);
        // Not an SQS event: a scheduled run.
        assert!(parse_sqs_event(&serde_json::json!({"route": {}})).is_none());
        assert!(
            parse_sqs_event(&serde_json::json!({"Records": [{"eventSource": "aws:s3"}]})).is_none()
        );
        // An SQS record without its id is named.
        let bad = serde_json::json!({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]});
        let e = parse_sqs_event(&bad).unwrap().unwrap_err();
        assert!(e.contains("Records[0].messageId"), "{e}");
    }

    #[test]
    fn index_metadata_travels_with_the_message() {
        let mut b = body(route_json());
        b["index_meta"] = serde_json::json!({"po_number": "4711"});
        let w = WorkMessage::parse(&b.to_string()).unwrap();
        assert_eq!(w.msg.index_meta.unwrap()["po_number"], "4711");
    }
}
