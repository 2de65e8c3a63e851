//! The `detail` of every EventBridge event the functions emit (source
//! `xecm-sftp`), typed so that the flows cannot forget a field and consumers
//! get one stable shape per detail-type. An `EventSink` adapter serialises
//! [`EventDetail::detail`] with [`EventDetail::DETAIL_TYPE`].
//!
//! Details carry names, paths, ids, sizes, digests and timings; never file
//! contents or secrets. Times are RFC 3339 UTC.

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use super::claim::FailureKind;

pub const EVENT_SOURCE: &str = "xecm-sftp";

/// A typed event detail.
pub trait EventDetail: Serialize {
    const DETAIL_TYPE: &'static str;

    /// The detail as JSON (serialising these plain structs cannot fail; a
    /// `Null` would only come from a non-string map key, which none has).
    fn detail(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// How an inbound file ended up in Content Server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngestOutcome {
    Created,
    VersionAdded,
    /// `skip-if-identical` / `add-version` found the same SHA-256.
    SkippedIdentical,
    /// The idempotency key was already on a document (a rerun after a crash).
    AlreadyIngested,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferIngested {
    pub route: String,
    pub rule: Option<String>,
    pub host: String,
    pub source_path: String,
    pub node_id: i64,
    pub version: u32,
    pub document_name: String,
    pub size: u64,
    pub sha256: String,
    pub idempotency_key: String,
    pub outcome: IngestOutcome,
    pub received_at: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub invocation_id: String,
}

impl EventDetail for TransferIngested {
    const DETAIL_TYPE: &'static str = "Transfer Ingested";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferFailed {
    pub route: String,
    pub host: String,
    pub source_path: String,
    /// Where the file now is (`failed/...`), if it could be moved.
    pub failed_path: Option<String>,
    pub kind: FailureKind,
    pub reason: String,
    pub attempts: u32,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub failed_at: DateTime<Utc>,
    pub invocation_id: String,
}

impl EventDetail for TransferFailed {
    const DETAIL_TYPE: &'static str = "Transfer Failed";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentExported {
    pub route: String,
    pub destination: String,
    pub node_id: i64,
    pub version: u32,
    pub remote_path: String,
    pub size: u64,
    pub sha256: String,
    /// A manual resend rather than an approval.
    pub resend: bool,
    /// The webhook's `event_id`, when triggered by one.
    pub event_id: Option<String>,
    pub idempotency_key: String,
    pub exported_at: DateTime<Utc>,
    /// The whole delivery, from the decision to the history write.
    pub duration_ms: u64,
    /// The bytes alone: ECM download through SFTP rename; `None` for a
    /// package entry (the package's files go out one after the other).
    pub transfer_ms: Option<u64>,
    pub invocation_id: String,
}

impl EventDetail for DocumentExported {
    const DETAIL_TYPE: &'static str = "Document Exported";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectionReason {
    pub route: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportRejected {
    pub node_id: i64,
    /// Version the callback claimed, if any.
    pub version: Option<u32>,
    pub event_id: Option<String>,
    pub reasons: Vec<RejectionReason>,
    pub rejected_at: DateTime<Utc>,
    pub invocation_id: String,
}

impl EventDetail for ExportRejected {
    const DETAIL_TYPE: &'static str = "Export Rejected";
}

impl ExportRejected {
    /// From [`super::export_route::ExportDecision::Rejected`]'s reasons.
    pub fn reasons_from(pairs: &[(String, String)]) -> Vec<RejectionReason> {
        pairs
            .iter()
            .map(|(route, reason)| RejectionReason {
                route: route.clone(),
                reason: reason.clone(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCompleted {
    pub backup: String,
    pub snapshot_id: String,
    pub files: u64,
    pub bytes: u64,
    /// Files copied in this snapshot (the rest were unchanged, incremental).
    pub copied: u64,
    pub pruned: Vec<String>,
    pub invocations: u32,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub invocation_id: String,
}

impl EventDetail for SnapshotCompleted {
    const DETAIL_TYPE: &'static str = "Snapshot Completed";
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn given_each_detail_when_typed_then_detail_type_matches_the_shared_contract() {
        assert_eq!(TransferIngested::DETAIL_TYPE, "Transfer Ingested");
        assert_eq!(TransferFailed::DETAIL_TYPE, "Transfer Failed");
        assert_eq!(DocumentExported::DETAIL_TYPE, "Document Exported");
        assert_eq!(ExportRejected::DETAIL_TYPE, "Export Rejected");
        assert_eq!(SnapshotCompleted::DETAIL_TYPE, "Snapshot Completed");
        assert_eq!(EVENT_SOURCE, "xecm-sftp");
    }

    #[test]
    fn given_ingested_detail_when_serialised_then_fields_and_formats_are_stable() {
        let d = TransferIngested {
            route: "r".into(),
            rule: Some("invoice".into()),
            host: "127.0.0.1".into(),
            source_path: "INV-1.pdf".into(),
            node_id: 7,
            version: 1,
            document_name: "Invoice 1.pdf".into(),
            size: 3,
            sha256: "ab".repeat(32),
            idempotency_key: "ik1-x".into(),
            outcome: IngestOutcome::SkippedIdentical,
            received_at: t(),
            ingested_at: t(),
            duration_ms: 12,
            invocation_id: "inv".into(),
        };
        let v = d.detail();
        assert_eq!(v["outcome"], "skipped-identical");
        assert_eq!(v["received_at"], "2026-11-27T08:00:00Z");
        assert_eq!(v["node_id"], 7);
    }

    #[test]
    fn given_rejection_pairs_when_converted_then_reasons_keep_route_and_text() {
        let r = ExportRejected {
            node_id: 1,
            version: Some(2),
            event_id: None,
            reasons: ExportRejected::reasons_from(&[("price-lists".into(), "not approved".into())]),
            rejected_at: t(),
            invocation_id: "i".into(),
        };
        let v = r.detail();
        assert_eq!(v["reasons"][0]["route"], "price-lists");
        assert_eq!(v["reasons"][0]["reason"], "not approved");
        assert!(v["event_id"].is_null());
    }
}
