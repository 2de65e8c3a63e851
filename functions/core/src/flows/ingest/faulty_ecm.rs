//! A `MemoryEcm` behind a switch that makes chosen operations fail, for the
//! flow's unit tests (outages, expired tickets, name conflicts from a
//! concurrent writer).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use crate::ports::ecm::memory::MemoryEcm;
use crate::ports::ecm::{
    AuditEntry, BusinessObject, CategoryValues, ChildFilter, Content, CreateWorkspace, Download,
    Ecm, EcmError, Hold, Node, NodeId, NodeUpdate, Page, UploadReceipt, UploadRequest, Version,
    WorkspaceRef, WorkspaceType,
};

/// What an armed operation answers.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// A transient failure (an outage: 503, timeout).
    Transient,
    /// (`child_by_name` only) the child is not seen: `Ok(None)`.
    Hidden,
}

/// The operations calls are counted and failed by.
pub struct FaultyEcm {
    pub inner: MemoryEcm,
    /// op name → (calls still to fail; `u32::MAX` = all, fault).
    armed: Mutex<BTreeMap<&'static str, (u32, Fault)>>,
    calls: Mutex<BTreeMap<&'static str, u32>>,
    interleave: AtomicBool,
}

impl FaultyEcm {
    pub fn new(inner: MemoryEcm) -> Self {
        Self {
            inner,
            armed: Mutex::new(BTreeMap::new()),
            calls: Mutex::new(BTreeMap::new()),
            interleave: AtomicBool::new(false),
        }
    }

    /// The next `times` calls of `op` fail with `fault`.
    pub fn arm(&self, op: &'static str, times: u32, fault: Fault) {
        self.armed.lock().unwrap().insert(op, (times, fault));
    }

    /// Every call yields to the runtime first.
    pub fn interleave(&self) {
        self.interleave.store(true, Ordering::Relaxed);
    }

    pub fn disarm(&self) {
        self.armed.lock().unwrap().clear();
    }

