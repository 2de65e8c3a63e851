//! The events port: what happened to each transfer, published to EventBridge
//! (source `xecm-sftp`, DESIGN.md §7) by `adapters::aws::EventBridgeSink`,
//! or collected in memory by [`MemoryEvents`] in unit tests.

use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `source` of every event we publish.
pub const SOURCE: &str = "xecm-sftp";

/// The detail types of DESIGN.md §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DetailType {
    #[serde(rename = "Transfer Ingested")]
    TransferIngested,
    #[serde(rename = "Transfer Failed")]
    TransferFailed,
    #[serde(rename = "Document Exported")]
    DocumentExported,
    #[serde(rename = "Export Rejected")]
    ExportRejected,
    #[serde(rename = "Snapshot Completed")]
    SnapshotCompleted,
    #[serde(rename = "Snapshot Failed")]
    SnapshotFailed,
    #[serde(rename = "Snapshot Verified")]
    SnapshotVerified,
    #[serde(rename = "Snapshot Verify Failed")]
    SnapshotVerifyFailed,
    #[serde(rename = "Snapshot Restored")]
    SnapshotRestored,
    /// A backup snapshot reached its deadline; the rule in
    /// `infra/continuation.tf` invokes `backup-snapshot` with the detail.
    #[serde(rename = "Snapshot Continuation")]
    SnapshotContinuation,
    /// A sweep run of an export route finished (what it caught up).
    #[serde(rename = "Export Sweep Completed")]
    ExportSweepCompleted,
    /// A sweep run stopped early; the detail is the sweep event to run next.
    #[serde(rename = "Export Sweep Continued")]
    ExportSweepContinued,
}

impl DetailType {
    pub fn as_str(self) -> &'static str {
        match self {
            DetailType::TransferIngested => "Transfer Ingested",
            DetailType::TransferFailed => "Transfer Failed",
            DetailType::DocumentExported => "Document Exported",
            DetailType::ExportRejected => "Export Rejected",
            DetailType::SnapshotCompleted => "Snapshot Completed",
            DetailType::SnapshotFailed => "Snapshot Failed",
            DetailType::SnapshotVerified => "Snapshot Verified",
            DetailType::SnapshotVerifyFailed => "Snapshot Verify Failed",
            DetailType::SnapshotRestored => "Snapshot Restored",
            DetailType::SnapshotContinuation => "Snapshot Continuation",
            DetailType::ExportSweepCompleted => "Export Sweep Completed",
            DetailType::ExportSweepContinued => "Export Sweep Continued",
        }
    }
}

/// The detail of a transfer event (ingest, export, failure, rejection).
/// Paths and names only: never file contents or secrets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferEvent {
    pub route: String,
    /// `ingest`, `export`, `resend`, `retry`, `package`.
    pub direction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub invocation_id: String,
    /// Why it failed or was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

/// The detail of a finished backup snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEvent {
    pub snapshot_id: String,
    pub target_path: String,
    pub files: u64,
    pub bytes: u64,
    pub manifest_sha256: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub invocation_id: String,
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub detail_type: DetailType,
    pub detail: Value,
}

impl Event {
    pub fn transfer(detail_type: DetailType, t: &TransferEvent) -> Self {
        Self {
            detail_type,
            // A plain struct of strings and numbers always serializes.
            detail: serde_json::to_value(t).unwrap_or(Value::Null),
        }
    }

    pub fn snapshot(s: &SnapshotEvent) -> Self {
        Self {
            detail_type: DetailType::SnapshotCompleted,
            detail: serde_json::to_value(s).unwrap_or(Value::Null),
        }
    }
}

/// An event that could not be delivered, by its index in the published slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub index: usize,
    pub detail_type: DetailType,
    pub error_code: String,
    pub message: String,
}

/// The outcome of a publish: how many went out and which did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    pub delivered: usize,
    pub undelivered: Vec<Undelivered>,
}

impl PublishReport {
    pub fn all_delivered(&self) -> bool {
        self.undelivered.is_empty()
    }
}

/// Publishes events. Partial failure is not an error: the report lists what
/// was not delivered after the adapter's bounded retries, and the flow
/// decides (a lost audit event must not undo a completed transfer).
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, events: &[Event]) -> PublishReport;
}

/// An in-memory [`EventSink`] that keeps what it was given.
#[derive(Debug, Default)]
pub struct MemoryEvents {
    events: Mutex<Vec<Event>>,
}

impl MemoryEvents {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl EventSink for MemoryEvents {
    async fn publish(&self, events: &[Event]) -> PublishReport {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(events);
        PublishReport {
            delivered: events.len(),
            undelivered: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_type_strings_match_design() {
        for t in [
            DetailType::TransferIngested,
            DetailType::TransferFailed,
            DetailType::DocumentExported,
            DetailType::ExportRejected,
            DetailType::SnapshotCompleted,
            DetailType::SnapshotFailed,
            DetailType::SnapshotVerified,
            DetailType::SnapshotVerifyFailed,
            DetailType::SnapshotRestored,
            DetailType::SnapshotContinuation,
        ] {
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                Value::String(t.as_str().into())
            );
        }
    }

    #[test]
    fn transfer_detail_omits_unknowns() {
        let e = Event::transfer(
            DetailType::TransferIngested,
            &TransferEvent {
                route: "acme-invoices".into(),
                direction: "ingest".into(),
                node_id: Some(42),
                invocation_id: "req-1".into(),
                ..Default::default()
            },
        );
        assert_eq!(e.detail["node_id"], 42);
        assert!(e.detail.get("sha256").is_none());
    }
}
