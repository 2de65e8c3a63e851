//! One step of the walk: the next page of the container on top of the stack,
//! split into containers (pushed for later, depth-first) and documents (for
//! this page), each with its SFTP-safe segment.
//!
//! Order is the server's listing order (by name, then id), page by page, so
//! the walk is stable across invocations. Within a page, two names that
//! differ only in case get distinct segments (for servers that fold case);
//! across pages the no-replace put keeps them apart.

use std::collections::HashSet;

use crate::domain::backup::Cursor;
use crate::domain::snapshot_names::{safe_segment, unique_segment};
use crate::ports::ecm::{ChildFilter, Ecm, EcmError, Node, NodeId, node_type};

/// A document found on a page.
#[derive(Debug, Clone)]
pub struct DocItem {
    pub node: Node,
    /// Snapshot-relative safe path.
    pub path: String,
    /// Its names from the root down.
    pub ecm_path: Vec<String>,
    /// The always-unique alternative segment's path (used when the server
    /// already has a file under `path`).
    pub alt_path: String,
}

/// A listed page.
#[derive(Debug, Clone)]
pub struct PageItems {
    pub containers: Vec<Cursor>,
    pub documents: Vec<DocItem>,
    /// Nodes that are neither containers nor documents (shortcuts, URLs):
    /// they have no content to back up.
    pub others: u64,
    pub total_count: u64,
    pub has_next: bool,
}

fn join(dir: &str, seg: &str) -> String {
    if dir.is_empty() {
        seg.to_owned()
    } else {
        format!("{dir}/{seg}")
    }
}

/// Lists page `cursor.page` of `cursor`'s container.
pub async fn list_page(
    ecm: &dyn Ecm,
    cursor: &Cursor,
    page_size: u32,
) -> Result<PageItems, EcmError> {
    let parent = NodeId::new(cursor.node_id).ok_or_else(|| EcmError::Invalid {
        op: "list children",
        target: format!("node {}", cursor.node_id),
        detail: "not a positive node id".into(),
    })?;
    let page = ecm
        .children(parent, &ChildFilter::default(), cursor.page, page_size)
        .await?;
    let mut taken: HashSet<String> = HashSet::new();
    let mut out = PageItems {
        containers: Vec::new(),
        documents: Vec::new(),
        others: 0,
        total_count: page.total_count,
        has_next: page.has_next(),
    };
    for node in page.items {
        let id = node.id.get();
        let mut seg = safe_segment(&node.name, id);
        if !taken.insert(seg.to_lowercase()) {
            seg = unique_segment(&node.name, id);
            taken.insert(seg.to_lowercase());
        }
        let mut ecm_path = cursor.ecm_path.clone();
        ecm_path.push(node.name.clone());
        if node.is_container() {
            out.containers.push(Cursor {
                node_id: id,
                path: join(&cursor.path, &seg),
                ecm_path,
                page: 1,
                total_count: None,
            });
        } else if node.node_type == node_type::DOCUMENT {
            out.documents.push(DocItem {
                path: join(&cursor.path, &seg),
                alt_path: join(&cursor.path, &unique_segment(&node.name, id)),
                ecm_path,
                node,
            });
        } else {
            out.others += 1;
        }
    }
    Ok(out)
}
