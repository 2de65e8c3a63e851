//! Events: `Document Exported` and `Export Rejected`. A lost event is
//! logged, never turned into a failure that would deliver again.

use super::*;

pub(crate) async fn publish(
    events: &dyn EventSink,
    detail_type: DetailType,
    detail: serde_json::Value,
) {
    let report = events
        .publish(&[Event {
            detail_type,
            detail,
        }])
        .await;
    if !report.all_delivered() {
        // The transfer itself is done and recorded on the node; losing the
        // event must not turn it into a failure that would redeliver.
        tracing::error!(detail_type = detail_type.as_str(), undelivered = ?report.undelivered, "event not published");
    }
}

pub(crate) async fn reject(
    cx: &ExportContext<'_>,
    node: i64,
    version: Option<u32>,
    event_id: Option<&str>,
    reasons: &[(String, String)],
) {
    let detail = ExportRejected {
        node_id: node,
        version,
        event_id: event_id.map(str::to_owned),
        reasons: ExportRejected::reasons_from(reasons),
        rejected_at: Utc::now(),
        invocation_id: cx.invocation_id.to_owned(),
    };
    tracing::warn!(node_id = node, ?reasons, "export rejected");
    publish(cx.events, DetailType::ExportRejected, detail.detail()).await;
}

/// The `Document Exported` event's detail for a delivery.
#[allow(clippy::too_many_arguments)]
pub(crate) fn exported_detail(
    cx: &ExportContext<'_>,
    d: &Delivery,
    target: &RemotePath,
    size: u64,
    sha256: &str,
    resend: bool,
    event_id: Option<&str>,
    at: DateTime<Utc>,
    started: Instant,
    transfer_ms: Option<u64>,
) -> serde_json::Value {
    DocumentExported {
        route: d.route.clone(),
        destination: d.destination.clone(),
        node_id: d.node_id,
        version: d.version,
        remote_path: target.to_string(),
        size,
        sha256: sha256.to_owned(),
        resend,
        event_id: event_id.map(str::to_owned),
        idempotency_key: d.idempotency_key.clone(),
        exported_at: at,
        duration_ms: millis(started.elapsed()),
        transfer_ms,
        invocation_id: cx.invocation_id.to_owned(),
    }
    .detail()
}
