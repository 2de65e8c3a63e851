//! The Content Server port: everything the ingest, export and backup flows ask
//! of the ECM, in domain types, so the flows can be unit-tested against
//! [`memory::MemoryEcm`] and run against the reqwest adapter
//! (`adapters::otcs`).

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

pub mod memory;

/// Node types the flows care about (Content Server subtype numbers).
pub mod node_type {
    pub const FOLDER: i64 = 0;
    pub const SHORTCUT: i64 = 1;
    pub const CATEGORY: i64 = 131;
    pub const COMPOUND_DOCUMENT: i64 = 136;
    pub const URL: i64 = 140;
    pub const DOCUMENT: i64 = 144;
    pub const RM_CLASSIFICATION: i64 = 199;
    pub const HOLD: i64 = 833;
    pub const BUSINESS_WORKSPACE: i64 = 848;
}

/// Longest node name Content Server accepts.
pub const MAX_NAME_CHARS: usize = 248;

/// A Content Server node id: always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct NodeId(i64);

impl NodeId {
    /// `None` for zero or negative ids (Content Server uses -1 for "no parent").
    pub fn new(id: i64) -> Option<Self> {
        (id > 0).then_some(Self(id))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for NodeId {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        Self::new(v).ok_or_else(|| format!("node id must be positive, got {v}"))
    }
}

impl From<NodeId> for i64 {
    fn from(v: NodeId) -> i64 {
        v.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A node as the flows see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    /// Content Server subtype, see [`node_type`].
    pub node_type: i64,
    pub parent_id: Option<NodeId>,
    /// Bytes for documents; the child count for containers (as the server reports it).
    pub size: Option<u64>,
    /// As the server sends it (real servers send local time without an offset,
    /// so it is kept verbatim rather than guessed into UTC).
    pub modified: Option<String>,
    pub mime_type: Option<String>,
}

impl Node {
    pub fn is_container(&self) -> bool {
        matches!(
            self.node_type,
            node_type::FOLDER | node_type::BUSINESS_WORKSPACE | node_type::COMPOUND_DOCUMENT
        )
    }
}

/// One version of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub number: u32,
    pub file_name: String,
    pub size: u64,
    pub mime_type: Option<String>,
    pub created: Option<String>,
}

/// Attribute values of one category: keys `{cat}_{attr}` (or
/// `{cat}_{set}_{row}_{attr}` inside a set) to JSON values; arrays are
/// multi-value attributes.
pub type CategoryValues = BTreeMap<String, serde_json::Value>;

/// A category id with its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedCategory {
    pub category_id: i64,
    pub values: CategoryValues,
}

/// A business workspace found or created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRef {
    pub id: NodeId,
    pub name: String,
    pub type_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceTemplate {
    pub id: NodeId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceType {
    pub id: i64,
    pub name: String,
    pub templates: Vec<WorkspaceTemplate>,
}

/// What it takes to create a business workspace from a template.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateWorkspace {
    pub template_id: NodeId,
    pub type_id: i64,
    pub name: String,
    pub parent: Option<NodeId>,
    /// External system, business object type and id, when the workspace
    /// represents a business object (all three or none).
    pub business_object: Option<BusinessObject>,
    pub categories: Vec<AppliedCategory>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessObject {
    pub ext_system_id: String,
    pub bo_type: String,
    pub bo_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub event_type: Option<i64>,
    pub audit_name: Option<String>,
    pub audit_date: Option<String>,
    pub user_id: Option<i64>,
}

/// One page of a listing; pages count from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub page_total: u32,
    pub total_count: u64,
}

impl<T> Page<T> {
    pub fn has_next(&self) -> bool {
        self.page < self.page_total
    }
}

/// Which children to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildFilter {
    /// Substring match on the server; use [`Ecm::child_by_name`] for exact names.
    pub name_contains: Option<String>,
    pub node_type: Option<i64>,
}

/// A stream of content bytes; errors are I/O errors of the source (SFTP or HTTP).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Content to upload: a stream with a length known up front, so it goes out
/// as one multipart body without being buffered.
pub struct Content {
    pub stream: ByteStream,
    pub length: u64,
    pub file_name: String,
    pub mime_type: String,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("length", &self.length)
            .field("file_name", &self.file_name)
            .field("mime_type", &self.mime_type)
            .finish_non_exhaustive()
    }
}

