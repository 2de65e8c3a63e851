//! The backup flow (DESIGN.md §6): snapshots of ECM subtrees on SFTP, taken
//! incrementally, resumable across invocations, verifiable and restorable.
//!
//! A snapshot, step by step:
//! 1. [`checkpoint`]: find the unfinished snapshot in the backup directory
//!    (resume it) or start a new one against the last complete snapshot;
//!    the checkpoint on SFTP says what is left and who works on it (a lease).
//! 2. [`walk`]: take the next page of the container on top of the stack
//!    (stable order: the server's by-name listing, page by page), with
//!    SFTP-safe names for every node (`domain::snapshot_names`).
//! 3. [`copy`]: for each document of the page, its latest version; unchanged
//!    since the base snapshot (node, version, size) → a manifest line pointing
//!    at the snapshot that holds the bytes; else download, hash while
//!    streaming and write it with a no-replace atomic put, a few at a time.
//!    A document the ECM refuses to serve is recorded as skipped with why.
//! 4. [`manifest`]: the page's lines go out as one manifest part, then the
//!    checkpoint moves past the page. A crash between the two leaves the page
//!    to be walked again; files already written are recognised (hashed on
//!    SFTP), never downloaded twice.
//! 5. Deadline near: checkpoint, publish `Snapshot Continuation` (its detail
//!    is the `continue` event) and return; the rule invokes us again.
//! 6. [`complete`]: join the parts into `manifest.jsonl`, check every file's
//!    size, write `snapshot.json`, rename `{id}.partial` → `{id}`, then prune
//!    beyond the retention count, never what a kept snapshot points at.
//!
//! Manual actions: [`verify`] re-hashes a snapshot (and the ones it points
//! at); [`restore`] brings a snapshot or one document back into an ECM folder
//! and checks every SHA-256.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;

use super::file_lease;
use crate::domain::backup::{
    BackupConfig, Checkpoint, Counts, Lease, Pending, RetentionPlan, SnapshotSummary,
    continuation_detail, partial_name,
};
use crate::domain::manifest::{BackupRecord, ManifestError};
use crate::domain::paths::{PathError, RemotePath};
use crate::ports::ecm::NodeId;
use crate::ports::ecm::{Ecm, EcmError};
use crate::ports::events::DetailType;
use crate::ports::events::{Event, EventSink};
use crate::ports::file_store::{FileStore, FileStoreError};

pub mod checkpoint;
pub mod complete;
pub mod copy;
pub mod job;
pub mod manifest;
pub mod restore;
pub mod verify;
pub mod walk;

#[cfg(test)]
mod tests;

pub use restore::{RestoreOutcome, RestoreReport};
pub use verify::{VerifyOutcome, VerifyReport};

/// What the flow works with; borrowed from the function's cold-start state.
pub struct BackupContext<'a> {
    pub ecm: &'a dyn Ecm,
    pub store: &'a dyn FileStore,
    pub events: &'a dyn EventSink,
    pub invocation_id: &'a str,
    /// When the invocation is cut off; `None` for no limit.
    pub deadline: Option<Instant>,
    /// Time left below which no new page is started: the run checkpoints and
    /// continues by event instead. It must cover one page of downloads.
    pub margin: Duration,
    /// The time snapshot ids and leases are taken from ([`system_clock`]).
    pub clock: &'a (dyn Fn() -> DateTime<Utc> + Send + Sync),
}

/// The real clock.
pub fn system_clock() -> DateTime<Utc> {
    Utc::now()
}

impl BackupContext<'_> {
    fn deadline_near(&self) -> bool {
        self.deadline
            .is_some_and(|d| d.saturating_duration_since(Instant::now()) < self.margin)
    }

    /// Until when this invocation may hold a snapshot: its deadline (or 15
    /// minutes, Lambda's longest run, without one) and a little slack.
    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(900));
        now + chrono::Duration::from_std(left + Duration::from_secs(5))
            .unwrap_or(chrono::Duration::seconds(905))
    }

    /// Publishes one event; a lost audit event is logged, it does not undo
    /// the work it reports.
    async fn publish(&self, event: Event) -> bool {
        let report = self.events.publish(std::slice::from_ref(&event)).await;
        for u in &report.undelivered {
            tracing::warn!(detail_type = u.detail_type.as_str(), code = %u.error_code, "event not delivered: {}", u.message);
        }
        report.all_delivered()
    }
}

