//! The export flow (`ecm-export`, DESIGN.md §5): an approval callback, a
//! manual resend or a package export turns into files on a partner's SFTP
//! server.
//!
//! Order of a single-document export, each step because the previous one
//! cannot be trusted on its own:
//! 1. re-read the node, its latest version, categories, ancestors and
//!    workspace type from the ECM (the callback body is only a hint);
//! 2. `decide` applies the routes: approval predicate, destination rule,
//!    rendered name — or a rejection with every route's reason;
//! 3. idempotency: the export history on the node says whether this version
//!    already went to this destination (a duplicate is acknowledged, not
//!    delivered again; a resend skips the check);
//! 4. stream ECM → SFTP through `FileStore::put_atomic` (temporary dot-file,
//!    size check against the version's size, SHA-256 while streaming, rename
//!    into place; `Replace` only where the route allows overwrite); the
//!    destination is reached while the ECM answers the download request;
//! 5. optional `<file>.sha256` sidecar, written after the file so its
//!    presence means the file is complete;
//! 6. export history on the node, then a `Document Exported` event. A lost
//!    event does not undo a delivery; it is logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::adapters::sftp::{SftpSettings, open_store};
use crate::domain::audit::{DocumentExported, EventDetail, ExportRejected};
use crate::domain::export_route::{
    Delivery, Destination, ExportDecision, ExportRoute, ExportRoutes, NodeFacts, PackageFormat,
    decide, export_history_values, export_key,
};
use crate::domain::manifest::{
    ManifestError, PACKAGE_MANIFEST_FORMAT, PACKAGE_MANIFEST_NAME, PackageEntry, PackageManifest,
    entry_paths,
};
use crate::domain::names::{sftp_safe_name, sftp_safe_name_with_suffix};
use crate::domain::paths::{PathError, RemotePath};
use crate::domain::template::{TemplateContext, TemplateError};
use crate::domain::webhook::ApprovalCallback;
use crate::ports::ecm::{
    AppliedCategory, CategoryValues, ChildFilter, Ecm, EcmError, Node, NodeId, node_type,
};
use crate::ports::events::{DetailType, Event, EventSink};
use crate::ports::file_store::{ByteStream, EntryKind, FileStore, FileStoreError, RenameMode};
use crate::ports::secrets::{Secrets, SecretsError};

pub mod memory;
pub mod zip;

/// Parent chains deeper than this are cut (a cycle or a pathological tree
/// must not loop forever).
const MAX_ANCESTORS: usize = 64;
/// Package walks stop here rather than run into the Lambda deadline unseen.
const MAX_PACKAGE_ENTRIES: usize = 5_000;
const MAX_PACKAGE_DEPTH: usize = 16;
const PAGE_SIZE: u32 = 100;

/// Why an export failed. [`ExportError::is_retryable`] tells transient
/// failures (Lambda's async retry, a 5xx to the webhook caller) from
/// permanent ones.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("ECM: {0}")]
    Ecm(#[from] EcmError),
    #[error("SFTP: {0}")]
    Store(#[from] FileStoreError),
    #[error("{0}")]
    Secrets(#[from] SecretsError),
    #[error("SFTP secret {secret_id} is unusable: {reason}")]
    SftpSecret { secret_id: String, reason: String },
    #[error("rendering the target name: {0}")]
    Template(#[from] TemplateError),
    #[error("target path: {0}")]
    Path(#[from] PathError),
    #[error("package manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("node {node_id} is not exported: {reasons}")]
    NotApproved { node_id: i64, reasons: String },
    #[error("no export route named {route:?}")]
    UnknownRoute { route: String },
    #[error(
        "{path} already exists with other content and route {route} destination {destination} does not allow overwrite"
    )]
    TargetExists {
        route: String,
        destination: String,
        path: String,
    },
    #[error("node {node_id}: {reason}")]
    InvalidNode { node_id: i64, reason: String },
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// Too little of the invocation's time is left to start (or go on
    /// with) a transfer; nothing was published, a retry starts afresh.
    #[error("stopped before {what}: less than {margin_secs} s of the invocation left")]
    DeadlineNear { what: String, margin_secs: u64 },
    #[error(
        "node {node_id}: the callback names version {version} but the ECM shows {latest} as the latest; retry once it is visible"
    )]
    VersionNotVisible {
        node_id: i64,
        version: u32,
        latest: u32,
    },
}

impl ExportError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ExportError::Ecm(e) => e.is_retryable(),
            ExportError::Store(e) => e.is_retryable(),
            ExportError::Secrets(e) => e.is_retryable(),
            ExportError::DeadlineNear { .. } | ExportError::VersionNotVisible { .. } => true,
            _ => false,
        }
    }

    /// A short, stable kind for `FunctionError` and HTTP bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            ExportError::Ecm(_) => "EcmError",
            ExportError::Store(_) => "SftpError",
            ExportError::Secrets(_) | ExportError::SftpSecret { .. } => "SecretError",
            ExportError::Template(_) | ExportError::Path(_) => "TargetNameError",
            ExportError::Manifest(_) => "ManifestError",
            ExportError::NotApproved { .. } => "NotApproved",
            ExportError::UnknownRoute { .. } => "UnknownRoute",
            ExportError::TargetExists { .. } => "TargetExists",
            ExportError::InvalidNode { .. } => "InvalidNode",
            ExportError::Unsupported { .. } => "Unsupported",
            ExportError::DeadlineNear { .. } => "DeadlineNear",
            ExportError::VersionNotVisible { .. } => "VersionNotVisible",
        }
    }
}

/// Where deliveries go: a route's `sftp_secret` name → a connected store.
#[async_trait]
pub trait Destinations: Send + Sync {
    async fn store(&self, sftp_secret: &str) -> Result<Arc<dyn FileStore>, ExportError>;
}

/// A store and when it was opened.
type CachedStore = (Instant, Arc<dyn FileStore>);

/// [`Destinations`] over Secrets Manager and the SFTP adapters (the client
/// the secret names). Stores are kept per secret id for `ttl` so warm
/// invocations reuse SSH sessions, and rebuilt afterwards so a rotated key
/// or host key takes effect.
pub struct SftpDestinations {
    secrets: Arc<dyn Secrets>,
    /// Route secret names → secret ids (`Config::sftp_secrets`).
    names: BTreeMap<String, String>,
    ttl: Duration,
    cache: tokio::sync::Mutex<HashMap<String, CachedStore>>,
}

impl std::fmt::Debug for SftpDestinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpDestinations")
            .field("names", &self.names)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SftpDestinations {
    pub fn new(secrets: Arc<dyn Secrets>, names: BTreeMap<String, String>) -> Self {
        Self {
            secrets,
            names,
            ttl: Duration::from_secs(300),
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

#[async_trait]
impl Destinations for SftpDestinations {
    async fn store(&self, sftp_secret: &str) -> Result<Arc<dyn FileStore>, ExportError> {
        let secret_id = self
            .names
            .get(sftp_secret)
            .map(String::as_str)
            .unwrap_or(sftp_secret)
            .to_owned();
        let mut cache = self.cache.lock().await;
        if let Some((at, store)) = cache.get(&secret_id)
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(store));
        }
        let raw = self.secrets.get(&secret_id).await?;
        let settings =
            SftpSettings::from_secret_json(&secret_id, raw.expose_secret()).map_err(|e| {
                ExportError::SftpSecret {
                    secret_id: secret_id.clone(),
                    reason: e.to_string(),
                }
            })?;
        let store = open_store(settings)?;
        cache.insert(secret_id, (Instant::now(), Arc::clone(&store)));
        Ok(store)
    }
}

/// What the flow works with; borrowed from the function's cold-start state.
pub struct ExportContext<'a> {
    pub ecm: &'a dyn Ecm,
    pub events: &'a dyn EventSink,
    pub destinations: &'a dyn Destinations,
    pub routes: &'a ExportRoutes,
    pub invocation_id: &'a str,
    /// When the invocation must have answered; `None` for no limit.
    pub deadline: Option<Instant>,
}

