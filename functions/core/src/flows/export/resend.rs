//! Manual resend: the latest approved version delivered again on purpose,
//! audited as a resend.

use super::*;

/// Manual resend: the latest version, if the route still approves it,
/// delivered again even if it went out before; audited as a resend.
#[tracing::instrument(skip(cx))]
pub async fn resend(
    cx: &ExportContext<'_>,
    node: i64,
    route: &str,
    reason: Option<&str>,
) -> Result<DeliveryReport, ExportError> {
    let id = node_id(node)?;
    if !cx.routes.routes.iter().any(|r| r.name == route) {
        return Err(ExportError::UnknownRoute {
            route: route.to_owned(),
        });
    }
    let (facts, n, applied) = read_facts(cx.ecm, id, &route_workspace_types(cx.routes)).await?;
    if n.node_type != node_type::DOCUMENT {
        return Err(ExportError::InvalidNode {
            node_id: node,
            reason: "a resend needs a document".into(),
        });
    }
    match decide(cx.routes, &facts, Some(route), Utc::now())? {
        ExportDecision::Deliver(d) => {
            tracing::info!(reason = reason.unwrap_or(""), "resend requested");
            match deliver(cx, &d, &applied, true, None).await? {
                ExportOutcome::Delivered(r) | ExportOutcome::Duplicate(r) => Ok(r),
                ExportOutcome::Superseded { delivery, .. } => Ok(delivery),
                ExportOutcome::Rejected { reasons, .. } => Err(ExportError::NotApproved {
                    node_id: node,
                    reasons: format!("{reasons:?}"),
                }),
                ExportOutcome::Packaged(_) | ExportOutcome::PackageDuplicate { .. } => {
                    Err(ExportError::InvalidNode {
                        node_id: node,
                        reason: "a resend needs a document".into(),
                    })
                }
            }
        }
        ExportDecision::Rejected { reasons } => {
            reject(cx, node, None, None, &reasons).await;
            Err(ExportError::NotApproved {
                node_id: node,
                reasons: reasons
                    .iter()
                    .map(|(r, why)| format!("{r}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        }
    }
}
