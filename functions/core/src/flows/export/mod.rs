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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::domain::audit::{DocumentExported, EventDetail, ExportRejected};
use crate::domain::export_history::{
    DeliveryRecord, ExportHistory, HistoryVerdict, Lease, destination_key, lease_name,
};
use crate::domain::export_route::{
    Delivery, Destination, ExportDecision, ExportRoute, ExportRoutes, NodeFacts, PackageFormat,
    decide, export_key,
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
use crate::ports::secrets::SecretsError;

pub mod fault;
pub mod memory;
pub mod sweep;
pub mod zip;

pub use sweep::{SweepReport, sweep};

/// Parent chains deeper than this are cut (a cycle or a pathological tree
/// must not loop forever).
const MAX_ANCESTORS: usize = 64;
/// Package walks stop here rather than run into the Lambda deadline unseen.
const MAX_PACKAGE_ENTRIES: usize = 5_000;
const MAX_PACKAGE_DEPTH: usize = 16;
/// Documents a package walk looks at (approved or not) before it gives up.
const MAX_PACKAGE_VISITS: usize = 20_000;
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
    /// Another invocation is delivering this node to this destination right
    /// now (its lease holds until `expires_at`); retry later.
    #[error(
        "node {node_id} version {version} is being delivered to {destination} by another invocation (lease until {expires_at}); retry later"
    )]
    InProgress {
        node_id: i64,
        version: u32,
        destination: String,
        expires_at: DateTime<Utc>,
    },
    /// A fault switch of a test build stopped the flow here (crash tests).
    #[error("stopped by the fault switch at {point}")]
    Fault { point: &'static str },
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
            ExportError::DeadlineNear { .. }
            | ExportError::VersionNotVisible { .. }
            | ExportError::InProgress { .. }
            | ExportError::Fault { .. } => true,
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
            ExportError::InProgress { .. } => "InProgress",
            ExportError::Fault { .. } => "Fault",
        }
    }
}

pub use crate::ports::destinations::{DestinationError, Destinations};

impl From<DestinationError> for ExportError {
    fn from(e: DestinationError) -> Self {
        match e {
            DestinationError::Store(e) => ExportError::Store(e),
            DestinationError::Secrets(e) => ExportError::Secrets(e),
            DestinationError::Secret { secret_id, reason } => {
                ExportError::SftpSecret { secret_id, reason }
            }
        }
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
    /// A newer version already went to this destination; this older one is
    /// not delivered (it would replace or follow the newer one). Only a
    /// manual resend delivers it.
    Superseded {
        delivery: DeliveryReport,
        newest_version: u32,
        newest_path: String,
    },
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
        .put_atomic(
            path,
            with_upload_faults(read_ahead(body), path),
            source.expected_len,
            mode,
        )
        .await?)
}