/// A new document: metadata, categories and classifications are set at
/// creation, so a document never exists without them.
#[derive(Debug)]
pub struct UploadRequest {
    pub parent: NodeId,
    pub name: String,
    pub description: Option<String>,
    pub categories: Vec<AppliedCategory>,
    /// Classification node ids (`roles.classifications`).
    pub classifications: Vec<i64>,
    pub content: Content,
}

/// What was stored: the bytes counted and hashed on their way to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReceipt {
    pub node_id: NodeId,
    /// The version created, when the server says (new documents are version 1).
    pub version: Option<u32>,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes sent.
    pub sha256: String,
}

/// A download: the length when the server sends one, and the bytes.
pub struct Download {
    pub length: Option<u64>,
    pub mime_type: Option<String>,
    pub stream: ByteStream,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("length", &self.length)
            .field("mime_type", &self.mime_type)
            .finish_non_exhaustive()
    }
}

/// Changes to a node's own properties (rename / move / describe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub parent: Option<NodeId>,
}

/// Why an ECM call failed. Every variant names the operation and the node or
/// name it was about; [`EcmError::is_retryable`] says whether trying again
/// unchanged can help.
#[derive(Debug, thiserror::Error)]
pub enum EcmError {
    #[error("{op} {target}: not found")]
    NotFound { op: &'static str, target: String },
    #[error("{op} {target}: the name already exists")]
    Conflict { op: &'static str, target: String },
    #[error("{op} {target}: refused by Content Server (HTTP {status}): {message}")]
    Refused {
        op: &'static str,
        target: String,
        status: u16,
        message: String,
    },
    #[error("{op} {target}: transient failure, a retry may help: {detail}")]
    Transient {
        op: &'static str,
        target: String,
        detail: String,
    },
    #[error("{op}: authentication failed: {detail}")]
    Auth { op: &'static str, detail: String },
    #[error("{op} {target}: invalid: {detail}")]
    Invalid {
        op: &'static str,
        target: String,
        detail: String,
    },
}

impl EcmError {
    /// Transient failures and refused credentials: neither is about the
    /// request's own content, so the same request can succeed later (after
    /// the outage, or once the rotated secret is in place). A run that meets
    /// one should stop and leave its work for the next run, not fail it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EcmError::Transient { .. } | EcmError::Auth { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, EcmError::NotFound { .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, EcmError::Conflict { .. })
    }
}

/// Checks a node name the way Content Server would, before a create: trimmed,
/// non-empty, no `:`, at most [`MAX_NAME_CHARS`] characters. Returns the
/// reason when invalid. Callers that take names from partners should run
/// [`sanitize_name`] first and keep the original in metadata.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim() != name {
        return Err("leading or trailing whitespace".into());
    }
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains(':') {
        return Err("':' is not allowed in node names".into());
    }
    if name.chars().any(char::is_control) {
        return Err("control characters are not allowed in node names".into());
    }
    let n = name.chars().count();
    if n > MAX_NAME_CHARS {
        return Err(format!("{n} characters, at most {MAX_NAME_CHARS} allowed"));
    }
    Ok(())
}

/// Makes an arbitrary string an acceptable node name: `:` and control
/// characters become `_`, whitespace is trimmed, the name is cut to
/// [`MAX_NAME_CHARS`] characters keeping the extension. An empty result
/// becomes `_`.
pub fn sanitize_name(name: &str) -> String {
    let replaced: String = name
        .chars()
        .map(|c| if c == ':' || c.is_control() { '_' } else { c })
        .collect();
    let trimmed = replaced.trim();
    let chars: Vec<char> = trimmed.chars().collect();
    let out = if chars.len() <= MAX_NAME_CHARS {
        trimmed.to_string()
    } else {
        // Keep a short extension so the document still opens with the right tool.
        let ext: Vec<char> = match trimmed.rfind('.') {
            Some(i) if trimmed.len() - i <= 10 => trimmed[i..].chars().collect(),
            _ => Vec::new(),
        };
        let keep = MAX_NAME_CHARS - ext.len();
        let mut s: String = chars[..keep].iter().collect();
        s = s.trim_end().to_string();
        s.extend(ext);
        s
    };
    if out.is_empty() { "_".into() } else { out }
}

/// The Content Server operations the flows use.
#[async_trait]
pub trait Ecm: Send + Sync {
    /// One node's properties.
    async fn node(&self, id: NodeId) -> Result<Node, EcmError>;

