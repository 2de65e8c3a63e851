//! Manual `verify`: re-reads every file a complete snapshot's manifest names
//! (in this snapshot or the earlier ones its lines point at) and checks size
//! and SHA-256, and the manifest's own digest against `snapshot.json`. Every
//! problem is reported by path (all of them in the job's report on SFTP, the
//! first ones in the response); any problem fails the invocation. The
//! manifest is read line by line, and a verify longer than one invocation
//! continues by event (see [`super::job`]).

use std::collections::BTreeSet;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::copy::hash_file;
use super::job::{self, Begin, Capped, Driven};
use super::manifest::{self as mf, MANIFEST_NAME};
use super::{BackupContext, BackupError, backup_dir, join_rel};
use crate::domain::backup::{BackupConfig, BackupEvent, job_continuation_detail};
use crate::domain::paths::RemotePath;
use crate::flows::file_lease;
use crate::ports::events::{DetailType, Event};
use crate::ports::file_store::FileStoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Path on the SFTP server.
    pub path: String,
    pub node_id: Option<i64>,
    /// `missing`, `size`, `sha256`, `manifest`.
    pub kind: String,
    pub detail: String,
}

/// What a verify job carries from one invocation to the next.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyState {
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub referenced_snapshots: BTreeSet<String>,
    pub problems: Capped<Problem>,
    /// `snapshot.json` and the manifest's digest are checked (first invocation).
    pub manifest_checked: bool,
    /// The manifest could not be read at all.
    pub manifest_unreadable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub snapshot_id: String,
    pub path: String,
    pub job: String,
    /// Every problem, as JSON lines, and `report.json`.
    pub report_path: String,
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// Other snapshots whose files were read because lines point at them.
    pub referenced_snapshots: Vec<String>,
    /// The first problems (at most `job::LISTED_MAX`), by manifest order.
    pub problems: Vec<Problem>,
    pub problems_total: u64,
    pub invocations: u32,
}

/// What a verify invocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum VerifyOutcome {
    Verified(VerifyReport),
    /// The deadline neared: checkpoint saved, continuation published.
    Continuing {
        snapshot_id: String,
        job: String,
        files_checked: u64,
        problems_total: u64,
        invocations: u32,
    },
    /// Another invocation verifies this snapshot now.
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

pub async fn verify(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    snapshot_id: &str,
    resume: Option<&str>,
) -> Result<VerifyOutcome, BackupError> {
    let dir = backup_dir(cx.store, backup)?;
    let summary = dir.join(snapshot_id)?.join(super::complete::SUMMARY_NAME)?;
    if cx.store.try_stat(&summary).await?.is_none() {
        return Err(BackupError::Snapshot {
            snapshot_id: snapshot_id.to_owned(),
            directory: dir.to_string(),
            problem: "no complete snapshot of this id (snapshot.json not found)".into(),
        });
    }
    let begin = job::begin::<VerifyState>(
        cx,
        &dir,
        "verify",
        &format!("verify-{snapshot_id}"),
        snapshot_id,
        resume,
    )
    .await?;
    let (mut j, held) = match begin {
        Begin::Run(j, h) => (*j, h),
        Begin::Busy(l) => {
            return Ok(VerifyOutcome::Busy {
                snapshot_id: snapshot_id.to_owned(),
                owner: l.map(|l| l.owner),
            });
        }
        Begin::Gone(job) => {
            return Ok(VerifyOutcome::NothingToContinue {
                snapshot_id: snapshot_id.to_owned(),
                job,
            });
        }
    };
    let r = verify_held(cx, backup, &dir, snapshot_id, &mut j).await;
    if let Err(e) = &r
        && !matches!(e, BackupError::VerifyFailed { .. })
        && !job::resumable(e, resume)
    {
        j.abandon(cx).await;
    }
    file_lease::release(cx.store, &held).await;
    if let Ok(VerifyOutcome::Continuing { job, .. }) = &r {
        let event = BackupEvent::Verify {
            backup: backup.clone(),
            snapshot_id: snapshot_id.to_owned(),
            resume: Some(job.clone()),
        };
        if let Some(detail) = job_continuation_detail(&event, job) {
            super::publish_detail(cx, snapshot_id, detail).await?;
        }
    }
    r
}