/// Why a backup action failed. [`BackupError::is_retryable`] says whether the
/// same event can succeed later (the checkpoint stays where it was).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("Content Server: {0}")]
    Ecm(#[from] EcmError),
    #[error("SFTP: {0}")]
    Store(#[from] FileStoreError),
    #[error("SFTP path: {0}")]
    Path(#[from] PathError),
    #[error("{path}: {source}")]
    Manifest { path: String, source: ManifestError },
    #[error("{path}: {problem}")]
    Corrupt { path: String, problem: String },
    #[error("snapshot {snapshot_id} in {directory}: {problem}")]
    Snapshot {
        snapshot_id: String,
        directory: String,
        problem: String,
    },
    #[error("root node {root}: {problem}")]
    Root { root: i64, problem: String },
    #[error("the continuation event for snapshot {snapshot_id} was not delivered: {detail}")]
    Continuation { snapshot_id: String, detail: String },
    #[error("snapshot {snapshot_id} failed verification: {problems} problem(s): {summary}")]
    VerifyFailed {
        snapshot_id: String,
        problems: usize,
        summary: String,
        report: Box<VerifyReport>,
    },
    #[error("restore of snapshot {snapshot_id} had {problems} problem(s): {summary}")]
    RestoreFailed {
        snapshot_id: String,
        problems: usize,
        summary: String,
        report: Box<RestoreReport>,
    },
}

impl BackupError {
    pub fn is_retryable(&self) -> bool {
        match self {
            BackupError::Ecm(e) => e.is_retryable(),
            BackupError::Store(e) => e.is_retryable(),
            BackupError::Continuation { .. } => true,
            _ => false,
        }
    }

    /// A short machine-readable kind for the function's error type.
    pub fn kind(&self) -> &'static str {
        match self {
            BackupError::Ecm(_) => "Ecm",
            BackupError::Store(_) | BackupError::Path(_) => "Sftp",
            BackupError::Manifest { .. } | BackupError::Corrupt { .. } => "Corrupt",
            BackupError::Snapshot { .. } => "Snapshot",
            BackupError::Root { .. } => "Root",
            BackupError::Continuation { .. } => "Continuation",
            BackupError::VerifyFailed { .. } => "VerifyFailed",
            BackupError::RestoreFailed { .. } => "RestoreFailed",
        }
    }
}

/// What a scheduled or continuation invocation did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum SnapshotOutcome {
    /// The snapshot is complete and renamed into place; retention ran.
    /// `summary` is `snapshot.json` with at most `job::LISTED_MAX` of the
    /// skipped documents (all are in the file at `summary_path`).
    Completed {
        path: String,
        summary: Box<SnapshotSummary>,
        summary_path: String,
        skipped_unlisted: u64,
        retention: RetentionPlan,
    },
    /// The deadline neared: the checkpoint is saved and a continuation event
    /// published.
    Continuing {
        snapshot_id: String,
        counts: Counts,
        invocations: u32,
    },
    /// Another invocation holds the plan's run lease (it is live).
    Busy {
        /// The continuation's snapshot, if this was one.
        snapshot_id: Option<String>,
        owner: Option<String>,
        until: Option<DateTime<Utc>>,
    },
    /// A (duplicate) continuation for a snapshot that is already complete.
    AlreadyComplete { snapshot_id: String },
}

/// The backup directory on the store.
pub fn backup_dir(store: &dyn FileStore, backup: &BackupConfig) -> Result<RemotePath, BackupError> {
    Ok(store.root().resolve(&backup.directory)?)
}

