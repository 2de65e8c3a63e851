//! The ingest flow (DESIGN.md §3–4): one scheduled run of a route moves ready
//! files from a partner's SFTP directory into Content Server, exactly once.
//!
//! A run: recover stale claims in `.inflight/`, list the source directory,
//! decide readiness (a second listing after `settle_secs` when the route asks
//! for it), then for each ready document, with bounded parallelism: claim it
//! by one atomic rename, read its sidecar, open it once, classify it on its
//! first bytes, plan the placement, find or create workspace and folders, and
//! stream the rest of the bytes straight into the upload. Verified documents
//! are archived or deleted; permanent failures go to `failed/` with a report;
//! transient ones leave the claim for a later run (quarantine after
//! `max_attempts`). Claiming stops when the deadline is near.
//!
//! # Exactly once while streaming
//!
//! The SHA-256 is known only after the bytes have streamed, but the upload's
//! metadata (with the categories) precedes the file part, and a large file
//! must not be read twice. So:
//!
//! 1. At creation the transfer-history category holds what is known up front
//!    (route, host, source path, size, received time, invocation id) and, in
//!    the idempotency-key attribute, a *pending key*:
//!    `pending-<claim identity>-v<version>`. The claim identity hashes route,
//!    source path, size and the file's mtime, all of which survive the claim
//!    rename and a takeover, so a rerun computes the same identity.
//! 2. The bytes stream once, hashed by the ECM adapter on their way out.
//! 3. The category is updated with the SHA-256, the final idempotency key
//!    (`ik1-…` over route, path, size, SHA-256) and the ingest time. Then the
//!    node is verified (size) and only then is the source archived/deleted.
//!
//! Before any upload the planned document (exact name in the target folder)
//! is looked up. A pending key equal to ours means a crashed run of this
//! file: if the document already has the pending version, only step 3 is
//! redone (the source is hashed, a second read that only crash recovery
//! pays); otherwise the version is added. A final key with the same route,
//! path and size means the file was ingested and the run died before the
//! archive: the source is hashed and, if identical, counted as already
//! ingested. Received time is the file's mtime (not the claim time) so that
//! date folders (`Invoices/{yyyy}/{mm}`) render the same on a rerun.
//!
//! Files up to 256 KiB are the exception: they are read whole when opened
//! (bounded: parallelism x 256 KiB), so their SHA-256 and final key go into
//! the creation request and no category update follows; a rerun then finds
//! the final key (same origin and SHA-256) and counts the file as already
//! ingested.
//!
//! Conflict policies need our SHA-256 only when the name is taken:
//! `skip-if-identical` hashes first (and never uploads after that), and
//! `add-version` hashes first only when the existing document has the same
//! size (different sizes cannot be identical content); if it then differs,
//! the file is opened a second time for the upload.
//!
//! Once a file has left its claim (archived, deleted or moved to `failed/`),
//! the claim's now empty directories are removed (best effort; a leftover
//! empty directory is harmless and skipped by later runs).
//!
//! Under the `rename` policy a rerun after a crash also looks at the numbered
//! copies (`name (2).pdf`, …) for this file's key, so a copy created just
//! before the crash is finished rather than numbered once more.
//!
//! # Outcomes, memory and response size
//!
//! Each file's outcome is counted and, while there is room, listed in the
//! response, whose size is bounded ([`RESPONSE_MAX_BYTES`]) whatever the
//! drop; a run with more outcomes than the response lists writes every one
//! into a run report on SFTP as it goes (`ingest/outcomes.rs`). Nothing per
//! file is kept for the whole run beyond the listing readiness needs:
//! listings are taken page by page, results as they come, and the per-name
//! locks only while a name is being placed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{Instrument, info, info_span, warn};

use crate::domain::audit::{EventDetail, IngestOutcome, TransferFailed, TransferIngested};
use crate::domain::claim::{
    self, AfterTransient, ClaimTag, ExistingClaim, FailureKind, FailureReport,
};
use crate::domain::classify::{self, Candidate, HEAD_LEN, MAX_INDEX_BYTES, MAX_SIDECAR_BYTES};
use crate::domain::names::{
    CS_NAME_MAX_CHARS, SFTP_NAME_MAX_BYTES, escape_non_utf8, hidden_name_problem, numbered,
};
use crate::domain::paths::{PathError, RemotePath};
use crate::domain::placement::{self, ConflictPolicy, PlacementPlan, WorkspaceTarget};
use crate::domain::readiness::{self, Evidence, Observation, Readiness};
use crate::domain::route::{
    EntryRole, FAILED_DIR, INFLIGHT_DIR, PostActionConfig, Route, SidecarFormat,
};
use crate::domain::transfer::{TransferFacts, idempotency_key, pending_identity, pending_key};
use crate::ports::ecm::{
    self as ecm_port, AppliedCategory, BusinessObject, CategoryValues, Content, CreateWorkspace,
    Ecm, EcmError, NodeId, UploadRequest,
};
use crate::ports::events::{DetailType, Event, EventSink};
use crate::ports::file_store::{
    ByteStream, EntryKind, FileStore, FileStoreError, ReadHandle, RenameMode,
};

/// Deepest directory level a recursive route walks (guards against loops
/// through server-side symlinked directories).
const MAX_DEPTH: usize = 16;

/// Wall-clock source, injected so tests can pin dates.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The ports one run talks to.
pub struct IngestDeps<'a> {
    /// The partner's server, rooted where the route's `source_dir` is relative to.
    pub store: &'a dyn FileStore,
    pub ecm: &'a dyn Ecm,
    pub events: &'a dyn EventSink,
    pub clock: &'a dyn Clock,
    /// Recorded in transfer history (`SFTP Host`).
    pub sftp_host: String,
}

/// The invocation as the flow sees it.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub invocation_id: String,
    /// When the invocation is cut off.
    pub deadline: Instant,
    /// No new claim is made when less than this is left: an upload started
    /// must have time to finish and be archived.
    pub stop_margin: Duration,
}

impl RunContext {
    /// The margin for an invocation of `budget`: a fifth of it, within 2..=60 s.
    pub fn new(invocation_id: impl Into<String>, budget: Duration) -> Self {
        let margin = (budget / 5).clamp(Duration::from_secs(2), Duration::from_secs(60));
        Self {
            invocation_id: invocation_id.into(),
            deadline: Instant::now() + budget,
            stop_margin: margin,
        }
    }

    fn near_deadline(&self) -> bool {
        self.deadline.saturating_duration_since(Instant::now()) <= self.stop_margin
    }
}

/// Run-level failures (the per-file ones end up in the report).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("route {route}: source_dir {dir:?} is not a valid path on the SFTP server: {source}")]
    SourceDir {
        route: String,
        dir: String,
        #[source]
        source: PathError,
    },
    #[error("route {route}: listing {dir} failed: {source}")]
    List {
        route: String,
        dir: String,
        #[source]
        source: FileStoreError,
    },
    /// The server cannot rename without replacing (or the probe failed):
    /// claims would not be exclusive, so nothing is claimed.
    #[error("route {route}: the SFTP server cannot be used for claims in {dir}: {source}")]
    UnsafeServer {
        route: String,
        dir: String,
        #[source]
        source: FileStoreError,
    },
}

impl IngestError {
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::SourceDir { .. } => false,
            IngestError::UnsafeServer { source, .. } => source.is_retryable(),
            IngestError::List { source, .. } => {
                source.is_retryable() || matches!(source, FileStoreError::NotFound { .. })
            }
        }
    }
}

/// What became of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileOutcome {
    Created,
    VersionAdded,
    SkippedIdentical,
    AlreadyIngested,
    Failed,
    Quarantined,
    /// Not ready, claimed by someone else, or failed transiently: the next
    /// run looks at it again.
    Deferred,
    /// Ready but not claimed: the deadline was near, a limit was reached or
    /// the run stopped on an outage. Still in intake for the next run.
    LeftForNextRun,
    /// A manual retry moved it from `failed/` back into intake.
    Requeued,
    /// Claimed and sent to the route's work queue (fan-out, docs/fanout.md).
    Dispatched,
}