async fn verify_held(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    snapshot_id: &str,
    j: &mut job::Job<VerifyState>,
) -> Result<VerifyOutcome, BackupError> {
    let snap = dir.join(snapshot_id)?;
    let manifest_path = snap.join(MANIFEST_NAME)?;
    if !j.cp.state.manifest_checked {
        check_manifest(cx, dir, snapshot_id, &manifest_path, j).await?;
        j.cp.state.manifest_checked = true;
    }
    if !j.cp.state.manifest_unreadable {
        let mut reader = mf::LineReader::open(cx.store, &manifest_path).await?;
        reader.skip(j.cp.lines_done).await?;
        let store = cx.store;
        let this = snapshot_id.to_owned();
        let source = Box::pin(mf::records(reader).map(move |l| {
            let l = l?;
            let holder = l.holder(&this).to_owned();
            let path = join_rel(&dir.join(&holder)?, &l.path)?;
            Ok((holder, path, l))
        }));
        let mut results = Box::pin(job::drive(
            cx,
            backup.parallelism as usize,
            source,
            move |(holder, path, l)| async move {
                let r = hash_file(store, &path).await;
                (holder, path, l, r)
            },
        ));
        let mut stopped = false;
        while let Some(item) = results.next().await {
            let (holder, path, l, r) = match item {
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
            let problem = match r {
                Ok((got_size, got_sha)) => {
                    j.cp.state.bytes_checked += got_size;
                    if got_size != l.size {
                        Some((
                            "size",
                            format!("{got_size} bytes, the manifest says {}", l.size),
                        ))
                    } else if got_sha != l.sha256 {
                        Some((
                            "sha256",
                            format!("sha256 {got_sha}, the manifest says {}", l.sha256),
                        ))
                    } else {
                        None
                    }
                }
                Err(FileStoreError::NotFound { .. }) => {
                    Some(("missing", "the file is missing".to_owned()))
                }
                Err(e) if e.is_retryable() => {
                    // The lines before this one are done; this one is redone.
                    j.save(cx).await?;
                    return Err(e.into());
                }
                Err(e) => Some(("missing", format!("cannot be read: {e}"))),
            };
            j.cp.lines_done += 1;
            j.cp.state.files_checked += 1;
            if holder != snapshot_id {
                j.cp.state.referenced_snapshots.insert(holder);
            }
            if let Some((kind, detail)) = problem {
                add_problem(
                    cx,
                    j,
                    Problem {
                        path: path.to_string(),
                        node_id: Some(l.node_id),
                        kind: kind.into(),
                        detail,
                    },
                )
                .await?;
            }
        }
        drop(results);
        if stopped {
            j.save(cx).await?;
            tracing::info!(snapshot = %snapshot_id, job = %j.cp.job, files = j.cp.state.files_checked, "deadline near: verify continues by event");
            return Ok(VerifyOutcome::Continuing {
                snapshot_id: snapshot_id.to_owned(),
                job: j.cp.job.clone(),
                files_checked: j.cp.state.files_checked,
                problems_total: j.cp.state.problems.total,
                invocations: j.cp.invocations,
            });
        }
    }
    let st = &j.cp.state;
    let mut report = VerifyReport {
        snapshot_id: snapshot_id.to_owned(),
        path: snap.to_string(),
        job: j.cp.job.clone(),
        report_path: j.dir.to_string(),
        files_checked: st.files_checked,
        bytes_checked: st.bytes_checked,
        referenced_snapshots: st.referenced_snapshots.iter().cloned().collect(),
        problems: st.problems.listed.clone(),
        problems_total: st.problems.total,
        invocations: j.cp.invocations,
    };
    report.report_path = j.finish(cx, &report).await?;
    let detail = serde_json::json!({
        "backup": backup.name,
        "snapshot_id": snapshot_id,
        "target_path": report.path,
        "files_checked": report.files_checked,
        "bytes_checked": report.bytes_checked,
        "referenced_snapshots": report.referenced_snapshots,
        "problems": report.problems,
        "problems_total": report.problems_total,
        "report_path": report.report_path,
        "invocations": report.invocations,
        "invocation_id": cx.invocation_id,
    });
    if report.problems_total == 0 {
        cx.publish(Event {
            detail_type: DetailType::SnapshotVerified,
            detail,
        })
        .await;
        Ok(VerifyOutcome::Verified(report))
    } else {
        cx.publish(Event {
            detail_type: DetailType::SnapshotVerifyFailed,
            detail,
        })
        .await;
        let mut summary = report
            .problems
            .iter()
            .take(20)
            .map(|p| format!("{} ({}: {})", p.path, p.kind, p.detail))
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
        Err(BackupError::VerifyFailed {
            snapshot_id: snapshot_id.to_owned(),
            problems: report.problems_total as usize,
            summary,
            report: Box::new(report),
        })
    }
}

async fn add_problem(
    cx: &BackupContext<'_>,
    j: &mut job::Job<VerifyState>,
    p: Problem,
) -> Result<(), BackupError> {
    j.report(cx, &p).await?;
    j.cp.state.problems.push(p);
    Ok(())
}

/// `snapshot.json` readable, the manifest readable and of the digest the
/// summary records.
async fn check_manifest(
    cx: &BackupContext<'_>,
    dir: &RemotePath,
    snapshot_id: &str,
    manifest_path: &RemotePath,
    j: &mut job::Job<VerifyState>,
) -> Result<(), BackupError> {
    let snap = dir.join(snapshot_id)?;
    let summary = match super::complete::read_summary(cx.store, dir, snapshot_id).await {
        Ok(s) => Some(s),
        Err(BackupError::Store(FileStoreError::NotFound { .. })) => {
            return Err(BackupError::Snapshot {
                snapshot_id: snapshot_id.to_owned(),
                directory: dir.to_string(),
                problem: "no complete snapshot of this id (snapshot.json not found)".into(),
            });
        }
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => {
            let p = Problem {
                path: snap.join(super::complete::SUMMARY_NAME)?.to_string(),
                node_id: None,
                kind: "manifest".into(),
                detail: e.to_string(),
            };
            add_problem(cx, j, p).await?;
            None
        }
    };
    // The manifest's digest (a streaming read), and that every line parses.
    let digest = hash_file(cx.store, manifest_path).await;
    let parses = match digest {
        Ok(_) => {
            let r = mf::for_each(cx.store, manifest_path, |_| {}).await;
            match r {
                Ok(_) => None,
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => Some(e.to_string()),
            }
        }
        Err(ref e) if e.is_retryable() => {
            return Err(BackupError::Store(FileStoreError::Transient {
                op: "read",
                path: manifest_path.to_string(),
                reason: e.to_string(),
            }));
        }
        Err(ref e) => Some(e.to_string()),
    };
    if let Some(detail) = parses {
        j.cp.state.manifest_unreadable = true;
        let p = Problem {
            path: manifest_path.to_string(),
            node_id: None,
            kind: "manifest".into(),
            detail,
        };
        add_problem(cx, j, p).await?;
    }
    if let (Some(s), Ok((_, sha))) = (&summary, &digest)
        && *sha != s.manifest_sha256
    {
        let p = Problem {
            path: manifest_path.to_string(),
            node_id: None,
            kind: "manifest".into(),
            detail: format!("sha256 {sha}, snapshot.json says {}", s.manifest_sha256),
        };
        add_problem(cx, j, p).await?;
    }
    Ok(())
}
