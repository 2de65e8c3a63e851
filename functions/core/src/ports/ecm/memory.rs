//! An in-memory [`Ecm`] for unit tests of the flows: a node tree with
//! versions, categories, RM classifications and holds. It keeps the rules the
//! flows rely on (unique names per parent, `Conflict` on collision, paging,
//! exact-name lookup) and nothing more.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::*;

#[derive(Debug, Clone)]
struct StoredNode {
    node: Node,
    description: Option<String>,
    versions: Vec<(Version, Bytes)>,
    categories: BTreeMap<i64, CategoryValues>,
    rm_classes: Vec<i64>,
    holds: Vec<i64>,
    workspace_type: Option<i64>,
    business_object: Option<BusinessObject>,
    audit: Vec<AuditEntry>,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    nodes: BTreeMap<i64, StoredNode>,
    workspace_types: Vec<WorkspaceType>,
    holds: Vec<Hold>,
}

/// The in-memory Content Server. Starts with the Enterprise volume (2000).
#[derive(Debug)]
pub struct MemoryEcm {
    state: Mutex<State>,
}

/// The Enterprise volume's id in [`MemoryEcm`], as on most real installs.
pub const ENTERPRISE: i64 = 2000;

impl Default for MemoryEcm {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEcm {
    pub fn new() -> Self {
        let mut state = State {
            next_id: 10_000,
            ..State::default()
        };
        state.nodes.insert(
            ENTERPRISE,
            stored(Node {
                id: NodeId(ENTERPRISE),
                name: "Enterprise".into(),
                node_type: 141,
                parent_id: None,
                size: Some(0),
                modified: None,
                mime_type: None,
            }),
        );
        Self {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent data
        // behind (every mutation is one insert), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seeds a workspace type (templates are created as nodes under Enterprise).
    pub fn add_workspace_type(&self, id: i64, name: &str, template_names: &[&str]) {
        let mut s = self.lock();
        let mut templates = Vec::new();
        for t in template_names {
            let tid = s.insert(ENTERPRISE, t, node_type::BUSINESS_WORKSPACE, None);
            templates.push(WorkspaceTemplate {
                id: tid,
                name: (*t).to_string(),
            });
        }
        s.workspace_types.push(WorkspaceType {
            id,
            name: name.into(),
            templates,
        });
    }

    pub fn add_hold(&self, id: i64, name: &str) {
        self.lock().holds.push(Hold {
            id,
            name: name.into(),
        });
    }

    /// The stored bytes of a version (`None`: latest), for assertions.
    pub fn content(&self, node: NodeId, version: Option<u32>) -> Option<Bytes> {
        let s = self.lock();
        let n = s.nodes.get(&node.get())?;
        pick_version(&n.versions, version).map(|(_, b)| b.clone())
    }
}

fn stored(node: Node) -> StoredNode {
    StoredNode {
        node,
        description: None,
        versions: Vec::new(),
        categories: BTreeMap::new(),
        rm_classes: Vec::new(),
        holds: Vec::new(),
        workspace_type: None,
        business_object: None,
        audit: Vec::new(),
    }
}

fn pick_version(versions: &[(Version, Bytes)], v: Option<u32>) -> Option<&(Version, Bytes)> {
    match v {
        None => versions.last(),
        Some(n) => versions.iter().find(|(ver, _)| ver.number == n),
    }
}

fn not_found(op: &'static str, id: impl fmt::Display) -> EcmError {
    EcmError::NotFound {
        op,
        target: format!("node {id}"),
    }
}

fn paginate<T: Clone>(all: Vec<T>, page: u32, limit: u32) -> Page<T> {
    let limit = limit.max(1);
    let page = page.max(1);
    let total = all.len() as u64;
    let page_total = (all.len() as u32).div_ceil(limit).max(1);
    let items = all
        .into_iter()
        .skip(((page - 1) * limit) as usize)
        .take(limit as usize)
        .collect();
    Page {
        items,
        page,
        page_total,
        total_count: total,
    }
}

impl State {
    fn child_named(&self, parent: i64, name: &str) -> Option<&StoredNode> {
        self.nodes
            .values()
            .find(|n| n.node.parent_id.map(NodeId::get) == Some(parent) && n.node.name == name)
    }

    fn insert(&mut self, parent: i64, name: &str, ty: i64, mime: Option<String>) -> NodeId {
        self.next_id += 1;
        let id = NodeId(self.next_id);
        self.nodes.insert(
            id.get(),
            stored(Node {
                id,
                name: name.into(),
                node_type: ty,
                parent_id: Some(NodeId(parent)),
                size: Some(0),
                modified: None,
                mime_type: mime,
            }),
        );
        id
    }

    fn create_checked(
        &mut self,
        op: &'static str,
        parent: NodeId,
        name: &str,
        ty: i64,
        mime: Option<String>,
    ) -> Result<NodeId, EcmError> {
        let target = format!("{name:?} in node {parent}");
        check_name(name).map_err(|detail| EcmError::Invalid {
            op,
            target: target.clone(),
            detail,
        })?;
        if !self.nodes.contains_key(&parent.get()) {
            return Err(not_found(op, parent));
        }
        if self.child_named(parent.get(), name).is_some() {
            return Err(EcmError::Conflict { op, target });
        }
        Ok(self.insert(parent.get(), name, ty, mime))
    }

    fn node_mut(&mut self, op: &'static str, id: NodeId) -> Result<&mut StoredNode, EcmError> {
        self.nodes
            .get_mut(&id.get())
            .ok_or_else(|| not_found(op, id))
    }

    fn children_of(&self, parent: i64) -> Vec<Node> {
        self.nodes
            .values()
            .filter(|n| n.node.parent_id.map(NodeId::get) == Some(parent))
            .map(|n| n.node.clone())
            .collect()
    }
}

async fn drain(content: Content) -> Result<(Bytes, String), std::io::Error> {
    let mut buf = Vec::with_capacity(usize::try_from(content.length).unwrap_or(0));
    let mut hasher = Sha256::new();
    let mut stream = content.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        buf.extend_from_slice(&chunk);
    }
    if buf.len() as u64 != content.length {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "content stream gave {} bytes, {} declared",
                buf.len(),
                content.length
            ),
        ));
    }
    Ok((Bytes::from(buf), hex::encode(hasher.finalize())))
}