/// `base/a/b/c` from a snapshot-relative path, each segment checked.
pub(crate) fn join_rel(base: &RemotePath, rel: &str) -> Result<RemotePath, BackupError> {
    if !crate::domain::manifest::is_safe_entry_path(rel) {
        return Err(BackupError::Corrupt {
            path: base.to_string(),
            problem: format!("unsafe path {rel:?} inside the snapshot"),
        });
    }
    let mut p = base.clone();
    for seg in rel.split('/') {
        p = p.join(seg)?;
    }
    Ok(p)
}

/// Scheduled run: resume the unfinished snapshot, or start one.
pub async fn run_scheduled(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
) -> Result<SnapshotOutcome, BackupError> {
    run(cx, backup, None).await
}

/// Continuation run for `snapshot_id`.
pub async fn run_continue(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    snapshot_id: &str,
) -> Result<SnapshotOutcome, BackupError> {
    run(cx, backup, Some(snapshot_id)).await
}

/// The run lease of a plan, in its backup directory: one snapshot run per
/// plan at a time (scheduled or continuation), taken atomically.
pub const RUN_LEASE_NAME: &str = ".run-lease";

async fn run(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    wanted: Option<&str>,
) -> Result<SnapshotOutcome, BackupError> {
    let dir = backup_dir(cx.store, backup)?;
    cx.store.mkdir_all(&dir).await?;
    let now = (cx.clock)();
    let lease = Lease {
        owner: cx.invocation_id.to_owned(),
        until: cx.lease_until(now),
    };
    let held = match file_lease::acquire(
        cx.store,
        &dir.join(RUN_LEASE_NAME)?,
        lease,
        &format!("{:016x}", fastrand::u64(..)),
        now,
    )
    .await?
    {
        file_lease::Acquired::Held(h) => h,
        file_lease::Acquired::Busy(other) => {
            return Ok(SnapshotOutcome::Busy {
                snapshot_id: wanted.map(str::to_owned),
                owner: other.as_ref().map(|l| l.owner.clone()),
                until: other.map(|l| l.until),
            });
        }
    };
    let r = run_held(cx, backup, &dir, wanted).await;
    // Released before a continuation's event goes out, so the next
    // invocation need not wait for it to expire.
    file_lease::release(cx.store, &held).await;
    match r {
        Ok(SnapshotOutcome::Continuing {
            snapshot_id,
            counts,
            invocations,
        }) => {
            publish_continuation(cx, backup, &snapshot_id).await?;
            tracing::info!(snapshot = %snapshot_id, documents = counts.documents, "deadline near: continuing by event");
            Ok(SnapshotOutcome::Continuing {
                snapshot_id,
                counts,
                invocations,
            })
        }
        r => r,
    }
}

async fn run_held(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    wanted: Option<&str>,
) -> Result<SnapshotOutcome, BackupError> {
    let dir = dir.clone();
    let state = checkpoint::directory_state(cx.store, &dir).await?;
    complete::sweep_deleting(cx.store, &dir, &state.deleting).await?;
    let cp = match checkpoint::choose(cx, backup, &dir, &state, wanted).await? {
        checkpoint::Target::AlreadyComplete(snapshot_id) => {
            return Ok(SnapshotOutcome::AlreadyComplete { snapshot_id });
        }
        checkpoint::Target::Finish { snapshot_id } => {
            // Manifest and summary are written: only the rename was left.
            let path = complete::publish_dir(cx.store, &dir, &snapshot_id).await?;
            let summary = complete::read_summary(cx.store, &dir, &snapshot_id).await?;
            return completed(cx, backup, &dir, path, summary).await;
        }
        checkpoint::Target::Resume(cp) => *cp,
        checkpoint::Target::Start { base } => match start(cx, backup, &dir, &state, base).await {
            Ok(cp) => cp,
            Err(e) => return Err(failed(cx, backup, &dir, e).await),
        },
    };
    match snapshot(cx, backup, &dir, cp).await {
        Ok(o) => Ok(o),
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Err(failed(cx, backup, &dir, e).await),
    }
}

