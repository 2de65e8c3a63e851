//! In-memory stand-in for the export flow's SFTP side: [`MemoryDestinations`]
//! hands out one [`MemoryStore`] (the port's `MemoryFileStore`, rooted at
//! `/`) for every secret name. For unit tests of the flow and the handler;
//! integration tests use real sshd.

use std::sync::Arc;

use async_trait::async_trait;

use super::{DestinationError, Destinations};
use crate::domain::paths::{PathError, RemoteRoot};
use crate::ports::file_store::FileStore;
pub use crate::ports::file_store::memory::MemoryFileStore as MemoryStore;

/// Every secret name maps to the same in-memory store.
#[derive(Debug, Clone)]
pub struct MemoryDestinations {
    pub store: Arc<MemoryStore>,
}

impl MemoryDestinations {
    pub fn new() -> Result<Self, PathError> {
        Ok(Self {
            store: Arc::new(MemoryStore::new(RemoteRoot::parse("/")?)),
        })
    }
}

#[async_trait]
impl Destinations for MemoryDestinations {
    async fn store(&self, _sftp_secret: &str) -> Result<Arc<dyn FileStore>, DestinationError> {
        Ok(Arc::clone(&self.store) as Arc<dyn FileStore>)
    }
}

// ------------------------------------------------- instrumented doubles --

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::domain::paths::RemotePath;
use crate::ports::ecm::{
    AppliedCategory, AuditEntry, BusinessObject, CategoryValues, ChildFilter, Content,
    CreateWorkspace, Download, Ecm, EcmError, Hold, Node, NodeId, NodeUpdate, Page, UploadReceipt,
    UploadRequest, Version, WorkspaceRef, WorkspaceType,
};
use crate::ports::file_store::{
    ByteStream, FileMeta, FileStoreError, PageStream, PutReceipt, ReadHandle, RenameMode,
};

type EcmFault = Box<dyn Fn() -> EcmError + Send + Sync>;

