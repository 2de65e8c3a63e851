//! The scheduled sweep of a route: nothing approved is left behind.
//!
//! A callback can be lost (never sent, refused while the function was down,
//! given up on by the caller). The sweep walks the folders of a route's
//! scope page by page, and every document whose approved version the route
//! would deliver goes through the very delivery a callback takes: the export
//! history answers what a callback already delivered (a duplicate, never a
//! second copy), the lease answers one being delivered right now ("in
//! progress", left to its holder), and what is left is what no callback
//! delivered — the sweep delivers it and reports it as caught up.
//!
//! A run is bounded (documents looked at, and the invocation's deadline):
//! when it stops early it returns a cursor (folders still to list, with the
//! page to list next), which the next run resumes from.

use serde::Serialize;

use super::{
    DeliveryReport, ExportContext, ExportError, ExportOutcome, PAGE_SIZE, deliver, node_id,
    read_facts, route_workspace_types,
};
use crate::domain::export_route::{
    ExportDecision, SWEEP_DEFAULT_MAX_DOCUMENTS, SWEEP_MAX_DOCUMENTS, SweepCursor, SweepFolder,
    decide,
};
use crate::ports::ecm::{ChildFilter, node_type};
use crate::ports::events::DetailType;

/// What one sweep run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub route: String,
    /// Documents looked at.
    pub examined: u32,
    /// Approved versions no callback had delivered, delivered now.
    pub caught_up: Vec<DeliveryReport>,
    /// Approved versions already delivered (by a callback or earlier sweep).
    pub already_delivered: u32,
    /// Versions older than one already delivered to their destination.
    pub superseded: u32,
    /// Being delivered by another invocation right now.
    pub in_progress: Vec<i64>,
    /// Documents the route does not export (not approved, no destination).
    pub not_exported: u32,
    /// Documents that failed, with the reason; a later run tries again.
    pub failed: Vec<(i64, String)>,
    /// `true` when every folder was walked; otherwise `cursor` says where
    /// the next run goes on.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<SweepCursor>,
}

/// Runs one bounded sweep of `route` over `roots` (or the route's
/// `approval.ancestor_id`), resuming at `cursor` if given.
#[tracing::instrument(skip(cx, cursor))]
pub async fn sweep(
    cx: &ExportContext<'_>,
    route: &str,
    roots: Option<&[i64]>,
    max_documents: Option<u32>,
    cursor: Option<SweepCursor>,
) -> Result<SweepReport, ExportError> {
    let r = cx
        .routes
        .routes
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| ExportError::UnknownRoute {
            route: route.to_owned(),
        })?;
    let budget = max_documents
        .unwrap_or(SWEEP_DEFAULT_MAX_DOCUMENTS)
        .clamp(1, SWEEP_MAX_DOCUMENTS);
    let mut pending = match cursor {
        Some(c) => c.pending,
        None => {
            let roots: Vec<i64> = match roots {
                Some(r) => r.to_vec(),
                None => r.approval.ancestor_id.into_iter().collect(),
            };
            if roots.is_empty() {
                return Err(ExportError::InvalidNode {
                    node_id: 0,
                    reason: format!(
                        "route {route} has no approval.ancestor_id; the sweep event must name its roots"
                    ),
                });
            }
            roots
                .into_iter()
                .rev()
                .map(|node_id| SweepFolder {
                    node_id,
                    page: 1,
                    skip: 0,
                })
                .collect()
        }
    };
    let types = route_workspace_types(cx.routes);
    let mut report = SweepReport {
        route: route.to_owned(),
        ..SweepReport::default()
    };
    'walk: while let Some(folder) = pending.pop() {
        if report.examined >= budget || cx.check_deadline(String::new).is_err() {
            pending.push(folder);
            break;
        }
        let dir = node_id(folder.node_id)?;
        let page = cx
            .ecm
            .children(dir, &ChildFilter::default(), folder.page, PAGE_SIZE)
            .await?;
        let mut subfolders = Vec::new();
        for (i, child) in page.items.iter().enumerate().skip(folder.skip as usize) {
            if child.is_container() {
                subfolders.push(SweepFolder {
                    node_id: child.id.get(),
                    page: 1,
                    skip: 0,
                });
                continue;
            }
            if child.node_type != node_type::DOCUMENT {
                continue;
            }
            let stop = report.examined >= budget || cx.check_deadline(String::new).is_err();
            let outcome = if stop {
                None
            } else {
                report.examined += 1;
                Some(sweep_one(cx, route, child.id, &types).await)
            };
            match outcome {
                Some(Ok(Some(ExportOutcome::Delivered(d)))) => {
                    tracing::info!(node_id = d.node_id, version = d.version, path = %d.remote_path, "sweep caught up a delivery no callback made");
                    report.caught_up.push(d);
                }
                Some(Ok(Some(ExportOutcome::Duplicate(_)))) => report.already_delivered += 1,
                Some(Ok(Some(ExportOutcome::Superseded { .. }))) => report.superseded += 1,
                Some(Ok(_)) => report.not_exported += 1,
                Some(Err(ExportError::InProgress { node_id, .. })) => {
                    report.in_progress.push(node_id);
                }
                Some(Err(e)) if !matches!(e, ExportError::DeadlineNear { .. }) => {
                    tracing::warn!(node_id = child.id.get(), error = %e, retryable = e.is_retryable(), "sweep could not deliver a document");
                    report.failed.push((child.id.get(), e.to_string()));
                }
                // Out of budget or time: the next run starts at this
                // document of this page.
                None | Some(Err(_)) => {
                    if !stop {
                        report.examined -= 1;
                    }
                    pending.push(SweepFolder {
                        node_id: folder.node_id,
                        page: folder.page,
                        skip: u32::try_from(i).unwrap_or(u32::MAX),
                    });
                    pending.extend(subfolders.into_iter().rev());
                    break 'walk;
                }
            }
        }
        if page.has_next() {
            pending.push(SweepFolder {
                node_id: folder.node_id,
                page: folder.page + 1,
                skip: 0,
            });
        }
        // Depth first, in listing order.
        pending.extend(subfolders.into_iter().rev());
    }
    Ok(finish(cx, report, pending, roots, max_documents).await)
}

