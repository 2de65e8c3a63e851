//! Packages, step 1: walk the subtree for approved documents, bounded by
//! depth, entries, documents looked at and the invocation's deadline.

use super::super::*;
use super::*;

/// Package walks stop here rather than run into the Lambda deadline unseen.
pub(crate) const MAX_PACKAGE_ENTRIES: usize = 5_000;
pub(crate) const MAX_PACKAGE_DEPTH: usize = 16;
/// Documents a package walk looks at (approved or not) before it gives up.
pub(crate) const MAX_PACKAGE_VISITS: usize = 20_000;
/// Skipped documents a package's response lists, at most (all are counted
/// and each is logged as `package document left out`).
pub const SKIPPED_LISTED: usize = 100;
/// A listed skip's reason is cut to this many bytes.
const SKIPPED_REASON_BYTES: usize = 512;

/// Documents under a package root left out of it: the first ones, and how
/// many there were.
#[derive(Debug, Default)]
pub(crate) struct Skipped {
    pub(crate) listed: Vec<(i64, String)>,
    pub(crate) total: usize,
}

impl Skipped {
    pub(crate) fn add(&mut self, node: i64, mut why: String) {
        tracing::info!(node, reason = %why, "package document left out");
        self.total += 1;
        if self.listed.len() < SKIPPED_LISTED {
            if why.len() > SKIPPED_REASON_BYTES {
                let mut end = SKIPPED_REASON_BYTES;
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                why.truncate(end);
                why.push_str(" …");
            }
            self.listed.push((node, why));
        }
    }
}

pub(crate) struct PackageItem {
    pub(crate) names: Vec<String>,
    pub(crate) node: NodeId,
    pub(crate) name: String,
    pub(crate) version: u32,
}

/// Walks the subtree below `root` (documents only), keeping those the
/// route's approval predicate accepts.
pub(crate) async fn collect_package(
    cx: &ExportContext<'_>,
    route: &ExportRoute,
    root: NodeId,
) -> Result<(Vec<PackageItem>, Skipped), ExportError> {
    let types = route_workspace_types(cx.routes);
    let mut items = Vec::new();
    let mut skipped = Skipped::default();
    // (container, name path from the root)
    let mut stack: Vec<(NodeId, Vec<String>)> = vec![(root, Vec::new())];
    let mut visited = 0usize;
    while let Some((dir, prefix)) = stack.pop() {
        cx.check_deadline(|| {
            format!("listing package folders under node {root} (package not published)")
        })?;
        if prefix.len() > MAX_PACKAGE_DEPTH {
            skipped.add(dir.get(), "deeper than the package depth limit".into());
            continue;
        }
        let mut page = 1;
        loop {
            let p = cx
                .ecm
                .children(dir, &ChildFilter::default(), page, PAGE_SIZE)
                .await?;
            for child in &p.items {
                let mut names = prefix.clone();
                names.push(child.name.clone());
                if child.is_container() {
                    stack.push((child.id, names));
                } else if child.node_type == node_type::DOCUMENT {
                    // Each document costs ECM calls: stop before the
                    // deadline, and stop a walk that would never end.
                    cx.check_deadline(|| {
                        format!(
                            "reading package documents under node {root} (package not published)"
                        )
                    })?;
                    visited += 1;
                    if visited > MAX_PACKAGE_VISITS {
                        return Err(ExportError::InvalidNode {
                            node_id: root.get(),
                            reason: format!(
                                "more than {MAX_PACKAGE_VISITS} documents to look at; split the package"
                            ),
                        });
                    }
                    let (facts, _, _) = read_facts(cx.ecm, child.id, &types).await?;
                    match route.approval.check(&facts) {
                        Ok(()) => {
                            items.push(PackageItem {
                                names,
                                node: child.id,
                                name: child.name.clone(),
                                version: facts.version,
                            });
                            if items.len() > MAX_PACKAGE_ENTRIES {
                                return Err(ExportError::InvalidNode {
                                    node_id: root.get(),
                                    reason: format!(
                                        "more than {MAX_PACKAGE_ENTRIES} documents; split the package"
                                    ),
                                });
                            }
                        }
                        Err(why) => skipped.add(child.id.get(), why),
                    }
                }
            }
            if !p.has_next() {
                break;
            }
            page += 1;
        }
    }
    // Stable order in the manifest whatever order the server lists in.
    items.sort_by(|a, b| a.names.cmp(&b.names));
    Ok((items, skipped))
}

pub(crate) fn pick_destination<'r>(
    route: &'r ExportRoute,
    facts: &NodeFacts,
) -> Option<&'r Destination> {
    route
        .destinations
        .iter()
        .find(|d| d.config.when.matches(facts))
}
