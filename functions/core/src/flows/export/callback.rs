//! An approval callback: re-read, decide, deliver once (or a package for an
//! approved folder or workspace).

use super::*;

/// Publishes `Export Rejected` for a callback and builds its outcome.
pub(crate) async fn reject_callback(
    cx: &ExportContext<'_>,
    cb: &ApprovalCallback,
    reasons: Vec<(String, String)>,
) -> ExportOutcome {
    reject(
        cx,
        cb.node_id,
        Some(cb.version),
        Some(&cb.event_id),
        &reasons,
    )
    .await;
    ExportOutcome::Rejected {
        node_id: cb.node_id,
        reasons,
    }
}

/// A verified approval callback: re-read, decide, deliver once.
#[tracing::instrument(skip_all, fields(node_id = cb.node_id, event_id = %cb.event_id))]
pub async fn handle_callback(
    cx: &ExportContext<'_>,
    cb: &ApprovalCallback,
) -> Result<ExportOutcome, ExportError> {
    let id = node_id(cb.node_id)?;
    let (facts, node) = match read_facts(cx.ecm, id, &route_workspace_types(cx.routes)).await {
        Ok((f, n, applied)) => ((f, applied), n),
        Err(ExportError::Ecm(EcmError::NotFound { .. })) => {
            let reasons = vec![("*".to_owned(), "node not found".to_owned())];
            return Ok(reject_callback(cx, cb, reasons).await);
        }
        Err(e) => return Err(e),
    };
    let (facts, applied) = facts;
    let mut reasons = Vec::new();
    if node.is_container() {
        return package_callback(cx, cb, &node, facts).await;
    }
    if node.node_type != node_type::DOCUMENT {
        reasons.push(("*".to_owned(), "not a document".to_owned()));
    } else if cb.version == 0 {
        reasons.push((
            "*".to_owned(),
            "the callback names no version for a document".to_owned(),
        ));
    } else if cb.version > facts.version {
        // Signed by the ECM, so the version exists; this read is behind
        // (a replica, a cache). Retried, not refused for good.
        return Err(ExportError::VersionNotVisible {
            node_id: cb.node_id,
            version: cb.version,
            latest: facts.version,
        });
    }
    if reasons.is_empty() {
        // Exactly the version the callback approved, even if a newer one
        // was added since (it gets its own callback when approved).
        let mut facts = facts;
        if cb.version < facts.version {
            tracing::info!(
                approved = cb.version,
                latest = facts.version,
                "the callback's version is not the latest; delivering the approved one"
            );
            facts.version = cb.version;
        }
        match decide(cx.routes, &facts, None, Utc::now())? {
            ExportDecision::Deliver(d) => {
                return deliver(cx, &d, &applied, false, Some(&cb.event_id)).await;
            }
            ExportDecision::Rejected { reasons: r } => reasons = r,
        }
    }
    Ok(reject_callback(cx, cb, reasons).await)
}

/// A callback naming a folder or workspace: the first route whose approval
/// predicate the container itself meets (e.g. a `Package Status = Released`
/// category on the folder) and that has a destination for it exports the
/// container's approved documents as a package named
/// `<container>-<event_id>`, so a repeated callback finds its package
/// already there and is acknowledged without a second delivery.
pub(crate) async fn package_callback(
    cx: &ExportContext<'_>,
    cb: &ApprovalCallback,
    node: &Node,
    mut facts: NodeFacts,
) -> Result<ExportOutcome, ExportError> {
    facts.ancestors.insert(0, cb.node_id);
    let mut reasons = Vec::new();
    let mut chosen = None;
    for r in &cx.routes.routes {
        if let Err(why) = r.approval.check(&facts) {
            reasons.push((r.name.clone(), why));
        } else if pick_destination(r, &facts).is_none() {
            reasons.push((r.name.clone(), "no destination rule matches".into()));
        } else {
            chosen = Some(r.name.clone());
            break;
        }
    }
    let Some(route) = chosen else {
        return Ok(reject_callback(cx, cb, reasons).await);
    };
    let package = sftp_safe_name_with_suffix(&node.name, &cb.event_id);
    match export_package(cx, cb.node_id, &route, Some(&package), None).await {
        Ok(r) => Ok(ExportOutcome::Packaged(r)),
        Err(ExportError::TargetExists { path, .. }) => {
            tracing::info!(path = %path, "package of this approval event already delivered");
            Ok(ExportOutcome::PackageDuplicate {
                node_id: cb.node_id,
                package,
            })
        }
        Err(e) => Err(e),
    }
}
