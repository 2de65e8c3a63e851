//! The export history on the node: read into plain records
//! (`domain::export_history`) and written back with one more delivery.

use super::*;

/// The export history as the node's categories hold it.
pub(crate) fn history_of(routes: &ExportRoutes, applied: &[AppliedCategory]) -> ExportHistory {
    let h = &routes.export_history;
    let values = applied
        .iter()
        .find(|c| c.category_id == h.category_id)
        .map(|c| &c.values);
    let history = ExportHistory::from_values(h, values);
    if !history.malformed.is_empty() {
        tracing::warn!(malformed = ?history.malformed, "export history holds values that are not delivery records; kept as they are");
    }
    history
}

/// Writes the delivery `record` into the node's export history (every
/// earlier record kept, see `domain::export_history`).
pub(crate) async fn record_history(
    ecm: &dyn Ecm,
    routes: &ExportRoutes,
    applied: &[AppliedCategory],
    history: &ExportHistory,
    node: NodeId,
    record: DeliveryRecord,
    at: DateTime<Utc>,
) -> Result<(), ExportError> {
    let h = &routes.export_history;
    let values: CategoryValues = history.values_after(h, record, at).into_iter().collect();
    if applied.iter().any(|c| c.category_id == h.category_id) {
        ecm.update_category(node, h.category_id, &values).await?;
    } else {
        ecm.apply_category(node, h.category_id, &values).await?;
    }
    Ok(())
}
