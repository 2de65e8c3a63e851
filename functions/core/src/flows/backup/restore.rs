//! Manual `restore`: brings a complete snapshot (or one document of it) back
//! into a target folder of the ECM — the DR drill that proves a backup is a
//! backup. Folders are recreated under the target by their original names
//! (`ecm_path`), each document is uploaded from SFTP with its categories and
//! RM classifications (when the snapshot has them), and every restored
//! document is read back from the ECM and its SHA-256 checked against the
//! manifest. A snapshot holding every version restores each document's
//! versions in order (the first uploaded, the others added). The manifest is
//! read line by line, and a restore longer than one invocation continues by
//! event (see [`super::job`]). A document already there under its name with the same bytes
//! counts as restored (a rerun of a drill); with other bytes it is a problem,
//! never overwritten.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::job::{self, Begin, Capped, Driven};
use super::manifest::{self as mf, MANIFEST_NAME};
use super::{BackupContext, BackupError, backup_dir, join_rel};
use crate::domain::backup::{BackupConfig, BackupEvent, job_continuation_detail};
use crate::domain::manifest::BackupRecord;
use crate::domain::names::cs_name;
use crate::domain::paths::RemotePath;
use crate::flows::file_lease;
use crate::ports::ecm::{
    AppliedCategory, ByteStream, Content, Ecm, EcmError, NodeId, UploadRequest,
};
use crate::ports::events::{DetailType, Event};
use crate::ports::file_store::FileStore;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredDoc {
    pub source_node_id: i64,
    pub node_id: i64,
    pub ecm_path: Vec<String>,
    /// Of the latest version restored.
    pub size: u64,
    pub sha256: String,
    /// Versions restored (1 unless the snapshot holds every version).
    #[serde(default = "one")]
    pub versions: u32,
    /// It was there already, byte-identical.
    pub already_present: bool,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProblem {
    pub source_node_id: i64,
    pub ecm_path: Vec<String>,
    pub problem: String,
}

/// What a restore job carries from one invocation to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreState {
    pub restored: Capped<RestoredDoc>,
    pub already_present: u64,
    pub versions: u64,
    pub bytes: u64,
    pub problems: Capped<RestoreProblem>,
    /// Lines of the wanted `node_id` seen (a restore of one document).
    pub matched: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub snapshot_id: String,
    pub target_folder: i64,
    pub job: String,
    /// Every restored document and problem, as JSON lines, and `report.json`.
    pub report_path: String,
    /// The first restored documents (at most `job::LISTED_MAX`).
    pub restored: Vec<RestoredDoc>,
    pub restored_total: u64,
    pub already_present: u64,
    /// Versions restored, over all documents.
    pub versions: u64,
    pub bytes: u64,
    pub problems: Vec<RestoreProblem>,
    pub problems_total: u64,
    pub invocations: u32,
}

/// What a restore invocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum RestoreOutcome {
    Restored(RestoreReport),
    /// The deadline neared: checkpoint saved, continuation published.
    Continuing {
        snapshot_id: String,
        job: String,
        restored: u64,
        problems_total: u64,
        invocations: u32,
    },
    /// Another invocation restores this snapshot into this folder now.
    Busy {
        snapshot_id: String,
        owner: Option<String>,
    },
    /// A continuation of a job that has no checkpoint (finished already).
    NothingToContinue {
        snapshot_id: String,
        job: String,
    },
}

