//! Manual `verify`: re-reads every file a complete snapshot's manifest names
//! (in this snapshot or the earlier ones its lines point at) and checks size
//! and SHA-256, and the manifest's own digest against `snapshot.json`. Every
//! problem is reported by path; any problem fails the invocation.

use futures_util::StreamExt;
use serde::Serialize;

use super::copy::hash_file;
use super::manifest::{self as mf, MANIFEST_NAME};
use super::{BackupContext, BackupError, backup_dir, join_rel};
use crate::domain::backup::BackupConfig;
use crate::ports::events::{DetailType, Event};
use crate::ports::file_store::FileStoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Path on the SFTP server.
    pub path: String,
    pub node_id: Option<i64>,
    /// `missing`, `size`, `sha256`, `manifest`.
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub snapshot_id: String,
    pub path: String,
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// Other snapshots whose files were read because lines point at them.
    pub referenced_snapshots: Vec<String>,
    pub problems: Vec<Problem>,
}

pub async fn verify(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    snapshot_id: &str,
) -> Result<VerifyReport, BackupError> {
    let dir = backup_dir(cx.store, backup)?;
    let snap = dir.join(snapshot_id)?;
    let mut problems = Vec::new();
    let summary = match super::complete::read_summary(cx.store, &dir, snapshot_id).await {
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
            problems.push(Problem {
                path: snap.join(super::complete::SUMMARY_NAME)?.to_string(),
                node_id: None,
                kind: "manifest".into(),
                detail: e.to_string(),
            });
            None
        }
    };
    let manifest_path = snap.join(MANIFEST_NAME)?;
    let lines = match mf::read(cx.store, &manifest_path).await {
        Ok(l) => l,
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => {
            problems.push(Problem {
                path: manifest_path.to_string(),
                node_id: None,
                kind: "manifest".into(),
                detail: e.to_string(),
            });
            Vec::new()
        }
    };
    if let Some(s) = &summary {
        match hash_file(cx.store, &manifest_path).await {
            Ok((_, sha)) if sha == s.manifest_sha256 => {}
            Ok((_, sha)) => problems.push(Problem {
                path: manifest_path.to_string(),
                node_id: None,
                kind: "manifest".into(),
                detail: format!("sha256 {sha}, snapshot.json says {}", s.manifest_sha256),
            }),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(_) => {} // already reported by the read above
        }
    }
    let mut referenced = std::collections::BTreeSet::new();
    let mut jobs = Vec::new();
    for l in &lines {
        let holder = l.holder(snapshot_id).to_owned();
        if holder != snapshot_id {
            referenced.insert(holder.clone());
        }
        let path = join_rel(&dir.join(&holder)?, &l.path)?;
        jobs.push((path, l.node_id, l.size, l.sha256.clone()));
    }
    let store = cx.store;
    let mut results = futures_util::stream::iter(jobs)
        .map(|(path, node_id, size, sha)| async move {
            let r = hash_file(store, &path).await;
            (path, node_id, size, sha, r)
        })
        .buffer_unordered(backup.parallelism as usize);
    let (mut files, mut bytes) = (0u64, 0u64);
    while let Some((path, node_id, size, sha, r)) = results.next().await {
        files += 1;
        let problem = match r {
            Ok((got_size, got_sha)) => {
                bytes += got_size;
                if got_size != size {
                    Some((
                        "size",
                        format!("{got_size} bytes, the manifest says {size}"),
                    ))
                } else if got_sha != sha {
                    Some((
                        "sha256",
                        format!("sha256 {got_sha}, the manifest says {sha}"),
                    ))
                } else {
                    None
                }
            }
            Err(FileStoreError::NotFound { .. }) => {
                Some(("missing", "the file is missing".to_owned()))
            }
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => Some(("missing", format!("cannot be read: {e}"))),
        };
        if let Some((kind, detail)) = problem {
            problems.push(Problem {
                path: path.to_string(),
                node_id: Some(node_id),
                kind: kind.into(),
                detail,
            });
        }
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    let report = VerifyReport {
        snapshot_id: snapshot_id.to_owned(),
        path: snap.to_string(),
        files_checked: files,
        bytes_checked: bytes,
        referenced_snapshots: referenced.into_iter().collect(),
        problems,
    };
    let detail = serde_json::json!({
        "backup": backup.name,
        "snapshot_id": snapshot_id,
        "target_path": report.path,
        "files_checked": report.files_checked,
        "bytes_checked": report.bytes_checked,
        "referenced_snapshots": report.referenced_snapshots,
        "problems": report.problems,
        "invocation_id": cx.invocation_id,
    });
    if report.problems.is_empty() {
        cx.publish(Event {
            detail_type: DetailType::SnapshotVerified,
            detail,
        })
        .await;
        Ok(report)
    } else {
        cx.publish(Event {
            detail_type: DetailType::SnapshotVerifyFailed,
            detail,
        })
        .await;
        let summary = report
            .problems
            .iter()
            .map(|p| format!("{} ({}: {})", p.path, p.kind, p.detail))
            .collect::<Vec<_>>()
            .join("; ");
        Err(BackupError::VerifyFailed {
            snapshot_id: snapshot_id.to_owned(),
            problems: report.problems.len(),
            summary,
            report: Box::new(report),
        })
    }
}