/// Time a transfer needs at least before it is started.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

impl ExportContext<'_> {
    /// Refuses to start `what` when less than [`DEADLINE_MARGIN`] is left.
    fn check_deadline(&self, what: impl FnOnce() -> String) -> Result<(), ExportError> {
        match self.deadline {
            Some(d) if d.saturating_duration_since(Instant::now()) < DEADLINE_MARGIN => {
                Err(ExportError::DeadlineNear {
                    what: what(),
                    margin_secs: DEADLINE_MARGIN.as_secs(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// A finished single-document export (or an acknowledged duplicate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    pub route: String,
    pub destination: String,
    pub node_id: i64,
    pub version: u32,
    pub remote_path: String,
    /// `None` for an acknowledged duplicate found through the history
    /// (which records the digest, not the size).
    pub size: Option<u64>,
    pub sha256: String,
    pub idempotency_key: String,
    pub resend: bool,
    /// Milliseconds the bytes took from the ECM into place on the SFTP
    /// server (download, upload, verification, rename); `None` when nothing
    /// was sent.
    pub transfer_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ExportOutcome {
    Delivered(DeliveryReport),
    /// This version already went to this destination; nothing was sent.
    Duplicate(DeliveryReport),
    /// No route exports the node; an `Export Rejected` event was emitted.
    Rejected {
        node_id: i64,
        reasons: Vec<(String, String)>,
    },
    /// A folder or workspace was approved as a whole and went out as a
    /// package.
    Packaged(PackageReport),
    /// The package for this approval event is already on the server (a
    /// repeated callback); nothing was sent.
    PackageDuplicate {
        node_id: i64,
        package: String,
    },
}

/// A finished package export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageReport {
    pub route: String,
    pub destination: String,
    pub root_node_id: i64,
    pub remote_path: String,
    pub files: usize,
    pub bytes: u64,
    pub manifest_sha256: String,
    /// Documents under the root left out because they are not approved.
    pub skipped: Vec<(i64, String)>,
}

// ------------------------------------------------------------------ facts --

fn value_text(v: &serde_json::Value) -> Option<String> {
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
async fn read_facts(
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

fn route_workspace_types(routes: &ExportRoutes) -> Vec<i64> {
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

fn node_id(id: i64) -> Result<NodeId, ExportError> {
    NodeId::new(id).ok_or(ExportError::InvalidNode {
        node_id: id,
        reason: "not a positive node id".into(),
    })
}

// --------------------------------------------------------------- delivery --

fn remote_path(store: &dyn FileStore, segments: &[String]) -> Result<RemotePath, PathError> {
    let mut p = store.root().path();
    for s in segments {
        p = p.join(s.as_bytes())?;
    }
    Ok(p)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A version's download, opened, with the length it must have.
struct VersionSource {
    download: crate::ports::ecm::Download,
    expected_len: Option<u64>,
}

/// Opens the download of `version` of `node` (response headers received).
async fn open_version(
    ecm: &dyn Ecm,
    node: NodeId,
    version: u32,
) -> Result<VersionSource, ExportError> {
    let expected = ecm
        .versions(node)
        .await?
        .into_iter()
        .find(|v| v.number == version)
        .map(|v| v.size);
    let download = ecm.download(node, Some(version)).await?;
    // The version's recorded size is the contract; the HTTP length must agree.
    let expected_len = match (expected, download.length) {
        (Some(a), Some(b)) if a != b => {
            return Err(ExportError::Ecm(EcmError::Transient {
                op: "download",
                target: format!("node {node} version {version}"),
                detail: format!("Content-Length {b} differs from the version size {a}"),
            }));
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    Ok(VersionSource {
        download,
        expected_len,
    })
}

/// Streams an opened version into `path` atomically.
async fn put_version(
    store: &dyn FileStore,
    source: VersionSource,
    path: &RemotePath,
    mode: RenameMode,
) -> Result<crate::ports::file_store::PutReceipt, ExportError> {
    let p = path.clone();
    let body: ByteStream = Box::pin(
        source
            .download
            .stream
            .map(move |r| r.map_err(|e| FileStoreError::source(&p, e))),
    );
    Ok(store
        .put_atomic(path, read_ahead(body), source.expected_len, mode)
        .await?)
}

/// Streams a version from the ECM into `path` atomically.
async fn stream_version(
    ecm: &dyn Ecm,
    store: &dyn FileStore,
    node: NodeId,
    version: u32,
    path: &RemotePath,
    mode: RenameMode,
) -> Result<crate::ports::file_store::PutReceipt, ExportError> {
    let source = open_version(ecm, node, version).await?;
    put_version(store, source, path, mode).await
}

/// Chunks of the ECM download kept ready for the SFTP writer.
const DOWNLOAD_AHEAD: usize = 8;

/// Reads `body` on a task of its own, up to [`DOWNLOAD_AHEAD`] chunks ahead
/// of the consumer. An HTTP/1 response body is read from the socket only
/// when asked for its next chunk; read inline, each chunk cost the writer a
/// hand-off to the connection task and back, and the writer was idle for a
/// third of a large export waiting on them.
fn read_ahead(mut body: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(DOWNLOAD_AHEAD);
    tokio::spawn(async move {
        while let Some(item) = body.next().await {
            let stop = item.is_err();
            // A closed channel: the writer stopped (it reports why).
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// SHA-256 of a version's content in the ECM, streamed.
async fn version_sha256(ecm: &dyn Ecm, id: NodeId, version: u32) -> Result<String, ExportError> {
    let dl = ecm.download(id, Some(version)).await?;
    let mut hasher = Sha256::new();
    let mut s = dl.stream;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| EcmError::Transient {
            op: "download",
            target: format!("node {id} version {version}"),
            detail: e.to_string(),
        })?;
        hasher.update(&chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 of a remote file, streamed (constant memory).
async fn remote_sha256(store: &dyn FileStore, path: &RemotePath) -> Result<String, ExportError> {
    let mut h = store.open_read(path).await?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = h.body.next().await {
        hasher.update(&chunk?);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What the export history on the node records of its last delivery.
struct LastExport {
    /// `<route>/<destination>`.
    to: String,
    version: String,
    /// The remote path it was delivered to.
    path: String,
    sha256: Option<String>,
}

fn last_export(routes: &ExportRoutes, applied: &[AppliedCategory]) -> Option<LastExport> {
    let h = &routes.export_history;
    let cat = applied.iter().find(|c| c.category_id == h.category_id)?;
    let key = |id: u32| format!("{}_{id}", h.category_id);
    let text = |id: u32| cat.values.get(&key(id)).and_then(value_text);
    let recorded = text(h.attributes.destination)?;
    let (to, path) = recorded.split_once(':')?;
    Some(LastExport {
        to: to.to_owned(),
        version: text(h.attributes.version)?,
        path: path.to_owned(),
        sha256: text(h.attributes.sha256),
    })
}

impl LastExport {
    /// Whether it went out through `d`'s route and destination.
    fn through(&self, d: &Delivery) -> bool {
        self.to == format!("{}/{}", d.route, d.destination)
    }
}

async fn record_history(
    ecm: &dyn Ecm,
    routes: &ExportRoutes,
    applied: &[AppliedCategory],
    d: &Delivery,
    sha256: &str,
    at: DateTime<Utc>,
) -> Result<(), ExportError> {
    let h = &routes.export_history;
    let values: CategoryValues = export_history_values(h, d, sha256, at)
        .into_iter()
        .map(|(k, v)| {
            // Integer attributes go as numbers.
            let json = if k == format!("{}_{}", h.category_id, h.attributes.version) {
                serde_json::Value::from(d.version)
            } else {
                serde_json::Value::String(v)
            };
            (k, json)
        })
        .collect();
    let id = node_id(d.node_id)?;
    if applied.iter().any(|c| c.category_id == h.category_id) {
        ecm.update_category(id, h.category_id, &values).await?;
    } else {
        ecm.apply_category(id, h.category_id, &values).await?;
    }
    Ok(())
}

async fn publish(events: &dyn EventSink, detail_type: DetailType, detail: serde_json::Value) {
    let report = events
        .publish(&[Event {
            detail_type,
            detail,
        }])
        .await;
    if !report.all_delivered() {
        // The transfer itself is done and recorded on the node; losing the
        // event must not turn it into a failure that would redeliver.
        tracing::error!(detail_type = detail_type.as_str(), undelivered = ?report.undelivered, "event not published");
    }
}

async fn reject(
    cx: &ExportContext<'_>,
    node: i64,
    version: Option<u32>,
    event_id: Option<&str>,
    reasons: &[(String, String)],
) {
    let detail = ExportRejected {
        node_id: node,
        version,
        event_id: event_id.map(str::to_owned),
        reasons: ExportRejected::reasons_from(reasons),
        rejected_at: Utc::now(),
        invocation_id: cx.invocation_id.to_owned(),
    };
    tracing::warn!(node_id = node, ?reasons, "export rejected");
    publish(cx.events, DetailType::ExportRejected, detail.detail()).await;
}

/// The `<file>.sha256` sidecar beside a delivered file (replaced if there).
async fn write_sidecar(
    store: &dyn FileStore,
    dir: &RemotePath,
    d: &Delivery,
    sha256: &str,
) -> Result<(), ExportError> {
    let name = format!("{}.sha256", d.file_name);
    let side = dir.join(name.as_bytes())?;
    let text = format!("{}  {}\n", sha256, d.file_name);
    store
        .write_small(&side, Bytes::from(text), RenameMode::Replace)
        .await?;
    Ok(())
}

/// The `Document Exported` event's detail for a delivery.
#[allow(clippy::too_many_arguments)]
fn exported_detail(
    cx: &ExportContext<'_>,
    d: &Delivery,
    target: &RemotePath,
    size: u64,
    sha256: &str,
    resend: bool,
    event_id: Option<&str>,
    at: DateTime<Utc>,
    started: Instant,
    transfer_ms: Option<u64>,
) -> serde_json::Value {
    DocumentExported {
        route: d.route.clone(),
        destination: d.destination.clone(),
        node_id: d.node_id,
        version: d.version,
        remote_path: target.to_string(),
        size,
        sha256: sha256.to_owned(),
        resend,
        event_id: event_id.map(str::to_owned),
        idempotency_key: d.idempotency_key.clone(),
        exported_at: at,
        duration_ms: millis(started.elapsed()),
        transfer_ms,
        invocation_id: cx.invocation_id.to_owned(),
    }
    .detail()
}

/// Delivers one planned document; `resend` forces `Replace` and skips the
/// idempotency check.
async fn deliver(
    cx: &ExportContext<'_>,
    d: &Delivery,
    applied: &[AppliedCategory],
    resend: bool,
    event_id: Option<&str>,
) -> Result<ExportOutcome, ExportError> {
    let started = Instant::now();
    let report = |size: Option<u64>, sha256: String, transfer_ms: Option<u64>| DeliveryReport {
        route: d.route.clone(),
        destination: d.destination.clone(),
        node_id: d.node_id,
        version: d.version,
        remote_path: d.remote_path(),
        size,
        sha256,
        idempotency_key: d.idempotency_key.clone(),
        resend,
        transfer_ms,
    };
    let last = last_export(cx.routes, applied).filter(|l| l.through(d));
    // This version already went out through this route and destination.
    // The path is not compared: it may hold a date that has moved on since
    // (`outbound/{yyyy}` across New Year), and a retried callback must not
    // deliver a second copy elsewhere.
    if !resend
        && let Some(l) = &last
        && l.version == d.version.to_string()
        && let Some(sha) = &l.sha256
    {
        tracing::info!(key = %d.idempotency_key, path = %l.path, "already delivered; acknowledged without a second delivery");
        let mut r = report(None, sha.clone(), None);
        r.remote_path = l.path.clone();
        return Ok(ExportOutcome::Duplicate(r));
    }
    cx.check_deadline(|| format!("delivering node {} to {}", d.node_id, d.remote_path()))?;
    // A resend replaces what this node delivered to that very path before
    // (the partner may hold a damaged copy); on a route without overwrite
    // it never replaces anything else, such as another document's file of
    // the same name.
    let ours_there = last.is_some_and(|l| l.path == d.remote_path());
    let mode = if d.overwrite || (resend && ours_there) {
        RenameMode::Replace
    } else {
        RenameMode::NoReplace
    };
    let id = node_id(d.node_id)?;
    // Reaching the destination (secret, SSH handshake, directory) and the
    // ECM's answer to the download request are independent round trips:
    // wait for both at once rather than one after the other.
    let destination = async {
        let store = cx.destinations.store(&d.sftp_secret).await?;
        let dir = remote_path(store.as_ref(), &d.directory)?;
        let target = dir.join(d.file_name.as_bytes())?;
        store.mkdir_all(&dir).await?;
        Ok::<_, ExportError>((store, dir, target))
    };
    let ((store, dir, target), source) =
        tokio::try_join!(destination, open_version(cx.ecm, id, d.version))?;
    // An identical copy already in place (found below) means an earlier or
    // concurrent invocation delivered this version and may have stopped
    // after its rename: finish what it would have done next (sidecar,
    // history, event) instead of delivering a second time.
    let identical = {
        let (store, dir, target) = (&store, &dir, &target);
        move |ours: String, size: Option<u64>| async move {
            if d.sha256_sidecar {
                write_sidecar(store.as_ref(), dir, d, &ours).await?;
            }
            let at = Utc::now();
            record_history(cx.ecm, cx.routes, applied, d, &ours, at).await?;
            if let Some(size) = size {
                let detail = exported_detail(
                    cx, d, target, size, &ours, resend, event_id, at, started, None,
                );
                publish(cx.events, DetailType::DocumentExported, detail).await;
            }
            Ok::<_, ExportError>(ExportOutcome::Duplicate(report(size, ours, None)))
        }
    };
    // On a route that overwrites, a same-size file there may be that copy
    // (a resend delivers again on purpose).
    if !resend
        && d.overwrite
        && let Some(there) = store.try_stat(&target).await?
        && there.size.is_some()
        && there.size == source.expected_len
    {
        let existing = remote_sha256(store.as_ref(), &target).await?;
        if existing == version_sha256(cx.ecm, id, d.version).await? {
            return identical(existing, there.size).await;
        }
    }
    let transfer_started = Instant::now();
    let receipt = match put_version(store.as_ref(), source, &target, mode).await {
        Ok(r) => r,
        Err(ExportError::Store(FileStoreError::AlreadyExists { .. })) => {
            // Overwrite is not allowed. The same bytes there: see
            // `identical`. Anything else is someone else's file and stays.
            let existing = remote_sha256(store.as_ref(), &target).await?;
            let ours = version_sha256(cx.ecm, id, d.version).await?;
            if existing != ours {
                return Err(ExportError::TargetExists {
                    route: d.route.clone(),
                    destination: d.destination.clone(),
                    path: target.to_string(),
                });
            }
            let size = store.stat(&target).await?.size;
            return identical(ours, size).await;
        }
        Err(e) => return Err(e),
    };
    let transfer_ms = millis(transfer_started.elapsed());
    if d.sha256_sidecar {
        write_sidecar(store.as_ref(), &dir, d, &receipt.sha256).await?;
    }
    let at = Utc::now();
    record_history(cx.ecm, cx.routes, applied, d, &receipt.sha256, at).await?;
    let detail = exported_detail(
        cx,
        d,
        &target,
        receipt.size,
        &receipt.sha256,
        resend,
        event_id,
        at,
        started,
        Some(transfer_ms),
    );
    publish(cx.events, DetailType::DocumentExported, detail).await;
    tracing::info!(
        route = %d.route, destination = %d.destination, node_id = d.node_id, version = d.version,
        path = %target, size = receipt.size, resend, "document exported"
    );
    Ok(ExportOutcome::Delivered(report(
        Some(receipt.size),
        receipt.sha256,
        Some(transfer_ms),
    )))
}

/// Publishes `Export Rejected` for a callback and builds its outcome.
async fn reject_callback(
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
async fn package_callback(
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

// --------------------------------------------------------------- packages --

struct PackageItem {
    names: Vec<String>,
    node: NodeId,
    name: String,
    version: u32,
}

/// Walks the subtree below `root` (documents only), keeping those the
/// route's approval predicate accepts.
async fn collect_package(
    cx: &ExportContext<'_>,
    route: &ExportRoute,
    root: NodeId,
) -> Result<(Vec<PackageItem>, Vec<(i64, String)>), ExportError> {
    let types = route_workspace_types(cx.routes);
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    // (container, name path from the root)
    let mut stack: Vec<(NodeId, Vec<String>)> = vec![(root, Vec::new())];
    while let Some((dir, prefix)) = stack.pop() {
        if prefix.len() > MAX_PACKAGE_DEPTH {
            skipped.push((dir.get(), "deeper than the package depth limit".into()));
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
                        Err(why) => skipped.push((child.id.get(), why)),
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

fn pick_destination<'r>(route: &'r ExportRoute, facts: &NodeFacts) -> Option<&'r Destination> {
    route
        .destinations
        .iter()
        .find(|d| d.config.when.matches(facts))
}

/// Manual (or webhook-named) package export of a folder or workspace.
#[tracing::instrument(skip(cx))]
pub async fn export_package(
    cx: &ExportContext<'_>,
    node: i64,
    route_name: &str,
    package_name: Option<&str>,
    format: Option<PackageFormat>,
) -> Result<PackageReport, ExportError> {
    let id = node_id(node)?;
    let route = cx
        .routes
        .routes
        .iter()
        .find(|r| r.name == route_name)
        .ok_or_else(|| ExportError::UnknownRoute {
            route: route_name.to_owned(),
        })?;
    let (mut facts, root, _) = read_facts(cx.ecm, id, &route_workspace_types(cx.routes)).await?;
    if !root.is_container() {
        return Err(ExportError::InvalidNode {
            node_id: node,
            reason: "a package needs a folder or workspace".into(),
        });
    }
    // The root counts as "under itself" for destination rules on a folder.
    facts.ancestors.insert(0, node);
    let dest = pick_destination(route, &facts).ok_or_else(|| ExportError::NotApproved {
        node_id: node,
        reasons: format!("{route_name}: no destination rule matches the package root"),
    })?;
    let format = format.unwrap_or(dest.config.package);
    let now = Utc::now();
    let ctx = TemplateContext {
        name: Some(root.name.clone()),
        date: Some(now),
        node_id: Some(node),
        route: Some(route.name.clone()),
        categories: facts.categories.clone(),
        ..TemplateContext::default()
    };
    let dir_segments: Vec<String> = dest
        .directory
        .render_path(&ctx)?
        .iter()
        .map(|s| sftp_safe_name(s))
        .collect();
    let package = sftp_safe_name(package_name.unwrap_or(&root.name));
    let (items, skipped) = collect_package(cx, route, id).await?;
    if items.is_empty() {
        return Err(ExportError::NotApproved {
            node_id: node,
            reasons: format!(
                "no approved documents under the node ({} skipped)",
                skipped.len()
            ),
        });
    }
    let store = cx.destinations.store(&dest.config.sftp_secret).await?;
    let dir = remote_path(store.as_ref(), &dir_segments)?;
    if format == PackageFormat::Zip {
        let zip_path = dir.join(format!("{package}.zip").as_bytes())?;
        if store.try_stat(&zip_path).await?.is_some() {
            return Err(ExportError::TargetExists {
                route: route.name.clone(),
                destination: dest.config.name.clone(),
                path: zip_path.to_string(),
            });
        }
        cx.check_deadline(|| format!("zip package {zip_path}"))?;
        store.mkdir_all(&dir).await?;
        let paths = entry_paths(&items.iter().map(|i| i.names.clone()).collect::<Vec<_>>());
        let meta = ManifestMeta {
            package: package.clone(),
            route: route.name.clone(),
            root_node_id: node,
            created_at: now,
        };
        let (entries, manifest_sha256) =
            write_zip(cx.ecm, store.as_ref(), &zip_path, &items, &paths, meta)
                .await
                .map_err(|e| taken_is_target_exists(e, route, dest, &zip_path))?;
        return finish_package(
            cx,
            route,
            dest,
            node,
            zip_path,
            entries,
            manifest_sha256,
            skipped,
        )
        .await;
    }
    let final_path = dir.join(package.as_bytes())?;
    if store.try_stat(&final_path).await?.is_some() {
        return Err(ExportError::TargetExists {
            route: route.name.clone(),
            destination: dest.config.name.clone(),
            path: final_path.to_string(),
        });
    }
    // Built under a dot-name (ignored by well-behaved pollers), renamed at the
    // end: the package appears complete or not at all.
    let suffix: String = cx
        .invocation_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    // Random too: Lambda retries an invocation under the same id, and a
    // killed attempt's leftovers must not make every retry fail.
    let tmp =
        dir.join(format!(".{package}.partial-{suffix}-{:08x}", fastrand::u32(..)).as_bytes())?;
    cx.check_deadline(|| format!("package {final_path}"))?;
    store.mkdir_all(&tmp).await?;
    let paths = entry_paths(&items.iter().map(|i| i.names.clone()).collect::<Vec<_>>());
    let mut entries = Vec::with_capacity(items.len());
    let mut written = Vec::new();
    let result: Result<(), ExportError> = async {
        for (item, rel) in items.iter().zip(&paths) {
            cx.check_deadline(|| format!("package entry {rel} (package not published)"))?;
            let mut target = tmp.clone();
            for seg in rel.split('/') {
                target = target.join(seg.as_bytes())?;
            }
            if let Some(parent) = target.parent() {
                store.mkdir_all(&parent).await?;
            }
            let receipt = stream_version(
                cx.ecm,
                store.as_ref(),
                item.node,
                item.version,
                &target,
                RenameMode::NoReplace,
            )
            .await?;
            written.push(target);
            entries.push(PackageEntry {
                path: rel.clone(),
                node_id: item.node.get(),
                name: item.name.clone(),
                version: item.version,
                size: receipt.size,
                sha256: receipt.sha256,
            });
        }
        Ok(())
    }
    .await;
    let manifest_result = match result {
        Ok(()) => {
            let manifest = PackageManifest {
                format: PACKAGE_MANIFEST_FORMAT.to_owned(),
                package: package.clone(),
                route: route.name.clone(),
                root_node_id: node,
                created_at: now,
                entries: entries.clone(),
            };
            match manifest.to_json() {
                Ok(text) => {
                    let sha = sha256_hex(text.as_bytes());
                    let mpath = tmp.join(PACKAGE_MANIFEST_NAME.as_bytes())?;
                    match store
                        .write_small(&mpath, Bytes::from(text), RenameMode::NoReplace)
                        .await
                    {
                        Ok(_) => {
                            written.push(mpath);
                            match store.rename(&tmp, &final_path, RenameMode::NoReplace).await {
                                Ok(()) => Ok(sha),
                                Err(e) => {
                                    Err(taken_is_target_exists(e.into(), route, dest, &final_path))
                                }
                            }
                        }
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e),
    };
    let manifest_sha256 = match manifest_result {
        Ok(sha) => sha,
        Err(e) => {
            // Best effort: the files go, then the temporary directories
            // (deepest first; one that is not empty stays, under a dot-name
            // no partner picks up).
            for p in written.iter().rev() {
                if let Err(re) = store.remove(p).await {
                    tracing::warn!(path = %p, error = %re, "cannot remove a partial package file");
                }
            }
            // Every directory under the temporary root, including those made
            // for entries that never arrived.
            let mut dirs = vec![tmp.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(entries) = store.list(&dirs[i]).await {
                    dirs.extend(
                        entries
                            .into_iter()
                            .filter(|e| e.meta.kind == EntryKind::Dir)
                            .map(|e| e.path),
                    );
                }
                i += 1;
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.as_bytes().len()));
            for d in dirs {
                if let Err(re) = store.remove_dir(&d).await {
                    tracing::debug!(dir = %d, error = %re, "partial package directory kept");
                }
            }
            return Err(e);
        }
    };
    finish_package(
        cx,
        route,
        dest,
        node,
        final_path,
        entries,
        manifest_sha256,
        skipped,
    )
    .await
}

/// What `manifest.json` says about the package itself.
struct ManifestMeta {
    package: String,
    route: String,
    root_node_id: i64,
    created_at: DateTime<Utc>,
}

/// Events and the report once a package is visible.
#[allow(clippy::too_many_arguments)]
async fn finish_package(
    cx: &ExportContext<'_>,
    route: &ExportRoute,
    dest: &Destination,
    node: i64,
    final_path: RemotePath,
    entries: Vec<PackageEntry>,
    manifest_sha256: String,
    skipped: Vec<(i64, String)>,
) -> Result<PackageReport, ExportError> {
    let bytes = entries.iter().map(|e| e.size).sum();
    let at = Utc::now();
    for e in &entries {
        let d = DocumentExported {
            route: route.name.clone(),
            destination: dest.config.name.clone(),
            node_id: e.node_id,
            version: e.version,
            remote_path: format!("{final_path}/{}", e.path),
            size: e.size,
            sha256: e.sha256.clone(),
            resend: false,
            event_id: None,
            idempotency_key: export_key(&route.name, &dest.config.name, e.node_id, e.version),
            exported_at: at,
            duration_ms: 0,
            transfer_ms: None,
            invocation_id: cx.invocation_id.to_owned(),
        };
        publish(cx.events, DetailType::DocumentExported, d.detail()).await;
    }
    tracing::info!(path = %final_path, files = entries.len(), bytes, "package exported");
    Ok(PackageReport {
        route: route.name.clone(),
        destination: dest.config.name.clone(),
        root_node_id: node,
        remote_path: final_path.to_string(),
        files: entries.len(),
        bytes,
        manifest_sha256,
        skipped,
    })
}

/// Streams a zip package (entries, then `manifest.json`, then the central
/// directory) into one atomic put: produced and uploaded concurrently through
/// a bounded channel, so memory stays constant whatever the package size.
/// A package's final name taken meanwhile (an overlapping invocation for
/// the same event won the rename) is [`ExportError::TargetExists`], which a
/// callback acknowledges as a duplicate, not a failed export.
fn taken_is_target_exists(
    e: ExportError,
    route: &ExportRoute,
    dest: &Destination,
    path: &RemotePath,
) -> ExportError {
    match e {
        ExportError::Store(FileStoreError::AlreadyExists { .. }) => ExportError::TargetExists {
            route: route.name.clone(),
            destination: dest.config.name.clone(),
            path: path.to_string(),
        },
        e => e,
    }
}

async fn write_zip(
    ecm: &dyn Ecm,
    store: &dyn FileStore,
    path: &RemotePath,
    items: &[PackageItem],
    paths: &[String],
    meta: ManifestMeta,
) -> Result<(Vec<PackageEntry>, String), ExportError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, FileStoreError>>(8);
    let producer = async move {
        let result: Result<(Vec<PackageEntry>, String), ExportError> = async {
            let gone = || {
                ExportError::Store(FileStoreError::Transient {
                    op: "put",
                    path: path.to_string(),
                    reason: "the upload stopped".into(),
                })
            };
            let mut w = zip::ZipWriter::new();
            let mut entries = Vec::with_capacity(items.len());
            for (item, rel) in items.iter().zip(paths) {
                let header = w.begin_entry(rel).map_err(|e| ExportError::InvalidNode {
                    node_id: item.node.get(),
                    reason: e.to_string(),
                })?;
                tx.send(Ok(Bytes::from(header))).await.map_err(|_| gone())?;
                let dl = ecm.download(item.node, Some(item.version)).await?;
                let mut stream = dl.stream;
                let (mut crc, mut sha, mut n) = (zip::Crc32::default(), Sha256::new(), 0u64);
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| EcmError::Transient {
                        op: "download",
                        target: format!("node {} version {}", item.node, item.version),
                        detail: e.to_string(),
                    })?;
                    crc.update(&chunk);
                    sha.update(&chunk);
                    n += chunk.len() as u64;
                    w.data(chunk.len() as u64);
                    tx.send(Ok(chunk)).await.map_err(|_| gone())?;
                }
                if let Some(len) = dl.length
                    && len != n
                {
                    return Err(ExportError::Ecm(EcmError::Transient {
                        op: "download",
                        target: format!("node {} version {}", item.node, item.version),
                        detail: format!("received {n} of {len} bytes"),
                    }));
                }
                let descriptor = w.end_entry(crc.finish(), n);
                tx.send(Ok(Bytes::from(descriptor)))
                    .await
                    .map_err(|_| gone())?;
                entries.push(PackageEntry {
                    path: rel.clone(),
                    node_id: item.node.get(),
                    name: item.name.clone(),
                    version: item.version,
                    size: n,
                    sha256: hex::encode(sha.finalize()),
                });
            }
            let manifest = PackageManifest {
                format: PACKAGE_MANIFEST_FORMAT.to_owned(),
                package: meta.package,
                route: meta.route,
                root_node_id: meta.root_node_id,
                created_at: meta.created_at,
                entries: entries.clone(),
            }
            .to_json()?;
            let manifest_sha = sha256_hex(manifest.as_bytes());
            let header =
                w.begin_entry(PACKAGE_MANIFEST_NAME)
                    .map_err(|e| ExportError::Unsupported {
                        what: e.to_string(),
                    })?;
            let mut crc = zip::Crc32::default();
            crc.update(manifest.as_bytes());
            let len = manifest.len() as u64;
            w.data(len);
            let descriptor = w.end_entry(crc.finish(), len);
            let end = w.finish();
            for block in [header, manifest.into_bytes(), descriptor, end] {
                tx.send(Ok(Bytes::from(block))).await.map_err(|_| gone())?;
            }
            Ok((entries, manifest_sha))
        }
        .await;
        if let Err(e) = &result {
            // Makes the put fail and remove its temporary file.
            let _ = tx.send(Err(FileStoreError::source(path, e))).await;
        }
        result
    };
    let body: ByteStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
    let consumer = store.put_atomic(path, body, None, RenameMode::NoReplace);
    let (produced, put) = tokio::join!(producer, consumer);
    match (produced, put) {
        (Ok(out), Ok(_)) => Ok(out),
        // The put failed because the producer did (it passed its error on).
        (Err(e), Ok(_) | Err(FileStoreError::Source { .. })) => Err(e),
        // The put gave up on its own (refused, wrong kind, name taken): its
        // error is the cause, not the producer's "the upload stopped".
        (_, Err(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::memory::{MemoryDestinations, MemoryStore};
    use super::*;
    use crate::domain::export_route::ExportConfig;
    use crate::ports::ecm::memory::MemoryEcm;
    use crate::ports::ecm::{Content, UploadRequest};
    use crate::ports::events::MemoryEvents;
    use serde_json::json;

    const YEAR_DIR: fn() -> String = || Utc::now().format("%Y").to_string();

    #[tokio::test]
    async fn read_ahead_passes_chunks_in_order_and_stops_after_an_error() {
        let p = crate::domain::paths::RemoteRoot::parse("/data")
            .and_then(|r| r.resolve("x.bin"))
            .expect("path");
        let items: Vec<Result<Bytes, FileStoreError>> = vec![
            Ok(Bytes::from_static(b"one")),
            Ok(Bytes::from_static(b"two")),
            Err(FileStoreError::source(&p, "connection reset")),
            Ok(Bytes::from_static(b"never")),
        ];
        let mut out = read_ahead(Box::pin(futures_util::stream::iter(items)));
        assert_eq!(out.next().await.expect("1").expect("ok"), "one");
        assert_eq!(out.next().await.expect("2").expect("ok"), "two");
        let e = out.next().await.expect("3").expect_err("the error");
        assert!(e.to_string().contains("connection reset"), "{e}");
        assert!(out.next().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn read_ahead_lets_go_of_the_download_when_the_writer_stops() {
        // The source notices it was dropped when the consumer goes away.
        struct Guard(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let (tx, dropped) = tokio::sync::oneshot::channel();
        let guard = Guard(Some(tx));
        let endless = futures_util::stream::repeat_with(move || {
            let _keep = &guard;
            Ok::<_, FileStoreError>(Bytes::from_static(b"chunk"))
        });
        let mut out = read_ahead(Box::pin(endless));
        assert!(out.next().await.is_some());
        drop(out);
        tokio::time::timeout(Duration::from_secs(5), dropped)
            .await
            .expect("the download is dropped once the writer stops")
            .expect("guard fired");
    }

    fn routes(overwrite: bool) -> ExportRoutes {
        ExportConfig::from_json(
            &json!({
                "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5}},
                "routes": [{
                    "name": "price-lists",
                    "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved"},
                    "destinations": [{
                        "name": "dist", "sftp_secret": "sftp", "directory": "outbound/{yyyy}",
                        "file_name": "{stem}_v{version}.{ext}", "overwrite": overwrite, "sha256_sidecar": true
                    }]
                }]
            })
            .to_string(),
        )
        .unwrap()
    }

    struct World {
        ecm: MemoryEcm,
        events: MemoryEvents,
        dest: MemoryDestinations,
        routes: ExportRoutes,
        folder: NodeId,
    }

    impl World {
        async fn new(overwrite: bool) -> Self {
            let ecm = MemoryEcm::new();
            let folder = ecm
                .create_folder(NodeId::new(2000).unwrap(), "Pricing")
                .await
                .unwrap();
            World {
                ecm,
                events: MemoryEvents::new(),
                dest: MemoryDestinations::new().unwrap(),
                routes: routes(overwrite),
                folder,
            }
        }

        fn cx(&self) -> ExportContext<'_> {
            ExportContext {
                ecm: &self.ecm,
                events: &self.events,
                destinations: &self.dest,
                routes: &self.routes,
                invocation_id: "inv-1",
                deadline: None,
            }
        }

        fn store(&self) -> &MemoryStore {
            &self.dest.store
        }

        async fn doc(&self, parent: NodeId, name: &str, status: &str, body: &[u8]) -> NodeId {
            let bytes = Bytes::copy_from_slice(body);
            self.ecm
                .upload(UploadRequest {
                    parent,
                    name: name.into(),
                    description: None,
                    categories: vec![AppliedCategory {
                        category_id: 9001,
                        values: [("9001_2".to_string(), json!(status))].into(),
                    }],
                    classifications: vec![],
                    content: Content {
                        length: bytes.len() as u64,
                        stream: Box::pin(futures_util::stream::iter([Ok(bytes)])),
                        file_name: name.into(),
                        mime_type: "application/octet-stream".into(),
                    },
                })
                .await
                .unwrap()
                .node_id
        }

        async fn new_version(&self, id: NodeId, body: &[u8]) {
            let bytes = Bytes::copy_from_slice(body);
            self.ecm
                .add_version(
                    id,
                    None,
                    Content {
                        length: bytes.len() as u64,
                        stream: Box::pin(futures_util::stream::iter([Ok(bytes)])),
                        file_name: "x".into(),
                        mime_type: "application/octet-stream".into(),
                    },
                )
                .await
                .unwrap();
        }

        fn exported(&self) -> Vec<serde_json::Value> {
            self.events
                .events()
                .into_iter()
                .filter(|e| e.detail_type == DetailType::DocumentExported)
                .map(|e| e.detail)
                .collect()
        }
    }

    fn callback(node: NodeId, version: u32) -> ApprovalCallback {
        serde_json::from_value(json!({
            "event": "document.approved", "event_id": format!("evt-{node}-{version}"),
            "node_id": node.get(), "version": version, "category_id": 9001,
            "attribute": "9001_2", "value": "Approved", "approved_at": "2026-11-27T10:00:00Z"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn approved_document_is_delivered_with_sidecar_history_and_event() {
        let w = World::new(false).await;
        let id = w
            .doc(w.folder, "Prices 2026.xlsx", "Approved", b"price data")
            .await;
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        let ExportOutcome::Delivered(r) = out else {
            panic!("not delivered: {out:?}")
        };
        let path = format!("/outbound/{}/Prices 2026_v1.xlsx", YEAR_DIR());
        assert_eq!(w.store().file(&path).as_deref(), Some(&b"price data"[..]));
        let sha = sha256_hex(b"price data");
        assert_eq!(r.sha256, sha);
        assert_eq!(
            w.store().file(&format!("{path}.sha256")).as_deref(),
            Some(format!("{sha}  Prices 2026_v1.xlsx\n").as_bytes())
        );
        let hist = w.ecm.categories(id).await.unwrap();
        let h = hist.iter().find(|c| c.category_id == 9003).unwrap();
        assert_eq!(h.values["9003_2"], json!(1));
        assert_eq!(h.values["9003_5"], json!(sha));
        let ev = w.exported();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["resend"], json!(false));
        assert_eq!(ev[0]["event_id"], json!(format!("evt-{id}-1")));
        // The transfer's own time is reported and is part of the delivery's.
        let transfer = r.transfer_ms.expect("a delivery reports its transfer time");
        assert_eq!(ev[0]["transfer_ms"], json!(transfer));
        assert!(
            ev[0]["duration_ms"].as_u64().unwrap() >= transfer,
            "{:?}",
            ev[0]
        );
        // No temporary file is left beside it.
        assert!(
            !w.store().paths().iter().any(|p| p.contains("/.")),
            "{:?}",
            w.store().paths()
        );
    }

    #[tokio::test]
    async fn duplicate_callback_is_acknowledged_without_second_delivery() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
        handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        let puts = w.store().put_count();
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        let ExportOutcome::Duplicate(r) = out else {
            panic!("not a duplicate: {out:?}")
        };
        assert_eq!(r.transfer_ms, None, "nothing was sent");
        assert_eq!(w.store().put_count(), puts);
        assert_eq!(w.exported().len(), 1);
    }

    #[tokio::test]
    async fn a_new_version_is_delivered_again_under_its_own_name() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
        handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        w.new_version(id, b"two!").await;
        let out = handle_callback(&w.cx(), &callback(id, 2)).await.unwrap();
        assert!(
            matches!(out, ExportOutcome::Delivered(ref r) if r.version == 2),
            "{out:?}"
        );
        let y = YEAR_DIR();
        assert_eq!(
            w.store()
                .file(&format!("/outbound/{y}/a_v2.pdf"))
                .as_deref(),
            Some(&b"two!"[..])
        );
        assert_eq!(
            w.store()
                .file(&format!("/outbound/{y}/a_v1.pdf"))
                .as_deref(),
            Some(&b"one"[..])
        );
    }

    #[tokio::test]
    async fn not_approved_document_is_rejected_with_event_and_not_delivered() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "In Review", b"draft").await;
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        let ExportOutcome::Rejected { reasons, .. } = out else {
            panic!("{out:?}")
        };
        assert!(reasons[0].1.contains("In Review"), "{reasons:?}");
        assert_eq!(w.store().put_count(), 0);
        let ev = w.events.events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].detail_type, DetailType::ExportRejected);
    }

    #[tokio::test]
    async fn callback_for_a_version_the_ecm_does_not_show_yet_is_retried() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"x").await;
        let err = handle_callback(&w.cx(), &callback(id, 7))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::VersionNotVisible {
                    version: 7,
                    latest: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_retryable());
        assert_eq!(w.store().put_count(), 0);
        assert!(w.events.events().is_empty());
    }

    #[tokio::test]
    async fn the_approved_version_is_delivered_even_if_a_newer_one_was_added() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
        // v2 arrives (status carried over) before v1's callback is handled.
        w.new_version(id, b"two!").await;
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(
            matches!(out, ExportOutcome::Delivered(ref r) if r.version == 1),
            "{out:?}"
        );
        let y = YEAR_DIR();
        let s = w.store();
        assert_eq!(
            s.file(&format!("/outbound/{y}/a_v1.pdf")).as_deref(),
            Some(&b"one"[..])
        );
        assert!(s.file(&format!("/outbound/{y}/a_v2.pdf")).is_none());
    }

    #[tokio::test]
    async fn a_callback_retried_after_the_date_moved_on_is_not_delivered_again() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
        handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        let puts = w.store().put_count();
        // As if delivered last year: the history's path has another year
        // than `outbound/{yyyy}` renders now.
        let old = "outbound/1999/a_v1.pdf";
        w.ecm
            .update_category(
                id,
                9003,
                &[(
                    "9003_4".to_string(),
                    json!(format!("price-lists/dist:{old}")),
                )]
                .into(),
            )
            .await
            .unwrap();
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        let ExportOutcome::Duplicate(r) = out else {
            panic!("{out:?}")
        };
        assert_eq!(r.remote_path, old);
        assert_eq!(w.store().put_count(), puts);
    }

    #[tokio::test]
    async fn resend_does_not_replace_another_documents_file_when_overwrite_is_off() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
        // Not delivered by this node: someone else's file of the same name.
        let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
        w.store().insert_file(&path, b"theirs");
        let err = resend(&w.cx(), id.get(), "price-lists", None)
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::TargetExists { .. }), "{err}");
        assert_eq!(w.store().file(&path).as_deref(), Some(&b"theirs"[..]));
    }

    #[tokio::test]
    async fn unknown_node_is_rejected_not_retried() {
        let w = World::new(false).await;
        let out = handle_callback(&w.cx(), &callback(NodeId::new(999_999).unwrap(), 1))
            .await
            .unwrap();
        assert!(matches!(out, ExportOutcome::Rejected { .. }), "{out:?}");
    }

    #[tokio::test]
    async fn foreign_file_at_target_is_kept_when_overwrite_is_off() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
        let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
        w.store().insert_file(&path, b"theirs");
        let err = handle_callback(&w.cx(), &callback(id, 1))
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::TargetExists { .. }), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(w.store().file(&path).as_deref(), Some(&b"theirs"[..]));
    }

    #[tokio::test]
    async fn identical_file_at_target_counts_as_delivered_when_overwrite_is_off() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
        let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
        w.store().insert_file(&path, b"ours");
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
        // The history now records it, so the next duplicate is cheap.
        let hist = w.ecm.categories(id).await.unwrap();
        assert!(hist.iter().any(|c| c.category_id == 9003));
        // An earlier run that stopped after its rename is finished: the
        // sidecar a partner may wait for, and the event.
        let side = w.store().file(&format!("{path}.sha256")).expect("sidecar");
        assert!(String::from_utf8_lossy(&side).ends_with("  a_v1.pdf\n"));
        let ev = w.exported();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["version"], json!(1));
    }

    #[tokio::test]
    async fn existing_file_is_replaced_when_overwrite_is_on() {
        let w = World::new(true).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
        let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
        w.store().insert_file(&path, b"old");
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
        assert_eq!(w.store().file(&path).as_deref(), Some(&b"ours"[..]));
    }

    #[tokio::test]
    async fn an_identical_copy_is_not_delivered_again_when_overwrite_is_on() {
        let w = World::new(true).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
        // Delivered by a run that stopped after its rename (no history).
        let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
        w.store().insert_file(&path, b"ours");
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
        assert!(w.store().file(&format!("{path}.sha256")).is_some());
        assert_eq!(w.exported().len(), 1);
        // A file of the same size but other bytes is replaced.
        let id2 = w.doc(w.folder, "b.pdf", "Approved", b"new!").await;
        let path2 = format!("/outbound/{}/b_v1.pdf", YEAR_DIR());
        w.store().insert_file(&path2, b"old!");
        let out = handle_callback(&w.cx(), &callback(id2, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
        assert_eq!(w.store().file(&path2).as_deref(), Some(&b"new!"[..]));
    }

    #[tokio::test]
    async fn resend_redelivers_a_delivered_version_and_is_audited_as_resend() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"good").await;
        handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
        // The partner reports a truncated file.
        w.store().insert_file(&path, b"go");
        let r = resend(&w.cx(), id.get(), "price-lists", Some("truncated"))
            .await
            .unwrap();
        assert!(r.resend);
        assert_eq!(w.store().file(&path).as_deref(), Some(&b"good"[..]));
        let ev = w.exported();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1]["resend"], json!(true));
    }

    #[tokio::test]
    async fn resend_of_a_no_longer_approved_document_is_refused() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Draft", b"x").await;
        let err = resend(&w.cx(), id.get(), "price-lists", None)
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::NotApproved { .. }), "{err}");
        let err = resend(&w.cx(), id.get(), "nope", None).await.unwrap_err();
        assert!(matches!(err, ExportError::UnknownRoute { .. }), "{err}");
    }

    #[tokio::test]
    async fn zip_package_is_one_atomic_file_that_an_independent_reader_accepts() {
        let w = World::new(false).await;
        let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
        let sub = w.ecm.create_folder(kit, "Manuals").await.unwrap();
        w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
        w.doc(sub, "../../etc/passwd", "Approved", &[7u8; 70_000])
            .await;
        w.doc(sub, "Draft.pdf", "Draft", b"not yet").await;
        let r = export_package(
            &w.cx(),
            kit.get(),
            "price-lists",
            Some("Kit"),
            Some(PackageFormat::Zip),
        )
        .await
        .unwrap();
        assert_eq!(r.files, 2, "{r:?}");
        let path = format!("/outbound/{}/Kit.zip", YEAR_DIR());
        let bytes = w.store().file(&path).unwrap();
        let only: Vec<String> = w
            .store()
            .paths()
            .into_iter()
            .filter(|p| p.contains("Kit"))
            .collect();
        assert_eq!(only, vec![path.clone()]);
        let dir = tempfile::tempdir().unwrap();
        let zp = dir.path().join("k.zip");
        std::fs::write(&zp, &bytes).unwrap();
        // Python's zipfile: CRCs checked, names listed, manifest read back.
        let script = "import sys,zipfile,json,hashlib\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nm=json.loads(z.read('manifest.json'))\nfor e in m['entries']:\n  assert hashlib.sha256(z.read(e['path'])).hexdigest()==e['sha256']\nprint(sorted(z.namelist()))";
        let o = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&zp)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let names = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert_eq!(
            names,
            "['Manuals/_._.._etc_passwd', 'Welcome.pdf', 'manifest.json']"
        );
    }

    #[tokio::test]
    async fn package_holds_approved_documents_with_a_correct_manifest() {
        let w = World::new(false).await;
        let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
        let sub2 = w.ecm.create_folder(kit, "Manuals").await.unwrap();
        w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
        w.doc(sub2, "../../etc/passwd", "Approved", b"evil name")
            .await;
        w.doc(sub2, "Draft.pdf", "Draft", b"not yet").await;
        // A document may be called like the manifest.
        w.doc(kit, "manifest.json", "Approved", b"{\"mine\": true}")
            .await;
        let r = export_package(&w.cx(), kit.get(), "price-lists", Some("Kit-2026"), None)
            .await
            .unwrap();
        assert_eq!(r.files, 3, "{r:?}");
        assert_eq!(r.skipped.len(), 1);
        let base = format!("/outbound/{}/Kit-2026", YEAR_DIR());
        assert_eq!(
            w.store()
                .file(&format!("{base}/manifest (2).json"))
                .as_deref(),
            Some(&b"{\"mine\": true}"[..])
        );
        let text = w.store().file(&format!("{base}/manifest.json")).unwrap();
        assert_eq!(sha256_hex(&text), r.manifest_sha256);
        let m = PackageManifest::from_json(std::str::from_utf8(&text).unwrap()).unwrap();
        for e in &m.entries {
            let body = w.store().file(&format!("{base}/{}", e.path)).unwrap();
            assert_eq!(sha256_hex(&body), e.sha256, "{}", e.path);
            assert_eq!(body.len() as u64, e.size);
            assert!(
                crate::domain::manifest::is_safe_entry_path(&e.path)
                    && !e.path.split('/').any(|seg| seg == ".."),
                "{}",
                e.path
            );
        }
        assert!(m.entries.iter().any(|e| e.path == "Welcome.pdf"));
        assert!(m.entries.iter().all(|e| e.path == "Welcome.pdf"
            || e.path == "manifest (2).json"
            || e.path.starts_with("Manuals/")));
        // Nothing under a temporary name remains; nothing escaped the package.
        for p in w.store().paths() {
            assert!(!p.contains(".partial"), "{p}");
            assert!(p == "/" || p.starts_with("/outbound"), "{p}");
        }
        // A second export of the same package name is refused, not merged.
        let err = export_package(&w.cx(), kit.get(), "price-lists", Some("Kit-2026"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::TargetExists { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_retried_package_is_not_blocked_by_a_killed_attempts_leftovers() {
        let w = World::new(false).await;
        let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
        w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
        // A killed attempt of the same invocation (Lambda retries under the
        // same id) left its build directory under the id-only name.
        w.store().insert_file(
            &format!(
                "/outbound/{}/.Kit-2026.partial-inv1/Welcome.pdf",
                YEAR_DIR()
            ),
            b"stale",
        );
        let r = export_package(&w.cx(), kit.get(), "price-lists", Some("Kit-2026"), None)
            .await
            .unwrap();
        assert_eq!(r.files, 1, "{r:?}");
        let base = format!("/outbound/{}/Kit-2026", YEAR_DIR());
        assert_eq!(
            w.store().file(&format!("{base}/Welcome.pdf")).as_deref(),
            Some(&b"welcome"[..])
        );
    }

    #[tokio::test]
    async fn a_zip_put_refused_early_reports_its_own_error() {
        let w = World::new(false).await;
        let mut items = Vec::new();
        // More entries than the channel holds, so the producer is still
        // sending when the put gives up.
        for i in 0..20 {
            let name = format!("f{i}.txt");
            let node = w.doc(w.folder, &name, "Approved", b"x").await;
            items.push(PackageItem {
                names: vec![name.clone()],
                node,
                name,
                version: 1,
            });
        }
        let paths: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
        let meta = ManifestMeta {
            package: "Kit".into(),
            route: "price-lists".into(),
            root_node_id: w.folder.get(),
            created_at: Utc::now(),
        };
        // No such directory: the put fails before it reads the body.
        let path = w.store().root().resolve("missing/Kit.zip").unwrap();
        let err = write_zip(&w.ecm, w.store(), &path, &items, &paths, meta)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ExportError::Store(FileStoreError::NotFound { .. })),
            "{err}"
        );
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn document_callback_without_a_version_is_rejected() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "Prices.xlsx", "Approved", b"p").await;
        let out = handle_callback(&w.cx(), &callback(id, 0)).await.unwrap();
        let ExportOutcome::Rejected { reasons, .. } = out else {
            panic!("{out:?}")
        };
        assert!(reasons[0].1.contains("no version"), "{reasons:?}");
        assert_eq!(w.store().put_count(), 0);
    }

    #[tokio::test]
    async fn near_the_deadline_nothing_is_started_and_the_error_is_retryable() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "Prices.xlsx", "Approved", b"p").await;
        let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
        w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
        let mut cx = w.cx();
        cx.deadline = Some(Instant::now() + Duration::from_secs(3));
        let err = handle_callback(&cx, &callback(id, 1)).await.unwrap_err();
        assert!(matches!(err, ExportError::DeadlineNear { .. }), "{err}");
        assert!(err.is_retryable());
        let err = export_package(&cx, kit.get(), "price-lists", Some("K"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::DeadlineNear { .. }), "{err}");
        assert_eq!(w.store().put_count(), 0);
        assert!(
            w.store().paths().iter().all(|p| !p.contains("partial")),
            "{:?}",
            w.store().paths()
        );
        // With time left the same calls go through.
        cx.deadline = Some(Instant::now() + Duration::from_secs(600));
        handle_callback(&cx, &callback(id, 1)).await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_destination_is_retryable_and_records_nothing() {
        // The destination is reached while the ECM opens the download; the
        // destination's failure must still end the delivery cleanly.
        struct Unreachable;
        #[async_trait]
        impl Destinations for Unreachable {
            async fn store(&self, sftp_secret: &str) -> Result<Arc<dyn FileStore>, ExportError> {
                Err(ExportError::Store(FileStoreError::Transient {
                    op: "connect",
                    path: format!("{sftp_secret}: 192.0.2.1:22"),
                    reason: "connection refused".into(),
                }))
            }
        }
        let w = World::new(false).await;
        let id = w.doc(w.folder, "Prices.xlsx", "Approved", b"p").await;
        let mut cx = w.cx();
        cx.destinations = &Unreachable;
        let err = handle_callback(&cx, &callback(id, 1)).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("connection refused"), "{err}");
        assert!(w.exported().is_empty());
        let history = w.ecm.categories(id).await.unwrap();
        assert!(
            !history.iter().any(|c| c.category_id == 9003),
            "{history:?}"
        );
        // The next attempt, with the destination back, delivers.
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
    }

    #[tokio::test]
    async fn callback_naming_an_approved_folder_exports_a_package_once() {
        let w = World::new(false).await;
        let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
        w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
        w.doc(kit, "Draft.pdf", "Draft", b"not yet").await;

        // Not approved as a whole yet: rejected, nothing sent.
        let out = handle_callback(&w.cx(), &callback(kit, 1)).await.unwrap();
        let ExportOutcome::Rejected { reasons, .. } = out else {
            panic!("{out:?}")
        };
        assert!(reasons[0].1.contains("9001_2"), "{reasons:?}");
        assert_eq!(w.store().put_count(), 0);

        w.ecm
            .apply_category(
                kit,
                9001,
                &[("9001_2".to_string(), json!("Approved"))].into(),
            )
            .await
            .unwrap();
        let cb = callback(kit, 1);
        let out = handle_callback(&w.cx(), &cb).await.unwrap();
        let ExportOutcome::Packaged(r) = out else {
            panic!("{out:?}")
        };
        assert_eq!((r.files, r.skipped.len()), (1, 1), "{r:?}");
        let base = format!("/outbound/{}/Kit-{}", YEAR_DIR(), cb.event_id);
        assert_eq!(r.remote_path, base);
        assert_eq!(
            &w.store().file(&format!("{base}/Welcome.pdf")).unwrap()[..],
            b"welcome"
        );
        let puts = w.store().put_count();

        // The same callback again: acknowledged, no second package.
        let out = handle_callback(&w.cx(), &cb).await.unwrap();
        assert!(
            matches!(out, ExportOutcome::PackageDuplicate { ref package, .. } if package.ends_with(&cb.event_id)),
            "{out:?}"
        );
        assert_eq!(w.store().put_count(), puts);
    }
}