/// `Snapshot Failed` for a permanent failure (a transient one is retried).
async fn failed(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    e: BackupError,
) -> BackupError {
    if !e.is_retryable() {
        cx.publish(Event {
            detail_type: DetailType::SnapshotFailed,
            detail: serde_json::json!({
                "backup": backup.name,
                "directory": dir.to_string(),
                "error": e.to_string(),
                "retryable": false,
                "invocation_id": cx.invocation_id,
            }),
        })
        .await;
    }
    e
}

/// A new `.partial` directory with its first checkpoint.
async fn start(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    state: &crate::domain::backup::DirectoryState,
    base: Option<String>,
) -> Result<Checkpoint, BackupError> {
    let mut roots = Vec::new();
    for r in &backup.roots {
        let id = NodeId::new(*r).ok_or_else(|| BackupError::Root {
            root: *r,
            problem: "not a positive node id".into(),
        })?;
        let node = match cx.ecm.node(id).await {
            Ok(n) => n,
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => {
                return Err(BackupError::Root {
                    root: *r,
                    problem: e.to_string(),
                });
            }
        };
        if !node.is_container() {
            return Err(BackupError::Root {
                root: *r,
                problem: format!("{:?} is not a folder or workspace", node.name),
            });
        }
        roots.push((*r, node.name));
    }
    let mut now = (cx.clock)();
    let mut tries = 0;
    // Ids have one-second resolution: a run starting in the second the
    // previous snapshot started waits for the next second.
    while {
        let id = crate::domain::backup::snapshot_id(now);
        state.complete.contains(&id) || state.partial.contains(&id)
    } {
        tries += 1;
        if tries > 3 {
            return Err(BackupError::Snapshot {
                snapshot_id: crate::domain::backup::snapshot_id(now),
                directory: dir.to_string(),
                problem: "a snapshot of this id exists already".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        now = (cx.clock)();
    }
    let cp = Checkpoint::start(now, base, &roots);
    let partial = dir.join(partial_name(&cp.snapshot_id))?;
    cx.store.mkdir_all(&partial).await?;
    checkpoint::save(cx.store, &partial, &cp).await?;
    tracing::info!(snapshot = %cp.snapshot_id, base = ?cp.base_snapshot, "snapshot started");
    Ok(cp)
}

/// Walks from the checkpoint until done or the deadline nears.
async fn snapshot(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    mut cp: Checkpoint,
) -> Result<SnapshotOutcome, BackupError> {
    let partial = dir.join(partial_name(&cp.snapshot_id))?;
    let mut done = manifest::read_done(cx.store, &partial, cp.parts).await?;
    let base = match &cp.base_snapshot {
        Some(b) => Some(manifest::read_base(cx.store, dir, b).await?),
        None => None,
    };
    // Files a crashed run finished without recording: hashed on SFTP, so
    // they are recorded when their page is walked again, not copied again.
    let mut recovered: HashMap<(i64, u32), (String, u64, String)> = HashMap::new();
    for p in std::mem::take(&mut cp.pending) {
        for rel in [&p.path, &p.alt_path] {
            if done.has_path(rel) {
                continue;
            }
            let path = join_rel(&partial, rel)?;
            if let Some(m) = cx.store.try_stat(&path).await?
                && m.size == Some(p.size)
            {
                let (size, sha) = copy::hash_file(cx.store, &path).await?;
                recovered.insert((p.node_id, p.version), (rel.clone(), size, sha));
                break;
            }
        }
    }
    let mut pages = 0u32;
    while let Some(mut cursor) = cp.stack.pop() {
        if pages > 0 && cx.deadline_near() {
            cp.stack.push(cursor);
            return continue_later(cx, backup, &partial, cp).await;
        }
        pages += 1;
        let page = walk::list_page(cx.ecm, &cursor, backup.page_size).await;
        let page = match page {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                // A folder deleted during the walk: nothing left to back up there.
                tracing::warn!(
                    node_id = cursor.node_id,
                    "container gone during the snapshot"
                );
                checkpoint::save(cx.store, &partial, &cp).await?;
                continue;
            }
            Err(e) => {
                cp.stack.push(cursor);
                return Err(e.into());
            }
        };
        if cursor.page > 1 && cursor.total_count.is_some_and(|t| page.total_count < t) {
            // Children were removed since page 1: later ones moved up into
            // pages already walked. List again from the start (what is in
            // the manifest is not copied twice).
            cursor.page = 1;
            cursor.total_count = Some(page.total_count);
            cp.stack.push(cursor);
            continue;
        }
        if cursor.page == 1 {
            cp.counts.containers += 1;
        }
        cp.counts.other_nodes += page.others;
        let docs: Vec<walk::DocItem> = page
            .documents
            .into_iter()
            .filter(|d| !done.nodes.contains(&d.node.id.get()))
            .collect();
        let base_ref = base.as_ref();
        let per_doc: Vec<Vec<copy::Plan>> = futures_util::stream::iter(docs)
            .map(|d| {
                copy::inspect(
                    cx.ecm,
                    d,
                    backup.include_metadata,
                    backup.versions,
                    base_ref,
                )
            })
            .buffered(backup.parallelism as usize)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        // One plan per version, a document's versions oldest first.
        let plans: Vec<copy::Plan> = per_doc.into_iter().flatten().collect();
        // Jobs first recorded as pending, so a crash mid-copy is recognised.
        let mut lines: Vec<Option<BackupRecord>> = vec![None; plans.len()];
        let mut jobs = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            match plan {
                copy::Plan::Reference(r) => lines[i] = Some(r),
                copy::Plan::Skip(s) => cp.skipped.push(s),
                copy::Plan::Copy(job) => {
                    match recovered.remove(&(job.record.node_id, job.record.version)) {
                        Some((path, size, sha)) => {
                            lines[i] = Some(BackupRecord {
                                path,
                                size,
                                sha256: sha,
                                ..job.record
                            })
                        }
                        None => jobs.push((i, *job)),
                    }
                }
            }
        }
        if !jobs.is_empty() {
            cp.pending = jobs
                .iter()
                .map(|(_, j)| Pending {
                    node_id: j.record.node_id,
                    version: j.record.version,
                    size: j.record.size,
                    path: j.item.path.clone(),
                    alt_path: j.item.alt_path.clone(),
                })
                .collect();
            let mut saved = cp.clone();
            saved.stack.push(cursor.clone());
            checkpoint::save(cx.store, &partial, &saved).await?;
            cx.store
                .mkdir_all(&join_rel(&partial, &cursor.path)?)
                .await?;
        }
        let partial_ref = &partial;
        let results: Vec<(usize, Result<copy::Copied, BackupError>)> = futures_util::stream::iter(
            jobs,
        )
        .map(|(i, job)| async move { (i, copy::copy(cx.ecm, cx.store, partial_ref, job).await) })
        .buffer_unordered(backup.parallelism as usize)
        .collect()
        .await;
        let mut failure = None;
        for (i, r) in results {
            match r {
                Ok(copy::Copied::Line(l)) => lines[i] = Some(l),
                Ok(copy::Copied::Skip(s)) => cp.skipped.push(s),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            // The checkpoint on SFTP still lists this page's copies as pending.
            return Err(e);
        }
        let lines: Vec<BackupRecord> = lines.into_iter().flatten().collect();
        if !lines.is_empty() {
            let n = cp.parts + 1;
            cp.manifest_bytes += manifest::write_part(cx.store, &partial, n, &lines).await?;
            cp.parts = n;
        }
        for l in &lines {
            cp.counts.documents += 1;
            cp.counts.bytes += l.size;
            if l.snapshot.is_some() {
                cp.counts.referenced += 1;
            } else {
                cp.counts.copied += 1;
                cp.counts.copied_bytes += l.size;
            }
            done.add(l);
        }
        cp.counts.skipped = cp.skipped.len() as u64;
        cp.pending.clear();
        if page.has_next {
            cursor.page += 1;
            cursor.total_count = Some(page.total_count);
            cp.stack.push(cursor);
        }
        // Depth-first: the page's first container is walked next.
        cp.stack.extend(page.containers.into_iter().rev());
        checkpoint::save(cx.store, &partial, &cp).await?;
    }
    let summary = complete::finish(cx, backup, dir, &cp).await?;
    let path = complete::publish_dir(cx.store, dir, &cp.snapshot_id).await?;
    completed(cx, backup, dir, path, summary).await
}

/// Retention and the `Snapshot Completed` event.
async fn completed(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    path: RemotePath,
    summary: SnapshotSummary,
) -> Result<SnapshotOutcome, BackupError> {
    let retention = complete::prune(cx.store, backup, dir).await?;
    tracing::info!(snapshot = %summary.snapshot_id, documents = summary.counts.documents, copied = summary.counts.copied, "snapshot complete");
    cx.publish(Event {
        detail_type: DetailType::SnapshotCompleted,
        detail: serde_json::json!({
            "backup": backup.name,
            "snapshot_id": summary.snapshot_id,
            "target_path": path.to_string(),
            "base_snapshot": summary.base_snapshot,
            "documents": summary.counts.documents,
            "bytes": summary.counts.bytes,
            "copied": summary.counts.copied,
            "copied_bytes": summary.counts.copied_bytes,
            "referenced": summary.counts.referenced,
            "skipped": summary.counts.skipped,
            "manifest_sha256": summary.manifest_sha256,
            "started_at": summary.started_at,
            "finished_at": summary.finished_at,
            "duration_ms": summary.duration_ms,
            "invocations": summary.invocations,
            "pruned": retention.delete,
            "invocation_id": cx.invocation_id,
        }),
    })
    .await;
    let mut summary = summary;
    let skipped_unlisted = summary.skipped.len().saturating_sub(job::LISTED_MAX) as u64;
    summary.skipped.truncate(job::LISTED_MAX);
    Ok(SnapshotOutcome::Completed {
        summary_path: path.join(complete::SUMMARY_NAME)?.to_string(),
        path: path.to_string(),
        summary: Box::new(summary),
        skipped_unlisted,
        retention,
    })
}

/// Saves the checkpoint; the caller releases the run lease and asks the
/// bus to invoke us again.
async fn continue_later(
    cx: &BackupContext<'_>,
    _backup: &BackupConfig,
    partial: &RemotePath,
    mut cp: Checkpoint,
) -> Result<SnapshotOutcome, BackupError> {
    cp.lease = None;
    checkpoint::save(cx.store, partial, &cp).await?;
    Ok(SnapshotOutcome::Continuing {
        snapshot_id: cp.snapshot_id,
        counts: cp.counts,
        invocations: cp.invocations,
    })
}

/// Publishes `Snapshot Continuation`; undelivered, the invocation fails as
/// retryable (a retry resumes from the checkpoint just saved).
async fn publish_continuation(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    snapshot_id: &str,
) -> Result<(), BackupError> {
    publish_detail(cx, snapshot_id, continuation_detail(backup, snapshot_id)).await
}

pub(crate) async fn publish_detail(
    cx: &BackupContext<'_>,
    snapshot_id: &str,
    detail: serde_json::Value,
) -> Result<(), BackupError> {
    let event = Event {
        detail_type: DetailType::SnapshotContinuation,
        detail,
    };
    let report = cx.events.publish(std::slice::from_ref(&event)).await;
    if let Some(u) = report.undelivered.first() {
        return Err(BackupError::Continuation {
            snapshot_id: snapshot_id.to_owned(),
            detail: format!("{}: {}", u.error_code, u.message),
        });
    }
    Ok(())
}