/// One file's outcome: an entry of the response's lists and a line of the
/// run report.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub source_path: String,
    pub outcome: FileOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Where it went in Content Server: workspace node and folder path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecm_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `failed/...`, `archive/...` or `deleted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds from the start of the file's processing (after its
    /// claim) until the document is verified in the ECM and the source
    /// archived or deleted, as in the `Transfer Ingested` event; ingested
    /// files only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl FileReport {
    fn new(source_path: &str, outcome: FileOutcome) -> Self {
        Self {
            source_path: source_path.to_owned(),
            outcome,
            rule: None,
            node_id: None,
            version: None,
            ecm_path: None,
            size: None,
            sha256: None,
            moved_to: None,
            reason: None,
            duration_ms: None,
        }
    }

    fn deferred(source_path: &str, reason: impl Into<String>) -> Self {
        let mut r = Self::new(source_path, FileOutcome::Deferred);
        r.reason = Some(reason.into());
        r
    }

    fn left(source_path: &str, reason: impl Into<String>) -> Self {
        let mut r = Self::new(source_path, FileOutcome::LeftForNextRun);
        r.reason = Some(reason.into());
        r
    }

    /// The entry as the response lists it: a long reason is cut (the run
    /// report has it whole).
    fn for_response(&self) -> FileReport {
        let mut f = self.clone();
        if let Some(r) = &mut f.reason
            && r.len() > LISTED_REASON_BYTES
        {
            let mut end = LISTED_REASON_BYTES;
            while !r.is_char_boundary(end) {
                end -= 1;
            }
            r.truncate(end);
            r.push_str(" …");
        }
        f
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub ingested: u32,
    pub skipped: u32,
    pub failed: u32,
    pub deferred: u32,
    pub requeued: u32,
    /// Claimed files sent to the work queue (fan-out routes only).
    #[serde(skip_serializing_if = "is_zero")]
    pub dispatched: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Outcomes the response lists in `files`, at most (the first ones).
pub const FILES_LISTED: usize = 100;
/// Failures the response lists in `failures`, at most (the first ones).
pub const FAILURES_LISTED: usize = 100;
/// JSON bytes each of the two lists may take: with the counts and the
/// pointer, the response stays under [`RESPONSE_MAX_BYTES`] however long
/// the paths and reasons (Lambda refuses a response over 6 MB, and a
/// console shows far less).
const LIST_BYTES: usize = 96 * 1024;
/// A listed entry's reason is cut to this many bytes.
const LISTED_REASON_BYTES: usize = 1024;
/// The bound on a response's JSON, whatever the drop's size.
pub const RESPONSE_MAX_BYTES: usize = 256 * 1024;

/// The response of a run: counts, the first outcomes and failures, and where
/// every outcome is. Its size is bounded (see [`RESPONSE_MAX_BYTES`]), so a
/// drop of any size can be invoked from the console.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub route: String,
    pub invocation_id: String,
    pub counts: Counts,
    /// Ready files not claimed because the deadline, a limit or an outage
    /// stopped the run (outcome `left-for-next-run`); they stay in intake.
    pub left_for_next_run: u32,
    pub stopped_early: bool,
    /// The first outcomes of the run (at most [`FILES_LISTED`]).
    pub files: Vec<FileReport>,
    /// Outcomes not in `files`.
    pub files_not_listed: u32,
    /// The first failed or quarantined files with their reasons (at most
    /// [`FAILURES_LISTED`]; also in `files` if among the first outcomes).
    pub failures: Vec<FileReport>,
    /// Failures not in `failures`.
    pub failures_not_listed: u32,
    /// Where the outcome of every file is.
    pub outcomes: FullOutcome,
    #[serde(skip)]
    files_room: ListRoom,
    #[serde(skip)]
    failures_room: ListRoom,
}

/// Where every file's outcome of a run can be read.
#[derive(Debug, Clone, Serialize)]
pub struct FullOutcome {
    /// `files` lists every outcome (no run report was needed).
    pub all_listed: bool,
    /// The run report on the route's SFTP server (path from the SFTP root,
    /// like `moved_to`): one JSON line per file, as in `files`, each file
    /// once. Written, and made visible atomically at the end of the run,
    /// when `files` cannot list every outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Lines in the run report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_lines: Option<u64>,
    /// Why the run report could not be written; the outcomes it lacks are
    /// in the log (`file outcome not in the run report`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_error: Option<String>,
    /// The audit trail, per file too.
    pub events: &'static str,
}

impl Default for FullOutcome {
    fn default() -> Self {
        Self {
            all_listed: true,
            report: None,
            report_lines: None,
            report_error: None,
            events: "one `Transfer Ingested` or `Transfer Failed` event per ingested or failed file (source xecm-sftp, detail.invocation_id of this run)",
        }
    }
}

/// The room left in one of the response's lists. Once an entry does not
/// fit, the list is closed, so it always holds the *first* entries.
#[derive(Debug, Clone, Copy, Default)]
struct ListRoom {
    bytes: usize,
    closed: bool,
}

impl ListRoom {
    /// Lists `f` if it fits; `false` otherwise.
    fn take(&mut self, f: &FileReport, list: &mut Vec<FileReport>, max: usize) -> bool {
        if self.closed {
            return false;
        }
        let entry = f.for_response();
        // The comma and indentation of a pretty print stay within this too.
        let n = serde_json::to_vec(&entry).map_or(usize::MAX, |v| v.len() + 16);
        if list.len() >= max || self.bytes.saturating_add(n) > LIST_BYTES {
            self.closed = true;
            return false;
        }
        self.bytes += n;
        list.push(entry);
        true
    }
}

impl IngestReport {
    fn new(route: &str, invocation_id: &str) -> Self {
        Self {
            route: route.to_owned(),
            invocation_id: invocation_id.to_owned(),
            counts: Counts::default(),
            left_for_next_run: 0,
            stopped_early: false,
            files: Vec::new(),
            files_not_listed: 0,
            failures: Vec::new(),
            failures_not_listed: 0,
            outcomes: FullOutcome::default(),
            files_room: ListRoom::default(),
            failures_room: ListRoom::default(),
        }
    }

    /// Counts `f` and lists it while the lists have room. `false`: `f` is
    /// not in `files` (only the run report can hold it).
    fn record(&mut self, f: &FileReport) -> bool {
        match f.outcome {
            FileOutcome::Created | FileOutcome::VersionAdded => self.counts.ingested += 1,
            FileOutcome::SkippedIdentical | FileOutcome::AlreadyIngested => {
                self.counts.skipped += 1
            }
            FileOutcome::Failed | FileOutcome::Quarantined => {
                self.counts.failed += 1;
                if !self
                    .failures_room
                    .take(f, &mut self.failures, FAILURES_LISTED)
                {
                    self.failures_not_listed += 1;
                }
            }
            FileOutcome::Deferred => self.counts.deferred += 1,
            FileOutcome::LeftForNextRun => self.left_for_next_run += 1,
            FileOutcome::Requeued => self.counts.requeued += 1,
            FileOutcome::Dispatched => self.counts.dispatched += 1,
        }
        let listed = self.files_room.take(f, &mut self.files, FILES_LISTED);
        if !listed {
            self.files_not_listed += 1;
            self.outcomes.all_listed = false;
        }
        listed
    }
}

// ---------------------------------------------------------------- listing

/// A listed file: raw segments below `source_dir` (names need not be UTF-8)
/// and the `%XX`-escaped text the domain decides on.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) segs: Vec<Vec<u8>>,
    pub(crate) rel: String,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
}

pub(crate) fn rel_text(segs: &[Vec<u8>]) -> String {
    segs.iter()
        .map(|s| escape_non_utf8(s))
        .collect::<Vec<_>>()
        .join("/")
}

pub(crate) fn join_all(base: &RemotePath, segs: &[Vec<u8>]) -> Result<RemotePath, PathError> {
    segs.iter().try_fold(base.clone(), |p, s| p.join(s))
}

fn join_text(base: &RemotePath, rel: &str) -> Result<RemotePath, PathError> {
    rel.split('/').try_fold(base.clone(), |p, s| p.join(s))
}

/// Lists `dir` (recursively when asked), skipping dot-entries and, at the
/// top level, the route's work folders. Pages are taken as the server sends
/// them and only the compact [`Listed`] of each file is kept.
pub(crate) async fn walk(
    store: &dyn FileStore,
    dir: &RemotePath,
    recursive: bool,
    skip_top: &BTreeSet<&[u8]>,
) -> Result<Vec<Listed>, FileStoreError> {
    let mut out = Vec::new();
    let mut stack: Vec<(RemotePath, Vec<Vec<u8>>)> = vec![(dir.clone(), Vec::new())];
    while let Some((d, prefix)) = stack.pop() {
        let mut pages = store.list_pages(&d).await?;
        while let Some(page) = pages.next().await {
            for e in page? {
                if e.name.first() == Some(&b'.') {
                    continue;
                }
                match e.meta.kind {
                    EntryKind::Dir
                        if recursive
                            && prefix.len() + 1 < MAX_DEPTH
                            && !(prefix.is_empty() && skip_top.contains(e.name.as_slice())) =>
                    {
                        let mut segs = prefix.clone();
                        segs.push(e.name);
                        stack.push((e.path, segs));
                    }
                    EntryKind::File => {
                        let mut segs = Vec::with_capacity(prefix.len() + 1);
                        segs.extend(prefix.iter().cloned());
                        segs.push(e.name);
                        out.push(Listed {
                            rel: rel_text(&segs),
                            segs,
                            size: e.meta.size.unwrap_or(0),
                            mtime: e.meta.mtime.map(|t| t.timestamp()).unwrap_or(0),
                        });
                    }
                    // Symlinks and specials are not documents a partner drops.
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- the run

/// A document to process, already claimed.
#[derive(Debug, Clone)]
struct Claimed {
    /// Original path below `source_dir`, escaped text.
    rel: String,
    tag: ClaimTag,
    /// The claimed file (under `.inflight/<tag>/`).
    path: RemotePath,
    sidecar: Option<(SidecarFormat, RemotePath, Vec<Vec<u8>>)>,
    /// Its sidecar is in intake but could not be brought into the claim:
    /// not ingested without it this time.
    sidecar_error: Option<String>,
    size: u64,
    mtime: i64,
}

struct Run<'a> {
    route: &'a Route,
    deps: &'a IngestDeps<'a>,
    ctx: &'a RunContext,
    src: RemotePath,
    inflight: RemotePath,
    index_rows: BTreeMap<String, classify::Metadata>,
    claimed_files: AtomicU32,
    claimed_bytes: AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
    /// Workspaces found or created in this run, by their rendered target.
    workspaces: tokio::sync::Mutex<BTreeMap<String, NodeId>>,
    /// Folders found or created in this run (many files share a folder;
    /// one walk each instead of one per file).
    folders: tokio::sync::Mutex<BTreeMap<(NodeId, Vec<String>), NodeId>>,
    /// SFTP directories known to exist (claim, archive and failed folders).
    dirs: std::sync::Mutex<BTreeSet<Vec<u8>>>,
    /// Claim directories whose files have left them: removed at the end of
    /// the run if empty (files of one run share a claim directory).
    released: std::sync::Mutex<BTreeSet<RemotePath>>,
    /// Events not yet published: sent in batches of [`EVENT_BATCH`] (one
    /// PutEvents call each) and the rest at the end of the run.
    events: tokio::sync::Mutex<Vec<Event>>,
    /// Set by the first run-level fault (the ECM or the SFTP server
    /// unavailable): no further claim is made, claimed files are not tried,
    /// and this run's claims are released at the end (see [`ClaimTag::released`]).
    outage: std::sync::atomic::AtomicBool,
    /// Claim directories of this run that still hold a deferred file.
    held: std::sync::Mutex<BTreeMap<String, ClaimTag>>,
    /// One lock per target (folder, document name): files of one run that
    /// go to the same name are placed one after the other, so the second
    /// sees the first and its conflict policy applies.
    name_locks: std::sync::Mutex<BTreeMap<(NodeId, String), NameLock>>,
    /// Index rows refused, by the document they name: (index, row).
    refused_rows: BTreeMap<String, (String, classify::RefusedRow)>,
}

/// Serialises the placement of one target name (see `Run::name_locks`).
type NameLock = std::sync::Arc<tokio::sync::Mutex<()>>;

/// A file's share of a name lock. The last holder removes the lock from
/// the run's map, so the map holds only names being placed (at most the
/// run's parallelism), not every name of the drop.
struct HeldNameLock<'r> {
    locks: &'r std::sync::Mutex<BTreeMap<(NodeId, String), NameLock>>,
    key: (NodeId, String),
    lock: NameLock,
}

impl Drop for HeldNameLock<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits for it. A new holder must
        // take the map's lock first, so none can appear meanwhile.
        if std::sync::Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.key);
        }
    }
}

/// How often one file re-applies its conflict policy after the ECM answered
/// `Conflict` within one run.
const MAX_CONFLICT_RETRIES: u32 = 3;

/// Numbered copies (`name (2).pdf` …) searched for this file's own copy
/// under the `rename` policy.
const NUMBERED_COPIES_SEARCHED: u32 = 50;

/// Files up to this size are read whole before the upload (module docs).
const SMALL_FILE_BYTES: u64 = 256 * 1024;

/// PutEvents takes at most 10 entries.
const EVENT_BATCH: usize = 10;

/// Entries a run's look-up caches (workspaces, folders, SFTP directories)
/// hold at most: a drop into as many targets as files must not keep one
/// entry per file. A full cache starts afresh (a miss only costs a look-up).
const RUN_CACHE_ENTRIES: usize = 4096;

fn bounded_insert<K: Ord, V>(cache: &mut BTreeMap<K, V>, key: K, value: V) {
    if cache.len() >= RUN_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, value);
}

/// The route's source directory on its SFTP store (the store's root when
/// `source_dir` is empty or `/`).
pub(crate) fn source_dir(route: &Route, store: &dyn FileStore) -> Result<RemotePath, IngestError> {
    let cfg = &route.config;
    if cfg.source_dir.trim_matches('/').is_empty() {
        return Ok(store.root().path());
    }
    store
        .root()
        .resolve(cfg.source_dir.trim_end_matches('/'))
        .map_err(|source| IngestError::SourceDir {
            route: cfg.name.clone(),
            dir: cfg.source_dir.clone(),
            source,
        })
}

/// Runs one scheduled ingest of `route`.
pub async fn run(
    route: &Route,
    deps: &IngestDeps<'_>,
    ctx: &RunContext,
) -> Result<IngestReport, IngestError> {
    let cfg = &route.config;
    let src = source_dir(route, deps.store)?;
    let inflight = src
        .join(INFLIGHT_DIR)
        .map_err(|source| IngestError::SourceDir {
            route: cfg.name.clone(),
            dir: cfg.source_dir.clone(),
            source,
        })?;
    let span = info_span!("ingest", route = %cfg.name, invocation = %ctx.invocation_id);
    // Outcomes stream into the run report (outcomes.rs) while the run goes
    // on; the response keeps counts and the first ones.
    let target = outcomes::ReportTarget::new(&src, &cfg.name, &ctx.invocation_id, deps.clock.now());
    let (tx, rx) = outcomes::channel();
    let mut out = Outcomes::new(
        IngestReport::new(&cfg.name, &ctx.invocation_id),
        target.as_ref().map(|_| tx).map_err(Clone::clone),
    );
    let body = async move {
        let report = &mut out;
        let mut run = Run {
            route,
            deps,
            ctx,
            src,
            inflight,
            index_rows: BTreeMap::new(),
            claimed_files: AtomicU32::new(0),
            claimed_bytes: AtomicU64::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
            workspaces: tokio::sync::Mutex::new(BTreeMap::new()),
            folders: tokio::sync::Mutex::new(BTreeMap::new()),
            dirs: std::sync::Mutex::new(BTreeSet::new()),
            released: std::sync::Mutex::new(BTreeSet::new()),
            events: tokio::sync::Mutex::new(Vec::new()),
            outage: std::sync::atomic::AtomicBool::new(false),
            held: std::sync::Mutex::new(BTreeMap::new()),
            name_locks: std::sync::Mutex::new(BTreeMap::new()),
            refused_rows: BTreeMap::new(),
        };
        let src_text = run.src.to_string();
        let list_err = |source| IngestError::List {
            route: cfg.name.clone(),
            dir: src_text.clone(),
            source,
        };

        // 0. "One rename wins" must hold on this server before anything is
        // claimed: a server whose rename replaces its target is refused here,
        // with the reason, instead of at every file.
        if let Err(source) = deps.store.verify_no_replace(&run.src).await {
            if matches!(source, FileStoreError::NotFound { .. }) {
                return Err(list_err(source));
            }
            return Err(IngestError::UnsafeServer {
                route: cfg.name.clone(),
                dir: src_text.clone(),
                source,
            });
        }

        // 1. Claims left by earlier runs.
        let recovered = run.recover_claims(report).await;

        // 2. Listing, indexes, readiness.
        let archive_root = archive_root(route);
        let mut skip_top: BTreeSet<&[u8]> = BTreeSet::new();
        skip_top.insert(FAILED_DIR.as_bytes());
        if let Some(a) = &archive_root {
            skip_top.insert(a.as_bytes());
        }
        let first = match walk(deps.store, &run.src, cfg.recursive, &skip_top).await {
            Ok(f) => f,
            Err(e) => {
                // Quarantines decided during recovery are on SFTP already;
                // their events must not be lost with the run.
                run.flush_events().await;
                return Err(list_err(e));
            }
        };
        let first_at = deps.clock.now().timestamp();
        let indexes = run.load_indexes(&first, report).await;
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        let settles = cfg.readiness.settle_secs.is_some();
        let observed = assess_all(
            route,
            first,
            None,
            first_at,
            &mut ready,
            &mut waiting,
            settles,
        );
        if cfg.readiness.settle_secs.is_some() && !waiting.is_empty() {
            let wait = waiting.iter().filter_map(|(_, w)| *w).max().unwrap_or(0);
            let left = ctx
                .deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(ctx.stop_margin);
            if wait > 0 && Duration::from_secs(wait) < left {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let second = match walk(deps.store, &run.src, cfg.recursive, &skip_top).await {
                    Ok(f) => f,
                    Err(e) => {
                        run.flush_events().await;
                        return Err(list_err(e));
                    }
                };
                let now = deps.clock.now().timestamp();
                ready.clear();
                waiting.clear();
                assess_all(
                    route,
                    second,
                    Some((&observed, first_at)),
                    now,
                    &mut ready,
                    &mut waiting,
                    false,
                );
            }
        }
        drop(observed);
        // Paths an index lists: only their deferrals matter in step 4.
        let index_names: BTreeSet<&str> = indexes
            .iter()
            .flat_map(|(_, _, rows)| rows.iter().map(String::as_str))
            .collect();
        let mut remaining: BTreeSet<String> = BTreeSet::new();
        for ((rel, reason), _) in waiting {
            if index_names.contains(rel.as_str()) {
                remaining.insert(rel.clone());
            }
            report.push(FileReport::deferred(&rel, reason)).await;
        }

        // 3. Claim and process, recovered claims first.
        let run = &run;
        let parallelism = cfg.limits.parallelism.max(1) as usize;
        // Outcomes are taken as they come, not collected: memory does not
        // grow with the drop.
        let mut recovered_work = futures_util::stream::iter(recovered)
            .map(|c| async move { run.process_claimed(c).await })
            .buffer_unordered(parallelism);
        while let Some(f) = recovered_work.next().await {
            report.push(f).await;
        }
        drop(recovered_work);

        let mut results = futures_util::stream::iter(ready)
            .map(|(l, sidecar, refusal)| async move {
                run.claim_and_process(l, sidecar.map(|s| *s), refusal).await
            })
            .buffer_unordered(parallelism);
        while let Some(f) = results.next().await {
            if matches!(
                f.outcome,
                FileOutcome::Deferred | FileOutcome::LeftForNextRun
            ) && index_names.contains(f.source_path.as_str())
            {
                remaining.insert(f.source_path.clone());
            }
            report.push(f).await;
        }
        drop(results);
        report.report.stopped_early = run.stopped.load(Ordering::Relaxed);

        // 4. Index files whose documents are all gone from intake and from
        // every claim are done (looked at afresh: a file may sit in another
        // run's claim, or in one of ours that a transient failure kept).
        let pending = if indexes.is_empty() {
            None
        } else {
            run.paths_still_pending(&skip_top).await
        };
        for (index_rel, segs, rows) in indexes {
            let Some(pending) = &pending else {
                break;
            };
            if rows
                .iter()
                .any(|r| remaining.contains(r) || pending.contains(r))
            {
                continue;
            }
            run.post_action_index(&index_rel, &segs).await;
        }
        run.remove_released_dirs().await;
        run.release_held_claims().await;
        run.flush_events().await;
        report.close().await;
        Ok::<_, IngestError>(out)
    }
    .instrument(span);
    let (result, written) = tokio::join!(
        body,
        outcomes::write_report(deps.store, target.as_ref().ok(), rx, deps.clock.now())
    );
    let report = result?.finish(target.as_ref().ok(), written);
    info!(
        route = %cfg.name,
        ingested = report.counts.ingested,
        skipped = report.counts.skipped,
        failed = report.counts.failed,
        deferred = report.counts.deferred,
        left = report.left_for_next_run,
        report = report.outcomes.report.as_deref().unwrap_or("-"),
        "ingest run finished"
    );
    Ok(report)
}

/// The first segment of the archive directory: a work folder that listings skip.
pub(crate) fn archive_root(route: &Route) -> Option<String> {
    match &route.config.post_action {
        PostActionConfig::Archive { dir } => dir
            .trim_start_matches('/')
            .split('/')
            .next()
            .filter(|s| !s.is_empty() && !s.contains('{'))
            .map(str::to_owned),
        PostActionConfig::Delete => None,
    }
}

pub(crate) type Waiting = ((String, String), Option<u64>);
/// A document to claim, its sidecar, and, for a complete file that can
/// never be accepted (empty), why it is refused.
/// (The sidecar is boxed: most documents have none, and a drop's every
/// document waits in this form until it is claimed.)
pub(crate) type ReadyDoc = (Listed, Option<Box<(SidecarFormat, Listed)>>, Option<String>);

/// Sorts listed entries into ready documents (with their sidecars) and
/// waiting ones (with the seconds to wait for a second look, if that is what
/// they need); the entries move, none is copied. Returns the observations
/// for a later second look when `observe` asks for them (empty otherwise).
pub(crate) fn assess_all(
    route: &Route,
    listed: Vec<Listed>,
    earlier: Option<(&BTreeMap<String, Observation>, i64)>,
    now: i64,
    ready: &mut Vec<ReadyDoc>,
    waiting: &mut Vec<Waiting>,
    observe: bool,
) -> BTreeMap<String, Observation> {
    let mut markers = BTreeSet::new();
    let mut sidecars: BTreeMap<String, (SidecarFormat, Listed)> = BTreeMap::new();
    let mut docs = Vec::new();
    for l in listed {
        match route.entry_role(&l.rel) {
            EntryRole::Document => docs.push(l),
            EntryRole::Marker { document } => {
                markers.insert(document);
            }
            EntryRole::Sidecar { document, format } => {
                // The first configured format wins when both exist.
                sidecars.entry(document).or_insert((format, l));
            }
            EntryRole::Index | EntryRole::Ignored(_) => {}
        }
    }
    let mut observed = BTreeMap::new();
    let evidence = |l: &Listed, marker: bool| Evidence {
        now,
        current: Observation {
            size: l.size,
            mtime: l.mtime,
        },
        earlier: earlier.and_then(|(m, at)| m.get(&l.rel).map(|o| (*o, at))),
        marker_present: marker,
    };
    if observe {
        for (_, s) in sidecars.values() {
            observed.insert(
                s.rel.clone(),
                Observation {
                    size: s.size,
                    mtime: s.mtime,
                },
            );
        }
    }
    for l in docs {
        if observe {
            let current = Observation {
                size: l.size,
                mtime: l.mtime,
            };
            observed.insert(l.rel.clone(), current);
        }
        let marker = markers.contains(&l.rel);
        let verdict = readiness::assess(route.readiness(), &evidence(&l, marker));
        // A sidecar is part of its document: both are complete or neither
        // is taken (an empty sidecar is complete, and refused when read).
        if matches!(verdict, Readiness::Ready | Readiness::Refuse(_))
            && let Some((_, s)) = sidecars.get(&l.rel)
            && let Readiness::NotYet(why) =
                readiness::assess(route.readiness(), &evidence(s, marker))
        {
            let wait = match why {
                readiness::NotReady::NeedsSecondLook { wait_secs } => Some(wait_secs),
                _ => None,
            };
            waiting.push((
                (
                    l.rel.clone(),
                    format!("not ready: its sidecar {}: {}", s.rel, why.reason()),
                ),
                wait,
            ));
            continue;
        }
        match verdict {
            Readiness::Ready => {
                let sidecar = sidecars.remove(&l.rel).map(Box::new);
                ready.push((l, sidecar, None))
            }
            Readiness::Refuse(why) => {
                let sidecar = sidecars.remove(&l.rel).map(Box::new);
                ready.push((l, sidecar, Some(why.reason())))
            }
            Readiness::NotYet(why) => {
                let wait = match why {
                    readiness::NotReady::NeedsSecondLook { wait_secs } => Some(wait_secs),
                    _ => None,
                };
                waiting.push((
                    (l.rel.clone(), format!("not ready: {}", why.reason())),
                    wait,
                ));
            }
        }
    }
    observed
}

/// A permanent or transient failure of one file.
#[derive(Debug)]
enum Failure {
    Permanent(String),
    /// A retry can help. `outage`: the ECM or the SFTP server failed in a
    /// way a retry may cure (unavailable, timeouts, an expired ticket): a
    /// run-level fault, not this file's, so the run stops and no attempt is
    /// spent on it.
    Transient {
        reason: String,
        outage: bool,
    },
    /// The ECM refused a create because the name is taken (by a writer
    /// outside this run, after our look-up): the conflict policy is applied
    /// again.
    Conflict(String),
}

impl Failure {
    fn transient(reason: impl Into<String>) -> Self {
        Failure::Transient {
            reason: reason.into(),
            outage: false,
        }
    }
}

impl From<EcmError> for Failure {
    fn from(e: EcmError) -> Self {
        // The adapter decides what a retry can cure (is_retryable); this
        // flow never second-guesses it by the error's variant.
        if e.is_conflict() {
            Failure::Conflict(e.to_string())
        } else if e.is_retryable() {
            Failure::Transient {
                reason: e.to_string(),
                outage: true,
            }
        } else {
            Failure::Permanent(e.to_string())
        }
    }
}

impl From<FileStoreError> for Failure {
    fn from(e: FileStoreError) -> Self {
        if e.is_retryable() {
            Failure::Transient {
                reason: e.to_string(),
                outage: true,
            }
        } else {
            Failure::Permanent(e.to_string())
        }
    }
}

impl From<PathError> for Failure {
    fn from(e: PathError) -> Self {
        Failure::Permanent(e.to_string())
    }
}

/// What a successful ingest did.
#[derive(Debug)]
struct Done {
    outcome: IngestOutcome,
    rule: Option<String>,
    node_id: NodeId,
    version: u32,
    document_name: String,
    ecm_path: String,
    sha256: String,
    key: String,
}

/// The transfer-history values of an existing document.
#[derive(Debug, Default)]
struct History {
    route: Option<String>,
    source_path: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    key: Option<String>,
}

pub(crate) fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Array(a) => a.first().and_then(text),
        _ => None,
    }
}

fn to_applied(map: &placement::CategoryMap) -> Vec<AppliedCategory> {
    map.iter()
        .map(|(id, attrs)| AppliedCategory {
            category_id: *id,
            values: attrs
                .iter()
                // An empty value is "not set"; typed attributes (dates,
                // integers) would refuse an empty string.
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        })
        .filter(|c| !c.values.is_empty())
        .collect()
}

fn ecm_stream(body: ByteStream) -> ecm_port::ByteStream {
    Box::pin(body.map(|r| r.map_err(std::io::Error::other)))
}

/// Reads the first bytes of a body for classification without losing them.
pub(crate) async fn read_head(h: &mut ReadHandle) -> Result<Vec<Bytes>, FileStoreError> {
    let mut chunks = Vec::new();
    let mut n = 0;
    while n < HEAD_LEN {
        match h.body.next().await {
            Some(c) => {
                let c = c?;
                n += c.len();
                chunks.push(c);
            }
            None => break,
        }
    }
    Ok(chunks)
}

pub(crate) async fn hash_rest(
    head: &[Bytes],
    mut body: ByteStream,
) -> Result<(String, u64), FileStoreError> {
    let mut h = Sha256::new();
    let mut n = 0u64;
    for c in head {
        h.update(c);
        n += c.len() as u64;
    }
    while let Some(c) = body.next().await {
        let c = c?;
        h.update(&c);
        n += c.len() as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

impl Run<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.deps.clock.now()
    }

    fn rfc3339(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    // ------------------------------------------------------------ claims

    /// Looks at `.inflight/`: takes over expired claims of this route,
    /// quarantines those out of attempts, reports held ones as deferred.
    async fn recover_claims(&self, report: &mut Outcomes) -> Vec<Claimed> {
        let mut out = Vec::new();
        let entries = match self.deps.store.list(&self.inflight).await {
            Ok(e) => e,
            Err(FileStoreError::NotFound { .. }) => return out,
            Err(e) => {
                warn!(error = %e, "cannot list claims; they wait for the next run");
                return out;
            }
        };
        let now = self.now().timestamp();
        let limits = self.route.limits();
        for e in entries {
            if e.meta.kind != EntryKind::Dir {
                continue;
            }
            let Some(tag) = ClaimTag::parse(&e.display_name) else {
                continue;
            };
            match claim::decide_existing(
                &tag,
                self.route.name(),
                now,
                limits.lease_secs,
                limits.max_attempts,
                &self.ctx.invocation_id,
            ) {
                ExistingClaim::ForeignRoute => {}
                ExistingClaim::TakeOver(_) | ExistingClaim::Quarantine { .. }
                    if self.remove_empty_claim(&e.path).await =>
                {
                    info!(claim = %e.display_name, "removed an empty claim folder left by an interrupted run");
                }
                ExistingClaim::Held { expires_in } => {
                    for c in self.claimed_in(&e.path, &tag, false).await {
                        report
                            .push(FileReport::deferred(
                                &c.rel,
                                format!("claimed by another run; lease ends in {expires_in} s"),
                            ))
                            .await;
                    }
                }
                ExistingClaim::TakeOver(new_tag) => {
                    let Ok(new_dir) = self.inflight.join(new_tag.dir_name()) else {
                        continue;
                    };
                    match self
                        .deps
                        .store
                        .rename(&e.path, &new_dir, RenameMode::NoReplace)
                        .await
                    {
                        Ok(()) => {
                            let files = self.claimed_in(&new_dir, &new_tag, true).await;
                            info!(claim = %e.display_name, files = files.len(), "took over an expired claim");
                            if files.is_empty() {
                                // Only leftovers (a sidecar) were in it, now gone.
                                self.remove_empty_claim(&new_dir).await;
                            }
                            out.extend(files);
                        }
                        // Another run won the takeover.
                        Err(err) => {
                            info!(claim = %e.display_name, error = %err, "takeover lost")
                        }
                    }
                }
                ExistingClaim::Quarantine { attempts } => {
                    for c in self.claimed_in(&e.path, &tag, true).await {
                        let reason = format!(
                            "quarantined after {attempts} attempts that did not finish (lease of {} s expired each time)",
                            limits.lease_secs
                        );
                        let f = self.fail(&c, FailureKind::Quarantined, &reason, None).await;
                        report.push(f).await;
                    }
                }
            }
        }
        out
    }

    /// Removes an expired claim directory that holds no file at all (a run
    /// killed between creating it and its claim rename), deepest first.
    /// `false` if anything is in it or a listing fails.
    async fn remove_empty_claim(&self, dir: &RemotePath) -> bool {
        let mut dirs = vec![dir.clone()];
        let mut i = 0;
        while i < dirs.len() {
            let Ok(entries) = self.deps.store.list(&dirs[i]).await else {
                return false;
            };
            for e in entries {
                if e.meta.kind != EntryKind::Dir || dirs.len() > 1000 {
                    return false;
                }
                dirs.push(e.path);
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            if let Err(e) = self.deps.store.remove_dir(d).await {
                warn!(dir = %d, error = %e, "empty claim folder not removed");
                return false;
            }
        }
        true
    }

    /// The documents (with sidecars) inside a claim directory. With
    /// `adopt_sidecars` (a claim this run now owns), a document whose sidecar
    /// is still in intake (its run died between the two claim renames)
    /// gets it moved into the claim first.
    async fn claimed_in(
        &self,
        dir: &RemotePath,
        tag: &ClaimTag,
        adopt_sidecars: bool,
    ) -> Vec<Claimed> {
        let files = match walk(self.deps.store, dir, true, &BTreeSet::new()).await {
            Ok(f) => f,
            Err(e) => {
                warn!(dir = %dir, error = %e, "cannot list a claim directory");
                return Vec::new();
            }
        };
        let mut sidecars = BTreeMap::new();
        let mut docs = Vec::new();
        for l in files {
            match self.route.entry_role(&l.rel) {
                EntryRole::Sidecar { document, format } => {
                    sidecars.insert(document, (format, l));
                }
                EntryRole::Marker { .. } | EntryRole::Index => {}
                _ => docs.push(l),
            }
        }
        let mut out = Vec::new();
        for l in docs {
            let Ok(path) = join_all(dir, &l.segs) else {
                continue;
            };
            let mut sidecar = sidecars
                .remove(&l.rel)
                .and_then(|(f, s)| join_all(dir, &s.segs).ok().map(|p| (f, p, s.segs.clone())));
            let mut sidecar_error = None;
            if sidecar.is_none() && adopt_sidecars {
                match self.adopt_sidecar(dir, &l.segs).await {
                    Ok(s) => sidecar = s,
                    Err(e) => sidecar_error = Some(e),
                }
            }
            out.push(Claimed {
                rel: l.rel,
                tag: tag.clone(),
                path,
                sidecar,
                sidecar_error,
                size: l.size,
                mtime: l.mtime,
            });
        }
        // A sidecar whose document has left the claim: its run died between
        // moving the document (archive or failed/) and moving the sidecar.
        if adopt_sidecars {
            for (doc_rel, (_, s)) in sidecars {
                if let Ok(p) = join_all(dir, &s.segs) {
                    self.finish_orphan_sidecar(&doc_rel, &p, &s.rel).await;
                }
            }
        }
        out
    }

    /// Sends an orphaned sidecar where its document went: beside it in
    /// `failed/` when a failure report for the document is there (without
    /// its sidecar), else the post-action (archive or delete), since a
    /// document leaves a claim only for those two places.
    async fn finish_orphan_sidecar(&self, doc_rel: &str, path: &RemotePath, rel: &str) {
        let ext = sidecar_suffix(rel);
        for n in 1..=50 {
            let (file, report) = claim::failed_paths(doc_rel, n);
            let Ok(rp) = join_text(&self.src, &report) else {
                break;
            };
            let Ok(bytes) = self.deps.store.read_small(&rp, 1 << 20).await else {
                break;
            };
            let recorded = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["source_path"].as_str().map(str::to_owned));
            if recorded.as_deref() != Some(doc_rel) {
                continue;
            }
            let Ok(to) = join_text(&self.src, &format!("{file}{ext}")) else {
                break;
            };
            match self
                .deps
                .store
                .rename(path, &to, RenameMode::NoReplace)
                .await
            {
                Ok(()) => {
                    info!(sidecar = %rel, "moved a sidecar left behind to its document in failed/");
                    return;
                }
                Err(FileStoreError::AlreadyExists { .. }) => continue,
                Err(e) => {
                    warn!(sidecar = %rel, error = %e, "sidecar left behind could not be moved");
                    return;
                }
            }
        }
        match self.post_action(path, rel).await {
            Ok(to) => info!(sidecar = %rel, to = %to, "finished a sidecar its run left behind"),
            Err(e) => warn!(sidecar = %rel, error = %e, "sidecar left behind could not be moved"),
        }
    }

    /// Moves a document's sidecar left in intake into its claim `dir`.
    async fn adopt_sidecar(
        &self,
        dir: &RemotePath,
        doc_segs: &[Vec<u8>],
    ) -> Result<Option<(SidecarFormat, RemotePath, Vec<Vec<u8>>)>, String> {
        let cfg = &self.route.config.sidecars;
        if cfg.mode == crate::domain::route::SidecarMode::Off {
            return Ok(None);
        }
        for format in &cfg.formats {
            let ext: &[u8] = match format {
                SidecarFormat::Json => b".json",
                SidecarFormat::Xml => b".xml",
            };
            let mut segs = doc_segs.to_vec();
            let Some(last) = segs.last_mut() else {
                return Ok(None);
            };
            last.extend_from_slice(ext);
            let (Ok(from), Ok(to)) = (join_all(&self.src, &segs), join_all(dir, &segs)) else {
                continue;
            };
            match self
                .deps
                .store
                .rename(&from, &to, RenameMode::NoReplace)
                .await
            {
                Ok(()) => {
                    info!(sidecar = %rel_text(&segs), "took the sidecar left in intake into the claim");
                    return Ok(Some((*format, to, segs)));
                }
                Err(FileStoreError::NotFound { .. }) => {}
                Err(e) => {
                    return Err(format!(
                        "its sidecar {} is still in intake and could not be claimed: {e}",
                        rel_text(&segs)
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Claims one ready document (and its sidecar), then processes it;
    /// `left-for-next-run` when the deadline, a limit or an outage keeps it
    /// from being claimed.
    async fn claim_and_process(
        &self,
        l: Listed,
        sidecar: Option<(SidecarFormat, Listed)>,
        refusal: Option<String>,
    ) -> FileReport {
        let limits = self.route.limits();
        if self.outage.load(Ordering::SeqCst) {
            self.stopped.store(true, Ordering::Relaxed);
            return FileReport::left(&l.rel, "not claimed: the run stopped on an outage");
        }
        if self.ctx.near_deadline() {
            self.stopped.store(true, Ordering::Relaxed);
            return FileReport::left(&l.rel, "not claimed: the invocation's deadline is near");
        }
        if self.claimed_files.fetch_add(1, Ordering::SeqCst) >= limits.max_files {
            return FileReport::left(
                &l.rel,
                format!(
                    "not claimed: the run's limit of {} files is reached",
                    limits.max_files
                ),
            );
        }
        let before = self.claimed_bytes.fetch_add(l.size, Ordering::SeqCst);
        if before > 0 && before + l.size > limits.max_bytes {
            return FileReport::left(
                &l.rel,
                format!(
                    "not claimed: the run's limit of {} bytes is reached",
                    limits.max_bytes
                ),
            );
        }
        let now = self.now().timestamp();
        let tag = ClaimTag::new(self.route.name(), 1, now, &self.ctx.invocation_id);
        let claimed = match self
            .claim(&l, sidecar.as_ref().map(|(f, s)| (*f, s)), &tag)
            .await
        {
            Ok(c) => c,
            Err(reason) => return FileReport::deferred(&l.rel, reason),
        };
        if let Some(reason) = refusal {
            return self
                .fail(&claimed, FailureKind::Permanent, &reason, None)
                .await;
        }
        self.process_claimed(claimed).await
    }

    async fn claim(
        &self,
        l: &Listed,
        sidecar: Option<(SidecarFormat, &Listed)>,
        tag: &ClaimTag,
    ) -> Result<Claimed, String> {
        let store = self.deps.store;
        let from = join_all(&self.src, &l.segs).map_err(|e| e.to_string())?;
        let dir = self
            .inflight
            .join(tag.dir_name())
            .map_err(|e| e.to_string())?;
        let to = join_all(&dir, &l.segs).map_err(|e| e.to_string())?;
        if let Some(parent) = to.parent() {
            self.mkdir(&parent)
                .await
                .map_err(|e| format!("cannot create the claim directory: {e}"))?;
        }
        store
            .rename(&from, &to, RenameMode::NoReplace)
            .await
            .map_err(|e| format!("claimed by another run ({e})"))?;
        crash::point(crash::CLAIMED);
        // The sidecar follows its document into the claim. Two renames are
        // not atomic: if this one fails, or the run dies before it, the
        // document's claim stays and its takeover brings the sidecar along
        // (`adopt_sidecars`), so the document never goes in without it.
        let sidecar = match sidecar {
            Some((format, s)) => {
                let a = join_all(&self.src, &s.segs).map_err(|e| e.to_string())?;
                let b = join_all(&dir, &s.segs).map_err(|e| e.to_string())?;
                match store.rename(&a, &b, RenameMode::NoReplace).await {
                    Ok(()) => Some((format, b, s.segs.clone())),
                    // Removed by the partner since the listing.
                    Err(FileStoreError::NotFound { .. }) => None,
                    Err(e) => {
                        warn!(sidecar = %s.rel, error = %e, "sidecar could not be claimed; the document waits in its claim");
                        let c = Claimed {
                            rel: l.rel.clone(),
                            tag: tag.clone(),
                            path: to,
                            sidecar: None,
                            sidecar_error: None,
                            size: l.size,
                            mtime: l.mtime,
                        };
                        self.hold(&c);
                        return Err(format!(
                            "claimed, but its sidecar {} could not be claimed ({e}); both are taken together by a later run",
                            s.rel
                        ));
                    }
                }
            }
            None => None,
        };
        crash::point(crash::SIDECAR_CLAIMED);
        // The done marker has served its purpose once the file is claimed.
        if let Some(m) = &self.route.readiness().done_marker {
            let mut segs = l.segs.clone();
            if let Some(last) = segs.last_mut() {
                last.extend_from_slice(m.as_bytes());
            }
            if let Ok(p) = join_all(&self.src, &segs) {
                let _ = store.remove(&p).await;
            }
        }
        Ok(Claimed {
            rel: l.rel.clone(),
            tag: tag.clone(),
            path: to,
            sidecar,
            sidecar_error: None,
            size: l.size,
            mtime: l.mtime,
        })
    }

    // ------------------------------------------------------------ indexes

    /// Parses the CSV index files in the listing. A broken index that is
    /// complete (readiness) goes to `failed/`; one still arriving is ignored.
    async fn load_indexes(
        &mut self,
        listed: &[Listed],
        report: &mut Outcomes,
    ) -> Vec<(String, Vec<Vec<u8>>, Vec<String>)> {
        let mut out = Vec::new();
        let Some(index) = self.route.index.clone() else {
            return out;
        };
        for l in listed {
            if self.route.entry_role(&l.rel) != EntryRole::Index {
                continue;
            }
            let parsed = async {
                let p = join_all(&self.src, &l.segs).map_err(|e| e.to_string())?;
                let bytes = self
                    .deps
                    .store
                    .read_small(&p, MAX_INDEX_BYTES as u64)
                    .await
                    .map_err(|e| e.to_string())?;
                classify::parse_csv_index_rows(&l.rel, &bytes, &index).map_err(|e| e.to_string())
            }
            .await;
            match parsed {
                Ok(parsed) => {
                    let dir = l.rel.rsplit_once('/').map(|(d, _)| d.to_owned());
                    let rows = classify::index_rows_by_path(&l.rel, parsed.rows);
                    let mut names: Vec<String> = rows.keys().cloned().collect();
                    for row in &parsed.refused {
                        if let Some(f) = &row.file {
                            let rel = match &dir {
                                Some(d) => format!("{d}/{f}"),
                                None => f.clone(),
                            };
                            names.push(rel.clone());
                            self.refused_rows.insert(rel, (l.rel.clone(), row.clone()));
                        }
                    }
                    if !parsed.refused.is_empty() {
                        self.report_refused_rows(l, &parsed.refused).await;
                    }
                    self.index_rows.extend(rows);
                    out.push((l.rel.clone(), l.segs.clone(), names));
                }
                Err(reason) => {
                    let now = self.now().timestamp();
                    let complete = matches!(
                        readiness::assess(
                            &crate::domain::route::ReadinessConfig {
                                done_marker: None,
                                ..self.route.readiness().clone()
                            },
                            &Evidence {
                                now,
                                current: Observation {
                                    size: l.size,
                                    mtime: l.mtime,
                                },
                                earlier: Some((
                                    Observation {
                                        size: l.size,
                                        mtime: l.mtime,
                                    },
                                    0,
                                )),
                                marker_present: true,
                            }
                        ),
                        Readiness::Ready
                    );
                    if complete {
                        let tag = ClaimTag::new(self.route.name(), 1, now, &self.ctx.invocation_id);
                        if let Ok(c) = self.claim(l, None, &tag).await {
                            let f = self
                                .fail(
                                    &c,
                                    FailureKind::Permanent,
                                    &format!("index file is invalid: {reason}"),
                                    None,
                                )
                                .await;
                            report.push(f).await;
                        }
                    } else {
                        report
                            .push(FileReport::deferred(
                                &l.rel,
                                format!("index not readable yet: {reason}"),
                            ))
                            .await;
                    }
                }
            }
        }
        out
    }

    /// The index's own failure record for its refused rows:
    /// `failed/<index>.error.json` (the index itself stays in intake for the
    /// rows that were usable), written and announced once per index.
    async fn report_refused_rows(&self, l: &Listed, refused: &[classify::RefusedRow]) {
        let (_, report_path) = claim::failed_paths(&l.rel, 1);
        let Ok(rp) = join_text(&self.src, &report_path) else {
            return;
        };
        if self.deps.store.stat(&rp).await.is_ok() {
            return;
        }
        let now = self.now();
        let reason = format!(
            "{} row(s) of index {} refused, the others are used: {}",
            refused.len(),
            l.rel,
            refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        let name = report_path
            .trim_start_matches("failed/")
            .trim_end_matches(".error.json")
            .to_owned();
        let mut rep = FailureReport::new(
            self.route.name(),
            &l.rel,
            &name,
            FailureKind::Permanent,
            &reason,
            1,
            now,
            &self.ctx.invocation_id,
        );
        rep.refused_rows = refused.to_vec();
        rep.size = Some(l.size);
        if let Ok(dir) = self.src.join(FAILED_DIR) {
            let _ = self.mkdir(&dir).await;
        }
        match serde_json::to_vec_pretty(&rep) {
            Ok(json) => {
                if let Err(e) = self
                    .deps
                    .store
                    .write_small(&rp, Bytes::from(json), RenameMode::NoReplace)
                    .await
                {
                    warn!(index = %l.rel, error = %e, "the index's refused rows could not be reported");
                    return;
                }
            }
            Err(e) => {
                warn!(index = %l.rel, error = %e, "the index's refused rows could not be reported");
                return;
            }
        }
        warn!(index = %l.rel, refused = refused.len(), "index rows refused");
        let detail = TransferFailed {
            route: self.route.name().to_owned(),
            host: self.deps.sftp_host.clone(),
            source_path: l.rel.clone(),
            failed_path: None,
            kind: FailureKind::Permanent,
            reason,
            attempts: 1,
            size: Some(l.size),
            sha256: None,
            failed_at: now,
            invocation_id: self.ctx.invocation_id.clone(),
        };
        self.publish(DetailType::TransferFailed, detail.detail())
            .await;
    }

    /// Every document path still in intake or in any claim (this route's or
    /// not, held, deferred or abandoned): an index listing one of them must
    /// stay. `None` when a listing fails (then every index stays).
    async fn paths_still_pending(&self, skip_top: &BTreeSet<&[u8]>) -> Option<BTreeSet<String>> {
        let mut out: BTreeSet<String> = walk(
            self.deps.store,
            &self.src,
            self.route.config.recursive,
            skip_top,
        )
        .await
        .ok()?
        .into_iter()
        .map(|l| l.rel)
        .collect();
        match walk(self.deps.store, &self.inflight, true, &BTreeSet::new()).await {
            Ok(claimed) => out.extend(
                claimed
                    .into_iter()
                    .filter_map(|l| l.rel.split_once('/').map(|(_, rel)| rel.to_owned())),
            ),
            Err(FileStoreError::NotFound { .. }) => {}
            Err(_) => return None,
        }
        Some(out)
    }

    async fn post_action_index(&self, rel: &str, segs: &[Vec<u8>]) {
        let Ok(from) = join_all(&self.src, segs) else {
            return;
        };
        if let Err(e) = self.post_action(&from, rel).await {
            warn!(index = %rel, error = %e, "index file could not be archived");
        }
    }

    // ------------------------------------------------------------ one file

    async fn process_claimed(&self, c: Claimed) -> FileReport {
        let span = info_span!("file", path = %c.rel, attempt = c.tag.attempt);
        async {
            // A fan-out route's poller sends the file to its queue instead.
            if let Some(r) = fanout::dispatched(self, &c).await {
                return r;
            }
            let started = Instant::now();
            if self.outage.load(Ordering::SeqCst) {
                self.hold(&c);
                return FileReport::deferred(
                    &c.rel,
                    "not tried: the run stopped on an outage of the ECM or the SFTP server; the claim is released for the next run",
                );
            }
            // A Conflict means someone took the name after our look-up:
            // look again and apply the policy to what is there now.
            let mut conflicts = 0;
            let result = loop {
                match self.ingest(&c).await {
                    Err(Failure::Conflict(reason)) if conflicts < MAX_CONFLICT_RETRIES => {
                        conflicts += 1;
                        info!(error = %reason, "name taken meanwhile; resolving the conflict again");
                    }
                    Err(Failure::Conflict(reason)) => {
                        break Err(Failure::transient(format!(
                            "the name was taken again on each of {MAX_CONFLICT_RETRIES} tries: {reason}"
                        )));
                    }
                    other => break other,
                }
            };
            match result {
                Ok(done) => self.finish_source(&c, done, started).await,
                Err(Failure::Permanent(reason)) => {
                    self.fail(&c, FailureKind::Permanent, &reason, None).await
                }
                Err(Failure::Conflict(reason)) => {
                    self.hold(&c);
                    FileReport::deferred(&c.rel, reason)
                }
                Err(Failure::Transient {
                    reason,
                    outage: true,
                }) => {
                    if !self.outage.swap(true, Ordering::SeqCst) {
                        warn!(error = %reason, "outage: the run stops claiming; claims stay for the next run");
                    }
                    self.stopped.store(true, Ordering::Relaxed);
                    self.hold(&c);
                    FileReport::deferred(
                        &c.rel,
                        format!("outage, the claim stays for the next run: {reason}"),
                    )
                }
                Err(Failure::Transient { reason, .. }) => {
                    match claim::after_transient_failure(
                        c.tag.attempt,
                        self.route.limits().max_attempts,
                    ) {
                        AfterTransient::Quarantine => {
                            let r = format!(
                                "quarantined after {} attempts; last error: {reason}",
                                c.tag.attempt
                            );
                            self.fail(&c, FailureKind::Quarantined, &r, None).await
                        }
                        AfterTransient::LeaveClaimed => {
                            self.hold(&c);
                            warn!(error = %reason, "transient failure; the claim stays for a later run");
                            FileReport::deferred(
                                &c.rel,
                                format!("transient failure, retried after the lease: {reason}"),
                            )
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Notes that `c` stays claimed after this run.
    fn hold(&self, c: &Claimed) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.tag.dir_name(), c.tag.clone());
    }

    /// After an outage: this run's claims that still hold files are renamed
    /// to their released tag, so the next run takes them over at once and
    /// without spending an attempt (a takeover lost to a concurrent run, or
    /// a failed rename, leaves the claim to expire normally).
    async fn release_held_claims(&self) {
        if !self.outage.load(Ordering::SeqCst) {
            return;
        }
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        let lease = self.route.limits().lease_secs;
        for (dir_name, tag) in held {
            let (Ok(from), Ok(to)) = (
                self.inflight.join(&dir_name),
                self.inflight.join(tag.released(lease).dir_name()),
            ) else {
                continue;
            };
            match self
                .deps
                .store
                .rename(&from, &to, RenameMode::NoReplace)
                .await
            {
                Ok(()) => info!(claim = %dir_name, "claim released for the next run"),
                Err(FileStoreError::NotFound { .. }) => {}
                Err(e) => {
                    warn!(claim = %dir_name, error = %e, "claim not released; it waits for its lease")
                }
            }
        }
    }

    async fn ingest(&self, c: &Claimed) -> Result<Done, Failure> {
        let store = self.deps.store;
        let ecm = self.deps.ecm;
        let th = &self.route.config.transfer_history;
        let th_key = |id: u32| format!("{}_{id}", th.category_id);

        // A name that disguises what it is (bidirectional controls) is
        // refused before anything is decided on it.
        if let Some(problem) = hidden_name_problem(&c.rel) {
            return Err(Failure::Permanent(problem));
        }
        if let Some(e) = &c.sidecar_error {
            return Err(Failure::transient(e.clone()));
        }
        if !self.index_rows.contains_key(&c.rel)
            && let Some((index, row)) = self.refused_rows.get(&c.rel)
        {
            return Err(Failure::Permanent(format!(
                "its row in index {index} was refused ({row}); correct the index and retry the file"
            )));
        }
        // Metadata first: the sidecar is small, and reading it before the
        // document keeps one SFTP session per file.
        let sidecar_bytes = match &c.sidecar {
            Some((format, p, segs)) => Some((
                *format,
                rel_text(segs),
                store.read_small(p, MAX_SIDECAR_BYTES as u64).await?,
            )),
            None => None,
        };
        let meta = classify::gather_metadata(
            self.route,
            &c.rel,
            sidecar_bytes
                .as_ref()
                .map(|(f, p, b)| (*f, p.as_str(), b.as_ref())),
            self.index_rows.get(&c.rel),
        )
        .map_err(|e| Failure::Permanent(format!("invalid metadata: {e}")))?;

        let mut handle = store.open_read(&c.path).await?;
        let size = handle.meta.size.unwrap_or(c.size);
        let mut head_chunks = read_head(&mut handle).await?;
        // Small files are read whole right here: their SHA-256 is then known
        // before the upload, so the document is created with its final
        // transfer history (no pending key, no category update afterwards).
        let mut known_sha: Option<String> = None;
        let mut body: Option<ByteStream> = Some(handle.body);
        if size <= SMALL_FILE_BYTES
            && let Some(mut rest) = body.take()
        {
            while let Some(chunk) = rest.next().await {
                head_chunks.push(chunk?);
            }
            let mut h = Sha256::new();
            for c in &head_chunks {
                h.update(c);
            }
            known_sha = Some(hex::encode(h.finalize()));
            body = Some(Box::pin(futures_util::stream::empty()));
        }
        let head: Vec<u8> = head_chunks
            .iter()
            .flat_map(|b| b.iter().copied())
            .take(HEAD_LEN)
            .collect();
        let classification = classify::classify(
            self.route,
            &Candidate {
                rel_path: &c.rel,
                size,
                head: &head,
                meta: &meta,
            },
        )
        .map_err(|r| Failure::Permanent(r.to_string()))?;

        let received_at = Utc
            .timestamp_opt(c.mtime, 0)
            .single()
            .unwrap_or_else(|| self.now());
        let facts = TransferFacts {
            route: self.route.name().to_owned(),
            host: self.deps.sftp_host.clone(),
            source_path: c.rel.clone(),
            size,
            sha256: String::new(),
            received_at,
            ingested_at: self.now(),
            invocation_id: self.ctx.invocation_id.clone(),
        };
        let mut plan = placement::plan(self.route, &classification, &facts, &meta)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        // Not known yet: set after the bytes have streamed (module docs).
        if let Some(h) = plan.categories.get_mut(&th.category_id) {
            h.remove(&th_key(th.attributes.sha256));
            h.remove(&th_key(th.attributes.ingested_at));
        }
        let rule = plan.rule.clone();
        crash::point(crash::CLASSIFIED);

        let ws = self.workspace(&plan).await?;
        let folder = self.folder(ws, &plan.folder).await?;
        let ecm_path = format!("node {ws}/{}", plan.folder.join("/"));
        // Files of this run with the same target are placed one at a time
        // (held until this file is complete).
        let name_lock = self.name_lock(folder, &plan.document_name);
        let _placing = name_lock.lock.lock().await;
        let mut existing = ecm.child_by_name(folder, &plan.document_name).await?;
        if plan.on_existing == ConflictPolicy::Rename
            && let Some(node) = &existing
            && !self
                .is_ours(node.id, c, size, &mut known_sha, &head_chunks, &mut body)
                .await?
        {
            // A run that crashed after creating a numbered copy left that
            // copy with our key: finish it instead of numbering once more.
            for n in 2..=NUMBERED_COPIES_SEARCHED {
                let candidate = numbered(&plan.document_name, n, CS_NAME_MAX_CHARS);
                let Some(sibling) = ecm.child_by_name(folder, &candidate).await? else {
                    break;
                };
                if sibling.node_type == ecm_port::node_type::DOCUMENT
                    && self
                        .is_ours(sibling.id, c, size, &mut known_sha, &head_chunks, &mut body)
                        .await?
                {
                    info!(node = %sibling.id, name = %sibling.name, "found this file's numbered copy from an earlier run");
                    plan.document_name = sibling.name.clone();
                    existing = Some(sibling);
                    break;
                }
            }
        }
        let mut name = plan.document_name.clone();
        let mut add_version_to: Option<(NodeId, u32)> = None;

        if let Some(node) = existing {
            if node.node_type != ecm_port::node_type::DOCUMENT {
                return Err(Failure::Permanent(format!(
                    "{:?} in {ecm_path} exists and is not a document (type {})",
                    plan.document_name, node.node_type
                )));
            }
            let hist = self.history(node.id).await?;
            let versions = ecm.versions(node.id).await?;
            let latest = versions.iter().map(|v| v.number).max().unwrap_or(1);
            let ours = pending_key(self.route.name(), &c.rel, size, c.mtime, 0);
            let ours_id = pending_identity(&ours).map(|(i, _)| i.to_owned());
            if let Some((id, v)) = hist.key.as_deref().and_then(pending_identity)
                && Some(id.to_owned()) == ours_id
            {
                // A crashed run of this very file.
                let mut ours_in_place = false;
                if latest >= v {
                    let sha = match known_sha.clone() {
                        Some(s) => s,
                        None => {
                            hash_rest(&head_chunks, body.take().ok_or_else(no_body)?)
                                .await?
                                .0
                        }
                    };
                    known_sha = Some(sha.clone());
                    // Version 1 came with the key in one create request; a
                    // later version was added after the key was set, and in
                    // between someone else may have checked in that number.
                    ours_in_place =
                        v == 1 || self.version_has(node.id, &versions, v, size, &sha).await?;
                    if !ours_in_place {
                        warn!(node = %node.id, version = v, "the version our crashed run meant to add was checked in by someone else; adding ours");
                    }
                }
                if ours_in_place {
                    let sha = known_sha.clone().unwrap_or_default();
                    info!(node = %node.id, version = v, "finishing a document a crashed run uploaded");
                    return self
                        .complete(
                            &plan,
                            c,
                            size,
                            node.id,
                            v,
                            sha,
                            IngestOutcome::AlreadyIngested,
                            false,
                            rule,
                            ecm_path,
                        )
                        .await;
                }
                add_version_to = Some((node.id, v.max(latest + 1)));
            } else {
                let same_origin = hist.route.as_deref() == Some(self.route.name())
                    && same_source_path(hist.source_path.as_deref(), &c.rel)
                    && hist.size == Some(size)
                    && hist.sha256.is_some();
                // Under add-version, any version of our size may hold our
                // bytes (a partner re-sending an older file).
                let same_size_versions: Vec<u32> = versions
                    .iter()
                    .filter(|v| v.size == size)
                    .map(|v| v.number)
                    .collect();
                let needs_hash = same_origin
                    || plan.on_existing == ConflictPolicy::SkipIfIdentical
                    || (plan.on_existing == ConflictPolicy::AddVersion
                        && (node.size == Some(size) || !same_size_versions.is_empty()));
                if needs_hash && known_sha.is_none() {
                    let (sha, _) =
                        hash_rest(&head_chunks, body.take().ok_or_else(no_body)?).await?;
                    known_sha = Some(sha);
                }
                if same_origin
                    && known_sha.is_some()
                    && hist.sha256.as_deref().map(str::to_ascii_lowercase) == known_sha
                {
                    let sha = known_sha.clone().unwrap_or_default();
                    let key = idempotency_key(self.route.name(), &c.rel, size, &sha);
                    if hist.key.as_deref() == Some(key.as_str()) {
                        // Ingested before; a run that died after the upload
                        // may not have applied RM and hold or verified it.
                        return self
                            .complete(
                                &plan,
                                c,
                                size,
                                node.id,
                                latest,
                                sha,
                                IngestOutcome::AlreadyIngested,
                                true,
                                rule,
                                ecm_path,
                            )
                            .await;
                    }
                }
                if plan.on_existing == ConflictPolicy::AddVersion
                    && let Some(sha) = known_sha.clone()
                {
                    for v in same_size_versions.iter().rev() {
                        if self.version_has(node.id, &versions, *v, size, &sha).await? {
                            info!(node = %node.id, version = v, "these bytes are already a version of the document; no version added");
                            return Ok(Done {
                                outcome: IngestOutcome::SkippedIdentical,
                                rule,
                                node_id: node.id,
                                version: *v,
                                document_name: node.name,
                                ecm_path,
                                key: idempotency_key(self.route.name(), &c.rel, size, &sha),
                                sha256: sha,
                            });
                        }
                    }
                }
                let taken: BTreeSet<String> = if plan.on_existing == ConflictPolicy::Rename {
                    self.child_names(folder).await?
                } else {
                    BTreeSet::new()
                };
                let existing_doc = placement::ExistingDocument {
                    node_id: node.id.get(),
                    sha256: hist.sha256.clone(),
                };
                match placement::resolve_conflict(
                    plan.on_existing,
                    &plan.document_name,
                    Some(&existing_doc),
                    known_sha.as_deref().unwrap_or(""),
                    &taken,
                ) {
                    placement::ConflictAction::Create { name: n } => name = n,
                    placement::ConflictAction::AddVersion { .. } => {
                        add_version_to = Some((node.id, latest + 1))
                    }
                    placement::ConflictAction::Skip { .. } => {
                        let sha = known_sha.clone().unwrap_or_default();
                        return Ok(Done {
                            outcome: IngestOutcome::SkippedIdentical,
                            rule,
                            node_id: node.id,
                            version: latest,
                            document_name: node.name,
                            ecm_path,
                            key: idempotency_key(self.route.name(), &c.rel, size, &sha),
                            sha256: sha,
                        });
                    }
                    placement::ConflictAction::Fail { reason } => {
                        return Err(Failure::Permanent(format!("on_existing: {reason}")));
                    }
                }
            }
        }

        // The body was consumed for hashing: open the file again (only the
        // add-version-with-equal-size and rename-after-hash paths get here).
        let (first, rest): (Vec<Bytes>, ByteStream) = match body.take() {
            Some(b) => (head_chunks, b),
            None => {
                let h = store.open_read(&c.path).await?;
                (Vec::new(), h.body)
            }
        };
        let mut sent = 0u64;
        let stream: ByteStream = Box::pin(
            futures_util::stream::iter(first.into_iter().map(Ok))
                .chain(rest)
                .inspect(move |c| {
                    if let Ok(c) = c {
                        let before = sent;
                        sent += c.len() as u64;
                        if before < size / 2 && sent >= size / 2 {
                            crash::point(crash::MID_UPLOAD);
                        }
                    }
                }),
        );
        let content = Content {
            stream: ecm_stream(stream),
            length: size,
            // The sanitised name: a partner's raw name may hold control
            // characters that break the multipart header (the original is
            // kept in transfer history).
            file_name: name.clone(),
            mime_type: plan.mime_type.to_owned(),
        };

        let (node_id, version, receipt) = match add_version_to {
            Some((node, v)) => {
                // Mark the document first, so a crash during the upload is
                // recognised on the rerun (pending key with the version).
                let mut hist = CategoryValues::new();
                for (k, val) in plan.categories.get(&th.category_id).into_iter().flatten() {
                    if !val.is_empty() {
                        hist.insert(k.clone(), serde_json::Value::String(val.clone()));
                    }
                }
                hist.insert(
                    th_key(th.attributes.idempotency_key),
                    serde_json::Value::String(pending_key(
                        self.route.name(),
                        &c.rel,
                        size,
                        c.mtime,
                        v,
                    )),
                );
                hist.insert(
                    th_key(th.attributes.sha256),
                    serde_json::Value::String("-".into()),
                );
                self.set_history(node, &hist).await?;
                crash::point(crash::MARKED);
                let r = ecm
                    .add_version(node, plan.description.as_deref(), content)
                    .await?;
                (node, r.version.unwrap_or(v), r)
            }
            None => {
                if let Some(h) = plan.categories.get_mut(&th.category_id) {
                    match &known_sha {
                        Some(sha) => {
                            h.insert(th_key(th.attributes.sha256), sha.clone());
                            h.insert(
                                th_key(th.attributes.idempotency_key),
                                idempotency_key(self.route.name(), &c.rel, size, sha),
                            );
                            h.insert(th_key(th.attributes.ingested_at), Self::rfc3339(self.now()));
                        }
                        None => {
                            h.insert(
                                th_key(th.attributes.idempotency_key),
                                pending_key(self.route.name(), &c.rel, size, c.mtime, 1),
                            );
                        }
                    }
                }
                let r = ecm
                    .upload(UploadRequest {
                        parent: folder,
                        name: name.clone(),
                        description: plan.description.clone(),
                        categories: to_applied(&plan.categories),
                        classifications: Vec::new(),
                        content,
                    })
                    .await?;
                (r.node_id, r.version.unwrap_or(1), r)
            }
        };
        if receipt.size != size
            || known_sha
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case(&receipt.sha256))
        {
            return Err(Failure::transient(format!(
                "uploaded {} bytes but the file has {size}",
                receipt.size
            )));
        }
        crash::point(crash::UPLOADED);
        plan.document_name = name;
        let outcome = if add_version_to.is_some() {
            IngestOutcome::VersionAdded
        } else {
            IngestOutcome::Created
        };
        let history_final = outcome == IngestOutcome::Created && known_sha.is_some();
        self.complete(
            &plan,
            c,
            size,
            node_id,
            version,
            receipt.sha256,
            outcome,
            history_final,
            rule,
            ecm_path,
        )
        .await
    }

    /// Step 3 of the module docs: SHA-256, final key, ingest time; RM and
    /// hold; then verify the node.
    #[allow(clippy::too_many_arguments)]
    async fn complete(
        &self,
        plan: &PlacementPlan,
        c: &Claimed,
        size: u64,
        node: NodeId,
        version: u32,
        sha256: String,
        outcome: IngestOutcome,
        history_final: bool,
        rule: Option<String>,
        ecm_path: String,
    ) -> Result<Done, Failure> {
        let ecm = self.deps.ecm;
        let th = &self.route.config.transfer_history;
        let k = |id: u32| format!("{}_{id}", th.category_id);
        let key = idempotency_key(self.route.name(), &c.rel, size, &sha256);
        let mut v = CategoryValues::new();
        v.insert(
            k(th.attributes.sha256),
            serde_json::Value::String(sha256.clone()),
        );
        v.insert(
            k(th.attributes.idempotency_key),
            serde_json::Value::String(key.clone()),
        );
        v.insert(
            k(th.attributes.ingested_at),
            serde_json::Value::String(Self::rfc3339(self.now())),
        );
        // A document this run created (or just marked for its new version)
        // has the category; one it created has no RM classification yet.
        let fresh = outcome == IngestOutcome::Created;
        // A new version's metadata (sidecar, index row, captures) replaces
        // the document's, also when a crashed run's upload is finished
        // here; before the final key, so a crash in between redoes it.
        if outcome == IngestOutcome::VersionAdded
            || (outcome == IngestOutcome::AlreadyIngested && !history_final)
        {
            for cat in to_applied(&plan.categories) {
                if cat.category_id != th.category_id {
                    self.set_category(node, cat.category_id, &cat.values)
                        .await?;
                }
            }
        }
        if history_final {
            // Created with it (small files).
        } else if fresh || outcome == IngestOutcome::VersionAdded {
            ecm.update_category(node, th.category_id, &v).await?;
        } else {
            self.set_history(node, &v).await?;
        }
        crash::point(crash::HISTORY_WRITTEN);
        if let Some(class) = plan.rm_classification
            && (fresh || !ecm.rm_classifications(node).await?.contains(&class))
        {
            ecm.apply_rm_classification(node, class).await?;
        }
        if let Some(hold) = plan.hold {
            ecm.apply_hold(node, hold).await?;
        }
        let n = ecm.node(node).await?;
        if n.size.is_some_and(|s| s != size) {
            return Err(Failure::transient(format!(
                "verification: node {node} reports {} bytes, the file has {size}",
                n.size.unwrap_or(0)
            )));
        }
        Ok(Done {
            outcome,
            rule,
            node_id: node,
            version,
            document_name: n.name,
            ecm_path,
            sha256,
            key,
        })
    }

    /// Updates the transfer-history category, applying it first if the
    /// document does not have it yet (a document created by someone else).
    async fn set_history(&self, node: NodeId, values: &CategoryValues) -> Result<(), EcmError> {
        self.set_category(node, self.route.config.transfer_history.category_id, values)
            .await
    }

    /// Updates category `cat` on `node`, applying it first if missing.
    async fn set_category(
        &self,
        node: NodeId,
        cat: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        // Servers answer an update of an unassigned category with 400 or 404;
        // asking first keeps the refusal of a bad value a refusal.
        let assigned = self
            .deps
            .ecm
            .categories(node)
            .await?
            .iter()
            .any(|c| c.category_id == cat);
        if assigned {
            self.deps.ecm.update_category(node, cat, values).await
        } else {
            self.deps.ecm.apply_category(node, cat, values).await
        }
    }

    async fn folder(&self, ws: NodeId, segments: &[String]) -> Result<NodeId, EcmError> {
        let mut cache = self.folders.lock().await;
        let key = (ws, segments.to_vec());
        if let Some(id) = cache.get(&key) {
            return Ok(*id);
        }
        let id = self.deps.ecm.ensure_folder_path(ws, segments).await?;
        bounded_insert(&mut cache, key, id);
        Ok(id)
    }

    async fn mkdir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        let known = self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(dir.as_bytes());
        if !known {
            self.deps.store.mkdir_all(dir).await?;
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            if dirs.len() >= RUN_CACHE_ENTRIES {
                dirs.clear();
            }
            dirs.insert(dir.as_bytes().to_vec());
        }
        Ok(())
    }

    async fn history(&self, node: NodeId) -> Result<History, EcmError> {
        let th = &self.route.config.transfer_history;
        let k = |id: u32| format!("{}_{id}", th.category_id);
        let cats = self.deps.ecm.categories(node).await?;
        let Some(cat) = cats.into_iter().find(|c| c.category_id == th.category_id) else {
            return Ok(History::default());
        };
        let get = |id: u32| cat.values.get(&k(id)).and_then(text);
        Ok(History {
            route: get(th.attributes.route),
            source_path: get(th.attributes.source_path),
            size: get(th.attributes.size).and_then(|s| s.parse().ok()),
            sha256: get(th.attributes.sha256).filter(|s| s.len() == 64),
            key: get(th.attributes.idempotency_key),
        })
    }

    /// Whether `node`'s transfer history carries this file's key: the
    /// pending key a crashed streamed upload leaves (route, path, size,
    /// mtime), or the final key. A final key with our route, path and size
    /// is checked against our SHA-256, hashing the file first when it is not
    /// known yet (a large file whose run died after finishing the document:
    /// without the hash it would look like someone else's).
    async fn is_ours(
        &self,
        node: NodeId,
        c: &Claimed,
        size: u64,
        known_sha: &mut Option<String>,
        head: &[Bytes],
        body: &mut Option<ByteStream>,
    ) -> Result<bool, Failure> {
        let hist = self.history(node).await?;
        let Some(key) = hist.key.as_deref() else {
            return Ok(false);
        };
        let ours = pending_key(self.route.name(), &c.rel, size, c.mtime, 0);
        let ours_id = pending_identity(&ours).map(|(i, _)| i);
        if pending_identity(key).map(|(i, _)| i) == ours_id && ours_id.is_some() {
            return Ok(true);
        }
        let same_origin = hist.route.as_deref() == Some(self.route.name())
            && same_source_path(hist.source_path.as_deref(), &c.rel)
            && hist.size == Some(size);
        if known_sha.is_none() {
            if !same_origin {
                return Ok(false);
            }
            let (sha, _) = hash_rest(head, body.take().ok_or_else(no_body)?).await?;
            *known_sha = Some(sha);
        }
        Ok(known_sha
            .as_deref()
            .is_some_and(|sha| key == idempotency_key(self.route.name(), &c.rel, size, sha)))
    }

    /// The lock of one target name in one folder (see `name_locks`).
    fn name_lock(&self, folder: NodeId, name: &str) -> HeldNameLock<'_> {
        let key = (folder, name.to_owned());
        let lock = self
            .name_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        HeldNameLock {
            locks: &self.name_locks,
            key,
            lock,
        }
    }

    /// Whether version `version` of `node` has exactly our bytes (size
    /// first, then the SHA-256 of a download: crash recovery and re-sends
    /// only).
    async fn version_has(
        &self,
        node: NodeId,
        versions: &[ecm_port::Version],
        version: u32,
        size: u64,
        sha: &str,
    ) -> Result<bool, Failure> {
        let Some(v) = versions.iter().find(|v| v.number == version) else {
            return Ok(false);
        };
        if v.size != size {
            return Ok(false);
        }
        let d = self.deps.ecm.download(node, Some(version)).await?;
        let mut h = Sha256::new();
        let mut stream = d.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::transient(format!("reading version {version} of node {node}: {e}"))
            })?;
            h.update(&chunk);
        }
        Ok(hex::encode(h.finalize()).eq_ignore_ascii_case(sha))
    }

    async fn child_names(&self, folder: NodeId) -> Result<BTreeSet<String>, EcmError> {
        let mut names = BTreeSet::new();
        let mut page = 1;
        loop {
            let p = self
                .deps
                .ecm
                .children(folder, &ecm_port::ChildFilter::default(), page, 500)
                .await?;
            names.extend(p.items.iter().map(|n| n.name.clone()));
            if !p.has_next() || page >= 100 {
                break;
            }
            page += 1;
        }
        Ok(names)
    }

    /// Finds (or creates from its template) the target workspace.
    async fn workspace(&self, plan: &PlacementPlan) -> Result<NodeId, Failure> {
        let ecm = self.deps.ecm;
        let cache_key = format!("{:?}", plan.workspace);
        // One lookup (and at most one create) per workspace per run, also
        // when parallel files go to the same new workspace.
        let mut cache = self.workspaces.lock().await;
        if let Some(id) = cache.get(&cache_key) {
            return Ok(*id);
        }
        let create_from = |c: &placement::WorkspaceCreate, bo: Option<BusinessObject>| {
            CreateWorkspace {
                template_id: NodeId::new(c.template_id)
                    .ok_or_else(|| Failure::Permanent(format!("template id {}", c.template_id)))?,
                type_id: c.type_id,
                name: c.name.clone(),
                parent: c.parent_id.and_then(NodeId::new),
                business_object: bo,
                categories: to_applied(&c.categories),
            }
            .pipe(Ok::<_, Failure>)
        };
        let id = match &plan.workspace {
            WorkspaceTarget::Node { node_id } => NodeId::new(*node_id)
                .ok_or_else(|| Failure::Permanent(format!("workspace node id {node_id}")))?,
            WorkspaceTarget::BusinessObject {
                type_id,
                ext_system,
                bo_type,
                bo_id,
                create,
            } => {
                let bo = BusinessObject {
                    ext_system_id: ext_system.clone(),
                    bo_type: bo_type.clone(),
                    bo_id: bo_id.clone(),
                };
                match ecm.workspace_by_business_object(&bo).await? {
                    Some(w) => w.id,
                    None => match create {
                        Some(c) => match ecm
                            .create_workspace(&create_from(c, Some(bo.clone()))?)
                            .await
                        {
                            Ok(id) => id,
                            Err(e) if e.is_conflict() => ecm
                                .workspace_by_business_object(&bo)
                                .await?
                                .map(|w| w.id)
                                .ok_or(Failure::from(e))?,
                            Err(e) => return Err(e.into()),
                        },
                        None => {
                            return Err(Failure::Permanent(format!(
                                "no workspace of type {type_id} for business object {ext_system}/{bo_type}/{bo_id} and the rule does not create one"
                            )));
                        }
                    },
                }
            }
            WorkspaceTarget::Name {
                type_id,
                name,
                create,
            } => match ecm.find_workspaces(*type_id, name).await?.first() {
                Some(w) => w.id,
                None => match create {
                    Some(c) => match ecm.create_workspace(&create_from(c, None)?).await {
                        Ok(id) => id,
                        Err(e) if e.is_conflict() => ecm
                            .find_workspaces(*type_id, name)
                            .await?
                            .first()
                            .map(|w| w.id)
                            .ok_or(Failure::from(e))?,
                        Err(e) => return Err(e.into()),
                    },
                    None => {
                        return Err(Failure::Permanent(format!(
                            "no workspace of type {type_id} named {name:?} and the rule does not create one"
                        )));
                    }
                },
            },
        };
        bounded_insert(&mut cache, cache_key, id);
        Ok(id)
    }

    // ------------------------------------------------------------ endings

    /// Archives or deletes the claimed file (and sidecar) after a verified
    /// ingest, then publishes `Transfer Ingested`.
    async fn finish_source(&self, c: &Claimed, done: Done, started: Instant) -> FileReport {
        crash::point(crash::VERIFIED);
        let moved = self.post_action(&c.path, &c.rel).await;
        crash::point(crash::ARCHIVED);
        if let Some((_, p, segs)) = &c.sidecar {
            let _ = self.post_action(p, &rel_text(segs)).await;
        }
        crash::point(crash::SOURCE_FINISHED);
        if moved.is_ok() {
            self.release_claim_dirs(c).await;
        }
        let now = self.now();
        let detail = TransferIngested {
            route: self.route.name().to_owned(),
            rule: done.rule.clone(),
            host: self.deps.sftp_host.clone(),
            source_path: c.rel.clone(),
            node_id: done.node_id.get(),
            version: done.version,
            document_name: done.document_name.clone(),
            size: c.size,
            sha256: done.sha256.clone(),
            idempotency_key: done.key.clone(),
            outcome: done.outcome,
            received_at: Utc.timestamp_opt(c.mtime, 0).single().unwrap_or(now),
            ingested_at: now,
            duration_ms: started.elapsed().as_millis() as u64,
            invocation_id: self.ctx.invocation_id.clone(),
        };
        self.publish(DetailType::TransferIngested, detail.detail())
            .await;
        let outcome = match done.outcome {
            IngestOutcome::Created => FileOutcome::Created,
            IngestOutcome::VersionAdded => FileOutcome::VersionAdded,
            IngestOutcome::SkippedIdentical => FileOutcome::SkippedIdentical,
            IngestOutcome::AlreadyIngested => FileOutcome::AlreadyIngested,
        };
        let mut r = FileReport::new(&c.rel, outcome);
        r.rule = done.rule;
        r.node_id = Some(done.node_id.get());
        r.version = Some(done.version);
        r.ecm_path = Some(format!("{}/{}", done.ecm_path, done.document_name));
        r.size = Some(c.size);
        r.sha256 = Some(done.sha256);
        r.duration_ms = Some(detail.duration_ms);
        match moved {
            Ok(m) => r.moved_to = Some(m),
            Err(e) => {
                // The document is in the ECM; the claim stays and a later
                // run recognises it (same origin and SHA-256) and archives it.
                r.reason = Some(format!("ingested, but the source could not be moved: {e}"));
            }
        }
        info!(node = %r.node_id.unwrap_or(0), outcome = ?outcome, "ingested");
        r
    }

    /// Notes the claim's directories (`.inflight/<tag>/` and, for a
    /// recursive route, the subdirectories under it) for removal at the end
    /// of the run, once the file has left them.
    async fn release_claim_dirs(&self, c: &Claimed) {
        let Ok(tag_dir) = self.inflight.join(c.tag.dir_name()) else {
            return;
        };
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        let mut dir = c.path.parent();
        while let Some(d) = dir {
            if !d.as_bytes().starts_with(tag_dir.as_bytes()) {
                break;
            }
            let last = d == tag_dir;
            dir = d.parent();
            released.insert(d);
            if last {
                break;
            }
        }
    }

    /// Removes the released claim directories that are empty, deepest first
    /// (best effort: one still holding a file, e.g. a claim deferred to the
    /// next run, is kept).
    async fn remove_released_dirs(&self) {
        let mut dirs: Vec<RemotePath> =
            std::mem::take(&mut *self.released.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_bytes().len()));
        for d in dirs {
            if let Err(e) = self.deps.store.remove_dir(&d).await {
                tracing::debug!(dir = %d, error = %e, "claim directory kept");
            }
        }
    }

    /// Archive (unique name) or delete; returns where it went.
    async fn post_action(&self, from: &RemotePath, rel: &str) -> Result<String, FileStoreError> {
        let store = self.deps.store;
        match claim::archive_path(self.route, rel, self.now()) {
            Ok(None) => {
                store.remove(from).await?;
                Ok("deleted".into())
            }
            Ok(Some(target)) => {
                let to = join_text(&self.src, &target)?;
                if let Some(parent) = to.parent() {
                    self.mkdir(&parent).await?;
                }
                let mut n = 1;
                loop {
                    let dest = if n == 1 {
                        to.clone()
                    } else {
                        let name = numbered(&to.file_name_lossy(), n, SFTP_NAME_MAX_BYTES);
                        match to.with_name(name.as_bytes())? {
                            Some(p) => p,
                            None => to.clone(),
                        }
                    };
                    match store.rename(from, &dest, RenameMode::NoReplace).await {
                        Ok(()) => return Ok(dest.relative_to_root()),
                        Err(FileStoreError::AlreadyExists { .. }) if n < 50 => n += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => Err(FileStoreError::Failed {
                op: "archive",
                path: rel.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Moves a claimed file to `failed/` with its `.error.json`, publishes
    /// `Transfer Failed`.
    async fn fail(
        &self,
        c: &Claimed,
        kind: FailureKind,
        reason: &str,
        sha256: Option<String>,
    ) -> FileReport {
        let store = self.deps.store;
        let now = self.now();
        warn!(kind = ?kind, reason, "file failed");
        let mut failed_rel = None;
        if let Ok(dir) = self.src.join(FAILED_DIR) {
            let _ = self.mkdir(&dir).await;
        }
        for n in 1..=50 {
            let (file, report_path) = claim::failed_paths(&c.rel, n);
            let Ok(to) = join_text(&self.src, &file) else {
                break;
            };
            match store.rename(&c.path, &to, RenameMode::NoReplace).await {
                Ok(()) => {
                    let name = file.trim_start_matches("failed/").to_owned();
                    let mut rep = FailureReport::new(
                        self.route.name(),
                        &c.rel,
                        &name,
                        kind,
                        reason,
                        c.tag.attempt,
                        now,
                        &self.ctx.invocation_id,
                    );
                    rep.size = Some(c.size);
                    rep.sha256 = sha256.clone();
                    if let (Ok(rp), Ok(json)) = (
                        join_text(&self.src, &report_path),
                        serde_json::to_vec_pretty(&rep),
                    ) && let Err(e) = store
                        .write_small(&rp, Bytes::from(json), RenameMode::Replace)
                        .await
                    {
                        warn!(error = %e, "error report could not be written");
                    }
                    if let Some((_, sp, _)) = &c.sidecar
                        && let Ok(Some(sto)) = to.with_name(
                            format!("{name}{}", sidecar_suffix(&sp.file_name_lossy())).as_bytes(),
                        )
                    {
                        let _ = store.rename(sp, &sto, RenameMode::NoReplace).await;
                    }
                    failed_rel = Some(file);
                    self.release_claim_dirs(c).await;
                    break;
                }
                Err(FileStoreError::AlreadyExists { .. }) => continue,
                Err(e) => {
                    warn!(error = %e, "could not move the file to failed/; the claim stays");
                    break;
                }
            }
        }
        let detail = TransferFailed {
            route: self.route.name().to_owned(),
            host: self.deps.sftp_host.clone(),
            source_path: c.rel.clone(),
            failed_path: failed_rel.clone(),
            kind,
            reason: reason.to_owned(),
            attempts: c.tag.attempt,
            size: Some(c.size),
            sha256,
            failed_at: now,
            invocation_id: self.ctx.invocation_id.clone(),
        };
        self.publish(DetailType::TransferFailed, detail.detail())
            .await;
        let mut r = FileReport::new(
            &c.rel,
            match kind {
                FailureKind::Permanent => FileOutcome::Failed,
                FailureKind::Quarantined => FileOutcome::Quarantined,
            },
        );
        r.size = Some(c.size);
        r.moved_to = failed_rel;
        r.reason = Some(reason.to_owned());
        r
    }

    /// Queues an event; a full batch goes out at once. Events are published
    /// after the transfer they describe is complete, so a crash can lose at
    /// most one batch of audit events, never a transfer (the rerun reports
    /// the file as `already-ingested` again).
    async fn publish(&self, detail_type: DetailType, detail: serde_json::Value) {
        let batch = {
            let mut q = self.events.lock().await;
            q.push(Event {
                detail_type,
                detail,
            });
            if q.len() < EVENT_BATCH {
                return;
            }
            std::mem::take(&mut *q)
        };
        self.send_events(&batch).await;
    }

    async fn flush_events(&self) {
        let batch = std::mem::take(&mut *self.events.lock().await);
        if !batch.is_empty() {
            self.send_events(&batch).await;
        }
    }

    async fn send_events(&self, batch: &[Event]) {
        let report = self.deps.events.publish(batch).await;
        // A lost audit event must not undo a finished transfer; it is logged.
        for u in report.undelivered {
            warn!(detail_type = ?u.detail_type, code = %u.error_code, message = %u.message, "event not delivered");
        }
    }
}

/// Whether a recorded source path is this file's. Servers may trim
/// attribute values (a partner's `name.pdf ` comes back as `name.pdf`), so
/// surrounding whitespace is ignored here; the idempotency key, over the
/// exact path, decides afterwards.
fn same_source_path(recorded: Option<&str>, rel: &str) -> bool {
    recorded.is_some_and(|r| r.trim() == rel.trim())
}

fn sidecar_suffix(name: &str) -> &'static str {
    if name.ends_with(".xml") {
        ".xml"
    } else {
        ".json"
    }
}

fn no_body() -> Failure {
    Failure::transient("internal: body already consumed")
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

// ---------------------------------------------------------------- retry

/// A manual retry: moves `failed/<name>` back into the source directory and
/// removes its report, so the next scheduled run ingests it.
pub async fn retry(
    route: &Route,
    files: &[String],
    deps: &IngestDeps<'_>,
    ctx: &RunContext,
) -> Result<IngestReport, IngestError> {
    let cfg = &route.config;
    let src = source_dir(route, deps.store)?;
    let target = outcomes::ReportTarget::new(&src, &cfg.name, &ctx.invocation_id, deps.clock.now());
    let (tx, rx) = outcomes::channel();
    let mut out = Outcomes::new(
        IngestReport::new(&cfg.name, &ctx.invocation_id),
        target.as_ref().map(|_| tx).map_err(Clone::clone),
    );
    let body = async move {
        for name in files {
            let (file, err_report, _) = claim::retry_paths(name);
            let mut target = name.clone();
            let r = async {
                let from = join_text(&src, &file)?;
                let report_path = join_text(&src, &err_report)?;
                // Back to the path it was dropped at (its identity, and so its
                // idempotency key, depend on it), as the report records it.
                let recorded = match deps.store.read_small(&report_path, 1 << 20).await {
                    Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
                        .ok()
                        .and_then(|v| v["source_path"].as_str().map(str::to_owned)),
                    Err(_) => None,
                };
                target = claim::retry_target(name, recorded.as_deref());
                let to = join_text(&src, &target)?;
                if let Some(parent) = to.parent() {
                    deps.store.mkdir_all(&parent).await?;
                }
                deps.store.rename(&from, &to, RenameMode::NoReplace).await?;
                // Its sidecar went to failed/ beside it; it comes back too.
                for ext in [".json", ".xml"] {
                    let (Ok(sfrom), Ok(Some(sto))) = (
                        join_text(&src, &format!("{file}{ext}")),
                        to.with_name(format!("{}{ext}", to.file_name_lossy()).as_bytes()),
                    ) else {
                        continue;
                    };
                    match deps.store.rename(&sfrom, &sto, RenameMode::NoReplace).await {
                        Ok(()) | Err(FileStoreError::NotFound { .. }) => {}
                        Err(e) => warn!(sidecar = %sfrom, error = %e, "sidecar not moved back"),
                    }
                }
                let _ = deps.store.remove(&report_path).await;
                Ok::<_, Failure>(())
            }
            .await;
            let mut f = FileReport::new(&file, FileOutcome::Requeued);
            match r {
                Ok(()) => f.moved_to = Some(target.clone()),
                Err(Failure::Permanent(e))
                | Err(Failure::Transient { reason: e, .. })
                | Err(Failure::Conflict(e)) => {
                    f.outcome = FileOutcome::Failed;
                    f.reason = Some(format!("cannot move back into intake: {e}"));
                }
            }
            out.push(f).await;
        }
        out.close().await;
        out
    };
    let (out, written) = tokio::join!(
        body,
        outcomes::write_report(deps.store, target.as_ref().ok(), rx, deps.clock.now())
    );
    Ok(out.finish(target.as_ref().ok(), written))
}

pub mod crash;
pub mod fanout;
#[cfg(test)]
mod faulty_ecm;
mod outcomes;
use outcomes::Outcomes;
pub use outcomes::{REPORTS_DIR, REPORTS_KEPT};
#[cfg(test)]
mod tests;