/// One line of the full report.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ReportLine<'a> {
    Restored(&'a RestoredDoc),
    Problem(&'a RestoreProblem),
}

async fn sha_of_ecm(
    ecm: &dyn Ecm,
    node: NodeId,
    version: Option<u32>,
) -> Result<(u64, String), EcmError> {
    let mut d = ecm.download(node, version).await?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = d.stream.next().await {
        let chunk = chunk.map_err(|e| EcmError::Transient {
            op: "download",
            target: format!("node {node}"),
            detail: e.to_string(),
        })?;
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    Ok((n, hex::encode(h.finalize())))
}

fn categories_of(l: &BackupRecord) -> Vec<AppliedCategory> {
    l.metadata
        .get("categories")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn classifications_of(l: &BackupRecord) -> Vec<i64> {
    l.metadata
        .get("rm_classifications")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// The bytes of `l` from the snapshot holding them, as an upload body.
async fn content_of(
    store: &dyn FileStore,
    snapshot_root: &RemotePath,
    snapshot_id: &str,
    l: &BackupRecord,
    name: &str,
) -> Result<Result<Content, String>, BackupError> {
    let src = join_rel(&snapshot_root.join(l.holder(snapshot_id))?, &l.path)?;
    let handle = match store.open_read(&src).await {
        Ok(h) => h,
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => return Ok(Err(format!("cannot read {src}: {e}"))),
    };
    let stream: ByteStream = Box::pin(
        handle
            .body
            .map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    Ok(Ok(Content {
        stream,
        length: l.size,
        file_name: name.to_owned(),
        mime_type: l
            .mime_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into()),
    }))
}

/// Restores one document: its lines (one per version, oldest first) become
/// the new document's versions in order. `Err` only for failures that should
/// stop the run. Idempotent: a document already there (a rerun, a cut-off
/// invocation) has its versions compared one by one with the manifest and
/// only the missing ones are added; one with other bytes is reported.
async fn restore_one(
    ecm: &dyn Ecm,
    store: &dyn FileStore,
    snapshot_root: &RemotePath,
    snapshot_id: &str,
    target: NodeId,
    lines: &[BackupRecord],
) -> Result<Result<RestoredDoc, String>, BackupError> {
    let Some(last) = lines.last() else {
        return Ok(Err("no lines".into()));
    };
    let names: Result<Vec<String>, _> = last.ecm_path.iter().map(|n| cs_name(n)).collect();
    let names = match names {
        Ok(n) => n,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some((name, folders)) = names.split_last() else {
        return Ok(Err("empty ecm_path".into()));
    };
    let parent = ecm.ensure_folder_path(target, folders).await?;
    let first = &lines[0];
    let content = match content_of(store, snapshot_root, snapshot_id, first, name).await? {
        Ok(c) => c,
        Err(p) => return Ok(Err(p)),
    };
    let request = UploadRequest {
        parent,
        name: name.clone(),
        description: None,
        categories: categories_of(last),
        classifications: classifications_of(last),
        content,
    };
    let (node, already) = match ecm.upload(request).await {
        Ok(r) => {
            if r.sha256 != first.sha256 || r.size != first.size {
                return Ok(Err(format!(
                    "sent {} bytes with sha256 {}, the manifest says {} bytes, {}",
                    r.size, r.sha256, first.size, first.sha256
                )));
            }
            (r.node_id, false)
        }
        Err(e) if e.is_conflict() => match ecm.child_by_name(parent, name).await? {
            Some(existing) => (existing.id, true),
            None => return Ok(Err(format!("the ECM reports a name conflict: {e}"))),
        },
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => return Ok(Err(format!("upload refused: {e}"))),
    };
    let mut have = ecm.versions(node).await?;
    have.sort_by_key(|v| v.number);
    if have.len() > lines.len() {
        return Ok(Err(format!(
            "node {node} in the ECM has {} versions, the snapshot {}{}",
            have.len(),
            lines.len(),
            if already {
                " (it was there before the restore; left untouched)"
            } else {
                ""
            }
        )));
    }
    let mut last_check = (0, String::new());
    for (i, l) in lines.iter().enumerate() {
        let number = match have.get(i) {
            Some(v) => v.number,
            None => {
                let content = match content_of(store, snapshot_root, snapshot_id, l, name).await? {
                    Ok(c) => c,
                    Err(p) => return Ok(Err(p)),
                };
                match ecm.add_version(node, None, content).await {
                    Ok(r) if r.sha256 != l.sha256 || r.size != l.size => {
                        return Ok(Err(format!(
                            "version {}: sent {} bytes with sha256 {}, the manifest says {} bytes, {}",
                            l.version, r.size, r.sha256, l.size, l.sha256
                        )));
                    }
                    Ok(r) => match r.version {
                        Some(v) => v,
                        None => ecm
                            .versions(node)
                            .await?
                            .iter()
                            .map(|v| v.number)
                            .max()
                            .unwrap_or(i as u32 + 1),
                    },
                    Err(e) if e.is_retryable() => return Err(e.into()),
                    Err(e) => return Ok(Err(format!("version {}: refused: {e}", l.version))),
                }
            }
        };
        let (size, sha) = sha_of_ecm(ecm, node, Some(number)).await?;
        if sha != l.sha256 || size != l.size {
            return Ok(Err(format!(
                "node {node} version {number} in the ECM has {size} bytes with sha256 {sha}, the manifest says {} bytes, {} (version {}){}",
                l.size,
                l.sha256,
                l.version,
                if already {
                    " (it was there before the restore; left untouched)"
                } else {
                    ""
                }
            )));
        }
        last_check = (size, sha);
    }
    Ok(Ok(RestoredDoc {
        source_node_id: last.node_id,
        node_id: node.get(),
        ecm_path: last.ecm_path.clone(),
        size: last_check.0,
        sha256: last_check.1,
        versions: lines.len() as u32,
        already_present: already,
    }))
}

/// The manifest's lines grouped by document (a document's versions are
/// consecutive, oldest first).
fn documents(
    reader: mf::LineReader,
) -> impl futures_util::Stream<Item = Result<Vec<BackupRecord>, BackupError>> + Send {
    struct G {
        reader: mf::LineReader,
        next: Option<BackupRecord>,
    }
    futures_util::stream::unfold(Some(G { reader, next: None }), |g| async move {
        let mut g = g?;
        let first = match g.next.take() {
            Some(r) => r,
            None => match g.reader.next().await {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => return Some((Err(e), None)),
            },
        };
        let mut group = vec![first];
        loop {
            match g.reader.next().await {
                Ok(Some(r)) if r.node_id == group[0].node_id => group.push(r),
                Ok(Some(r)) => {
                    g.next = Some(r);
                    break;
                }
                Ok(None) => break,
                Err(e) => return Some((Err(e), None)),
            }
        }
        group.sort_by_key(|l| l.version);
        Some((Ok(group), Some(g)))
    })
}

pub async fn restore(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    snapshot_id: &str,
    target_folder: i64,
    node_id: Option<i64>,
    resume: Option<&str>,
) -> Result<RestoreOutcome, BackupError> {
    let dir = backup_dir(cx.store, backup)?;
    let target = NodeId::new(target_folder).ok_or_else(|| BackupError::Root {
        root: target_folder,
        problem: "not a positive node id".into(),
    })?;
    let folder = cx.ecm.node(target).await?;
    if !folder.is_container() {
        return Err(BackupError::Root {
            root: target_folder,
            problem: format!("the restore target {:?} is not a folder", folder.name),
        });
    }
    let manifest_path = dir.join(snapshot_id)?.join(MANIFEST_NAME)?;
    if cx.store.try_stat(&manifest_path).await?.is_none() {
        return Err(BackupError::Snapshot {
            snapshot_id: snapshot_id.to_owned(),
            directory: dir.to_string(),
            problem: "no complete snapshot of this id (manifest.jsonl not found)".into(),
        });
    }
    let begin = job::begin::<RestoreState>(
        cx,
        &dir,
        "restore",
        &format!("restore-{snapshot_id}-{target_folder}"),
        snapshot_id,
        resume,
    )
    .await?;
    let (mut j, held) = match begin {
        Begin::Run(j, h) => (*j, h),
        Begin::Busy(l) => {
            return Ok(RestoreOutcome::Busy {
                snapshot_id: snapshot_id.to_owned(),
                owner: l.map(|l| l.owner),
            });
        }
        Begin::Gone(job) => {
            return Ok(RestoreOutcome::NothingToContinue {
                snapshot_id: snapshot_id.to_owned(),
                job,
            });
        }
    };
    let r = restore_held(
        cx,
        backup,
        &dir,
        snapshot_id,
        target,
        node_id,
        &manifest_path,
        &mut j,
    )
    .await;
    if let Err(e) = &r
        && !matches!(e, BackupError::RestoreFailed { .. })
        && !job::resumable(e, resume)
    {
        j.abandon(cx).await;
    }
    file_lease::release(cx.store, &held).await;
    if let Ok(RestoreOutcome::Continuing { job, .. }) = &r {
        let event = BackupEvent::Restore {
            backup: backup.clone(),
            snapshot_id: snapshot_id.to_owned(),
            target_folder,
            node_id,
            resume: Some(job.clone()),
        };
        if let Some(detail) = job_continuation_detail(&event, job) {
            super::publish_detail(cx, snapshot_id, detail).await?;
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn restore_held(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    snapshot_id: &str,
    target: NodeId,
    node_id: Option<i64>,
    manifest_path: &RemotePath,
    j: &mut job::Job<RestoreState>,
) -> Result<RestoreOutcome, BackupError> {
    let mut reader = mf::LineReader::open(cx.store, manifest_path).await?;
    reader.skip(j.cp.lines_done).await?;
    let (ecm, store) = (cx.ecm, cx.store);
    let source = Box::pin(documents(reader));
    let mut results = Box::pin(job::drive(
        cx,
        backup.parallelism as usize,
        source,
        move |lines: Vec<BackupRecord>| async move {
            let wanted = node_id.is_none_or(|n| lines.first().is_some_and(|l| l.node_id == n));
            let r = if wanted {
                Some(restore_one(ecm, store, dir, snapshot_id, target, &lines).await)
            } else {
                None
            };
            (lines, r)
        },
    ));
    let mut stopped = false;
    while let Some(item) = results.next().await {
        let (lines, r) = match item {
            Driven::Done(x) => x,
            Driven::Deadline => {
                stopped = true;
                break;
            }
            Driven::Failed(e) => {
                j.save(cx).await?;
                return Err(e);
            }
        };
        let Some(r) = r else {
            j.cp.lines_done += lines.len() as u64;
            continue;
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                // The documents before this one are done; this one is
                // redone (idempotently) by the retry.
                j.save(cx).await?;
                return Err(e);
            }
        };
        j.cp.lines_done += lines.len() as u64;
        j.cp.state.matched += 1;
        match r {
            Ok(d) => {
                j.report(cx, &ReportLine::Restored(&d)).await?;
                let st = &mut j.cp.state;
                st.bytes += d.size;
                st.versions += u64::from(d.versions);
                if d.already_present {
                    st.already_present += 1;
                }
                st.restored.push(d);
            }
            Err(problem) => {
                let l = &lines[lines.len() - 1];
                let p = RestoreProblem {
                    source_node_id: l.node_id,
                    ecm_path: l.ecm_path.clone(),
                    problem,
                };
                j.report(cx, &ReportLine::Problem(&p)).await?;
                j.cp.state.problems.push(p);
            }
        }
    }
    drop(results);
    if stopped {
        j.save(cx).await?;
        tracing::info!(snapshot = %snapshot_id, job = %j.cp.job, restored = j.cp.state.restored.total, "deadline near: restore continues by event");
        return Ok(RestoreOutcome::Continuing {
            snapshot_id: snapshot_id.to_owned(),
            job: j.cp.job.clone(),
            restored: j.cp.state.restored.total,
            problems_total: j.cp.state.problems.total,
            invocations: j.cp.invocations,
        });
    }
    if let Some(n) = node_id
        && j.cp.state.matched == 0
    {
        let _ = j
            .finish(cx, &serde_json::json!({"node_id": n, "matched": 0}))
            .await;
        return Err(BackupError::Snapshot {
            snapshot_id: snapshot_id.to_owned(),
            directory: dir.to_string(),
            problem: format!("node {n} is not in the snapshot's manifest"),
        });
    }
    let st = &j.cp.state;
    let mut report = RestoreReport {
        snapshot_id: snapshot_id.to_owned(),
        target_folder: target.get(),
        job: j.cp.job.clone(),
        report_path: j.dir.to_string(),
        restored: st.restored.listed.clone(),
        restored_total: st.restored.total,
        already_present: st.already_present,
        versions: st.versions,
        bytes: st.bytes,
        problems: st.problems.listed.clone(),
        problems_total: st.problems.total,
        invocations: j.cp.invocations,
    };
    report.report_path = j.finish(cx, &report).await?;
    cx.publish(Event {
        detail_type: DetailType::SnapshotRestored,
        detail: serde_json::json!({
            "backup": backup.name,
            "snapshot_id": snapshot_id,
            "target_folder": target.get(),
            "node_id": node_id,
            "documents": report.restored_total,
            "versions": report.versions,
            "already_present": report.already_present,
            "bytes": report.bytes,
            "problems": report.problems,
            "problems_total": report.problems_total,
            "report_path": report.report_path,
            "invocations": report.invocations,
            "invocation_id": cx.invocation_id,
        }),
    })
    .await;
    if report.problems_total == 0 {
        Ok(RestoreOutcome::Restored(report))
    } else {
        let mut summary = report
            .problems
            .iter()
            .take(20)
            .map(|p| format!("{} ({})", p.ecm_path.join(" / "), p.problem))
            .collect::<Vec<_>>()
            .join("; ");
        let unlisted = report
            .problems_total
            .saturating_sub(20.min(report.problems.len()) as u64);
        if unlisted > 0 {
            summary.push_str(&format!(
                "; and {unlisted} more (all in {})",
                report.report_path
            ));
        }
        Err(BackupError::RestoreFailed {
            snapshot_id: snapshot_id.to_owned(),
            problems: report.problems_total as usize,
            summary,
            report: Box::new(report),
        })
    }
}