/// Completes the report and publishes it (`Export Sweep Completed`); an
/// unfinished run also publishes `Export Sweep Continued`, whose detail is
/// the sweep event that goes on from here (infra/sweep.tf routes it back
/// to the function).
async fn finish(
    cx: &ExportContext<'_>,
    mut report: SweepReport,
    pending: Vec<SweepFolder>,
    roots: Option<&[i64]>,
    max_documents: Option<u32>,
) -> SweepReport {
    report.complete = pending.is_empty();
    report.cursor = (!pending.is_empty()).then_some(SweepCursor { pending });
    let detail = serde_json::json!({
        "route": report.route,
        "examined": report.examined,
        "caught_up": report.caught_up.iter().map(|d| serde_json::json!({
            "node_id": d.node_id, "version": d.version, "destination": d.destination,
            "remote_path": d.remote_path, "sha256": d.sha256,
        })).collect::<Vec<_>>(),
        "already_delivered": report.already_delivered,
        "superseded": report.superseded,
        "in_progress": report.in_progress,
        "not_exported": report.not_exported,
        "failed": report.failed.len(),
        "complete": report.complete,
        "invocation_id": cx.invocation_id,
    });
    super::publish(cx.events, DetailType::ExportSweepCompleted, detail).await;
    if let Some(cursor) = &report.cursor {
        let next = serde_json::json!({
            "action": "sweep",
            "route": report.route,
            "roots": roots,
            "max_documents": max_documents,
            "cursor": cursor,
        });
        super::publish(cx.events, DetailType::ExportSweepContinued, next).await;
    }
    tracing::info!(
        route = %report.route, examined = report.examined, caught_up = report.caught_up.len(),
        already_delivered = report.already_delivered, in_progress = report.in_progress.len(),
        failed = report.failed.len(), complete = report.complete, "sweep run finished"
    );
    report
}

/// One document: what the route decides for its latest version, delivered
/// the way a callback would (`None`: the route does not export it).
async fn sweep_one(
    cx: &ExportContext<'_>,
    route: &str,
    id: crate::ports::ecm::NodeId,
    types: &[i64],
) -> Result<Option<ExportOutcome>, ExportError> {
    let (facts, _, applied) = read_facts(cx.ecm, id, types).await?;
    match decide(cx.routes, &facts, Some(route), chrono::Utc::now())? {
        ExportDecision::Deliver(d) => Ok(Some(deliver(cx, &d, &applied, false, None).await?)),
        ExportDecision::Rejected { .. } => Ok(None),
    }
}
