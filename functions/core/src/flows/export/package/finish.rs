//! Packages, last step: events and the report once a package is visible.

use super::super::*;
use super::*;

/// Events and the report once a package is visible.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish_package(
    cx: &ExportContext<'_>,
    route: &ExportRoute,
    dest: &Destination,
    node: i64,
    final_path: RemotePath,
    manifest: String,
    entries: Vec<PackageEntry>,
    manifest_sha256: String,
    skipped: Skipped,
) -> Result<PackageReport, ExportError> {
    let bytes = entries.iter().map(|e| e.size).sum();
    let at = Utc::now();
    for e in &entries {
        let d = DocumentExported {
            route: route.name.clone(),
            destination: dest.config.name.clone(),
            node_id: e.node_id,
            version: e.version,
            remote_path: format!("{final_path}/{}", e.path),
            size: e.size,
            sha256: e.sha256.clone(),
            resend: false,
            event_id: None,
            idempotency_key: export_key(&route.name, &dest.config.name, e.node_id, e.version),
            exported_at: at,
            duration_ms: 0,
            transfer_ms: None,
            invocation_id: cx.invocation_id.to_owned(),
        };
        publish(cx.events, DetailType::DocumentExported, d.detail()).await;
    }
    tracing::info!(path = %final_path, files = entries.len(), bytes, "package exported");
    Ok(PackageReport {
        route: route.name.clone(),
        destination: dest.config.name.clone(),
        root_node_id: node,
        remote_path: final_path.to_string(),
        files: entries.len(),
        bytes,
        manifest,
        manifest_sha256,
        skipped_not_listed: skipped.total - skipped.listed.len(),
        skipped: skipped.listed,
    })
}