    pub fn calls(&self, op: &str) -> u32 {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// `Ok(true)`: answer as if the thing looked for were absent.
    async fn check(&self, op: &'static str) -> Result<bool, EcmError> {
        if self.interleave.load(Ordering::Relaxed) {
            // Lets parallel files of one run interleave at every ECM call, as
            // they do against a real server.
            tokio::task::yield_now().await;
        }
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        let mut armed = self.armed.lock().unwrap();
        let Some((left, fault)) = armed.get_mut(op) else {
            return Ok(false);
        };
        if *left == 0 {
            return Ok(false);
        }
        if *left != u32::MAX {
            *left -= 1;
        }
        Err(match fault {
            Fault::Transient => EcmError::Transient {
                op,
                target: "test".into(),
                detail: "HTTP 503 (injected)".into(),
            },
            Fault::Hidden => return Ok(true),
        })
    }
}

#[async_trait]
impl Ecm for FaultyEcm {
    async fn node(&self, id: NodeId) -> Result<Node, EcmError> {
        self.check("node").await?;
        self.inner.node(id).await
    }
    async fn enterprise_volume(&self) -> Result<NodeId, EcmError> {
        self.check("enterprise_volume").await?;
        self.inner.enterprise_volume().await
    }
    async fn children(
        &self,
        parent: NodeId,
        filter: &ChildFilter,
        page: u32,
        limit: u32,
    ) -> Result<Page<Node>, EcmError> {
        self.check("children").await?;
        self.inner.children(parent, filter, page, limit).await
    }
    async fn child_by_name(&self, parent: NodeId, name: &str) -> Result<Option<Node>, EcmError> {
        if self.check("child_by_name").await? {
            return Ok(None);
        }
        self.inner.child_by_name(parent, name).await
    }
    async fn create_folder(&self, parent: NodeId, name: &str) -> Result<NodeId, EcmError> {
        self.check("create_folder").await?;
        self.inner.create_folder(parent, name).await
    }
    async fn ensure_folder_path(
        &self,
        root: NodeId,
        segments: &[String],
    ) -> Result<NodeId, EcmError> {
        self.check("ensure_folder_path").await?;
        self.inner.ensure_folder_path(root, segments).await
    }
    async fn upload(&self, request: UploadRequest) -> Result<UploadReceipt, EcmError> {
        self.check("upload").await?;
        self.inner.upload(request).await
    }
    async fn add_version(
        &self,
        node: NodeId,
        description: Option<&str>,
        content: Content,
    ) -> Result<UploadReceipt, EcmError> {
        self.check("add_version").await?;
        self.inner.add_version(node, description, content).await
    }
    async fn versions(&self, node: NodeId) -> Result<Vec<Version>, EcmError> {
        self.check("versions").await?;
        self.inner.versions(node).await
    }
    async fn download(&self, node: NodeId, version: Option<u32>) -> Result<Download, EcmError> {
        self.check("download").await?;
        self.inner.download(node, version).await
    }
    async fn update_node(&self, node: NodeId, update: &NodeUpdate) -> Result<(), EcmError> {
        self.check("update_node").await?;
        self.inner.update_node(node, update).await
    }
    async fn delete_node(&self, node: NodeId) -> Result<(), EcmError> {
        self.check("delete_node").await?;
        self.inner.delete_node(node).await
    }
    async fn categories(
        &self,
        node: NodeId,
    ) -> Result<Vec<crate::ports::ecm::AppliedCategory>, EcmError> {
        self.check("categories").await?;
        self.inner.categories(node).await
    }
    async fn apply_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        self.check("apply_category").await?;
        self.inner.apply_category(node, category_id, values).await
    }
    async fn update_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        self.check("update_category").await?;
        self.inner.update_category(node, category_id, values).await
    }
    async fn workspace_types(&self) -> Result<Vec<WorkspaceType>, EcmError> {
        self.check("workspace_types").await?;
        self.inner.workspace_types().await
    }
    async fn find_workspaces(
        &self,
        type_id: i64,
        name: &str,
    ) -> Result<Vec<WorkspaceRef>, EcmError> {
        self.check("find_workspaces").await?;
        self.inner.find_workspaces(type_id, name).await
    }
    async fn workspace_by_business_object(
        &self,
        bo: &BusinessObject,
    ) -> Result<Option<WorkspaceRef>, EcmError> {
        self.check("workspace_by_business_object").await?;
        self.inner.workspace_by_business_object(bo).await
    }
    async fn create_workspace(&self, request: &CreateWorkspace) -> Result<NodeId, EcmError> {
        self.check("create_workspace").await?;
        self.inner.create_workspace(request).await
    }
    async fn apply_rm_classification(&self, node: NodeId, class_id: i64) -> Result<(), EcmError> {
        self.check("apply_rm_classification").await?;
        self.inner.apply_rm_classification(node, class_id).await
    }
    async fn rm_classifications(&self, node: NodeId) -> Result<Vec<i64>, EcmError> {
        self.check("rm_classifications").await?;
        self.inner.rm_classifications(node).await
    }
    async fn apply_hold(&self, node: NodeId, hold_id: i64) -> Result<(), EcmError> {
        self.check("apply_hold").await?;
        self.inner.apply_hold(node, hold_id).await
    }
    async fn holds(&self) -> Result<Vec<Hold>, EcmError> {
        self.check("holds").await?;
        self.inner.holds().await
    }
    async fn search(&self, query: &str, page: u32, limit: u32) -> Result<Page<Node>, EcmError> {
        self.check("search").await?;
        self.inner.search(query, page, limit).await
    }
    async fn audit(
        &self,
        node: NodeId,
        page: u32,
        limit: u32,
    ) -> Result<Page<AuditEntry>, EcmError> {
        self.check("audit").await?;
        self.inner.audit(node, page, limit).await
    }
}