/// An [`Ecm`] over another that counts calls per operation, can fail the
/// next calls of an operation, and can hold every download's body until
/// released (a "large" transfer that is still running). For unit tests of
/// the export flow and the handler.
pub struct InstrumentedEcm<E> {
    pub inner: E,
    calls: Mutex<HashMap<&'static str, usize>>,
    faults: Mutex<HashMap<&'static str, (usize, EcmFault)>>,
    gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl<E: Ecm> InstrumentedEcm<E> {
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            calls: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            gate: Mutex::new(None),
        }
    }

    /// Calls of `op` (the trait method's name) so far.
    pub fn calls(&self, op: &str) -> usize {
        self.calls
            .lock()
            .map(|c| c.get(op).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Calls of every operation so far.
    pub fn total_calls(&self) -> usize {
        self.calls.lock().map(|c| c.values().sum()).unwrap_or(0)
    }

    /// The next `times` calls of `op` fail with `fault()`.
    pub fn fail(&self, op: &'static str, times: usize, fault: EcmFault) {
        if let Ok(mut f) = self.faults.lock() {
            f.insert(op, (times, fault));
        }
    }

    /// From now on a download's body waits for a permit of the returned
    /// semaphore (one permit per download) before its first chunk.
    pub fn hold_downloads(&self) -> Arc<tokio::sync::Semaphore> {
        let s = Arc::new(tokio::sync::Semaphore::new(0));
        if let Ok(mut g) = self.gate.lock() {
            *g = Some(Arc::clone(&s));
        }
        s
    }

    fn enter(&self, op: &'static str) -> Result<(), EcmError> {
        if let Ok(mut c) = self.calls.lock() {
            *c.entry(op).or_default() += 1;
        }
        let mut f = self.faults.lock().map_err(|_| EcmError::Transient {
            op,
            target: "test double".into(),
            detail: "poisoned".into(),
        })?;
        if let Some((n, make)) = f.get_mut(op)
            && *n > 0
        {
            *n -= 1;
            return Err(make());
        }
        Ok(())
    }
}

#[async_trait]
impl<E: Ecm> Ecm for InstrumentedEcm<E> {
    async fn node(&self, id: NodeId) -> Result<Node, EcmError> {
        self.enter("node")?;
        self.inner.node(id).await
    }
    async fn enterprise_volume(&self) -> Result<NodeId, EcmError> {
        self.enter("enterprise_volume")?;
        self.inner.enterprise_volume().await
    }
    async fn children(
        &self,
        parent: NodeId,
        filter: &ChildFilter,
        page: u32,
        limit: u32,
    ) -> Result<Page<Node>, EcmError> {
        self.enter("children")?;
        self.inner.children(parent, filter, page, limit).await
    }
    async fn child_by_name(&self, parent: NodeId, name: &str) -> Result<Option<Node>, EcmError> {
        self.enter("child_by_name")?;
        self.inner.child_by_name(parent, name).await
    }
    async fn create_folder(&self, parent: NodeId, name: &str) -> Result<NodeId, EcmError> {
        self.enter("create_folder")?;
        self.inner.create_folder(parent, name).await
    }
    async fn ensure_folder_path(
        &self,
        root: NodeId,
        segments: &[String],
    ) -> Result<NodeId, EcmError> {
        self.enter("ensure_folder_path")?;
        self.inner.ensure_folder_path(root, segments).await
    }
    async fn upload(&self, request: UploadRequest) -> Result<UploadReceipt, EcmError> {
        self.enter("upload")?;
        self.inner.upload(request).await
    }
    async fn add_version(
        &self,
        node: NodeId,
        description: Option<&str>,
        content: Content,
    ) -> Result<UploadReceipt, EcmError> {
        self.enter("add_version")?;
        self.inner.add_version(node, description, content).await
    }
    async fn versions(&self, node: NodeId) -> Result<Vec<Version>, EcmError> {
        self.enter("versions")?;
        self.inner.versions(node).await
    }
    async fn download(&self, node: NodeId, version: Option<u32>) -> Result<Download, EcmError> {
        self.enter("download")?;
        let mut d = self.inner.download(node, version).await?;
        let gate = self.gate.lock().ok().and_then(|g| g.clone());
        if let Some(gate) = gate {
            let body = d.stream;
            let waited = futures_util::stream::once(async move {
                if let Ok(p) = gate.acquire().await {
                    p.forget();
                }
                futures_util::stream::empty::<Result<Bytes, std::io::Error>>()
            })
            .flatten();
            d.stream = Box::pin(waited.chain(body));
        }
        Ok(d)
    }
    async fn update_node(&self, node: NodeId, update: &NodeUpdate) -> Result<(), EcmError> {
        self.enter("update_node")?;
        self.inner.update_node(node, update).await
    }
    async fn delete_node(&self, node: NodeId) -> Result<(), EcmError> {
        self.enter("delete_node")?;
        self.inner.delete_node(node).await
    }
    async fn categories(&self, node: NodeId) -> Result<Vec<AppliedCategory>, EcmError> {
        self.enter("categories")?;
        self.inner.categories(node).await
    }
    async fn apply_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        self.enter("apply_category")?;
        self.inner.apply_category(node, category_id, values).await
    }
    async fn update_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        self.enter("update_category")?;
        self.inner.update_category(node, category_id, values).await
    }
    async fn workspace_types(&self) -> Result<Vec<WorkspaceType>, EcmError> {
        self.enter("workspace_types")?;
        self.inner.workspace_types().await
    }
    async fn find_workspaces(
        &self,
        type_id: i64,
        name: &str,
    ) -> Result<Vec<WorkspaceRef>, EcmError> {
        self.enter("find_workspaces")?;
        self.inner.find_workspaces(type_id, name).await
    }
    async fn workspace_by_business_object(
        &self,
        bo: &BusinessObject,
    ) -> Result<Option<WorkspaceRef>, EcmError> {
        self.enter("workspace_by_business_object")?;
        self.inner.workspace_by_business_object(bo).await
    }
    async fn create_workspace(&self, request: &CreateWorkspace) -> Result<NodeId, EcmError> {
        self.enter("create_workspace")?;
        self.inner.create_workspace(request).await
    }
    async fn apply_rm_classification(&self, node: NodeId, class_id: i64) -> Result<(), EcmError> {
        self.enter("apply_rm_classification")?;
        self.inner.apply_rm_classification(node, class_id).await
    }
    async fn rm_classifications(&self, node: NodeId) -> Result<Vec<i64>, EcmError> {
        self.enter("rm_classifications")?;
        self.inner.rm_classifications(node).await
    }
    async fn apply_hold(&self, node: NodeId, hold_id: i64) -> Result<(), EcmError> {
        self.enter("apply_hold")?;
        self.inner.apply_hold(node, hold_id).await
    }
    async fn holds(&self) -> Result<Vec<Hold>, EcmError> {
        self.enter("holds")?;
        self.inner.holds().await
    }
    async fn search(&self, query: &str, page: u32, limit: u32) -> Result<Page<Node>, EcmError> {
        self.enter("search")?;
        self.inner.search(query, page, limit).await
    }
    async fn audit(
        &self,
        node: NodeId,
        page: u32,
        limit: u32,
    ) -> Result<Page<AuditEntry>, EcmError> {
        self.enter("audit")?;
        self.inner.audit(node, page, limit).await
    }
}