fn stream_of(bytes: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

#[async_trait]
impl Ecm for MemoryEcm {
    async fn node(&self, id: NodeId) -> Result<Node, EcmError> {
        let s = self.lock();
        s.nodes
            .get(&id.get())
            .map(|n| n.node.clone())
            .ok_or_else(|| not_found("get node", id))
    }

    async fn enterprise_volume(&self) -> Result<NodeId, EcmError> {
        Ok(NodeId(ENTERPRISE))
    }

    async fn children(
        &self,
        parent: NodeId,
        filter: &ChildFilter,
        page: u32,
        limit: u32,
    ) -> Result<Page<Node>, EcmError> {
        let s = self.lock();
        if !s.nodes.contains_key(&parent.get()) {
            return Err(not_found("list children", parent));
        }
        let all: Vec<Node> = s
            .children_of(parent.get())
            .into_iter()
            .filter(|n| {
                filter
                    .name_contains
                    .as_ref()
                    .is_none_or(|w| n.name.to_lowercase().contains(&w.to_lowercase()))
                    && filter.node_type.is_none_or(|t| n.node_type == t)
            })
            .collect();
        Ok(paginate(all, page, limit))
    }

    async fn child_by_name(&self, parent: NodeId, name: &str) -> Result<Option<Node>, EcmError> {
        let s = self.lock();
        if !s.nodes.contains_key(&parent.get()) {
            return Err(not_found("find child by name", parent));
        }
        Ok(s.child_named(parent.get(), name).map(|n| n.node.clone()))
    }

    async fn create_folder(&self, parent: NodeId, name: &str) -> Result<NodeId, EcmError> {
        self.lock()
            .create_checked("create folder", parent, name, node_type::FOLDER, None)
    }

    async fn ensure_folder_path(
        &self,
        root: NodeId,
        segments: &[String],
    ) -> Result<NodeId, EcmError> {
        let mut s = self.lock();
        if !s.nodes.contains_key(&root.get()) {
            return Err(not_found("ensure folder path", root));
        }
        let mut cur = root;
        for seg in segments {
            cur = match s.child_named(cur.get(), seg) {
                Some(n) if n.node.is_container() => n.node.id,
                Some(n) => {
                    return Err(EcmError::Conflict {
                        op: "ensure folder path",
                        target: format!("{seg:?} in node {cur} (a non-folder, node {})", n.node.id),
                    });
                }
                None => {
                    s.create_checked("ensure folder path", cur, seg, node_type::FOLDER, None)?
                }
            };
        }
        Ok(cur)
    }

    async fn upload(&self, request: UploadRequest) -> Result<UploadReceipt, EcmError> {
        let op = "upload document";
        let target = format!("{:?} in node {}", request.name, request.parent);
        {
            // Checked before reading the stream, like the server, which
            // refuses the create before it stores the file.
            let s = self.lock();
            if !s.nodes.contains_key(&request.parent.get()) {
                return Err(not_found(op, request.parent));
            }
            if s.child_named(request.parent.get(), &request.name).is_some() {
                return Err(EcmError::Conflict { op, target });
            }
        }
        let file_name = request.content.file_name.clone();
        let mime = request.content.mime_type.clone();
        let (bytes, sha256) = drain(request.content)
            .await
            .map_err(|e| EcmError::Transient {
                op,
                target: target.clone(),
                detail: format!("reading the content: {e}"),
            })?;
        let mut s = self.lock();
        let id = s.create_checked(
            op,
            request.parent,
            &request.name,
            node_type::DOCUMENT,
            Some(mime.clone()),
        )?;
        let n = s.node_mut(op, id)?;
        n.description = request.description;
        n.node.size = Some(bytes.len() as u64);
        for c in request.categories {
            n.categories.insert(c.category_id, c.values);
        }
        let size = bytes.len() as u64;
        n.versions.push((
            Version {
                number: 1,
                file_name,
                size,
                mime_type: Some(mime),
                created: None,
            },
            bytes,
        ));
        Ok(UploadReceipt {
            node_id: id,
            version: Some(1),
            size,
            sha256,
        })
    }

    async fn add_version(
        &self,
        node: NodeId,
        _description: Option<&str>,
        content: Content,
    ) -> Result<UploadReceipt, EcmError> {
        let op = "add version";
        let file_name = content.file_name.clone();
        let mime = content.mime_type.clone();
        let (bytes, sha256) = drain(content).await.map_err(|e| EcmError::Transient {
            op,
            target: format!("node {node}"),
            detail: format!("reading the content: {e}"),
        })?;
        let mut s = self.lock();
        let n = s.node_mut(op, node)?;
        if n.node.node_type != node_type::DOCUMENT {
            return Err(EcmError::Refused {
                op,
                target: format!("node {node}"),
                status: 400,
                message: "not a document".into(),
            });
        }
        let number = n.versions.last().map_or(1, |(v, _)| v.number + 1);
        let size = bytes.len() as u64;
        n.node.size = Some(size);
        n.versions.push((
            Version {
                number,
                file_name,
                size,
                mime_type: Some(mime),
                created: None,
            },
            bytes,
        ));
        Ok(UploadReceipt {
            node_id: node,
            version: Some(number),
            size,
            sha256,
        })
    }

    async fn versions(&self, node: NodeId) -> Result<Vec<Version>, EcmError> {
        let s = self.lock();
        let n = s
            .nodes
            .get(&node.get())
            .ok_or_else(|| not_found("list versions", node))?;
        Ok(n.versions.iter().map(|(v, _)| v.clone()).collect())
    }

    async fn download(&self, node: NodeId, version: Option<u32>) -> Result<Download, EcmError> {
        let s = self.lock();
        let n = s
            .nodes
            .get(&node.get())
            .ok_or_else(|| not_found("download", node))?;
        let (v, b) = pick_version(&n.versions, version).ok_or_else(|| EcmError::NotFound {
            op: "download",
            target: format!("node {node} version {version:?}"),
        })?;
        Ok(Download {
            length: Some(b.len() as u64),
            mime_type: v.mime_type.clone(),
            stream: stream_of(b.clone()),
        })
    }

    async fn update_node(&self, node: NodeId, update: &NodeUpdate) -> Result<(), EcmError> {
        let op = "update node";
        let mut s = self.lock();
        let current = s
            .nodes
            .get(&node.get())
            .ok_or_else(|| not_found(op, node))?
            .node
            .clone();
        let new_parent = update.parent.or(current.parent_id);
        let new_name = update.name.clone().unwrap_or(current.name.clone());
        if let Some(p) = new_parent {
            if !s.nodes.contains_key(&p.get()) {
                return Err(not_found(op, p));
            }
            if let Some(other) = s.child_named(p.get(), &new_name)
                && other.node.id != node
            {
                return Err(EcmError::Conflict {
                    op,
                    target: format!("{new_name:?} in node {p}"),
                });
            }
        }
        let n = s.node_mut(op, node)?;
        n.node.name = new_name;
        n.node.parent_id = new_parent;
        if let Some(d) = &update.description {
            n.description = Some(d.clone());
        }
        Ok(())
    }

    async fn delete_node(&self, node: NodeId) -> Result<(), EcmError> {
        let mut s = self.lock();
        s.nodes
            .remove(&node.get())
            .ok_or_else(|| not_found("delete node", node))?;
        // Children go with their parent, as on the server.
        loop {
            let orphans: Vec<i64> = s
                .nodes
                .values()
                .filter(|n| {
                    n.node
                        .parent_id
                        .is_some_and(|p| !s.nodes.contains_key(&p.get()))
                })
                .map(|n| n.node.id.get())
                .collect();
            if orphans.is_empty() {
                return Ok(());
            }
            for o in orphans {
                s.nodes.remove(&o);
            }
        }
    }

    async fn categories(&self, node: NodeId) -> Result<Vec<AppliedCategory>, EcmError> {
        let s = self.lock();
        let n = s
            .nodes
            .get(&node.get())
            .ok_or_else(|| not_found("get categories", node))?;
        Ok(n.categories
            .iter()
            .map(|(k, v)| AppliedCategory {
                category_id: *k,
                values: v.clone(),
            })
            .collect())
    }

    async fn apply_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        let mut s = self.lock();
        let n = s.node_mut("apply category", node)?;
        n.categories.insert(category_id, values.clone());
        Ok(())
    }

    async fn update_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        let op = "update category";
        let mut s = self.lock();
        let n = s.node_mut(op, node)?;
        let cat = n
            .categories
            .get_mut(&category_id)
            .ok_or_else(|| EcmError::NotFound {
                op,
                target: format!("category {category_id} on node {node}"),
            })?;
        cat.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(())
    }

    async fn workspace_types(&self) -> Result<Vec<WorkspaceType>, EcmError> {
        Ok(self.lock().workspace_types.clone())
    }

    async fn find_workspaces(
        &self,
        type_id: i64,
        name: &str,
    ) -> Result<Vec<WorkspaceRef>, EcmError> {
        let s = self.lock();
        Ok(s.nodes
            .values()
            .filter(|n| n.workspace_type == Some(type_id) && n.node.name == name)
            .map(|n| WorkspaceRef {
                id: n.node.id,
                name: n.node.name.clone(),
                type_id: Some(type_id),
            })
            .collect())
    }

    async fn workspace_by_business_object(
        &self,
        bo: &BusinessObject,
    ) -> Result<Option<WorkspaceRef>, EcmError> {
        let s = self.lock();
        Ok(s.nodes
            .values()
            .find(|n| n.business_object.as_ref() == Some(bo))
            .map(|n| WorkspaceRef {
                id: n.node.id,
                name: n.node.name.clone(),
                type_id: n.workspace_type,
            }))
    }

    async fn create_workspace(&self, request: &CreateWorkspace) -> Result<NodeId, EcmError> {
        let op = "create workspace";
        let mut s = self.lock();
        let known = s.workspace_types.iter().any(|t| {
            t.id == request.type_id && t.templates.iter().any(|x| x.id == request.template_id)
        });
        if !known {
            return Err(EcmError::Refused {
                op,
                target: format!("{:?}", request.name),
                status: 400,
                message: format!(
                    "template {} is not a template of workspace type {}",
                    request.template_id, request.type_id
                ),
            });
        }
        let parent = request.parent.unwrap_or(NodeId(ENTERPRISE));
        let id = s.create_checked(
            op,
            parent,
            &request.name,
            node_type::BUSINESS_WORKSPACE,
            None,
        )?;
        let n = s.node_mut(op, id)?;
        n.workspace_type = Some(request.type_id);
        n.business_object = request.business_object.clone();
        for c in &request.categories {
            n.categories.insert(c.category_id, c.values.clone());
        }
        Ok(id)
    }

    async fn apply_rm_classification(&self, node: NodeId, class_id: i64) -> Result<(), EcmError> {
        let mut s = self.lock();
        let n = s.node_mut("apply RM classification", node)?;
        if !n.rm_classes.contains(&class_id) {
            n.rm_classes.push(class_id);
        }
        Ok(())
    }

    async fn rm_classifications(&self, node: NodeId) -> Result<Vec<i64>, EcmError> {
        let s = self.lock();
        let n = s
            .nodes
            .get(&node.get())
            .ok_or_else(|| not_found("get RM classifications", node))?;
        Ok(n.rm_classes.clone())
    }

    async fn apply_hold(&self, node: NodeId, hold_id: i64) -> Result<(), EcmError> {
        let op = "apply hold";
        let mut s = self.lock();
        if !s.holds.iter().any(|h| h.id == hold_id) {
            return Err(EcmError::NotFound {
                op,
                target: format!("hold {hold_id}"),
            });
        }
        let n = s.node_mut(op, node)?;
        if !n.holds.contains(&hold_id) {
            n.holds.push(hold_id);
        }
        Ok(())
    }

    async fn holds(&self) -> Result<Vec<Hold>, EcmError> {
        Ok(self.lock().holds.clone())
    }

    /// Only `OTName:<text>` and plain text (name substring) are understood.
    async fn search(&self, query: &str, page: u32, limit: u32) -> Result<Page<Node>, EcmError> {
        let needle = query
            .strip_prefix("OTName:")
            .unwrap_or(query)
            .trim()
            .to_lowercase();
        let s = self.lock();
        let all: Vec<Node> = s
            .nodes
            .values()
            .filter(|n| n.node.name.to_lowercase().contains(&needle))
            .map(|n| n.node.clone())
            .collect();
        Ok(paginate(all, page, limit))
    }

    async fn audit(
        &self,
        node: NodeId,
        page: u32,
        limit: u32,
    ) -> Result<Page<AuditEntry>, EcmError> {
        let s = self.lock();
        let n = s
            .nodes
            .get(&node.get())
            .ok_or_else(|| not_found("get audit", node))?;
        Ok(paginate(n.audit.clone(), page, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(data: &'static [u8]) -> Content {
        Content {
            stream: stream_of(Bytes::from_static(data)),
            length: data.len() as u64,
            file_name: "a.pdf".into(),
            mime_type: "application/pdf".into(),
        }
    }

    fn root() -> NodeId {
        NodeId(ENTERPRISE)
    }

    #[tokio::test]
    async fn upload_then_collision_is_a_conflict_and_versions_count_up() {
        let ecm = MemoryEcm::new();
        let folder = ecm
            .ensure_folder_path(root(), &["Invoices".into(), "2024".into()])
            .await
            .unwrap();
        let req = |c| UploadRequest {
            parent: folder,
            name: "a.pdf".into(),
            description: None,
            categories: vec![],
            classifications: vec![],
            content: c,
        };
        let r = ecm.upload(req(content(b"abc"))).await.unwrap();
        assert_eq!(r.size, 3);
        assert_eq!(
            r.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = ecm.upload(req(content(b"x"))).await.unwrap_err();
        assert!(err.is_conflict(), "{err}");
        let v2 = ecm
            .add_version(r.node_id, None, content(b"abcd"))
            .await
            .unwrap();
        assert_eq!(v2.version, Some(2));
        assert_eq!(
            ecm.content(r.node_id, Some(1)).unwrap(),
            Bytes::from_static(b"abc")
        );
        // mkdir -p is idempotent.
        let again = ecm
            .ensure_folder_path(root(), &["Invoices".into(), "2024".into()])
            .await
            .unwrap();
        assert_eq!(again, folder);
    }

    #[tokio::test]
    async fn short_stream_is_not_stored() {
        let ecm = MemoryEcm::new();
        let mut c = content(b"abc");
        c.length = 10;
        let err = ecm
            .upload(UploadRequest {
                parent: root(),
                name: "a.pdf".into(),
                description: None,
                categories: vec![],
                classifications: vec![],
                content: c,
            })
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(ecm.child_by_name(root(), "a.pdf").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn children_are_paged() {
        let ecm = MemoryEcm::new();
        for i in 0..5 {
            ecm.create_folder(root(), &format!("f{i}")).await.unwrap();
        }
        let p = ecm
            .children(root(), &ChildFilter::default(), 2, 2)
            .await
            .unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!((p.page_total, p.total_count), (3, 5));
        assert!(p.has_next());
    }
}