/// The upload's fault points (see [`fault`]): after its first chunk and
/// after its last one, before the put renames. Nothing in a release build.
fn with_upload_faults(body: ByteStream, path: &RemotePath) -> ByteStream {
    if cfg!(not(debug_assertions)) {
        return body;
    }
    let (p1, p2) = (path.clone(), path.clone());
    let mut first = true;
    let body = body.map(move |r| {
        if r.is_ok() && std::mem::take(&mut first) {
            fault::hit(fault::Point::MidUpload).map_err(|e| FileStoreError::source(&p1, e))?;
        }
        r
    });
    let tail = futures_util::stream::once(async move { fault::hit(fault::Point::AfterUpload) })
        .filter_map(move |r| {
            let p2 = p2.clone();
            async move { r.err().map(|e| Err(FileStoreError::source(&p2, e))) }
        });
    Box::pin(body.chain(tail))
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

/// The export history as the node's categories hold it.
fn history_of(routes: &ExportRoutes, applied: &[AppliedCategory]) -> ExportHistory {
    let h = &routes.export_history;
    let values = applied
        .iter()
        .find(|c| c.category_id == h.category_id)
        .map(|c| &c.values);
    let history = ExportHistory::from_values(h, values);
    if !history.malformed.is_empty() {
        tracing::warn!(malformed = ?history.malformed, "export history holds values that are not delivery records; kept as they are");
    }
    history
}

/// Writes the delivery `record` into the node's export history (every
/// earlier record kept, see `domain::export_history`).
async fn record_history(
    ecm: &dyn Ecm,
    routes: &ExportRoutes,
    applied: &[AppliedCategory],
    history: &ExportHistory,
    node: NodeId,
    record: DeliveryRecord,
    at: DateTime<Utc>,
) -> Result<(), ExportError> {
    let h = &routes.export_history;
    let values: CategoryValues = history.values_after(h, record, at).into_iter().collect();
    if applied.iter().any(|c| c.category_id == h.category_id) {
        ecm.update_category(node, h.category_id, &values).await?;
    } else {
        ecm.apply_category(node, h.category_id, &values).await?;
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
/// idempotency checks (history, "never older").
///
/// 1. the history read with the node's facts answers a duplicate or a
///    superseded version at once, without reaching the destination;
/// 2. a lease per (route, destination, node) on the SFTP side: an
///    overlapping delivery of the same node to the same destination is
///    answered "in progress" (retryable) without a transfer;
/// 3. under the lease the history is read again (the other delivery may
///    have finished between the first read and the lease);
/// 4. the transfer, or the identical-copy path when the bytes are already
///    there; sidecar, `Document Exported`, history; the lease is released.
async fn deliver(
    cx: &ExportContext<'_>,
    d: &Delivery,
    applied: &[AppliedCategory],
    resend: bool,
    event_id: Option<&str>,
) -> Result<ExportOutcome, ExportError> {
    let started = Instant::now();
    let to = destination_key(&d.route, &d.destination);
    if !resend
        && let Some(out) = settled(d, &history_of(cx.routes, applied).verdict(&to, d.version))
    {
        return Ok(out);
    }
    cx.check_deadline(|| format!("delivering node {} to {}", d.node_id, d.remote_path()))?;
    let id = node_id(d.node_id)?;
    let store = cx.destinations.store(&d.sftp_secret).await?;
    let dir = remote_path(store.as_ref(), &d.directory)?;
    let target = dir.join(d.file_name.as_bytes())?;
    store.mkdir_all(&dir).await?;
    let lease = match acquire_lease(cx, store.as_ref(), &dir, d).await? {
        LeaseOutcome::Held(l) => l,
        LeaseOutcome::Busy(other) => {
            tracing::info!(key = %d.idempotency_key, holder = %other.holder, version = other.version, "another delivery of this node to this destination is in progress");
            return Err(ExportError::InProgress {
                node_id: d.node_id,
                version: other.version,
                destination: to,
                expires_at: other.expires_at,
            });
        }
    };
    let leased = Leased {
        store: store.as_ref(),
        dir: &dir,
        target: &target,
        lease: &lease,
    };
    let result = deliver_leased(cx, d, id, resend, event_id, started, &leased).await;
    // A fault switch stands for a crash: nothing after it runs, the lease
    // stays until it expires.
    if !matches!(result, Err(ExportError::Fault { .. })) {
        release_lease(store.as_ref(), &lease).await;
    }
    result
}

/// The outcome the history already settles (a duplicate, or a version
/// older than the one delivered), `None` to deliver.
fn settled(d: &Delivery, verdict: &HistoryVerdict) -> Option<ExportOutcome> {
    let report = |r: &DeliveryRecord| DeliveryReport {
        route: d.route.clone(),
        destination: d.destination.clone(),
        node_id: d.node_id,
        version: d.version,
        // The path is the recorded one: it may hold a date that has moved
        // on since (`outbound/{yyyy}` across New Year), and a retried
        // callback must not deliver a second copy elsewhere.
        remote_path: r.path.clone(),
        size: None,
        sha256: r.sha256.clone(),
        idempotency_key: d.idempotency_key.clone(),
        resend: false,
        transfer_ms: None,
    };
    match verdict {
        HistoryVerdict::New => None,
        HistoryVerdict::Delivered(r) => {
            tracing::info!(key = %d.idempotency_key, path = %r.path, "already delivered; acknowledged without a second delivery");
            Some(ExportOutcome::Duplicate(report(r)))
        }
        HistoryVerdict::Superseded(newest) => {
            tracing::info!(key = %d.idempotency_key, newest = newest.version, "a newer version already went to this destination; not delivered");
            let mut r = report(newest);
            r.sha256 = String::new();
            r.remote_path = d.remote_path();
            Some(ExportOutcome::Superseded {
                delivery: r,
                newest_version: newest.version,
                newest_path: newest.path.clone(),
            })
        }
    }
}

/// The destination and the lease a delivery holds.
struct Leased<'a> {
    store: &'a dyn FileStore,
    dir: &'a RemotePath,
    target: &'a RemotePath,
    lease: &'a HeldLease,
}

async fn deliver_leased(
    cx: &ExportContext<'_>,
    d: &Delivery,
    id: NodeId,
    resend: bool,
    event_id: Option<&str>,
    started: Instant,
    l: &Leased<'_>,
) -> Result<ExportOutcome, ExportError> {
    let (store, dir, target) = (l.store, l.dir, l.target);
    let to = destination_key(&d.route, &d.destination);
    // Read again under the lease.
    let applied = cx.ecm.categories(id).await?;
    let history = history_of(cx.routes, &applied);
    if !resend && let Some(out) = settled(d, &history.verdict(&to, d.version)) {
        return Ok(out);
    }
    fault::hit(fault::Point::Leased)?;
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
    // A resend replaces what this node delivered to that very path before
    // (the partner may hold a damaged copy); on a route without overwrite
    // it never replaces anything else, such as another document's file of
    // the same name.
    let ours_there = history
        .records
        .iter()
        .any(|r| r.to == to && r.path == d.remote_path());
    let mode = if d.overwrite || (resend && ours_there) {
        RenameMode::Replace
    } else {
        RenameMode::NoReplace
    };
    let source = open_version(cx.ecm, id, d.version).await?;
    // What is known without reading anything: the version's SHA-256 from an
    // earlier delivery of it, the file's from its sidecar.
    let known = history.sha256_of(d.version).map(str::to_owned);
    // An identical copy already in place means an earlier invocation
    // delivered this version and stopped after its rename: finish what it
    // would have done next (sidecar, event unless it went out, history)
    // instead of delivering a second time.
    let identical = |ours: String, size: Option<u64>| {
        let (history, applied, to) = (&history, &applied, &to);
        async move {
            if d.sha256_sidecar {
                write_sidecar(store, dir, d, &ours).await?;
            }
            let at = Utc::now();
            let already_published = l
                .lease
                .taken_over
                .as_ref()
                .and_then(|t| t.published_sha256.as_deref())
                == Some(ours.as_str());
            if let Some(size) = size
                && !already_published
            {
                let detail = exported_detail(
                    cx, d, target, size, &ours, resend, event_id, at, started, None,
                );
                publish(cx.events, DetailType::DocumentExported, detail).await;
            }
            let record = DeliveryRecord {
                to: to.clone(),
                version: d.version,
                sha256: ours.clone(),
                path: d.remote_path(),
            };
            record_history(cx.ecm, cx.routes, applied, history, id, record, at).await?;
            Ok::<_, ExportError>(ExportOutcome::Duplicate(report(size, ours, None)))
        }
    };
    // On a route that overwrites, a same-size file there may be that copy
    // (a resend delivers again on purpose).
    if !resend
        && d.overwrite
        && let Some(there) = store.try_stat(target).await?
        && there.size.is_some()
        && there.size == source.expected_len
    {
        let remote = match read_sidecar(store, dir, d).await {
            Some(sha) => sha,
            None => remote_sha256(store, target).await?,
        };
        let ours = match &known {
            Some(sha) => sha.clone(),
            // Compared only when the file may be ours.
            None => version_sha256(cx.ecm, id, d.version).await?,
        };
        if remote == ours {
            return identical(ours, there.size).await;
        }
    }
    let transfer_started = Instant::now();
    let receipt = match put_version(store, source, target, mode).await {
        Ok(r) => r,
        Err(ExportError::Store(FileStoreError::AlreadyExists { .. })) => {
            // Overwrite is not allowed. The same bytes there: see
            // `identical`. Anything else is someone else's file and stays.
            let existing = match read_sidecar(store, dir, d).await {
                Some(sha) => sha,
                None => remote_sha256(store, target).await?,
            };
            let ours = match &known {
                Some(sha) => sha.clone(),
                None => version_sha256(cx.ecm, id, d.version).await?,
            };
            if existing != ours {
                return Err(ExportError::TargetExists {
                    route: d.route.clone(),
                    destination: d.destination.clone(),
                    path: target.to_string(),
                });
            }
            let size = store.stat(target).await?.size;
            return identical(ours, size).await;
        }
        Err(e) => return Err(e),
    };
    fault::hit(fault::Point::AfterRename)?;
    let transfer_ms = millis(transfer_started.elapsed());
    if d.sha256_sidecar {
        write_sidecar(store, dir, d, &receipt.sha256).await?;
    }
    fault::hit(fault::Point::BeforeEvent)?;
    let at = Utc::now();
    let detail = exported_detail(
        cx,
        d,
        target,
        receipt.size,
        &receipt.sha256,
        resend,
        event_id,
        at,
        started,
        Some(transfer_ms),
    );
    publish(cx.events, DetailType::DocumentExported, detail).await;
    mark_published(store, l.lease, &receipt.sha256).await;
    fault::hit(fault::Point::BeforeHistory)?;
    let record = DeliveryRecord {
        to: to.clone(),
        version: d.version,
        sha256: receipt.sha256.clone(),
        path: d.remote_path(),
    };
    record_history(cx.ecm, cx.routes, &applied, &history, id, record, at).await?;
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

/// The SHA-256 a `<file>.sha256` sidecar beside the target names, if the
/// route writes sidecars and one is there and well-formed. The sidecar is
/// written after its file, so it never names bytes that are not complete;
/// it may name an older file's bytes (a rename that stopped before its
/// sidecar), which only makes the comparison say "different" and the
/// delivery go ahead.
async fn read_sidecar(store: &dyn FileStore, dir: &RemotePath, d: &Delivery) -> Option<String> {
    if !d.sha256_sidecar {
        return None;
    }
    let path = dir
        .join(format!("{}.sha256", d.file_name).as_bytes())
        .ok()?;
    let text = store.read_small(&path, 4096).await.ok()?;
    let text = std::str::from_utf8(&text).ok()?;
    let (sha, name) = text.trim_end().split_once("  ")?;
    (name == d.file_name && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| sha.to_ascii_lowercase())
}

// ------------------------------------------------------------------ lease --

/// A lease this invocation holds.
struct HeldLease {
    path: RemotePath,
    lease: Lease,
    /// The expired lease this one replaced (its holder stopped).
    taken_over: Option<Lease>,
}

enum LeaseOutcome {
    Held(HeldLease),
    Busy(Lease),
}

/// How long a lease lasts: as long as this invocation can, plus a margin;
/// a crashed holder blocks the node's deliveries to that destination no
/// longer than that.
fn lease_ttl(cx: &ExportContext<'_>) -> chrono::Duration {
    let left = cx
        .deadline
        .map_or(Duration::from_secs(900), |d| {
            d.saturating_duration_since(Instant::now())
        })
        .min(Duration::from_secs(900));
    chrono::Duration::from_std(left + Duration::from_secs(5))
        .unwrap_or_else(|_| chrono::Duration::seconds(905))
}

const LEASE_MAX_BYTES: u64 = 4096;

/// Takes the lease for `d` in `dir`: created with a no-replace rename, so of
/// two overlapping deliveries exactly one gets it. An expired lease is moved
/// aside (one rename, which only one taker can win) and checked to be the
/// one that was read before it is dropped.
async fn acquire_lease(
    cx: &ExportContext<'_>,
    store: &dyn FileStore,
    dir: &RemotePath,
    d: &Delivery,
) -> Result<LeaseOutcome, ExportError> {
    let name = lease_name(&d.route, &d.destination, d.node_id);
    let path = dir.join(name.as_bytes())?;
    let lease = Lease {
        node_id: d.node_id,
        version: d.version,
        holder: cx.invocation_id.to_owned(),
        nonce: format!("{:016x}", fastrand::u64(..)),
        expires_at: Utc::now() + lease_ttl(cx),
        published_sha256: None,
    };
    let mut taken_over = None;
    for _ in 0..3 {
        match store
            .write_small(&path, Bytes::from(lease.to_bytes()), RenameMode::NoReplace)
            .await
        {
            Ok(_) => {
                return Ok(LeaseOutcome::Held(HeldLease {
                    path,
                    lease,
                    taken_over,
                }));
            }
            Err(FileStoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let seen = match store.read_small(&path, LEASE_MAX_BYTES).await {
            Ok(b) => b,
            // Released meanwhile: try again.
            Err(FileStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let other = Lease::parse(&seen);
        if let Ok(o) = &other
            && !o.is_expired(Utc::now())
        {
            return Ok(LeaseOutcome::Busy(o.clone()));
        }
        // Expired (or not a lease at all: nothing of ours writes anything
        // else under that name).
        let aside = dir.join(format!("{name}.stale-{}", lease.nonce).as_bytes())?;
        match store.rename(&path, &aside, RenameMode::NoReplace).await {
            Ok(()) => {}
            Err(FileStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        let moved = store.read_small(&aside, LEASE_MAX_BYTES).await?;
        if moved != seen {
            // Another taker replaced the stale lease between our read and
            // our rename: that one is live. Put it back.
            if let Err(e) = store.rename(&aside, &path, RenameMode::NoReplace).await {
                tracing::warn!(path = %aside, error = %e, "cannot put a live lease back");
            }
            return Ok(LeaseOutcome::Busy(
                Lease::parse(&moved).unwrap_or_else(|_| lease.clone()),
            ));
        }
        if let Err(e) = store.remove(&aside).await {
            tracing::warn!(path = %aside, error = %e, "cannot remove a stale lease");
        }
        tracing::warn!(lease = ?other.as_ref().ok(), "took over an expired delivery lease (its holder stopped)");
        taken_over = other.ok();
    }
    Ok(LeaseOutcome::Busy(lease))
}

/// Notes on the lease that the event went out (see [`Lease::published_sha256`]).
async fn mark_published(store: &dyn FileStore, held: &HeldLease, sha256: &str) {
    let mut l = held.lease.clone();
    l.published_sha256 = Some(sha256.to_owned());
    if let Err(e) = store
        .write_small(&held.path, Bytes::from(l.to_bytes()), RenameMode::Replace)
        .await
    {
        tracing::warn!(path = %held.path, error = %e, "cannot note the published event on the lease");
    }
}

/// Removes the lease if it is still ours (best effort: an expired lease left
/// behind only delays the next delivery of this node until it expires).
async fn release_lease(store: &dyn FileStore, held: &HeldLease) {
    match store.read_small(&held.path, LEASE_MAX_BYTES).await {
        Ok(b) if Lease::parse(&b).is_ok_and(|l| l.nonce == held.lease.nonce) => {
            if let Err(e) = store.remove(&held.path).await {
                tracing::warn!(path = %held.path, error = %e, "cannot release the delivery lease");
            }
        }
        Ok(_) => tracing::warn!(path = %held.path, "the delivery lease was taken over meanwhile"),
        Err(e) => {
            tracing::warn!(path = %held.path, error = %e, "cannot read the delivery lease back")
        }
    }
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
                ExportOutcome::Superseded { delivery, .. } => Ok(delivery),
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
    let mut visited = 0usize;
    while let Some((dir, prefix)) = stack.pop() {
        cx.check_deadline(|| {
            format!("listing package folders under node {root} (package not published)")
        })?;
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
            if written.len() == 1 {
                fault::hit(fault::Point::PackageMidBuild)?;
            }
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
                            fault::hit(fault::Point::PackageBeforeRename)?;
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
                if entries.is_empty() {
                    fault::hit(fault::Point::PackageMidBuild)?;
                }
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
            fault::hit(fault::Point::PackageBeforeRename)?;
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
    use super::memory::{
        CountingStore, FixedDestinations, InstrumentedEcm, MemoryDestinations, MemoryStore,
    };
    use super::*;
    use crate::domain::export_route::ExportConfig;
    use crate::ports::ecm::memory::MemoryEcm;
    use crate::ports::ecm::{Content, UploadRequest};
    use crate::ports::events::MemoryEvents;
    use async_trait::async_trait;
    use serde_json::json;
    use std::sync::Arc;

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
        routes_named(overwrite, "{stem}_v{version}.{ext}")
    }

    fn routes_named(overwrite: bool, file_name: &str) -> ExportRoutes {
        ExportConfig::from_json(
            &json!({
                "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
                "routes": [{
                    "name": "price-lists",
                    "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved"},
                    "destinations": [{
                        "name": "dist", "sftp_secret": "sftp", "directory": "outbound/{yyyy}",
                        "file_name": file_name, "overwrite": overwrite, "sha256_sidecar": true
                    }]
                }]
            })
            .to_string(),
        )
        .unwrap()
    }

    struct World {
        ecm: InstrumentedEcm<MemoryEcm>,
        events: MemoryEvents,
        mem: Arc<MemoryStore>,
        counting: Arc<CountingStore>,
        dest: FixedDestinations,
        routes: ExportRoutes,
        folder: NodeId,
    }

    impl World {
        async fn new(overwrite: bool) -> Self {
            Self::with_routes(routes(overwrite)).await
        }

        async fn with_routes(routes: ExportRoutes) -> Self {
            let ecm = InstrumentedEcm::new(MemoryEcm::new());
            let folder = ecm
                .create_folder(NodeId::new(2000).unwrap(), "Pricing")
                .await
                .unwrap();
            let mem = MemoryDestinations::new().unwrap().store;
            let counting = Arc::new(CountingStore::new(mem.clone()));
            World {
                ecm,
                events: MemoryEvents::new(),
                mem,
                counting: counting.clone(),
                dest: FixedDestinations(counting),
                routes,
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
            &self.mem
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
                &[
                    (
                        "9003_4".to_string(),
                        json!(format!("price-lists/dist:{old}")),
                    ),
                    (
                        "9003_6".to_string(),
                        json!([crate::domain::export_history::DeliveryRecord {
                            to: "price-lists/dist".into(),
                            version: 1,
                            sha256: sha256_hex(b"ours"),
                            path: old.into(),
                        }
                        .encode()]),
                    ),
                ]
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
            async fn store(
                &self,
                sftp_secret: &str,
            ) -> Result<Arc<dyn FileStore>, DestinationError> {
                Err(DestinationError::Store(FileStoreError::Transient {
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

    // ------------------------------------------- issue 16: defects 1, 2, 4 --

    #[tokio::test]
    async fn a_v1_callback_retried_after_v2_was_delivered_is_not_delivered_again() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
        handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        w.new_version(id, b"two!").await;
        handle_callback(&w.cx(), &callback(id, 2)).await.unwrap();
        let puts = w.store().put_count();
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(
            !matches!(out, ExportOutcome::Delivered(_)),
            "v1 went out twice: {out:?}"
        );
        assert_eq!(w.store().put_count(), puts, "{:?}", w.store().paths());
        assert_eq!(w.exported().len(), 2);
    }

    #[tokio::test]
    async fn an_older_version_never_replaces_a_newer_one_on_an_overwrite_route() {
        let w = World::with_routes(routes_named(true, "{stem}.{ext}")).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
        w.new_version(id, b"two!").await;
        // v2's callback arrives first, v1's (late) after it.
        handle_callback(&w.cx(), &callback(id, 2)).await.unwrap();
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(
            !matches!(out, ExportOutcome::Delivered(_)),
            "v1 replaced v2: {out:?}"
        );
        let path = format!("/outbound/{}/a.pdf", YEAR_DIR());
        assert_eq!(w.store().file(&path).as_deref(), Some(&b"two!"[..]));
        assert_eq!(w.exported().len(), 1);
        // A manual resend still may (it delivers the latest version).
        let r = resend(&w.cx(), id.get(), "price-lists", None)
            .await
            .unwrap();
        assert_eq!(r.version, 2);
    }

    #[tokio::test]
    async fn overlapping_identical_callbacks_transfer_once() {
        // A caller retrying during a large transfer: the first callback's
        // download is held open while the second arrives.
        let w = World::new(true).await;
        let id = w.doc(w.folder, "big.bin", "Approved", b"large body").await;
        let gate = w.ecm.hold_downloads();
        let cx = w.cx();
        let cb = callback(id, 1);
        let (a, b, ()) = tokio::join!(
            handle_callback(&cx, &cb),
            handle_callback(&cx, &cb),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                gate.add_permits(2);
            }
        );
        let delivered = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Ok(ExportOutcome::Delivered(_))))
            .count();
        assert_eq!(delivered, 1, "{a:?} / {b:?}");
        for r in [&a, &b] {
            match r {
                Ok(ExportOutcome::Delivered(_) | ExportOutcome::Duplicate(_)) => {}
                Err(e) => assert!(e.is_retryable(), "{e}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(w.exported().len(), 1, "{:?}", w.exported());
        assert_eq!(w.ecm.calls("download"), 1, "the second one streamed too");
        // No lease is left behind once the delivery is done.
        assert!(
            !w.store().paths().iter().any(|p| p.contains("lease")),
            "{:?}",
            w.store().paths()
        );
        // A later retry is a plain duplicate.
        let out = handle_callback(&w.cx(), &cb).await.unwrap();
        assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
    }

    #[tokio::test]
    async fn a_same_size_file_with_a_sidecar_is_judged_without_reading_it() {
        let w = World::new(true).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"new content").await;
        // The version went to another destination before: its SHA-256 is
        // in the history.
        let other = crate::domain::export_history::DeliveryRecord {
            to: "price-lists/elsewhere".into(),
            version: 1,
            sha256: sha256_hex(b"new content"),
            path: "elsewhere/a_v1.pdf".into(),
        };
        w.ecm
            .apply_category(
                id,
                9003,
                &[("9003_6".to_string(), json!([other.encode()]))].into(),
            )
            .await
            .unwrap();
        let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
        // Another file of the same size, with its sidecar, is at the target.
        let old = b"old content";
        w.store().insert_file(&path, old);
        w.store().insert_file(
            &format!("{path}.sha256"),
            format!("{}  a_v1.pdf\n", sha256_hex(old)).as_bytes(),
        );
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
        assert_eq!(w.store().file(&path).as_deref(), Some(&b"new content"[..]));
        assert!(
            !w.counting.reads().contains(&path),
            "the remote file was read: {:?}",
            w.counting.reads()
        );
        assert_eq!(
            w.ecm.calls("download"),
            1,
            "the version was downloaded twice"
        );
    }

    #[tokio::test]
    async fn a_package_walk_stops_at_the_deadline_instead_of_reading_every_document() {
        let w = World::new(false).await;
        let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
        for i in 0..20 {
            w.doc(kit, &format!("draft-{i}.pdf"), "Draft", b"d").await;
        }
        w.doc(kit, "ok.pdf", "Approved", b"ok").await;
        let before = w.ecm.calls("categories");
        let mut cx = w.cx();
        cx.deadline = Some(Instant::now() + Duration::from_secs(3));
        let err = export_package(&cx, kit.get(), "price-lists", Some("K"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ExportError::DeadlineNear { .. }), "{err}");
        let read = w.ecm.calls("categories") - before;
        assert!(read <= 2, "{read} documents read after the deadline");
    }

    #[tokio::test]
    async fn a_transient_ecm_failure_is_retryable_and_never_a_rejection() {
        let w = World::new(false).await;
        let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
        w.ecm.fail(
            "categories",
            1,
            Box::new(|| EcmError::Transient {
                op: "get categories",
                target: "node".into(),
                detail: "HTTP 500".into(),
            }),
        );
        let err = handle_callback(&w.cx(), &callback(id, 1))
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            !w.events
                .events()
                .iter()
                .any(|e| e.detail_type == DetailType::ExportRejected)
        );
        let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
    }

    // ------------------------------------------------------------- sweep --

    #[tokio::test]
    async fn the_sweep_catches_up_a_lost_callback_and_never_delivers_twice() {
        let w = World::new(false).await;
        let called = w.doc(w.folder, "a.pdf", "Approved", b"a").await;
        let lost = w.doc(w.folder, "b.pdf", "Approved", b"b").await;
        w.doc(w.folder, "c.pdf", "Draft", b"c").await;
        let sub = w.ecm.create_folder(w.folder, "Sub").await.unwrap();
        let deep = w.doc(sub, "d.pdf", "Approved", b"d").await;
        handle_callback(&w.cx(), &callback(called, 1))
            .await
            .unwrap();
        let roots = [w.folder.get()];
        let r = sweep(&w.cx(), "price-lists", Some(&roots), None, None)
            .await
            .unwrap();
        let mut caught: Vec<i64> = r.caught_up.iter().map(|d| d.node_id).collect();
        caught.sort_unstable();
        assert_eq!(caught, vec![lost.get(), deep.get()], "{r:?}");
        assert_eq!((r.examined, r.already_delivered, r.not_exported), (4, 1, 1));
        assert!(r.complete && r.cursor.is_none(), "{r:?}");
        assert_eq!(w.exported().len(), 3);
        // The lost callback arrives after all: a duplicate.
        let out = handle_callback(&w.cx(), &callback(lost, 1)).await.unwrap();
        assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
        // The next run finds nothing to do.
        let again = sweep(&w.cx(), "price-lists", Some(&roots), None, None)
            .await
            .unwrap();
        assert!(again.caught_up.is_empty(), "{again:?}");
        assert_eq!(again.already_delivered, 3);
        assert_eq!(w.exported().len(), 3);
        // It reported what it caught up.
        let reports: Vec<_> = w
            .events
            .events()
            .into_iter()
            .filter(|e| e.detail_type == DetailType::ExportSweepCompleted)
            .collect();
        assert_eq!(reports.len(), 2);
        assert_eq!(
            reports[0].detail["caught_up"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[tokio::test]
    async fn a_bounded_sweep_resumes_from_its_cursor_until_everything_is_out() {
        let w = World::new(false).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                w.doc(w.folder, &format!("d{i}.pdf"), "Approved", b"x")
                    .await,
            );
        }
        let roots = [w.folder.get()];
        let mut cursor = None;
        let mut runs = 0;
        let mut delivered = Vec::new();
        loop {
            runs += 1;
            assert!(runs < 10, "the sweep does not progress");
            let r = sweep(&w.cx(), "price-lists", Some(&roots), Some(2), cursor.take())
                .await
                .unwrap();
            assert!(r.examined <= 2, "{r:?}");
            delivered.extend(r.caught_up.iter().map(|d| d.node_id));
            if r.complete {
                break;
            }
            // The continuation event carries the same cursor.
            let cont = w
                .events
                .events()
                .into_iter()
                .rfind(|e| e.detail_type == DetailType::ExportSweepContinued)
                .expect("a continuation event");
            let ev =
                crate::domain::export_route::ExportManualEvent::from_json(cont.detail).unwrap();
            let crate::domain::export_route::ExportManualEvent::Sweep { cursor: c, .. } = ev else {
                panic!("not a sweep event")
            };
            assert_eq!(c, r.cursor);
            cursor = c;
        }
        delivered.sort_unstable();
        let mut want: Vec<i64> = ids.iter().map(|i| i.get()).collect();
        want.sort_unstable();
        assert_eq!(delivered, want);
        assert_eq!(w.exported().len(), 5);
    }

    #[tokio::test]
    async fn a_sweep_leaves_a_delivery_in_progress_to_its_holder() {
        let w = World::new(true).await;
        let id = w.doc(w.folder, "big.bin", "Approved", b"large").await;
        let gate = w.ecm.hold_downloads();
        let cx = w.cx();
        let roots = [w.folder.get()];
        let first = callback(id, 1);
        let (cb, sw, ()) = tokio::join!(
            handle_callback(&cx, &first),
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                sweep(&cx, "price-lists", Some(&roots), None, None).await
            },
            async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                gate.add_permits(5);
            }
        );
        assert!(matches!(cb, Ok(ExportOutcome::Delivered(_))), "{cb:?}");
        let sw = sw.unwrap();
        assert!(sw.caught_up.is_empty(), "{sw:?}");
        assert_eq!(sw.in_progress, vec![id.get()]);
        assert_eq!(w.exported().len(), 1);
    }

    // ------------------------------------------------------- crash matrix --

    /// Stops a delivery at `point`, then retries it (the caller's retry,
    /// after the lease of the stopped attempt expired) and checks: one copy
    /// at the partner, one history record, one `Document Exported`.
    async fn crash_then_retry(point: fault::Point, overwrite: bool) -> String {
        let w = World::new(overwrite).await;
        let id = w
            .doc(w.folder, "a.pdf", "Approved", b"the approved bytes")
            .await;
        fault::arm(Some(point));
        let first = handle_callback(&w.cx(), &callback(id, 1)).await;
        fault::arm(None);
        // A stop inside the upload surfaces as the upload's failure.
        assert!(first.is_err(), "{point:?}: {first:?}");
        // A stopped holder's lease stays until it expires: the retry in
        // between is told "in progress".
        let leased = w.store().paths().iter().any(|p| p.contains("xecm-lease"));
        if leased {
            let r = handle_callback(&w.cx(), &callback(id, 1)).await;
            assert!(
                matches!(&r, Err(ExportError::InProgress { .. })),
                "{point:?}: {r:?}"
            );
            expire_leases(w.store());
        }
        let retry = handle_callback(&w.cx(), &callback(id, 1)).await;
        let outcome = match &retry {
            Ok(ExportOutcome::Delivered(_)) => "delivered",
            Ok(ExportOutcome::Duplicate(_)) => "duplicate",
            other => panic!("{point:?}: {other:?}"),
        };
        let y = YEAR_DIR();
        let files: Vec<String> = w
            .store()
            .paths()
            .into_iter()
            .filter(|p| p.starts_with(&format!("/outbound/{y}/")) && !p.ends_with(".sha256"))
            .collect();
        assert_eq!(files, vec![format!("/outbound/{y}/a_v1.pdf")], "{point:?}");
        assert_eq!(
            w.store().file(&files[0]).as_deref(),
            Some(&b"the approved bytes"[..])
        );
        let hist = w.ecm.categories(id).await.unwrap();
        let h = hist
            .iter()
            .find(|c| c.category_id == 9003)
            .expect("history");
        assert_eq!(
            h.values["9003_6"].as_array().map(Vec::len),
            Some(1),
            "{point:?}"
        );
        assert_eq!(w.exported().len(), 1, "{point:?}: {:?}", w.exported());
        // And a further retry is a plain duplicate.
        let again = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
        assert!(matches!(again, ExportOutcome::Duplicate(_)), "{again:?}");
        assert_eq!(w.exported().len(), 1);
        format!(
            "{:<16} {:<9} {:<10} {:<6} {:<7} {:<5} {:<5}",
            point.as_str(),
            if overwrite { "overwrite" } else { "no-replace" },
            outcome,
            if leased { "yes" } else { "no" },
            files.len(),
            1,
            w.exported().len()
        )
    }

    /// Rewrites every lease file as expired (the stopped holder's time ran out).
    fn expire_leases(store: &MemoryStore) {
        for p in store.paths() {
            if p.contains("xecm-lease")
                && let Some(bytes) = store.file(&p)
                && let Ok(mut l) = Lease::parse(&bytes)
            {
                l.expires_at = Utc::now() - chrono::Duration::seconds(1);
                store.insert_file(&p, &l.to_bytes());
            }
        }
    }

    #[tokio::test]
    async fn crash_matrix_every_stop_then_retry_delivers_exactly_once() {
        let mut rows = vec![format!(
            "{:<16} {:<9} {:<10} {:<6} {:<7} {:<5} {:<5}",
            "stopped at", "route", "retry", "lease", "copies", "hist", "events"
        )];
        for point in [
            fault::Point::Leased,
            fault::Point::MidUpload,
            fault::Point::AfterUpload,
            fault::Point::AfterRename,
            fault::Point::BeforeEvent,
            fault::Point::BeforeHistory,
        ] {
            for overwrite in [false, true] {
                rows.push(crash_then_retry(point, overwrite).await);
            }
        }
        println!("{}", rows.join("\n"));
    }

    #[tokio::test]
    async fn crash_matrix_packages_stopped_mid_build_or_before_the_rename_publish_once() {
        let mut rows = vec![format!(
            "{:<22} {:<5} {:<8} {:<9}",
            "stopped at", "kind", "retry", "visible"
        )];
        for point in [
            fault::Point::PackageMidBuild,
            fault::Point::PackageBeforeRename,
        ] {
            for format in [PackageFormat::Dir, PackageFormat::Zip] {
                let w = World::new(false).await;
                let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
                w.doc(kit, "one.pdf", "Approved", b"one").await;
                w.doc(kit, "two.pdf", "Approved", b"two").await;
                fault::arm(Some(point));
                let first =
                    export_package(&w.cx(), kit.get(), "price-lists", Some("K"), Some(format))
                        .await;
                fault::arm(None);
                assert!(matches!(first, Err(ExportError::Fault { .. })), "{first:?}");
                let visible = |w: &World| {
                    w.store()
                        .paths()
                        .into_iter()
                        .filter(|p| {
                            let name = p.rsplit('/').next().unwrap_or("");
                            name == "K" || name == "K.zip"
                        })
                        .count()
                };
                assert_eq!(
                    visible(&w),
                    0,
                    "{point:?} {format:?}: {:?}",
                    w.store().paths()
                );
                let r = export_package(&w.cx(), kit.get(), "price-lists", Some("K"), Some(format))
                    .await
                    .unwrap();
                assert_eq!(r.files, 2);
                assert_eq!(visible(&w), 1);
                // A further attempt finds it there and publishes nothing.
                let again =
                    export_package(&w.cx(), kit.get(), "price-lists", Some("K"), Some(format))
                        .await;
                assert!(
                    matches!(again, Err(ExportError::TargetExists { .. })),
                    "{again:?}"
                );
                assert_eq!(w.exported().len(), 2);
                rows.push(format!(
                    "{:<22} {:<5} {:<8} {:<9}",
                    point.as_str(),
                    format!("{format:?}").to_lowercase(),
                    "packaged",
                    visible(&w)
                ));
            }
        }
        println!("{}", rows.join("\n"));
    }
}