    /// The Enterprise volume's node id.
    async fn enterprise_volume(&self) -> Result<NodeId, EcmError>;

    /// One page of children (pages count from 1).
    async fn children(
        &self,
        parent: NodeId,
        filter: &ChildFilter,
        page: u32,
        limit: u32,
    ) -> Result<Page<Node>, EcmError>;

    /// The child with exactly this name, if any (the server's name filter is a
    /// substring match, so every page of candidates is checked).
    async fn child_by_name(&self, parent: NodeId, name: &str) -> Result<Option<Node>, EcmError>;

    /// Creates a folder; `Conflict` when the name exists.
    async fn create_folder(&self, parent: NodeId, name: &str) -> Result<NodeId, EcmError>;

    /// `mkdir -p`: walks `segments` under `root`, creating what is missing,
    /// and tolerates a concurrent creator of the same folder.
    async fn ensure_folder_path(
        &self,
        root: NodeId,
        segments: &[String],
    ) -> Result<NodeId, EcmError>;

    /// Creates a document from a stream, with categories and classifications.
    async fn upload(&self, request: UploadRequest) -> Result<UploadReceipt, EcmError>;

    /// Adds a version to an existing document.
    async fn add_version(
        &self,
        node: NodeId,
        description: Option<&str>,
        content: Content,
    ) -> Result<UploadReceipt, EcmError>;

    /// All versions, oldest first.
    async fn versions(&self, node: NodeId) -> Result<Vec<Version>, EcmError>;

    /// The content of a version (`None`: the latest), as a stream.
    async fn download(&self, node: NodeId, version: Option<u32>) -> Result<Download, EcmError>;

    async fn update_node(&self, node: NodeId, update: &NodeUpdate) -> Result<(), EcmError>;

    async fn delete_node(&self, node: NodeId) -> Result<(), EcmError>;

    /// Categories applied to a node with their values.
    async fn categories(&self, node: NodeId) -> Result<Vec<AppliedCategory>, EcmError>;

    async fn apply_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError>;

    async fn update_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError>;

    async fn workspace_types(&self) -> Result<Vec<WorkspaceType>, EcmError>;

    /// Workspaces of a type with exactly this name.
    async fn find_workspaces(
        &self,
        type_id: i64,
        name: &str,
    ) -> Result<Vec<WorkspaceRef>, EcmError>;

    async fn workspace_by_business_object(
        &self,
        bo: &BusinessObject,
    ) -> Result<Option<WorkspaceRef>, EcmError>;

    async fn create_workspace(&self, request: &CreateWorkspace) -> Result<NodeId, EcmError>;

    /// Records-management classification of a node.
    async fn apply_rm_classification(&self, node: NodeId, class_id: i64) -> Result<(), EcmError>;

    async fn rm_classifications(&self, node: NodeId) -> Result<Vec<i64>, EcmError>;

    async fn apply_hold(&self, node: NodeId, hold_id: i64) -> Result<(), EcmError>;

    async fn holds(&self) -> Result<Vec<Hold>, EcmError>;

    /// Full-text / metadata search (`where` in Content Server query syntax).
    async fn search(&self, query: &str, page: u32, limit: u32) -> Result<Page<Node>, EcmError>;

    async fn audit(
        &self,
        node: NodeId,
        page: u32,
        limit: u32,
    ) -> Result<Page<AuditEntry>, EcmError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_rejects_non_positive() {
        assert!(NodeId::new(0).is_none());
        assert!(NodeId::new(-1).is_none());
        assert_eq!(NodeId::new(2000).map(NodeId::get), Some(2000));
        assert!(serde_json::from_str::<NodeId>("-1").is_err());
    }

    #[test]
    fn check_name_rejects_what_content_server_rejects() {
        assert!(check_name("Invoice 2024.pdf").is_ok());
        assert!(check_name("a:b").is_err());
        assert!(check_name(" a").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(249)).is_err());
        assert!(check_name(&"x".repeat(248)).is_ok());
    }

    #[test]
    fn sanitize_name_produces_valid_names() {
        assert_eq!(sanitize_name(" 12:30 report.pdf "), "12_30 report.pdf");
        assert_eq!(sanitize_name("   "), "_");
        let long = format!("{}.pdf", "é".repeat(300));
        let s = sanitize_name(&long);
        assert!(check_name(&s).is_ok(), "{s}");
        assert!(s.ends_with(".pdf"));
        assert_eq!(s.chars().count(), MAX_NAME_CHARS);
    }
}
