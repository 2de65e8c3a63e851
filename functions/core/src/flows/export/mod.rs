//! The export flow (`ecm-export`, DESIGN.md §5): an approval callback, a
//! manual resend, a package export or a scheduled sweep turns into files on
//! a partner's SFTP server, each version once per destination.
//!
//! One module per step, passing plain types, over the ports only:
//! - `facts`: re-read the node (version, categories, ancestors, workspace
//!   type) from the ECM — the callback body is only a hint — and `decide`
//!   (domain) applies the routes;
//! - `history`: the export history on the node, one record per (route,
//!   destination, version); a duplicate or a superseded (older) version is
//!   answered without a transfer;
//! - `lease`: a short lease per (route, destination, node) on the SFTP
//!   side, so an overlapping delivery is "in progress", not a second copy;
//! - `transfer`: ECM download read ahead into an atomic SFTP put
//!   (temporary dot-file, size check, SHA-256 while streaming, rename);
//! - `deliver`: the steps in order, with the identical-copy path (a run
//!   that stopped after its rename is finished, not repeated), the
//!   `<file>.sha256` sidecar, `Document Exported` (`audit`) and the
//!   history;
//! - `callback`, `resend`, [`sweep`]: the three ways in;
//! - `package`: collect / directory / zip / finish for folders approved
//!   as a whole.
//!
//! [`fault`] stops a run at a named step in test and debug builds only.

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

mod audit;
mod callback;
mod deliver;
mod facts;
pub mod fault;
mod history;
mod lease;
pub mod memory;
mod package;
mod resend;
pub mod sweep;
mod transfer;
pub mod zip;

pub use callback::handle_callback;
pub use package::export_package;
pub use resend::resend;

// For the plan of an export (`flows::plan`): the same facts and history.
pub(crate) use facts::{read_facts, route_workspace_types};
pub(crate) use history::history_of;

use audit::*;
use deliver::*;
use facts::*;
use history::*;
use lease::*;
use package::*;
use transfer::*;

pub use sweep::{SweepReport, sweep};

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
    /// Files delivered; each is an entry of the manifest and a
    /// `Document Exported` event.
    pub files: usize,
    pub bytes: u64,
    /// Where the per-file list is: the package's `manifest.json` (in a zip
    /// package, `<zip>:manifest.json`).
    pub manifest: String,
    pub manifest_sha256: String,
    /// Documents under the root left out because they are not approved
    /// (node id, reason): the first [`SKIPPED_LISTED`]; each one is also
    /// logged (`package document left out`).
    pub skipped: Vec<(i64, String)>,
    /// Skipped documents not in `skipped`.
    pub skipped_not_listed: usize,
}

#[cfg(test)]
mod tests;
