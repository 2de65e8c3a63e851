//! Step 1: read and check the node's facts. The callback body is only a
//! hint: the node, its latest version, categories, ancestors and workspace
//! type are read again from the ECM into plain [`NodeFacts`].

use super::*;

/// Parent chains deeper than this are cut (a cycle or a pathological tree
/// must not loop forever).
pub(crate) const MAX_ANCESTORS: usize = 64;
pub(crate) fn value_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(value_text).collect();
            Some(parts.join(","))
        }
        other => Some(other.to_string()),
    }
}

/// Re-reads everything the routes may look at. `workspace_types` are the type
/// ids the routes ask about: the port has no "type of workspace X" call, so
/// each is checked with a by-type lookup, and only when some route needs it.
pub(crate) async fn read_facts(
    ecm: &dyn Ecm,
    id: NodeId,
    workspace_types: &[i64],
) -> Result<(NodeFacts, Node, Vec<AppliedCategory>), ExportError> {
    let node = ecm.node(id).await?;
    let version = if node.node_type == node_type::DOCUMENT {
        ecm.versions(id)
            .await?
            .iter()
            .map(|v| v.number)
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    let applied = ecm.categories(id).await?;
    let mut categories = BTreeMap::new();
    for c in &applied {
        for (k, v) in &c.values {
            if let Some(text) = value_text(v) {
                categories.insert(k.clone(), text);
            }
        }
    }
    let mut ancestors = Vec::new();
    let mut workspaces = Vec::new();
    if node.node_type == node_type::BUSINESS_WORKSPACE {
        workspaces.push((node.id, node.name.clone()));
    }
    let mut parent = node.parent_id;
    while let Some(p) = parent {
        if ancestors.len() >= MAX_ANCESTORS || ancestors.contains(&p.get()) {
            break;
        }
        ancestors.push(p.get());
        let pn = ecm.node(p).await?;
        if pn.node_type == node_type::BUSINESS_WORKSPACE {
            workspaces.push((pn.id, pn.name.clone()));
        }
        parent = pn.parent_id;
    }
    let mut workspace_type_id = None;
    // The nearest workspace is the one a document belongs to.
    if let Some((ws_id, ws_name)) = workspaces.first() {
        for t in workspace_types {
            let found = ecm.find_workspaces(*t, ws_name).await?;
            if found.iter().any(|w| w.id == *ws_id) {
                workspace_type_id = Some(*t);
                break;
            }
        }
    }
    Ok((
        NodeFacts {
            node_id: id.get(),
            name: node.name.clone(),
            version,
            categories,
            ancestors,
            workspace_type_id,
        },
        node,
        applied,
    ))
}

pub(crate) fn route_workspace_types(routes: &ExportRoutes) -> Vec<i64> {
    let mut out: Vec<i64> = routes
        .routes
        .iter()
        .flat_map(|r| r.destinations.iter())
        .filter_map(|d| d.config.when.workspace_type_id)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub(crate) fn node_id(id: i64) -> Result<NodeId, ExportError> {
    NodeId::new(id).ok_or(ExportError::InvalidNode {
        node_id: id,
        reason: "not a positive node id".into(),
    })
}