/// A [`FileStore`] over another that counts calls per operation. For unit
/// tests that must show what the flow did *not* do (read a remote file).
pub struct CountingStore {
    pub inner: Arc<dyn FileStore>,
    calls: Mutex<HashMap<&'static str, usize>>,
    reads: Mutex<Vec<String>>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn FileStore>) -> Self {
        Self {
            inner,
            calls: Mutex::new(HashMap::new()),
            reads: Mutex::new(Vec::new()),
        }
    }

    /// Paths opened for reading, in order.
    pub fn reads(&self) -> Vec<String> {
        self.reads.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn calls(&self, op: &str) -> usize {
        self.calls
            .lock()
            .map(|c| c.get(op).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn count(&self, op: &'static str) {
        if let Ok(mut c) = self.calls.lock() {
            *c.entry(op).or_default() += 1;
        }
    }
}

#[async_trait]
impl FileStore for CountingStore {
    fn root(&self) -> &RemoteRoot {
        self.inner.root()
    }
    async fn list_pages(&self, dir: &RemotePath) -> Result<PageStream, FileStoreError> {
        self.count("list");
        self.inner.list_pages(dir).await
    }
    async fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
        self.count("stat");
        self.inner.stat(path).await
    }
    async fn open_read(&self, path: &RemotePath) -> Result<ReadHandle, FileStoreError> {
        self.count("open_read");
        if let Ok(mut r) = self.reads.lock() {
            r.push(path.to_string());
        }
        self.inner.open_read(path).await
    }
    async fn put_atomic(
        &self,
        path: &RemotePath,
        body: ByteStream,
        expected_len: Option<u64>,
        mode: RenameMode,
    ) -> Result<PutReceipt, FileStoreError> {
        self.count("put_atomic");
        self.inner.put_atomic(path, body, expected_len, mode).await
    }
    async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.inner.mkdir_all(dir).await
    }
    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        mode: RenameMode,
    ) -> Result<(), FileStoreError> {
        self.count("rename");
        self.inner.rename(from, to, mode).await
    }
    async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
        self.count("remove");
        self.inner.remove(path).await
    }
    async fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.inner.remove_dir(dir).await
    }
}

/// [`Destinations`] handing out one given store for every secret name.
pub struct FixedDestinations(pub Arc<dyn FileStore>);

#[async_trait]
impl Destinations for FixedDestinations {
    async fn store(&self, _sftp_secret: &str) -> Result<Arc<dyn FileStore>, DestinationError> {
        Ok(Arc::clone(&self.0))
    }
}
